"""`sdcpu tune`: measure which system and framework settings make this model fastest on this machine, within a time
budget, and save the winner as a profile that `auto` (generate, bench, launch --auto, info) then uses.

Each configuration runs in a fresh process under its launch plan: UNet forwards at the target size (CFG batch 2) and
one VAE decode; one dimension at a time from the default (coordinate descent); a configuration wins only by more
than the measured noise; the winner and the default are run again, interleaved, to confirm it."""

import argparse
import importlib.util
import os
import sys

from sdcpu import recipes
from sdcpu.commands.options import add_model
from sdcpu.errors import UsageError
from sdcpu.families import sd
from sdcpu.pipeline.generate import DEFAULTS
from sdcpu.recipes import profiles
from sdcpu.system import hardware, launcher
from sdcpu.tune import probe, report, search, space

# Extra first-call seconds a backend costs in a process: (fixed, per SD 1.5-sized UNet). compile measured 60-107 s
# on SD 1.5 here (warm/cold inductor cache); openvino converts the IR once (~40 s), then reads it back.
FIRST_CALL_EXTRA_S = {"compile": (30, 110), "openvino": (10, 45)}


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected minutes > 0, got {text!r}")
    return value


def register(sub):
    p = sub.add_parser("tune", help="measure the fastest settings here and save them as auto's profile",
                       description=__doc__)
    add_model(p)
    p.add_argument("--size", help="WIDTHxHEIGHT of the images to tune for (default: the model's own, 512x512 for "
                                  "SD 1.5)")
    p.add_argument("--steps", type=int,
                   help="denoising steps per image in the estimate (default: the model's, where known before it "
                        f"loads: a random:ARCH's or a diffusers folder's; else {DEFAULTS.steps})")
    p.add_argument("--budget", type=_minutes, default=15.0, help="minutes to spend measuring (default %(default)s)")
    p.add_argument("--quality", choices=("exact", "high"), default="high",
                   help="exact: fp32 only; high: + bf16 where the CPU has it natively (auto:fast uses this profile "
                        "and adds its steps) (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed UNet forwards per process (default %(default)s)")
    p.set_defaults(func=run)


def _say(text: str) -> None:
    print(f"tune: {text}", file=sys.stderr, flush=True)


def run(args) -> int:
    from sdcpu.models import parse_spec, random_models, Source
    from sdcpu.pipeline.generate import check_size, parse_size, spec_defaults

    # 1. Check the input, look at the machine, build the space of what it can run.
    model = parse_spec(args.model)
    args.steps = args.steps if args.steps is not None else spec_defaults(model).steps  # SDXL-Turbo's 1, SDXL's 25
    if args.steps < 1 or args.repeats < 2:
        raise UsageError("--steps must be at least 1 and --repeats at least 2 (a spread needs two)")
    size = parse_size(args.size) if args.size else None
    if size:
        check_size(*size)
    cpu = hardware.detect()
    libs, tools = launcher.look_around(cpu, os.environ)
    installed = {name for name, kind in recipes.STEP_KINDS.items()
                 if kind.needs and importlib.util.find_spec(kind.needs)}
    space_ = space.build(cpu, libs, tools, installed, args.quality)
    if model.kind is Source.RANDOM:
        random_models.ensure_built(model.ref)
    budget_s, spent = args.budget * 60, 0.0
    spec = {"model": args.model, "size": size, "repeats": args.repeats}

    def measure(config):
        nonlocal spent
        recipe = space_.recipe(config)
        row, wall = probe.run(recipe, spec, cpu, os.environ, max(budget_s - spent, 120))
        spent += wall
        result = probe.to_result(config, row, wall, args.steps)
        figure = f"{result.median:.3f} s/image est., spread {result.spread:.0%}" if result.ok else result.status
        _say(f"{recipe}: {figure} ({wall:.0f} s, {spent:.0f}/{budget_s:.0f} s of the budget)")
        return result

    # 2. The default first: it sets the size, the workload key and what a process costs; fit the protocol to the budget.
    baseline = measure(space_.default)
    if not baseline.ok:
        raise UsageError(f"the default configuration could not be measured: {baseline.status}")
    target = (baseline.detail["width"], baseline.detail["height"])
    processes = 1 + sum(len(d.options) - 1 for d in space_.dimensions) + 2 * search.CONFIRM_ROUNDS
    repeats, measured_size, notes = search.fit_protocol(budget_s - spent + baseline.wall_s, processes, baseline,
                                                       args.repeats, target)
    spec.update(repeats=repeats, size=measured_size)
    if measured_size != target:  # the default's figures must come from the size the others run at
        baseline = measure(space_.default)
    scale = baseline.detail["unet_params"] / sd.FAMILY.parameters["denoiser"]

    def estimate(config):
        fixed, per_sd15 = FIRST_CALL_EXTRA_S.get(space_.describe(config).get("backend"), (0, 0))
        return baseline.wall_s + fixed + per_sd15 * scale

    # 3. Search, then confirm the winner against the default, interleaved.
    found = search.coordinate_descent(space_, measure, budget_s - (spent - baseline.wall_s), estimate, baseline)
    results, notes = found.results, notes + found.notes
    choice, estimate_s, why = _choose(space_, found.best, baseline, measure, results)

    # 4. Save the profile and its report; print the report.
    text, path = _save(args, cpu, space_, results, baseline, choice, estimate_s, why, notes,
                       {"target": target, "measured_size": measured_size, "repeats": repeats, "budget_s": budget_s,
                        "spent_s": spent})
    print(text)
    print(f"wrote {path} and {path.with_suffix('.md')}; `sdcpu info` shows that auto uses it; delete them to stop it")
    return 0


