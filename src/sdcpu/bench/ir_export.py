"""The OpenVINO IR both OpenVINO peers run (optimum-intel's pipeline and OpenVINO GenAI's), exported once by
optimum-intel's own CLI, as GenAI's documentation tells a user to: `optimum-cli export openvino --task text-to-image
--weight-format FORMAT` (fp32 for SD and SDXL, as the seed ran them; int8 for a bf16 family, FLUX.2, optimum-intel's
own default past 1B parameters: its fp32 IR would be 32 GB). One folder per model, exporter version and format under
$SDCPU_HOME/peer-ir, written under a temporary name and renamed when whole, so a crash or a full disk mid-export
leaves nothing a later run reads. Standard library only: it runs in the peers' own environments.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sdcpu.system.home import sdcpu_home


def exported(model_path: str, exporter: str, weight_format: str) -> tuple[Path, bool, float]:
    """The IR folder of MODEL_PATH with WEIGHT_FORMAT weights, exported by EXPORTER (optimum-cli) now if not on disk;
    whether it was there; the export's seconds."""
    version = subprocess.run([exporter, "--version"], capture_output=True, text=True).stdout.strip()
    key = hashlib.sha256(f"{Path(model_path).resolve()}|{version}|{weight_format}".encode()).hexdigest()[:16]
    folder = sdcpu_home() / "peer-ir" / key
    if (folder / "model_index.json").is_file():
        return folder, True, 0.0
    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}-")
    try:
        done = subprocess.run([exporter, "export", "openvino", "--model", model_path, "--task", "text-to-image",
                               "--weight-format", weight_format, tmp], capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"optimum-cli export failed (exit {done.returncode}): {tail[0]}")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, False, time.perf_counter() - start
