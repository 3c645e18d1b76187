"""OpenVINO GenAI's Text2ImagePipeline as a bench peer, in its own environment (scripts/setup-genai.sh).

The way GenAI's documentation tells a user to run it: export the diffusers folder to OpenVINO IR with optimum-intel's
exporter (`optimum-cli export openvino --task text-to-image`, run in optimum-intel's environment; kept on disk per
model, exporter version and weight format, and shared with the optimum-intel rung: sdcpu.bench.ir_export), then in GenAI's own environment `Text2ImagePipeline(folder)`, `reshape()` to the
protocol's static shape (batch 1, its guidance) and `compile("CPU")` at the plugin's default precision (bf16 where the
CPU has it natively, f32 elsewhere). `TorchGenerator(seed)` draws torch's CPU noise for the seed, and the scheduler is
the model's own (scheduler_config.json), so its image is comparable with the diffusers rung's.

    python genai_child.py SPEC_JSON   (SPEC: protocol, image, model_path, exporter, weight_format, threads,
                                       random_weights)
"""

import json
import resource
import sys
import time

from sdcpu.bench.child import protocol_calls
from sdcpu.bench.ir_export import exported
from sdcpu.system.children import write_row


FLOW = "FlowMatchEulerDiscreteScheduler"  # FLUX.2's
FLOW_NOTE = ("GenAI's FLUX.2 image is not diffusers' on the same seed (14.8 dB against sdcpu's on random:flux2-klein-4b "
             "where optimum-intel's pipeline on the same IR gave 47.4, 2026-12-05): its noise or schedule differs, not "
             "traced; not a fidelity figure")


def main() -> int:
    spec = json.loads(sys.argv[1])
    protocol = spec["protocol"]
    from importlib.metadata import version

    import numpy
    import openvino
    import openvino_genai
    from PIL import Image

    # 1. The IR, exported once; then load, reshape to the protocol's static shape, compile.
    folder, cached, export_s = exported(spec["model_path"], spec["exporter"], spec["weight_format"])
    start = time.perf_counter()
    edit = spec.get("inputs") or {}  # img2img, inpainting: the bench's input image (sdcpu.bench.inputs)
    kind = {"img2img": openvino_genai.Image2ImagePipeline, "inpaint": openvino_genai.InpaintingPipeline}.get(
        edit.get("task"), openvino_genai.Text2ImagePipeline)
    pipe = kind(str(folder))
    pipe.reshape(1, protocol["height"], protocol["width"], protocol["guidance"])
    pipe.compile("CPU", INFERENCE_NUM_THREADS=spec["threads"])
    compile_s = time.perf_counter() - start
    precision = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()

    negative = {"negative_prompt": protocol["negative_prompt"]} if protocol.get("negative_prompt") else {}
    inputs = [openvino.Tensor(numpy.asarray(Image.open(edit[name]).convert("RGB"))[None])
              for name in ("image", "mask") if edit.get(name)]  # uint8 NHWC, as GenAI's samples pass them
    if edit:
        negative["strength"] = edit["strength"]

    def call(steps):
        tensor = pipe.generate(protocol["prompt"], *inputs, **negative,
                               width=protocol["width"], height=protocol["height"], num_inference_steps=steps,
                               guidance_scale=protocol["guidance"],
                               generator=openvino_genai.TorchGenerator(protocol["seed"]))
        return Image.fromarray(numpy.asarray(tensor.data[0]))

    image, timing = protocol_calls(call, spec)
    image.save(spec["image"])
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    row = {
        "recipe_resolved": f"OpenVINO GenAI {version('openvino-genai')} {kind.__name__}, static "
                           f"{protocol['width']}x{protocol['height']}, CPU plugin precision {precision}, "
                           f"{spec['threads']} threads",
        "steps": [{"step": "export", "applied": True, "s": round(export_s, 2),
                   "detail": f"{spec['weight_format']} IR {'reused from' if cached else 'exported by optimum-cli to'} "
                             f"{folder}"},
                  {"step": "reshape+compile", "applied": True, "s": round(compile_s, 2), "detail": "CPU"}],
        "load_s": round(compile_s, 2), "prepare_s": round(export_s + compile_s, 2),
        "cache_before": {"openvino": cached}, "guidance": protocol["guidance"],
        "cfg_batch": 2 if protocol["guidance"] > 1 else 1, "scheduler": scheduler,
        "random_weights": spec["random_weights"], "fidelity_note": FLOW_NOTE if scheduler == FLOW else None,
        "export_peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
        **timing,
    }
    write_row(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
