#!/usr/bin/env bash
# One run of the paired noise study: STEPS TAPER SEED -> a row of rows.csv.
# TRAINER (./train_tlm), DATA (data), OUT (this directory) from the environment. The run
# trains the classroom transformer on one thread, evaluates on the whole val split at the
# end, then re-evaluates its checkpoint on 8, 32 and 128 batches spread over the split.
# The whole study (seed-major, two runs at a time):
#   for s in $(seq 10); do for n in 500 1000 2000; do for t in uniform cosine; do
#     echo "$n $t $s"; done; done; done | nice -n 19 xargs -P 2 -L 1 ./run_one.sh
set -u
steps=$1 taper=$2 seed=$3
T=${TRAINER:-./train_tlm}; D=${DATA:-data}; out=${OUT:-$(dirname "$0")}
name=transformer_${taper}_n${steps}_s${seed}
grep -q "^$steps,transformer,$taper,$seed," "$out/rows.csv" 2>/dev/null && exit 0
rm -f "$out/$name.jsonl" "$out/$name.ckpt"
t0=$(date +%s.%N)
OMP_NUM_THREADS=1 $T --arch transformer --taper "$taper" --seed "$seed" --layers 6 --dim 128 \
  --heads 4 --mlp-width 384 --seq-len 128 --batch 8 --steps "$steps" \
  --eval-every $((steps / 10)) --eval-batches 8 --final-eval-batches 0 --sample-every 0 \
  --train "$D/brown_byte_train.bin" --val "$D/brown_byte_val.bin" \
  --log "$out/$name.jsonl" --save "$out/$name.ckpt" > "$out/$name.log" 2>&1 \
  || { echo "FAIL $name" >&2; exit 1; }
t1=$(date +%s.%N)
all=$(grep '"event":"done"' "$out/$name.jsonl" | sed 's/.*"val_loss":\([0-9.]*\).*/\1/')
ev() { OMP_NUM_THREADS=1 $T --load "$out/$name.ckpt" --eval-only --eval-batches "$1" \
         --val "$D/brown_byte_val.bin" 2>&1 | sed -n 's/^val loss \([0-9.]*\).*/\1/p'; }
v8=$(ev 8); v32=$(ev 32); v128=$(ev 128)
params=$(grep '"event":"config"' "$out/$name.jsonl" | sed 's/.*"params":\([0-9]*\).*/\1/')
secs=$(echo "$t1 - $t0" | bc)
( flock 9; echo "$steps,transformer,$taper,$seed,$seed,$all,$v8,$v32,$v128,$params,$secs" \
    >> "$out/rows.csv" ) 9>"$out/rows.lock"
rm -f "$out/$name.ckpt"
