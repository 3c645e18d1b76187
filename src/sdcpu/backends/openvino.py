"""The `openvino` step: the denoiser, the VAE decoder and the text encoders run by OpenVINO, compiled for static shapes.

It uses the `openvino` package directly (`openvino.convert_model` on the torch modules), not optimum-intel:
optimum-intel 2.2 pins huggingface-hub<1.22 while diffusers 0.42.1 needs >=1.32, and it drags in torchvision, which
fails on CPU torch. Install: `pip install -c constraints.txt openvino`.

- Conversion: each of the model family's components' pipeline-facing call (the denoiser's forward with the family's
  traced inputs, `vae.decode`, each text encoder's forward, with the hidden states the family's pipelines read: SDXL's
  penultimate layer, FLUX.2's layers 9, 18 and 27) is traced once into a dynamic-shape model and saved as IR under
  $SDCPU_HOME/openvino/<key>/ (float32 weights, or a bf16 model's bf16 weights as they are, computed in float32); the
  key hashes the component configs and a strided sample of every weight tensor, so a second process reads the IR
  (memory-mapped) instead of converting, and a different model never reuses it. The torch modules are dropped once
  converted (peak RSS). A disk without room for the IR is refused before any work.
- Static shapes: a wrapper compiles a copy of its model reshaped to each new set of input shapes it sees (cached per
  shape, one INFO line per compile), so a call at another size compiles again instead of failing. Each model keeps
  the $SDCPU_OPENVINO_SHAPES (default 4) shapes used last compiled (each is a copy of the weights in the plugin's
  layout): a fifth size or batch drops the least recently used, which compiles again if it comes back. OpenVINO's
  compiled-model cache ($SDCPU_HOME/openvino/compiled/<precision>) makes those compiles fast in a later process.
- Precision (INFERENCE_PRECISION_HINT): `openvino=f32|bf16` as asked, by default bf16 where the CPU has native bf16
  (AMX, AVX512_BF16), else f32; always set, since OpenVINO's CPU default is bf16 wherever the CPU has it. Threads
  follow torch's (OMP_NUM_THREADS).
- The wrappers keep what StableDiffusionPipeline reads (config, dtype, device, call signatures, return shapes), so the
  pipeline is called as before; each text encoder's stand-in returns its class's output (CLIPTextModelWithProjection's
  text_embeds first, as SDXL's encode_prompt reads it; Qwen3's takes the prompt's attention mask). Not supported,
  with an error saying so: clip_skip, CLIP's attention mask, denoiser options beyond the family's traced inputs
  (timestep_cond, cross_attention_kwargs), latent sizes the UNet cannot halve evenly. The VAE encoder (img2img,
  inpainting) is converted and compiled on its first call, never for text-to-image.
"""

import collections
import gc
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from types import MethodType

import torch
from torch.nn import functional

from sdcpu import families, recipes
from sdcpu.backends import mapped
from sdcpu.backends.components import TEXT_OUTPUTS, Denoiser, Entry, HiddenStates, Moments, TextEncoder, VAE
from sdcpu.errors import Skip, UsageError
from sdcpu.models import state
from sdcpu.system import locks
from sdcpu.system.home import check_space, sdcpu_home
from sdcpu.system.launcher import library_kind
from sdcpu.system.verify import mapped_paths

log = logging.getLogger(__name__)

IR_FORMAT = 2  # bump when what is traced changes, so IR saved by an older sdcpu is converted again
EXAMPLE_LATENT = 64  # the VAE's traced latent size (the denoiser's is its family's `traced`)
SHAPES_VARIABLE, DEFAULT_SHAPES = "SDCPU_OPENVINO_SHAPES", 4  # input shapes each model keeps compiled


