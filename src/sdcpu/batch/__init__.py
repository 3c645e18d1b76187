"""`sdcpu batch`'s jobs and its resumable output folder, pure where possible: a jobs file (.jsonl, .csv, .txt) read
into validated jobs, the manifest (one JSON row per image, appended and fsynced), what a rerun still has to make, and
the folder's batch.json that ties it to one jobs file and one set of options."""

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sdcpu.errors import UsageError
from sdcpu.models import schedulers
from sdcpu.pipeline.generate import DEFAULTS, Defaults, parse_size, Request
from sdcpu.system import locks

FIELDS = {"prompt": str, "negative_prompt": str, "seed": int, "size": str, "steps": int, "guidance": float,
          "scheduler": str, "n": int}
FORMATS = (".jsonl", ".csv", ".txt")
MANIFEST, STATE = "manifest.jsonl", "batch.json"


@dataclass(frozen=True)
class Job:
    """One line of the jobs file: N images of a prompt, seeds seed..seed+n-1. STEPS and GUIDANCE are None where
    neither the row nor the command line set them (generate.defaults_for the pipeline fills them in)."""

    line: int
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    size: str = DEFAULTS.size
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    n: int = 1

    def request(self, seed: int, defaults: Defaults = DEFAULTS) -> Request:
        """The one-image request of SEED, the job's unset steps and guidance taken from DEFAULTS
        (generate.defaults_for the pipeline: the recipe's steps= and guidance=, else the model's)."""
        width, height = parse_size(self.size)
        steps = self.steps if self.steps is not None else defaults.steps
        guidance = self.guidance if self.guidance is not None else defaults.guidance
        return Request(prompt=self.prompt, negative_prompt=self.negative_prompt, steps=steps, width=width,
                       height=height, seed=seed, guidance=guidance)

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]

    def validate(self) -> "Job":
        """The checks of `sdcpu generate`: size, steps, guidance, the number of images, the scheduler."""
        if not self.prompt.strip():
            raise UsageError("empty prompt")
        dataclasses.replace(self.request(self.seed), num_images=self.n).validate()
        if self.scheduler is not None:
            schedulers.lookup(self.scheduler)
        return self


@dataclass(frozen=True)
class Bad:
    line: int
    error: str


