#!/usr/bin/env bash
# dev/bench_ab.sh ROUNDS SECONDS REV... — A/B of make bench's fastest step between commits:
# builds dev/bench_tlm of each git revision (WORK for the working tree) and runs every config
# for each build in turn, ROUNDS times, the order rotated each round, 2 threads pinned to
# cores 0,1. One line per run: round, config, revision, fastest and mean ms per step.
#   bash dev/bench_ab.sh 3 3 e3581b1 HEAD WORK       (CONFIGS="gpt2-124M default-titans" to choose)
set -u
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: dev/bench_ab.sh ROUNDS SECONDS REV..." >&2; exit 2; }
R=$1 S=$2; shift 2; V=("$@")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for v in "${V[@]}"; do
    mkdir -p "$work/$v/dev"
    # the sources: train_tlm.c, dev/bench_tlm.c and the headers of dev/tlmc/ where there are any
    if [ "$v" = WORK ]; then cp train_tlm.c "$work/$v/"; cp dev/bench_tlm.c "$work/$v/dev/"
        if [ -d dev/tlmc ]; then cp -r dev/tlmc "$work/$v/dev/"; fi
    else git archive "$v" train_tlm.c dev | tar -x -C "$work/$v" 2>/dev/null &&
        [ -f "$work/$v/train_tlm.c" ] && [ -f "$work/$v/dev/bench_tlm.c" ] ||
        { echo "dev/bench_ab.sh: $v: not a revision with train_tlm.c and dev/bench_tlm.c" >&2; exit 2; }; fi
    (${CC:-gcc} -O3 -march=native -std=c11 -fno-math-errno -w -fopenmp "$work/$v/dev/bench_tlm.c" -lm -o "$work/$v/bench") &
done
wait
for v in "${V[@]}"; do [ -x "$work/$v/bench" ] || { echo "dev/bench_ab.sh: $v: build failed" >&2; exit 1; }; done
pin=(); command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ] && pin=(taskset -c 0,1)
CFGS=(${CONFIGS:-gpt2-124M default-transformer default-gated default-titans default-hope})
n=${#V[@]}
for r in $(seq "$R"); do
    for c in "${CFGS[@]}"; do
        for i in $(seq 0 $((n - 1))); do v=${V[$(( (i + r) % n ))]}
            f=$(OMP_NUM_THREADS=2 "${pin[@]}" "$work/$v/bench" --only "$c" --threads 2 --seconds "$S" 2>&1 |
                awk -v c="$c" '$1 == c {print "fastest " $6 " ms, mean " $5 " ms"}')
            echo "round $r | $c | $v | ${f:-failed}"
        done
    done
done
