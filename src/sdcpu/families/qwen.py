"""Qwen2's tokenizer (Qwen3's, so FLUX.2 [klein]'s), built offline from the BPE merges shipped in the package, and the
Qwen3 text encoder's configs: what FLUX.2 klein tokenizes prompts with. The vocabulary is GPT-2's byte-level one: the
256 byte symbols, one token per merge in order (151,387: ids 256 to 151,642), then the special tokens at Qwen's ids;
the chat template is Qwen3's for a user turn (with `enable_thinking=False`, an empty think block), all the FLUX.2
klein pipeline applies."""

import gzip
from importlib import resources

from sdcpu.families.clip import bytes_to_unicode

VOCAB_SIZE = 151936  # the embedding's rows (the tokenizer's ids stop at 151,668)
SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<think>": 151667,
           "</think>": 151668}
# Qwen3's chat template, for the messages FLUX.2 klein's pipeline sends (user turns, a generation prompt)
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def tokenizer(max_length: int):
    """Qwen2's tokenizer, its prompts truncated and padded to MAX_LENGTH tokens (with `<|endoftext|>`)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    with resources.files("sdcpu").joinpath("data/qwen2_merges.txt.gz").open("rb") as raw:
        merges = [tuple(line.split(" ")) for line in gzip.decompress(raw.read()).decode("utf-8").splitlines()]
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    vocab.update(SPECIAL)
    made = Qwen2Tokenizer(vocab=vocab, merges=merges, chat_template=CHAT_TEMPLATE, model_max_length=max_length,
                          eos_token="<|im_end|>", pad_token="<|endoftext|>")
    made.add_tokens([AddedToken(token, special=True) for token in SPECIAL], special_tokens=True)
    return made


def text_config(**sizes):
    """A Qwen3Config of Qwen's vocabulary and token ids, with SIZES (width, layers, heads)."""
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=VOCAB_SIZE, bos_token_id=SPECIAL["<|endoftext|>"], eos_token_id=SPECIAL["<|im_end|>"],
                       tie_word_embeddings=True, attention_bias=False, rms_norm_eps=1e-6, **sizes)
