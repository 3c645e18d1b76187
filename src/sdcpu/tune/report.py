"""The tune report: every configuration tried, the choice and why, as markdown (printed, saved beside the profile)."""

from sdcpu.tune.search import FLOOR, Result
from sdcpu.tune.space import Space


def table(space: Space, results: list[Result], baseline: Result) -> str:
    lines = ["| # | changed | recipe | s/image est. (median) | spread | UNet s/forward | VAE s | vs default "
             "| first call s | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        changed = ", ".join(f"{name} {option}" for name, option in space.describe(r.config).items()
                            if option != space.describe(space.default)[name]) or "default"
        if r.ok:
            d = r.detail
            figures = (f"{r.median:.3f} | {r.spread:.0%} | {d['unet_median_s']:.4f} x {len(d['unet_s'])} | "
                       f"{d['vae_s']:.3f} | {baseline.median / r.median:.2f}x | {r.first_call_s:.2f}")
        else:
            figures = " |  |  |  |  | "
        lines.append(f"| {i} | {changed} | `{space.recipe(r.config)}` | {figures} | {r.status} |")
    return "\n".join(lines)


def markdown(header: dict, space: Space, results: list[Result], baseline: Result, choice: str, why: list[str],
             notes: list[str]) -> str:
    """The whole report: what was measured and how, the table, the confirmation, the choice."""
    head = [f"# sdcpu tune: {header['model']} at {header['size']}", "",
            f"{header['cpu']}, {header['cores']}; torch {header['versions']['torch']}, openvino "
            f"{header['versions']['openvino'] or 'not installed'}; {header['created']}; quality {header['quality']}.",
            "",
            f"Each configuration ran in a fresh process under its launch plan: a first UNet forward and VAE decode "
            f"(compiling backends compile there: `first call s`), then {header['repeats']} timed UNet forwards (`x N` "
            f"says how many each made; batch 2, classifier-free guidance) at {header['measured_size']} and one VAE "
            "decode. Seconds per image are "
            f"estimated per repeat as {header['steps']} steps x UNet forward + VAE decode (the text encoder, ~1% of "
            "an image, is left out); `spread` is (max - min) / median over the repeats. A configuration beats the "
            "best so far only when each of its repeats was faster than each of the best's, and its median by at "
            f"least {FLOOR:.0%}. Budget {header['budget_s']:.0f} s, used {header['spent_s']:.0f} s."]
    parts = [*head, "", table(space, results, baseline)]
    if notes:
        parts += ["", *(f"- {note}" for note in notes)]
    parts += ["", f"**Choice: `{choice}`**", "", *(f"- {line}" for line in why)]
    return "\n".join(parts) + "\n"
