"""A recipe's first run on a model, alone: the model loaded, then the recipe applied with each step's seconds and what
it did (OpenVINO's conversion, NNCF's compression or int8 quantization, each written once under $SDCPU_HOME), and the
process's peak RSS (children report their own in the steps' details). Run it under a memory limit (a cgroup) to see
whether a server of that size completes the first run; remove the IR folder first to measure it again.

    SDCPU_HOME=... python benchmarks/first_run.py --model random:flux2-klein-4b --recipe openvino,weights=int4
"""

import argparse
import logging
import time

from sdcpu import load_pipeline, optimize
from sdcpu.system import children


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--recipe", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("httpx", "urllib3", "nncf"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.perf_counter()
    pipe = load_pipeline(args.model)
    print(f"loaded in {time.perf_counter() - start:.1f} s, peak RSS {children.peak_rss_bytes() / 2**30:.2f} GiB")
    _, outcomes = optimize(pipe, args.recipe)
    for outcome in outcomes:
        print(f"{outcome.seconds:.1f} s: {outcome}")
    print(f"peak RSS {children.peak_rss_bytes() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