def apply(pipe, step, cpu) -> str:
    try:
        import openvino as ov
    except ImportError:
        raise Skip("openvino is not installed: pip install -c constraints.txt openvino") from None
    preloaded = sorted(_preloaded_allocators())
    if preloaded:
        raise Skip(f"{', '.join(preloaded)} is preloaded in this process: {recipes.PRELOADED_ALLOCATOR}; run openvino "
                   "without an allocator step")
    precision = step.value or ("bf16" if cpu.native_bf16 else "f32")
    family = families.of(pipe)
    unknown = [f"{name} ({type(getattr(pipe, name)).__name__})" for name in family.text_encoders
               if type(getattr(pipe, name)).__name__ not in TEXT_OUTPUTS]
    if unknown:
        raise Skip(f"no OpenVINO stand-in returns what {', '.join(unknown)} returns (known: {', '.join(TEXT_OUTPUTS)})")
    if state.of(pipe).rounded:
        raise Skip(f"weights={state.of(pipe).stored} before openvino rounds the torch weights in a layout OpenVINO "
                   f"would expand to float32: put weights={state.of(pipe).stored} after openvino (NNCF compresses the "
                   "IR's weights)")
    loaded = getattr(pipe, family.denoiser.attribute).dtype  # no reference to the module kept: it goes when converted
    kept = str(loaded).removeprefix("torch.") if loaded != torch.float32 else ""
    folder = sdcpu_home() / "openvino" / cache_key({name: getattr(pipe, name) for name in family.components},
                                                  ov.__version__)
    getattr(pipe, family.decoder).float()  # small; its encoder is converted later, on a first img2img call
    core, config = runtime(precision)
    start, converted = time.perf_counter(), []
    # img2img and inpainting encode the input image: the encoder is converted on its first call, never for text-to-image
    encoder = Lazy(Moments(getattr(pipe, family.decoder)).eval(), folder / "vae_encoder.xml", core, config)
    for name in family.components:
        path, module = folder / f"{name}.xml", getattr(pipe, name)
        if not path.is_file() and convert(_float32_compute(module), name, path, family):
            converted.append(name)
        run = Compiled(core, path, config, name)
        if name == family.denoiser.attribute:
            stand_in = Denoiser(run, module.config, family.denoiser, family.latent_multiple(module.config))
        elif name == family.decoder:
            stand_in = VAE(run, module.config, encode=encoder, bn=getattr(module, "bn", None))
        else:
            stand_in = TextEncoder(run, module.config, type(module).__name__, family.text_layers)
        setattr(pipe, name, stand_in)
        gc.collect()  # the torch module is gone: return its memory before the next conversion
    state.of(pipe).runtime = state.Runtime.OPENVINO
    ir = f"converted {', '.join(converted)} in {time.perf_counter() - start:.1f} s" if converted else "reused"
    why = "asked for" if step.value else cpu.native_bf16_reason
    if precision == "bf16" and not cpu.native_bf16:
        why += f"; this CPU has no native bf16 ({cpu.native_bf16_reason}): OpenVINO falls back to f32 kernels"
    return (
        f"{family.denoiser.label}, VAE decoder, text encoder{'s' if len(family.text_encoders) > 1 else ''} "
        f"(VAE encoder on first img2img/inpainting call) on OpenVINO "
        f"{ov.__version__.split('-')[0]}, {precision} "
        f"({why}), static shapes compiled per size on first use; IR {ir} in {folder}"
        + (f"; converted from the {kept} torch weights, kept so in the IR (the graph upcasts them where used; "
           f"the plugin computes in {precision})" if kept else "")
    )


def _float32_compute(module):
    """MODULE computing in float32 for its trace: a bf16 model's text encoder or denoiser keeps its bf16 weights, each
    upcast where it is used (the IR holds them as bf16 constants: no float32 copy of a 4B-parameter model while
    converting, half the disk; OpenVINO's CPU plugin expands them to the precision it computes in when it compiles,
    unless the weights step compresses them), anything else as it is (the VAE was made float32 beforehand)."""
    if module.dtype == torch.float32:
        return module
    from sdcpu.backends import weights

    weights.store(module, "bf16")
    for layer in module.modules():
        if type(layer) is torch.nn.Embedding:
            layer.forward = MethodType(_table_float32, layer)
    return module


