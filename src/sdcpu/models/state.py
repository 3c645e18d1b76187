"""What sdcpu keeps on a diffusers pipeline it loaded or optimized, in one attribute (`pipe.sdcpu`), and what runs
its denoiser: the runtime a backend step put in place and what that runtime supports.
"""

import enum
from dataclasses import dataclass, field


class Runtime(enum.Enum):
    """What runs the denoiser, and what can follow it: how a LoRA set applies (`lora`; where it cannot,
    `no_lora` says why) and which int8 quantization takes it (`int8`, None: none)."""

    EAGER = ("the eager torch module", "peft", None, "")
    INDUCTOR = ("torch.compile (inductor, frozen weights)", None, "pt2e",
                "the compile step froze the UNet's weights into inductor's graph (freezing): a LoRA would need a new "
                "compile per set (minutes for SD 1.5); use openvino or the eager UNet")
    OPENVINO = ("OpenVINO IR", "ir-deltas", "nncf", "")
    OPENVINO_INT8 = ("OpenVINO hybrid int8 IR", None, None, "the UNet runs as OpenVINO hybrid int8 IR: a LoRA cannot be "
                     "added to quantized weights without quantizing again; drop int8 from the recipe")
    OPENVINO_COMPRESSED = ("OpenVINO IR with NNCF-compressed weights", None, None, "the weights step compressed the "
                           "IR's weights (NNCF): a LoRA cannot be added to them without compressing again; drop "
                           "weights= from the recipe")
    PT2E_INT8 = ("torchao PT2E int8, compiled by inductor", None, None, "the UNet runs as torchao PT2E int8: a LoRA "
                 "cannot be added to quantized weights without quantizing again; drop int8 from the recipe")
    IPEX = ("Intel Extension for PyTorch", None, None, "ipex prepared the weights in its own layout: drop ipex from "
            "the recipe to use LoRAs")

    def __init__(self, summary: str, lora: str | None, int8: str | None, no_lora: str):
        self.summary, self.lora, self.int8, self.no_lora = summary, lora, int8, no_lora


@dataclass
class State:
    """sdcpu's state of one pipeline; the task pipelines made from it (img2img, inpainting) share it, as they share
    its components."""

    model: object = None  # the ModelSpec it was loaded from
    recipe: object = None  # the Recipe `optimize` applied
    defaults: dict = field(default_factory=dict)  # call defaults the recipe set (num_inference_steps, guidance_scale)
    runtime: Runtime = Runtime.EAGER
    tasks: dict = field(default_factory=dict)  # task -> the pipeline made for it
    lora: object = None  # the LoRA state of whatever runs the denoiser (fused originals, OpenVINO's compiled sets)
    mapped: bool = False  # eager weights read in place from their files, read-only (the release step)
    stored: str = ""  # the form the weights step stored the weights in (bf16, int8, int4; on OpenVINO int8, int4)
    patched: str = ""  # the step that patched the eager denoiser's forward or blocks (deepcache=2, tome, fbcache)
    prompt_states: dict = field(default_factory=dict)  # prompt -> its encoded states (Family.prompt_cache), oldest first
    previewer: object = None  # serve's live-preview decoder
    controlnets: dict = field(default_factory=dict)  # (control type, source) -> its ControlNet (pipeline/control.py)

    @property
    def rounded(self) -> bool:
        """The weights step rounded the weights (int8, int4): they are neither the model's files' nor exact."""
        return self.stored.startswith("int")


def of(pipe) -> State:
    """PIPE's state, made empty at first use."""
    return pipe.__dict__.setdefault("sdcpu", State())
