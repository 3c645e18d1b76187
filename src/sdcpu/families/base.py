"""What a model family is: everything sdcpu knows of one kind of diffusion model, declared in one place.

A family says which diffusers pipeline runs each task, which pipeline attribute denoises and what its traced inputs
are, which components encode text, its request defaults, its distilled decoder and LCM-LoRA, its random-weight
architectures, its FLOP count, and which recipe steps cannot serve it and why. Backends, algorithms, bench, tune,
serve and the rules read these facts from `sdcpu.families.of(pipe)`; none of them names a family's pipeline classes
(deepcache and tome, which patch a UNet2DConditionModel's blocks, check for one and skip otherwise; fbcache checks for
a diffusers transformer whose blocks its cache knows).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Defaults:
    """What a request leaves unset takes: denoising steps, guidance scale and size. The one declaration of them: its
    model family's (every entry point reads them through `pipeline.generate.defaults_for`)."""

    steps: int = 20
    guidance: float = 7.5
    width: int = 512
    height: int = 512

    @property
    def size(self) -> str:
        """'512x512': the size as the command lines write it."""
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Denoiser:
    """The denoiser as a backend traces it: its pipeline attribute and its tensor inputs in call order; those named in
    ADDED travel in diffusers' `added_cond_kwargs` (SDXL's text_embeds and time_ids), the rest positionally."""

    attribute: str = "unet"
    label: str = "UNet"  # its name in messages
    inputs: tuple[str, ...] = ("sample", "timestep", "encoder_hidden_states")
    added: tuple[str, ...] = ()

    def bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The tensor inputs, in `inputs` order, of a pipeline's call `denoiser(*args, **kwargs)` (SD's pipelines give
        the latents and timestep positionally, FLUX.2's name every input; the timestep one per batch item, as traced),
        and the keyword arguments left over; an added_cond_kwargs entry the family does not declare is refused."""
        import torch

        rest = dict(kwargs)
        added = dict(rest.pop("added_cond_kwargs", None) or {})
        extra = sorted(set(added) - set(self.added))
        if extra:
            raise NotImplementedError(f"the {self.label} does not support added_cond_kwargs {', '.join(extra)}")
        named = dict(zip(self.inputs, args)) | {name: rest.pop(name) for name in self.inputs if name in rest}
        named |= added
        batch = named[self.inputs[0]].shape[0]
        named["timestep"] = torch.as_tensor(named["timestep"], dtype=torch.float32).expand(batch).contiguous()
        return tuple(named[name] for name in self.inputs), rest

    def call_arguments(self, inputs: tuple) -> tuple[tuple, dict]:
        """The denoiser's positional and keyword arguments for INPUTS given in `inputs` order."""
        named = dict(zip(self.inputs, inputs))
        added = {name: named.pop(name) for name in self.added}
        return tuple(named.values()), ({"added_cond_kwargs": added} if added else {})


@dataclass(frozen=True)
class Arch:
    """A random-weight architecture of a family: its components' configs as the family's builder reads them."""

    components: Mapping[str, dict]
    scheduler: tuple[str, dict]  # a diffusers scheduler class and its config

    def make_scheduler(self):
        """The scheduler, made on the CPU (schedulers hold small tensors they copy there: not on a meta device)."""
        import diffusers
        import torch

        with torch.device("cpu"):
            return getattr(diffusers, self.scheduler[0]).from_config(self.scheduler[1])


def seeded(seed: int, offset: int, make, dtype=None):
    """MAKE() in eval mode with its own random stream (seeded SEED x 1000 + OFFSET: independent of build order), its
    parameters made in DTYPE where given (no float32 copy on the way)."""
    import torch

    torch.manual_seed(seed * 1000 + offset)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype or default)
    try:
        return make().eval()
    finally:
        torch.set_default_dtype(default)