def _table_float32(self, ids):
    """An embedding's bf16 table upcast whole, then gathered: traced as Convert -> Gather, a float32 table to NNCF,
    which compresses it (a Gather of a bf16 table it leaves as it is: FLUX.2's Qwen3 embedding, 389M parameters,
    widened to 1.6 GB by the CPU plugin). Traced, not run: eager torch gathers the rows first
    (sdcpu.backends.weights)."""
    return functional.embedding(ids, self.weight.float(), self.padding_idx, self.max_norm, self.norm_type,
                                self.scale_grad_by_freq, self.sparse)


def _preloaded_allocators() -> set[str]:
    """The allocators LD_PRELOADed into this process (jemalloc, tcmalloc), read from its memory maps."""
    kinds = {library_kind(path) for path in mapped_paths(Path("/proc/self/maps").read_text())}
    return kinds & {"jemalloc", "tcmalloc"}


def runtime(precision: str):
    """An OpenVINO core with its compiled-model cache on disk, and the compile config for PRECISION."""
    import openvino as ov

    core = ov.Core()
    # One cache per precision: OpenVINO 2026.4's blob key omits the precision hint, and a bf16 compile that loaded an
    # f32 blob holding weights returned NaN (random:tiny). OPTIMIZE_SIZE keeps weights out of the blob (the IR has
    # them): on the SD 1.5 UNet a 3 MB blob, not 3.4 GB, and no extra 3.2 GiB of RSS when a later process loads it.
    cache = sdcpu_home() / "openvino" / "compiled" / precision
    core.set_property({"CACHE_DIR": str(cache), "CACHE_MODE": "OPTIMIZE_SIZE"})
    return core, {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}