def _typed(name: str, value, text: bool):
    """VALUE as field NAME's type (TEXT: a CSV cell, converted). UsageError when it is not one."""
    kind = FIELDS[name]
    if text and kind is not str:
        try:
            value = kind(value)
        except ValueError:
            raise UsageError(f"{name}: expected a {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UsageError(f"{name}: expected a {kind.__name__}, got {value!r}")
    return value


def job_of(line: int, row: dict, defaults: Job, text: bool = False) -> Job:
    """The job of ROW (its keys among FIELDS, the rest from DEFAULTS: the command line; TEXT: CSV cells, converted),
    validated."""
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    if "prompt" not in row:
        raise UsageError("no prompt")
    given = {name: _typed(name, value, text) for name, value in row.items() if value is not None}
    return dataclasses.replace(defaults, line=line, **given).validate()


def _rows(path: Path, text: str):
    """(line number, dict or a UsageError) for each non-blank row of the jobs file."""
    if path.suffix == ".txt":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield number, {"prompt": line.strip()}
    elif path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                yield number, UsageError(f"not JSON: {err}")
                continue
            yield number, row if isinstance(row, dict) else UsageError("not a JSON object")
    else:
        yield from _csv_rows(path, text)


def _csv_rows(path: Path, text: str):
    """_rows of a .csv; UsageError naming the line where the file is not CSV the csv module reads (a field over its
    limit, 128 KiB)."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        unknown = sorted(set(reader.fieldnames or ()) - set(FIELDS))
        if unknown or "prompt" not in (reader.fieldnames or ()):
            raise UsageError(f"{path}: its header needs a prompt column and columns among {', '.join(FIELDS)}"
                             + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        for row in reader:  # an empty cell leaves the field to the command line
            yield reader.line_num, {key: value for key, value in row.items() if value not in ("", None)}
    except csv.Error as err:
        raise UsageError(f"{path}:{reader.line_num + 1}: {err}") from None  # the row after the last one read


def read_jobs(path: Path, defaults: Job) -> tuple[list[Job], list[Bad], str]:
    """(the valid jobs, the bad rows with their line numbers, the SHA-256 of the file's bytes) of the jobs file."""
    if path.suffix not in FORMATS:
        raise UsageError(f"{path}: a jobs file is {', '.join(FORMATS)}")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: {getattr(err, 'strerror', None) or err}") from None
    jobs, bad = [], []
    for number, row in _rows(path, text):
        try:
            if isinstance(row, UsageError):
                raise row
            jobs.append(job_of(number, row, defaults, text=path.suffix == ".csv"))
        except UsageError as err:
            bad.append(Bad(number, str(err)))
    return jobs, bad, hashlib.sha256(data).hexdigest()


def image_name(line: int, seed: int) -> str:
    """A job's image file: from its line and seed, so a rerun finds it."""
    return f"L{line:05d}-s{seed}.png"


def check_state(folder: Path, jobs_sha256: str, options: dict) -> None:
    """Tie FOLDER to one jobs file and one set of options: batch.json is written on the first run and a rerun that
    differs from it is refused."""
    state = {"jobs_sha256": jobs_sha256, "options": options}
    path = folder / STATE
    if path.exists():
        before = _read_state(path)
        if before["jobs_sha256"] != jobs_sha256:
            raise UsageError(f"{folder} holds a batch of another jobs file (or one since edited): use a new --out")
        changed = sorted(k for k in {*before["options"], *options} if before["options"].get(k) != options.get(k))
        if changed:
            raise UsageError(f"{folder} holds a batch run with other options ({', '.join(changed)}): "
                             f"rerun with the same ones or use a new --out")
        return
    folder.mkdir(parents=True, exist_ok=True)
    locks.write_text(path, json.dumps(state, indent=1) + "\n")


def _read_state(path: Path) -> dict:
    """batch.json's jobs_sha256 and options; UsageError naming PATH where it is not what check_state writes."""
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"{path}: not a batch.json sdcpu wrote ({getattr(err, 'strerror', None) or err}): "
                         "use a new --out") from None
    if not (isinstance(state, dict) and isinstance(state.get("jobs_sha256"), str)
            and isinstance(state.get("options"), dict)):
        raise UsageError(f"{path}: not a batch.json sdcpu wrote (no jobs_sha256 and options): use a new --out")
    return state


def read_manifest(path: Path) -> list[dict]:
    """The manifest's rows; a torn last line (a crash mid-write) is left out. UsageError naming the file and line of
    a whole row that is not one `row` writes."""
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: {getattr(err, 'strerror', None) or err}") from None
    return [_manifest_row(path, number, line) for number, line in enumerate(lines, 1) if line.endswith("\n")]


def _manifest_row(path: Path, number: int, line: str) -> dict:
    """Line NUMBER of the manifest at PATH as a row, checked: an int line, an int seed (None: a bad jobs row), a
    status, and an "ok" row's file name."""
    try:
        row = json.loads(line)
    except ValueError as err:
        raise UsageError(f"{path}:{number}: not JSON ({err}): fix or remove the line") from None
    ok = (isinstance(row, dict) and _is_int(row.get("line")) and (row.get("seed") is None or _is_int(row["seed"]))
          and row.get("status") in ("ok", "error") and (row["status"] == "error" or isinstance(row.get("file"), str)))
    if not ok:
        raise UsageError(f"{path}:{number}: not a manifest row (line, seed, status, and an ok row's file): "
                         "fix or remove the line")
    return row


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def open_manifest(path: Path):
    """The manifest, locked (one run per folder) and opened to append after its last whole row (a torn last line is
    cut off first)."""
    file = open(path, "a+b")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise UsageError(f"{path.parent}: another sdcpu batch is writing there") from None
    file.seek(0)
    data = file.read()
    whole = data.rfind(b"\n") + 1
    if whole != len(data):
        file.truncate(whole)
    return file


def row(line: int, seed: int | None, recipe, *, file: str | None = None, seconds: float | None = None,
        error: str | None = None) -> dict:
    """A manifest row: an image made (FILE, SECONDS) or not (ERROR; SEED None: a bad row of the jobs file)."""
    return {"line": line, "seed": seed, "file": file, "seconds": seconds, "recipe": str(recipe),
            "status": "error" if error else "ok", "error": error}


def append(file, row: dict) -> None:
    """One row: one write, flushed and fsynced, so a crash leaves at most a torn last line."""
    file.write((json.dumps(row) + "\n").encode())
    file.flush()
    os.fsync(file.fileno())


def remove_staging(folder: Path, images: list[tuple[Job, int]]) -> list[Path]:
    """Remove the staging a killed run left of IMAGES (job, seed): save_png's `.NAME.PID.png.part` of each image name
    this batch writes, where PID no longer runs (locks.remove_stale); any other file in FOLDER is left alone."""
    return [path for job, seed in images for path in locks.remove_stale(folder / image_name(job.line, seed))]


def todo(jobs: list[Job], rows: list[dict], folder: Path) -> list[tuple[Job, int]]:
    """(job, seed) of each image the manifest and the files do not prove made: an "ok" row whose file is the name
    batch writes for its line and seed, and exists."""
    done = {(r["line"], r["seed"]) for r in rows
            if r["status"] == "ok" and r["seed"] is not None and r["file"] == image_name(r["line"], r["seed"])
            and (folder / r["file"]).exists()}
    return [(job, seed) for job in jobs for seed in job.seeds() if (job.line, seed) not in done]


def reported(rows: list[dict]) -> set[int]:
    """The lines whose refusal (a bad row: no seed) the manifest already holds."""
    return {r["line"] for r in rows if r["status"] == "error" and r["seed"] is None}


def shape(job: Job, defaults: Defaults = DEFAULTS) -> tuple:
    """What images must share to share a pipeline call: size, steps and guidance (the unset ones from DEFAULTS: where
    no pipeline is loaded, as on Ray's driver, the model's), and the scheduler."""
    request = job.request(job.seed, defaults)
    return request.width, request.height, request.steps, request.guidance, job.scheduler


def groups(images: list[tuple[Job, int]], max_batch: int, shape) -> list[list[tuple[Job, int]]]:
    """IMAGES in pipeline calls of up to MAX_BATCH images of one SHAPE(job) (size, steps, guidance, scheduler), in
    the order each shape first appears."""
    by_shape: dict = {}
    for image in images:
        by_shape.setdefault(shape(image[0]), []).append(image)
    return [same[i:i + max_batch] for same in by_shape.values() for i in range(0, len(same), max_batch)]