@dataclass(frozen=True)
class Family:
    """One model family's facts; the behaviour that differs per family is a method a family module overrides."""

    name: str
    summary: str
    pipelines: Mapping[str, str]  # task (txt2img, img2img, inpaint) -> the diffusers pipeline class running it
    denoiser: Denoiser
    text_encoders: tuple[str, ...]  # pipeline attributes, in the order the pipeline calls them
    tokens: int  # the prompt length the text encoders run at (traced and calibrated for)
    # the denoiser's example a backend traces it with: batch (2: SD's CFG batch; FLUX.2 calls it once per prompt) and
    # latent side (SD 1.5's 64 divides by every SD UNet's upsampling; a smaller one traces a 4B transformer in seconds)
    traced: tuple[int, int] = (2, 64)
    # the text encoders' hidden states its pipelines read (they call them with output_hidden_states=True): SDXL's
    # encode_prompt the penultimate (-2, kept with the last), FLUX.2's layers 9, 18 and 27; a backend converting the
    # encoders keeps these beside their outputs
    text_layers: tuple[int, ...] = ()
    decoder: str = "vae"  # the pipeline attribute whose `decode` turns latents into images
    # task -> the diffusers pipeline class running it with a ControlNet (pipeline/control.py); empty: none
    control_pipelines: Mapping[str, str] = field(default_factory=dict)
    controlnets: Mapping[str, str] = field(default_factory=dict)  # control type -> its ControlNet's hub id
    defaults: Defaults = Defaults()
    # the torch dtype its models load in unless a recipe casts them: float32, or its weights' own where float32 would
    # not fit a machine (FLUX.2's bfloat16)
    dtype: str = "float32"
    negative_prompt: bool = True  # whether its pipelines take a negative prompt
    # whether its img2img is reference editing (FLUX.2 klein): the input images, each at its own size, condition every
    # step as extra tokens, several allowed, no strength; else img2img repaints one image from part of the schedule
    reference_edits: bool = False
    size_multiple: int = 8  # what an image's width and height must be multiples of: the VAE's factor (x a patch's)
    # how many distinct prompts' encoded states a pipeline keeps (`encode`), so a repeated prompt skips the text
    # encoder; 0: its pipelines encode every call's prompts themselves
    prompt_cache: int = 0
    tiny_vae: str = ""  # hub id of its distilled decoder (AutoencoderTiny), "" when it has none
    lcm_lora: str = ""  # hub id of its LCM-LoRA, "" when it has none
    latent_rgb: tuple = ()  # latent channel -> (R, G, B) in [-1, 1]: a preview without a decoder (A1111's approx cheap)
    archs: Mapping[str, Arch] = field(default_factory=dict)  # random:NAME -> its architecture
    # single-file checkpoints: the hub repo diffusers infers from the keys -> the architecture whose config folder
    # sdcpu builds locally for it (no network)
    single_file_configs: Mapping[str, str] = field(default_factory=dict)
    refuses: Mapping[str, str] = field(default_factory=dict)  # recipe step -> why it cannot serve this family
    # recipe step -> why it does not pay for this family where bf16 is emulated (measured there; it does where bf16
    # is native): refused only on CPUs without native bf16 (`refusals`)
    refuses_emulated_bf16: Mapping[str, str] = field(default_factory=dict)
    # how the int8 step makes the denoiser int8 on OpenVINO (sdcpu.backends.int8): "hybrid", NNCF's calibrated hybrid
    # quantization (int8 weights on the linear layers, int8 weights and activations on the rest), or "weights", NNCF's
    # weight-only int8 on every layer (activations in the run's precision, no calibration: far less memory)
    int8: str = "hybrid"
    int8_memory_gib: float = 0.0  # the machine memory its one-time quantization by that method needs
    # what a process making its images holds beyond its weights and the activation terms fitted on SD and SDXL
    # (sdcpu.recipes.memory), measured on its own peaks
    overhead_gib: float = 0.0
    # why torchao's PT2E int8 (the int8 step after `compile`) cannot serve it, "" where it can
    no_pt2e: str = ""
    # parameters of its reference model's parts: "text" (every text encoder), "denoiser", "decoder" (the VAE, encoder
    # included): what auto's memory estimate (sdcpu.recipes.memory) multiplies by the bytes a recipe keeps each in
    parameters: Mapping[str, int] = field(default_factory=dict)
    # the components that single-file tools (stable-diffusion.cpp, ComfyUI) load from files of their own, as a diffusers
    # folder holds them: the tool's option -> the component (FLUX.2: its Qwen3 LLM and VAE); empty where one original
    # checkpoint holds every network
    separate_files: Mapping[str, str] = field(default_factory=dict)

    @property
    def parts(self) -> dict[str, tuple[str, ...]]:
        """Its networks' pipeline attributes by part ("text", "denoiser", "vae"), in the order a call runs them: what
        the release step compiles one at a time and what a call's timing splits."""
        return {"text": self.text_encoders, "denoiser": (self.denoiser.attribute,), "vae": (self.decoder,)}

    @property
    def components(self) -> tuple[str, ...]:
        """The pipeline attributes holding its networks: text encoders, denoiser, decoder."""
        return tuple(name for names in self.parts.values() for name in names)

    def runs(self, pipeline_class: str) -> bool:
        """Whether a diffusers pipeline of PIPELINE_CLASS is one of this family's."""
        return pipeline_class in self.pipelines.values()

    def native_size(self, pipe) -> int:
        """The image side PIPE's denoiser was built for: its sample size times the VAE's scale (what int8 calibrates
        and tune probes at)."""
        return getattr(pipe, self.denoiser.attribute).config.sample_size * pipe.vae_scale_factor

    def scheduler_defaults(self, scheduler_config) -> Defaults:
        """The request defaults of this family's model scheduled by SCHEDULER_CONFIG (a family whose models differ, as
        SDXL and SDXL-Turbo, tells them apart here: the one rule every way of knowing a model reads)."""
        return self.defaults

    def defaults_of(self, pipe) -> Defaults:
        """The request defaults of PIPE, a model of this family."""
        return self.scheduler_defaults(pipe.scheduler.config)

    def arch_defaults(self, arch: str) -> Defaults:
        """The request defaults of random:ARCH, known before it loads."""
        return self.scheduler_defaults(self.archs[arch].scheduler[1])

    def checkpoint_arch(self, checkpoint) -> str | None:
        """The architecture of this family an original-layout CHECKPOINT (a mapping of its tensors) is, read from its
        keys and shapes, or None where it is none of this family's (then diffusers' inference decides)."""
        return None

    def inpainting(self, pipe) -> bool:
        """Whether PIPE's denoiser is an inpainting one (it takes the mask and the masked image's latents too)."""
        return False

    def pipeline_class(self, task: str, pipe) -> str:
        """The diffusers pipeline class that runs TASK with PIPE's components."""
        return self.pipelines[task]

    def encode(self, pipe, prompts: list[str]) -> list:
        """PROMPTS' encoded states, one tensor each, as PIPE's call takes them (`prompt_embeds`), where the family
        keeps them (prompt_cache)."""
        raise NotImplementedError

    def refusals(self, native_bf16: bool) -> Mapping[str, str]:
        """Recipe step -> why this family cannot take it, on a CPU with or without NATIVE_BF16."""
        return self.refuses if native_bf16 else {**self.refuses, **self.refuses_emulated_bf16}

    def auto_recipes(self, quality: str, native_bf16: bool) -> tuple[tuple[str, str], ...]:
        """(recipe steps, the measurement behind them) that `auto` tries first for this family's models at QUALITY
        (exact, high, fast), before its CPU class's rules (measured on SD), on a CPU with or without NATIVE_BF16: none
        by default."""
        return ()

    def after_load(self, pipe) -> None:
        """What a model of this family sheds once loaded, exactly (the images are the same): nothing by default."""

    def own_preview(self, pipe):
        """A preview decoder of its own (a step's latents, width, height -> pixels in [-1, 1]) for a family whose
        latents the generic ones (TAESD, approx cheap: sdcpu.serve.preview) do not read; None where they do."""
        return None

    def latent_multiple(self, config) -> int:
        """What the latent height and width of the denoiser with CONFIG must be a multiple of."""
        raise NotImplementedError

    def example_inputs(self, config, batch: int, latent: tuple[int, int], dtype, generator=None) -> tuple:
        """Random inputs (drawn from GENERATOR) of the denoiser with CONFIG for BATCH latents of size LATENT, in
        `denoiser.inputs` order: what a backend traces it with and what a probe times."""
        raise NotImplementedError

    def build(self, arch: str, seed: int):
        """A pipeline of random:ARCH with weights seeded by SEED."""
        raise NotImplementedError

    def save(self, pipe, folder) -> None:
        """Write PIPE (a random build) as a diffusers folder at FOLDER."""
        pipe.save_pretrained(folder, safe_serialization=True)

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """The components a LoRA may change: the denoiser and the text encoders."""
        return self.denoiser.attribute, *self.text_encoders

    def skeletons(self, pipe) -> dict:
        """Modules of PIPE's LoRA targets' classes and configs (the caller picks the device: meta, no weights)."""
        raise NotImplementedError

    def lora_state(self, pipeline_class, source, denoiser_config, **kwargs) -> tuple[dict, dict]:
        """A LoRA's state dict read from SOURCE by PIPELINE_CLASS's own reader (its layouts converted to diffusers'),
        and what its loaders take beside it (alphas, metadata)."""
        raise NotImplementedError

    def load_lora(self, pipeline_class, state_dict, models: dict, **options) -> None:
        """Load a LoRA's STATE_DICT into MODELS (component -> module) with PIPELINE_CLASS's own loaders."""
        raise NotImplementedError

    def original_state_dict(self, folder) -> dict:
        """The weights of diffusers FOLDER under the names of the family's original single-file checkpoint (its
        denoiser's alone where the others are separate_files)."""
        raise NotImplementedError

    def flops(self, config, batch: int, latent: tuple[int, int]) -> int:
        """FLOPs of one denoiser forward with CONFIG, counted on the meta device."""
        raise NotImplementedError