def cache_key(modules: dict, ov_version: str) -> str:
    """A hash of MODULES' (name -> torch module) configs and a sample of every weight: a different model gets a
    different key."""
    digest = hashlib.sha256(json.dumps([IR_FORMAT, ov_version]).encode())
    for name, module in modules.items():
        config = dict(module.config) if isinstance(module.config, dict) else module.config.to_dict()
        public = {k: v for k, v in config.items() if not k.startswith("_")}  # not _name_or_path: weights decide
        digest.update(json.dumps([name, public], sort_keys=True, default=str).encode())
        for key, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            digest.update(key.encode() + flat[:: max(1, flat.numel() // 16)].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _traced(module, name, family):
    """The entry to trace for FAMILY's component NAME (the VAE encoder: a Moments) and an example input for it."""
    if name == "vae_encoder":  # images at 8x the traced latent size
        return module, (torch.randn(1, module.encoder.conv_in.in_channels, EXAMPLE_LATENT * 8, EXAMPLE_LATENT * 8),)
    if name in family.text_encoders:  # with the hidden states the family's pipelines read
        kind = TEXT_OUTPUTS[type(module).__name__]
        entry = HiddenStates(module, kind, family.text_layers) if family.text_layers else Entry(module)
        ids = torch.zeros(1, family.tokens, dtype=torch.long)
        if not kind.masked:
            return entry, (ids,)
        mask = torch.ones_like(ids)
        mask[:, family.tokens // 2:] = 0  # a padded prompt, as pipelines give it: the mask's arithmetic is traced
        return entry, (ids, mask)
    if name == family.denoiser.attribute:
        batch, side = family.traced
        return Entry(module, signature=family.denoiser), family.example_inputs(module.config, batch, (side, side),
                                                                               torch.float32)
    return Entry(module, "decode"), (torch.randn(1, module.config.latent_channels, EXAMPLE_LATENT, EXAMPLE_LATENT),)


def convert(module, name, path, family, traced=None) -> bool:
    """Trace MODULE (FAMILY's component NAME)'s pipeline-facing call (TRACED: (the entry, its example inputs) where
    it is not the component's own) into OpenVINO and save it as f32 IR at PATH (written, then renamed); False when
    another process converted it while this one waited for the lock."""
    import openvino as ov
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with locks.exclusive(path):
        if path.is_file():
            return False
        locks.remove_stale(path)
        tensors = (*module.parameters(), *module.buffers())
        check_space(path.parent, sum(t.numel() * t.element_size() for t in tensors), f"converting {name} to OpenVINO")
        start = time.perf_counter()
        entry, example = traced or _traced(module, name, family)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: expected
            # convert_model(module, example_input=...) traces with check_trace, which runs the model twice more (60%
            # of the conversion time); the decoder takes trace options, as optimum-intel's exporter does
            decoder = TorchScriptPythonDecoder(entry, example_input=example, trace_kwargs={"check_trace": False})
            model = ov.convert_model(decoder)
        staging = locks.staging(path, ".xml")
        try:
            ov.save_model(model, staging, compress_to_fp16=False)  # save_model halves weights unless told not to
            os.replace(staging.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(staging, path)
        finally:
            locks.remove(staging, staging.with_suffix(".bin"))
    log.info("openvino: converted %s in %.1f s to %s", name, time.perf_counter() - start, path)
    return True


class Lazy:
    """MODULE converted to IR at PATH (if not there yet) and compiled on its first call: a component only some tasks
    use (the VAE encoder) costs nothing until one does."""

    def __init__(self, module, path: Path, core, config: dict):
        self.module, self.path, self.core, self.config, self.compiled = module, path, core, config, None

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.compiled is None:
            if not self.path.is_file():
                convert(self.module, self.path.stem, self.path, None)
            self.compiled, self.module = Compiled(self.core, self.path, self.config, self.path.stem), None
        return self.compiled(*inputs)

    def release(self):
        if self.compiled is not None:
            self.compiled.release()


def kept_shapes() -> int:
    """How many input shapes each model keeps compiled ($SDCPU_OPENVINO_SHAPES, default 4, at least 1)."""
    text = os.environ.get(SHAPES_VARIABLE, str(DEFAULT_SHAPES))
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise UsageError(f"{SHAPES_VARIABLE}={text!r}: a whole number >= 1 of input shapes kept compiled per model")
    return int(text)


def _sizes(shapes) -> str:
    return " ".join("x".join(map(str, shape)) for shape in shapes)


class Compiled:
    """A dynamic-shape OpenVINO model (IR at PATH), compiled for each new set of static input shapes on first use.

    The IR is read (memory-mapped) for each compile, and its mapped weights are kept out of RSS while the CPU plugin
    repacks them into its own layouts (sdcpu.backends.mapped): RSS holds the UNet's weights once, not twice."""

    def __init__(self, core, path: Path, config: dict, name: str):
        self.core, self.path, self.config, self.name = core, path, config, name
        self.by_shape = collections.OrderedDict()  # the least recently used first

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shapes = tuple(tuple(x.shape) for x in inputs)
        compiled = self.by_shape.get(shapes)
        if compiled is None:
            compiled = self.compile(shapes)
        self.by_shape.move_to_end(shapes)
        outputs = compiled([x.numpy() for x in inputs])
        return tuple(torch.from_numpy(array) for array in outputs.to_tuple())

    def read(self):
        """The model at self.path, memory-mapped (dynamic shapes)."""
        return self.core.read_model(self.path)

    def output_shapes(self, shapes) -> list[tuple[int, ...]]:
        """The outputs' shapes for inputs of SHAPES (compiled for them if not yet)."""
        compiled = self.by_shape.get(shapes) or self.compile(shapes)
        return [tuple(output.get_shape()) for output in compiled.outputs]

    def compile(self, shapes):
        """Compile for SHAPES (one tuple per input) now rather than on the first call."""
        start = time.perf_counter()
        with mapped.released(self.path.with_suffix(".bin")):
            model = self.read()
            model.reshape({port: list(shape) for port, shape in zip(model.inputs, shapes)})
            self.by_shape[shapes] = compiled = self.core.compile_model(model, "CPU", self.config)
            del model
        log.info("openvino: compiled %s for %s in %.1f s (%s)", self.name, _sizes(shapes),
                 time.perf_counter() - start, self.config["INFERENCE_PRECISION_HINT"])
        while len(self.by_shape) > kept_shapes():
            dropped, _ = self.by_shape.popitem(last=False)
            log.info("openvino: dropped %s compiled for %s (%s=%d)", self.name, _sizes(dropped), SHAPES_VARIABLE,
                     kept_shapes())
        return compiled

    def release(self):
        """Drop every compiled shape (their memory goes back); the next call compiles again."""
        self.by_shape.clear()
