#!/usr/bin/env bash
# `sdcpu generate` on random:sd15 under several recipes, interleaved run by run, one fresh process each.
# Usage: benchmarks/generate_recipes.sh SIZE STEPS REPEATS RECIPE...   e.g. 512x512 2 3 baseline auto
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 SIZE STEPS REPEATS RECIPE..." >&2; exit 2; }
size=$1 steps=$2 repeats=$3
shift 3
out=$(mktemp -d)
for i in $(seq "$repeats"); do
    for recipe in "$@"; do
        line=$(sdcpu generate "sailing ship in storm by Rembrandt" --model random:sd15 --size "$size" --steps "$steps" \
               --recipe "$recipe" -o "$out" 2>/dev/null | grep "s/image")
        echo "run $i | $recipe | $line"
    done
done
