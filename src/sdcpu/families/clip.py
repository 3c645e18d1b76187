"""CLIP's tokenizer, built offline from the BPE merges shipped in the package: what SD 1.x, SD 2.x and SDXL tokenize
prompts with (SD 2.x pads with `!` rather than the end token: a different token id, the same compute)."""

import gzip
from importlib import resources

VOCAB_SIZE = 49408
MAX_TOKENS = 77


def tokenizer(pad: str | None = None):
    """CLIP's tokenizer (49,408 tokens, 77 positions), padding with PAD where given (SDXL's tokenizer_2 and SD 2.x
    pad with `!`, id 0), else with the end token."""
    from transformers import CLIPTokenizer

    with resources.files("sdcpu").joinpath("data/clip_merges.txt.gz").open("rb") as raw:
        merges = [tuple(line.split()) for line in gzip.decompress(raw.read()).decode("utf-8").splitlines()[1:]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    made = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    if pad is not None:
        made.pad_token = pad
    return made


def text_config(**sizes):
    """A CLIPTextConfig of CLIP's vocabulary and context length, with SIZES (width, layers, heads, activation)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_TOKENS, bos_token_id=0, pad_token_id=1,
                          eos_token_id=2, **sizes)


def prefix_text_model(folder) -> None:
    """Key the CLIP text encoder's weights in FOLDER `text_model.*`, as SD's own files do: transformers 5.24 saves them
    without the prefix and reads both forms; older releases (optimum-intel's environment) read only the prefixed one
    and would silently load random weights in their place."""
    from safetensors.torch import load_file, save_file

    for path in folder.glob("*.safetensors"):
        tensors = load_file(path)
        save_file({key if key.startswith("text_model.") else f"text_model.{key}": tensor
                   for key, tensor in tensors.items()}, path, metadata={"format": "pt"})


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (the byte-level BPEs of CLIP and Qwen)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))