def _save(args, cpu, space_, results, baseline, choice, estimate_s, why, notes, run: dict):
    """The profile of CHOICE and its report saved beside it (RUN: the target and measured sizes, repeats, budget and
    time spent); (the report's text, the profile's path)."""
    width, height = run["target"]
    measured = run["measured_size"]
    workload = profiles.Workload(baseline.detail["unet_hash"], f"{width}x{height}")
    header = {"model": args.model, "size": workload.size, "measured_size": f"{measured[0]}x{measured[1]}",
              "cpu": cpu.model_name, "cores": f"{len(cpu.usable_physical_cores)} usable physical cores, "
              f"{len(cpu.usable_cpus)} logical CPUs", "versions": profiles.versions(), "created": profiles.now(),
              "quality": args.quality, "repeats": run["repeats"], "steps": args.steps, "budget_s": run["budget_s"],
              "spent_s": run["spent_s"]}
    text = report.markdown(header, space_, results, baseline, space_.recipe(choice), why, notes)
    path = profiles.save({
        "key": profiles.key(cpu, args.quality, workload), "created": header["created"], "model": args.model,
        "recipe": space_.recipe(choice), "estimate_s": estimate_s, "baseline_s": baseline.median,
        "why": why[0], "notes": notes, "protocol": {k: header[k] for k in ("measured_size", "repeats", "steps")},
        "results": [{"recipe": space_.recipe(r.config), "configuration": space_.describe(r.config),
                     "status": r.status, "samples_s": list(r.samples), "first_call_s": r.first_call_s,
                     "wall_s": round(r.wall_s, 1)} for r in results],
    }, text)
    return text, path


def _choose(space_, best, baseline, measure, results) -> tuple[tuple, float, list[str]]:
    """(the configuration to keep, its s/image, why), after confirming a winner other than the default."""
    simpler = "the default (no recipe steps) stays, as the simpler one"
    if best.config == baseline.config:
        return baseline.config, baseline.median, [f"no configuration beat the default by more than the measured "
                                                  f"noise: {simpler}"]
    confirmed, pooled_base, pooled_best, runs = search.confirm(baseline.config, best.config, measure)
    results += [search.Result(r.config, r.samples, r.first_call_s, r.wall_s, f"{r.status} (confirmation)", r.detail)
                for r in runs]
    winner = space_.recipe(best.config)
    figures = (f"default {', '.join(f'{s:.3f}' for s in pooled_base.samples)} s, `{winner}` "
               f"{', '.join(f'{s:.3f}' for s in pooled_best.samples)} s per image, one median per fresh process")
    if not confirmed:
        return baseline.config, pooled_base.median, [
            f"`{winner}` led the search ({baseline.median / best.median:.2f}x) but the interleaved confirmation did "
            f"not beat the noise ({figures}): {simpler}"]
    return best.config, pooled_best.median, [
        f"{pooled_base.median / pooled_best.median:.2f}x the default, confirmed interleaved (A B A B): {figures}"]
