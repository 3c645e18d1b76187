"""The optimum-intel peer rung, run by optimum-intel's own Python (scripts/setup-optimum.sh): the seed's OpenVINO path.

The folder's own pipeline, as optimum-intel's auto classes pick it from model_index.json's `_class_name`
(`OVStableDiffusionPipeline` for SD, `OVStableDiffusionXLPipeline` for SDXL and SDXL-Turbo, `OVFlux2KleinPipeline` for
FLUX.2, and their Img2Img and Inpaint twins for the bench's edit tasks): exported once from the model folder by
optimum-intel's CLI (sdcpu.bench.ir_export, the IR the GenAI rung reads too: every component, the VAE encoder
included, so one export serves all three tasks), reshaped to the protocol's static size with batch 1 and one image per prompt, compiled, then the protocol's warm-up
and timed calls.
Prints one JSON row like sdcpu.bench.child's (no per-component split: the peer's pipeline is run as its users run it).
"""

import json
import sys
import time

from sdcpu.bench.child import protocol_calls
from sdcpu.bench.ir_export import exported
from sdcpu.system.children import write_row


def without_cfg_batch(unet) -> None:
    """Halve the batch of the OpenVINO UNet model UNET's inputs back to 1: optimum-intel's reshape() doubles it for
    classifier-free guidance whatever the guidance (unless the UNet takes an LCM's timestep_cond), so a static pipeline
    run at guidance <= 1 would feed its batch-1 latents to a batch-2 input and fail."""
    shapes = {}
    for port in unet.inputs:
        shape = port.get_partial_shape()
        if shape.rank.get_length() > 1 and shape[0].is_static and shape[0].get_length() == 2:  # timestep: rank 1
            shape[0] = 1
        shapes[port] = shape
    unet.reshape(shapes)


def main() -> int:
    spec = json.loads(sys.argv[1])
    protocol = spec["protocol"]
    from importlib.metadata import version

    import openvino
    import torch
    from optimum.intel import OVPipelineForImage2Image, OVPipelineForInpainting, OVPipelineForText2Image
    from PIL import Image

    optimum_version = version("optimum-intel")

    # 1. The IR, exported once (shared with the GenAI rung); later runs load it.
    folder, cached, export_s = exported(spec["model_path"], spec["exporter"], spec["weight_format"])
    start = time.perf_counter()
    edit = spec.get("inputs") or {}  # img2img, inpainting: the bench's input image (sdcpu.bench.inputs)
    task = {"img2img": OVPipelineForImage2Image, "inpaint": OVPipelineForInpainting}.get(
        edit.get("task"), OVPipelineForText2Image)
    pipe = task.from_pretrained(folder, compile=False)  # the task's class of the exported family
    kind = type(pipe)
    # 2. Static shapes, as the seed: batch 1, one image per prompt, the protocol's size.
    pipe.reshape(batch_size=1, height=protocol["height"], width=protocol["width"], num_images_per_prompt=1)
    if protocol["guidance"] <= 1 and getattr(pipe, "unet", None) is not None:  # no CFG (SDXL-Turbo's guidance 0)
        without_cfg_batch(pipe.unet.model)  # the UNet runs batch 1 (a FLUX.2 transformer's batch is never doubled)
    pipe.compile()
    compile_s = time.perf_counter() - start

    images = {"image": Image.open(edit["image"]).convert("RGB"), "strength": edit["strength"]} if edit else {}
    if edit.get("mask"):
        images["mask_image"] = Image.open(edit["mask"]).convert("L")
    size = {} if edit.get("task") == "img2img" else {"height": protocol["height"], "width": protocol["width"]}

    def call(steps):
        return pipe(prompt=protocol["prompt"], num_inference_steps=steps, guidance_scale=protocol["guidance"], **size,
                    **images, generator=torch.Generator("cpu").manual_seed(protocol["seed"])).images[0]  # sdcpu's latents

    image, timing = protocol_calls(call, spec)
    image.save(spec["image"])
    row = {
        "recipe_resolved": f"optimum-intel {optimum_version} {kind.__name__}, static {protocol['width']}x"
                           f"{protocol['height']}, OpenVINO {openvino.__version__.split('-')[0]} default precision",
        "steps": [{"step": "export", "applied": True, "s": round(export_s, 2),
                   "detail": f"{spec['weight_format']} IR {'reused from' if cached else 'exported by optimum-cli to'} "
                             f"{folder}"},
                  {"step": "load+reshape+compile", "applied": True, "s": round(compile_s, 2), "detail": "CPU"}],
        "load_s": round(compile_s, 2), "prepare_s": round(export_s + compile_s, 2),
        "cache_before": {"openvino": cached}, "guidance": protocol["guidance"],
        "cfg_batch": 2 if protocol["guidance"] > 1 else 1, "scheduler": type(pipe.scheduler).__name__,
        "random_weights": spec["random_weights"],
        **timing,
    }
    write_row(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
