"""`sdcpu bench`: the seed's ladder reproduced on this machine, rung by rung, each rung in a fresh process under its own
launch plan; a table, a chart, per-component times, and each rung's drift from the first rung's image.

Default protocol: the seed's (1 warm-up call at 10 steps, 10 timed calls at 20 steps, 512x512). `--preset quick`
(256x256, 4 steps, 3 runs, 1-step warm-up) fits a 2-core machine in about 15 minutes; any option below overrides it."""

import dataclasses
import sys
from pathlib import Path

from sdcpu.bench import ladders
from sdcpu.commands.options import add_model, finite
from sdcpu.errors import UsageError
from sdcpu.pipeline import tasks


def register(sub):
    p = sub.add_parser("bench", help="run a ladder of recipes, one fresh process each, and report it",
                       description=__doc__)
    add_model(p)
    p.add_argument("--ladder", choices=ladders.LADDERS, default="seed",
                   help="seed: baseline, +system, +framework, +scheduler; peers: vanilla diffusers, optimum-intel, OpenVINO "
                        "GenAI, stable-diffusion.cpp f32 and q8_0 (each in its own environment: scripts/setup-NAME.sh), "
                        "sdcpu auto:exact, auto and auto:fast; full: each step on top of the fastest so far "
                        "(default %(default)s)")
    p.add_argument("--recipes", help="run these recipes instead of a ladder: `baseline,system,auto`, or recipes of "
                                     "steps separated by `;` (`baseline;jemalloc,iomp,pin;auto`); `peer:NAME[:VARIANT]` "
                                     "runs a peer (optimum-intel, openvino-genai, stable-diffusion.cpp:f32|q8_0|f16|q4_0)")
    p.add_argument("--preset", choices=ladders.PRESETS, default="seed", help="protocol preset (default %(default)s)")
    p.add_argument("--steps", type=int, help="denoising steps per timed call")
    p.add_argument("--runs", type=int, help="timed calls per rung")
    p.add_argument("--warmup-steps", type=int, help="steps of the warm-up call")
    p.add_argument("--size", help="WIDTHxHEIGHT")
    p.add_argument("--prompt")
    p.add_argument("--seed", type=int)
    p.add_argument("--guidance", type=finite)
    p.add_argument("--task", choices=tasks.TASKS, help="txt2img (default), img2img or inpaint: every rung edits the "
                                                        "bench's own input image (OUT/inputs/), the same for each")
    p.add_argument("--strength", type=finite, help="img2img/inpaint strength (default 0.75 img2img, 1 inpaint)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder (default %(default)s/)")
    p.set_defaults(func=run)


def protocol_from(args) -> ladders.Protocol:
    from sdcpu.models import parse_spec
    from sdcpu.pipeline.generate import parse_size

    parse_spec(args.model)  # refuse a bad model spec before anything is created

    changes = {"model": args.model, "preset": args.preset, **ladders.PRESETS[args.preset]}
    for name in ("steps", "runs", "warmup_steps", "prompt", "seed", "guidance", "task", "strength"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.size:
        changes["width"], changes["height"] = parse_size(args.size)
    return dataclasses.replace(ladders.Protocol(), **changes).validate()


def run(args) -> int:
    from sdcpu.bench import report, runner

    protocol = protocol_from(args)
    ladder = ladders.parse_recipes(args.recipes) if args.recipes else args.ladder
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file: give a folder for the results")
    if args.out.exists() and any(args.out.iterdir()):
        raise UsageError(f"output folder {args.out} is not empty: pick another --out, or remove it")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output folder {args.out}: {err.strerror}") from None
    rows = runner.run(protocol, ladder, args.out, say=_say)
    paths = report.write(args.out)
    print(report.markdown(rows))
    print("\n".join(f"wrote {path}" for path in [args.out / runner.RESULTS, *paths]))
    return 1 if all("failed" in row for row in rows) else 0


def _say(text: str, final: bool = False) -> None:
    """One live line on a terminal (rewritten in place until a FINAL one), one line per event elsewhere."""
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="\n" if final else "", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)
