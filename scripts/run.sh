#!/usr/bin/env bash
# The README's commands. Each sets everything up first (scripts/setup.sh), then:
#   demo      the main job: sdcpu on the embedded default model (random-weight SD 1.5)
#   test      the test suite, fast tests only (what CI runs)
#   test-all  every test, including the slow ones that build random:sd15
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
case "${1:-}" in
    demo) shift; exec sdcpu bench --model random:sd15 --preset quick --out "bench-out/$(date +%Y%m%d-%H%M%S)" "$@" ;;
    # two workers (pytest-xdist), each test file in one: the suite is half process start-up and compiles, which the
    # second core overlaps; SDCPU_TEST_WORKERS changes the count (0: no workers, in this process)
    test) shift; exec python -m pytest -m "not slow" -n "${SDCPU_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
    test-all) shift; exec python -m pytest "$@" ;;
    *) echo "usage: $0 demo|test|test-all [ARGS...]" >&2; exit 2 ;;
esac
