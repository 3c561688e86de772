#!/usr/bin/env bash
# tlm.c beside llm.c's CPU trainer (train_gpt2.c) on this machine, at the same moment: for
# each size, llm.c's median step time over 10 steps, then our benchmark at the same size,
# ROUNDS times in turn, so that a busy machine slows both alike.
#
#   bash dev/compare_llmc.sh [LLMC_DIR]      (make compare-llmc)
#
# LLMC_DIR: a checkout of https://github.com/karpathy/llm.c (default: cloned into
# dev/cache/llm.c). Its train_gpt2.c is built as its Makefile does (-Ofast -march=native -DOMP
# -fopenmp), with three edits made by sed: the checkpoint comes from $CKPT, the data from
# our Brown Corpus GPT-2 shards (llm.c's format), and it stops after 11 steps. The weights
# are random (dev/llmc_checkpoint.py): the time of a step does not depend on them.
# Both run B = 4, T = 64 (llm.c's defaults) on THREADS threads.
# Env: ROUNDS (3), THREADS (2), SIZES ("124M 30M").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
llmc=${1:-dev/cache/llm.c}
rounds=${ROUNDS:-3} threads=${THREADS:-2} sizes=${SIZES:-124M 30M}

if [ ! -f "$llmc/train_gpt2.c" ]; then
    [ $# -eq 0 ] || { echo "compare_llmc.sh: $llmc has no train_gpt2.c" >&2; exit 1; }
    git clone --depth 1 https://github.com/karpathy/llm.c "$llmc"
fi
llmc=$(cd "$llmc" && pwd)
[ -f data/brown_gpt2_train.bin ] || make data/brown_gpt2_train.bin
make dev/bench_tlm >/dev/null

work=dev/cache/llmc_run
mkdir -p "$work"
grep -q 'gpt2_build_from_checkpoint(&model, "gpt2_124M.bin");' "$llmc/train_gpt2.c" &&
    grep -q 'for (int step = 0; step <= 40; step++)' "$llmc/train_gpt2.c" ||
    { echo "compare_llmc.sh: $llmc/train_gpt2.c is not the version these edits expect" >&2; exit 1; }
sed -e 's|gpt2_build_from_checkpoint(&model, "gpt2_124M.bin");|gpt2_build_from_checkpoint(\&model, getenv("CKPT"));|' \
    -e "s|dev/data/tinyshakespeare/tiny_shakespeare_train.bin|$root/data/brown_gpt2_train.bin|" \
    -e "s|dev/data/tinyshakespeare/tiny_shakespeare_val.bin|$root/data/brown_gpt2_val.bin|" \
    -e 's|for (int step = 0; step <= 40; step++)|for (int step = 0; step <= 10; step++)|' \
    "$llmc/train_gpt2.c" > "$work/train_gpt2.c"
gcc -Ofast -Wno-unused-result -march=native -fopenmp -DOMP -I"$llmc" "$work/train_gpt2.c" -lm -o "$work/train_gpt2"

declare -A shape=([124M]="--layers 12 --heads 12 --dim 768" [30M]="--layers 6 --heads 6 --dim 384")
for size in $sizes; do
    [ -n "${shape[$size]:-}" ] || { echo "compare_llmc.sh: SIZES: 124M or 30M, not $size" >&2; exit 1; }
    [ -f "$work/gpt2_$size.bin" ] || python3 dev/llmc_checkpoint.py ${shape[$size]} "$work/gpt2_$size.bin"
done

echo "B=4 T=64, $threads threads; tokens/s (ms per step)"
for round in $(seq "$rounds"); do
    for size in $sizes; do
        ms=$(cd "$work" && CKPT=gpt2_$size.bin OMP_NUM_THREADS=$threads ./train_gpt2 |
             sed -n 's/^step *\([0-9]*\): .*took \([0-9.]*\) ms.*/\1 \2/p' | awk '$1 >= 1 {print $2}' | sort -n |
             awk '{t[NR] = $1} END {print NR % 2 ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2}')
        ours=$(./dev/bench_tlm --only "gpt2-$size" --threads "$threads" --seconds 8 | tail -n 1)
        ours_tps=$(echo "$ours" | awk '{print $4}') ours_ms=$(echo "$ours" | awk '{print $5}')
        awk -v r="$round" -v s="$size" -v ms="$ms" -v tps="$ours_tps" -v oms="$ours_ms" 'BEGIN {
            l = 256000 / ms
            printf "round %d  %-5s llm.c %6.1f (%7.1f ms)   tlm.c %6.1f (%7.1f ms)   %.2fx\n", r, s, l, ms, tps, oms, tps / l }'
    done
done
