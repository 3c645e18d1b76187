"""`sdcpu bench`'s reporting half: results.jsonl -> report.md, ladder.png and report.html; two runs side by side.

Measuring and reporting are separate: the report reads only the rows, so it can be made again, or compared, later.
"""

import html
import json
import math
from pathlib import Path

from sdcpu import recipes
from sdcpu.algorithms import fbcache
from sdcpu.bench import ladders

RANDOM_NOTE = ("**Weights are random** (an sdcpu test model of the real architecture): compute cost, hence every "
               "timing, is the real model's; the images are noise, and fidelity compares noise with noise.")


def load(folder: Path) -> list[dict]:
    path = Path(folder) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no results.jsonl (not a bench output folder)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write(folder: Path) -> list[Path]:
    """Write FOLDER's report.md, ladder.png and report.html from its results.jsonl; return their paths."""
    folder = Path(folder)
    rows = load(folder)
    paths = [folder / "report.md", folder / "ladder.png", folder / "report.html"]
    paths[0].write_text(markdown(rows))
    chart(rows, paths[1])
    paths[2].write_text(page(rows))
    return paths


def _steps(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def _overrides(protocol: dict) -> str:
    """'; steps, guidance from the command line' for what differs from the preset's protocol."""
    preset = ladders.Protocol(**ladders.PRESETS[protocol["preset"]]).to_dict()
    changed = [name for name in ("width", "height", "steps", "runs", "warmup_steps", "guidance")
               if protocol[name] != preset[name]]
    return f"; {', '.join(changed).replace('_', '-')} from the command line" if changed else ""


def _task(protocol: dict) -> str:
    """' Task: img2img at strength 0.5 ...' for an edit bench; empty for text-to-image (rows older than tasks too)."""
    task = protocol.get("task", "txt2img")
    if task == "txt2img":
        return ""
    p = ladders.Protocol.from_dict(protocol)
    what = "img2img of" if task == "img2img" else "inpainting (the centred quarter masked) of"
    return (f" Task: {what} the bench's own input image (inputs/) at strength {p.strength_used}: "
            f"{_steps(p.steps_run)} of {p.steps} run per call.")


def header(rows: list[dict]) -> list[str]:
    first = rows[0]
    p, cpu = first["protocol"], first["cpu"]
    peaks = ", ".join(f"{dtype} {value:.0f}" for dtype, value in first["matmul_peak_gflop_s"].items())
    lines = [
        f"Model `{p['model']}`, {p['width']}x{p['height']}, {_steps(p['steps'])}, guidance {p['guidance']}, seed "
        f"{p['seed']}, prompt \"{p['prompt']}\"; per rung 1 warm-up call at "
        f"{_steps(ladders.Protocol.from_dict(p).warmup_steps_used)} then "
        f"{p['runs']} timed calls, each rung in a fresh process (preset `{p['preset']}`{_overrides(p)})."
        + _task(p),
        f"Machine: {cpu['model_name']}, {cpu['physical_cores']} physical cores / {cpu['logical_cpus']} logical CPUs, "
        f"{len(cpu['numa_nodes'])} NUMA node(s), bf16 {'native' if cpu['native_bf16'] else 'not native'}; matmul "
        f"peak GFLOP/s: {peaks}. {first['date']}, sdcpu {first['versions'].get('sdcpu')} (git {first['git']}), "
        f"torch {first['versions'].get('torch')}, diffusers {first['versions'].get('diffusers')}.",
    ]
    if any(row.get("random_weights") for row in rows):
        lines.append(RANDOM_NOTE)
    return lines


COLUMNS = ("#", "rung", "recipe", "s/image", "vs #1", "vs parent", "s/step", "text enc s", "denoiser s/call", "VAE s",
           "compile s", "denoiser GFLOP/s", "% fp32 peak", "peak RSS GiB", "PSNR dB", "SSIM", "notes")


def cells(row: dict, base: dict, parent: dict) -> list[str]:
    """One table row's cells; a failed rung keeps its name, recipe and reason. PARENT: the rung it adds a step to."""
    name = [str(row["index"] + 1), row["rung"], f"`{row.get('recipe_resolved', row['recipe'])}`"]
    if "failed" in row:
        return name + ["failed"] + [""] * (len(COLUMNS) - 5) + [row["failed"]]
    split, peak = row.get("split") or {}, row["matmul_peak_gflop_s"]["float32"]
    speedup, over_parent = (f"{other['median_s'] / row['median_s']:.2f}x" if "median_s" in other else ""
                            for other in (base, parent))
    gflop_s = row.get("unet_gflop_s")
    fid = row.get("fidelity") or {}
    return name + [
        f"{row['median_s']:.2f}", speedup, f"{over_parent} ({row['parent']})" if over_parent else "",
        f"{row['s_per_step']:.3f}", _num(split.get("text_encoder_s")),
        f"{split['unet_per_call_s']:.3f} x {split['unet_calls']}" if split.get("unet_calls") else "",
        _num(split.get("vae_decode_s")), _num(row.get("compile_s"), 1),
        _num(gflop_s, 0), f"{100 * gflop_s / peak:.0f}%" if gflop_s else "", _num(row.get("peak_rss_gib")),
        *(("n/a", "n/a") if "not_comparable" in fid else
          (_psnr(fid.get("psnr_db")), _num(fid.get("ssim"), 4)) if fid else ("reference", "reference")),
        "; ".join(notes(row)),
    ]


def notes(row: dict) -> list[str]:
    found = [row["note"]] if row.get("note") else []
    found += [f"{s['step']} skipped: {s['detail']}" for s in row.get("steps", ()) if not s["applied"]]
    found += [f"launcher: {m} not applied" for m in (row.get("launch") or {}).get("missing", ())]
    found += [f"verify: {f}" for f in (row.get("verify") or {}).get("failures", ())]
    partial = [] if row.get("peer") else [  # a peer's steps are its own (export, compile), not recipe steps
        s["step"] for s in row.get("steps", ()) if s["applied"] and recipes.kind(s["step"]).partial_calls]
    if partial and row.get("unet_gflop_s") is None:
        found.append(f"denoiser GFLOP/s not given: under {partial[0]} some calls run part of the network")
    if row.get("denoiser_full_calls") is not None:
        found.append(f"{partial[0]}: {fbcache.said(row['denoiser_full_calls'], row['split']['unet_calls'])}")
    if "not_comparable" in (row.get("fidelity") or {}):
        found.append(f"no fidelity figure: {row['fidelity']['not_comparable']}")
    if row.get("peer") and "median_s" in row:
        found.append(f"peer: load and convert {row.get('prepare_s', 0):.1f} s, warm-up {row.get('warmup_s', 0):.1f} s")
    if row.get("cfg_batch") == 1:
        found.append("guidance <= 1: denoiser batch 1 (no CFG)")
    compiled = [s["step"] for s in row.get("steps", ()) if s["applied"] and not row.get("peer")
                and recipes.kind(s["step"]).compiles]  # a peer's steps are its own (export, compile), not sdcpu's
    if compiled:
        cache = row.get("cache_before") or {}
        state = "warm" if cache.get("inductor" if "compile" in compiled else "openvino") else "cold"
        found.append(f"{', '.join(compiled)}: {state} cache, prepare {row.get('prepare_s', 0):.1f} s + warm-up "
                     f"{row.get('warmup_s', 0):.1f} s")
    return found


def table(rows: list[dict]) -> list[list[str]]:
    """Every row's cells, each against rung 1 and its parent rung."""
    by_name = {row["rung"]: row for row in rows}
    return [cells(row, rows[0], by_name.get(row.get("parent"), {})) for row in rows]


def markdown(rows: list[dict]) -> str:
    lines = ["# sdcpu bench", "", *header(rows), "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table(rows)]
    lines += ["", "s/image: median of the timed calls; vs parent: the speedup over the rung this one adds its step to "
              "(the full ladder); denoiser s/call: one denoising step of the UNet or transformer (a CFG batch of 2 "
              "unless noted); "
              "compile s: the warm-up call beyond its share of a timed call; PSNR/SSIM: the rung's image against rung "
              "1's, same seed (inf / 1.0: identical)."]
    return "\n".join(lines) + "\n"


WHOLE = "whole pipeline"  # a row timed as one call (a peer's runner), not divided into components


def chart_parts(rows: list[dict]) -> dict[str, list[float]]:
    """Each bar's parts, by name: the text encoder, denoiser (UNet or transformer) and VAE decode of a row that
    measured them, with its rest (scheduler, pre/post-processing) as "other"; a row without a split (a peer) is one
    undivided part."""
    parts = {"text encoder": [], "denoiser": [], "VAE decode": [], "other": [], WHOLE: []}
    for row in rows:
        split = row.get("split") or {}
        known = [split.get("text_encoder_s", 0.0), split.get("unet_s", 0.0), split.get("vae_decode_s", 0.0)]
        rest = max(0.0, row["median_s"] - sum(known))
        values = [*known, rest, 0.0] if split else [0.0, 0.0, 0.0, 0.0, row["median_s"]]
        for name, value in zip(parts, values):
            parts[name].append(value)
    return parts


def chart(rows: list[dict], path: Path) -> None:
    """Stacked bars of s/image per rung (`chart_parts`), a note under them where a bar is one undivided call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [row for row in rows if "median_s" in row]
    labels = [f"{row['index'] + 1}. {row['rung']}" for row in done]
    parts = chart_parts(done)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(done)), 4.5))
    bottom = [0.0] * len(done)
    for name, values in parts.items():
        if any(values):  # a part no bar has stays out of the legend
            ax.bar(labels, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values)]
    for x, row in enumerate(done):
        ax.annotate(f"{row['median_s']:.2f} s", (x, bottom[x]), ha="center", va="bottom", fontsize=9)
    p = rows[0]["protocol"]
    random = " (random weights)" if any(row.get("random_weights") for row in rows) else ""
    ax.set_title(f"{p['model']}{random}, {p['width']}x{p['height']}, {p['steps']} steps: s/image per rung")
    ax.set_ylabel("seconds per image (medians of each part)")
    ax.set_ylim(0, 1.12 * max(bottom, default=0) or 1)  # room for the labels above the tallest bar
    ax.legend()
    if any(parts[WHOLE]):
        fig.text(0.01, 0.01, f"{WHOLE}: a peer's runner times its whole call, not each component", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def page(rows: list[dict]) -> str:
    """A self-contained HTML page (no external assets): header, table, chart, and each rung's image."""
    head = "".join(f"<p>{html.escape(line).replace('**', '')}</p>" for line in header(rows))
    grid = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"
    grid += "".join("<tr>" + "".join(f"<td>{html.escape(c.strip('`'))}</td>" for c in cells) + "</tr>"
                    for cells in table(rows))
    images = "".join(
        f"<figure><img src='{html.escape(row['image'])}' width='256'><figcaption>{row['index'] + 1}. "
        f"{html.escape(row['rung'])}</figcaption></figure>" for row in rows if "median_s" in row)
    return (
        "<!doctype html><meta charset='utf-8'><title>sdcpu bench</title><style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 6px;font-size:13px}"
        "figure{display:inline-block;margin:6px}</style>"
        f"<h1>sdcpu bench</h1>{head}<table>{grid}</table><p><img src='ladder.png'></p><h2>Images</h2>{images}"
    )


def compare(a: list[dict], b: list[dict], names=("A", "B")) -> str:
    """Two runs side by side, rungs matched by name: s/image in each and the ratio."""
    by_name = {row["rung"]: row for row in b}
    lines = [f"- {name}: {run[0]['cpu']['model_name']}, {run[0]['protocol']['model']} "
             f"{run[0]['protocol']['width']}x{run[0]['protocol']['height']}, {run[0]['protocol']['steps']} steps, "
             f"{run[0]['date']}" for name, run in zip(names, (a, b))]
    lines += ["", f"| rung | {names[0]} s/image | {names[1]} s/image | {names[0]}/{names[1]} |", "|---|---|---|---|"]
    for row in a + [row for row in b if row["rung"] not in {r["rung"] for r in a}]:
        left = next((r for r in a if r["rung"] == row["rung"]), {})
        right = by_name.get(row["rung"], {})
        ratio = f"{left['median_s'] / right['median_s']:.2f}" if "median_s" in left and "median_s" in right else ""
        lines.append(f"| {row['rung']} | {_time(left)} | {_time(right)} | {ratio} |")
    return "\n".join(lines) + "\n"


def _time(row: dict) -> str:
    return f"{row['median_s']:.2f}" if "median_s" in row else ("failed" if row else "-")


def _num(value, digits=2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _psnr(value) -> str:
    return "inf" if value is not None and math.isinf(value) else _num(value, 1)
