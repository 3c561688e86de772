#!/usr/bin/env bash
# The MPI build against one process (make test runs it when mpirun is present; issue 20):
#  - mpirun -np 2 ./train_tlm_mpi --batch B gives the losses and the checkpoint (parameters and
#    AdamW moments, bit for bit) of ./train_tlm --batch B --grad-accum 2, for every architecture;
#  - 3 and 4 ranks give the losses of --grad-accum 3 and 4 within a relative 1e-6 (the all-reduce
#    adds in its own order; a float's rounding step is 6e-8);
#  - resuming: on the same ranks bit for bit, on one process with the same global batch, and a
#    different global batch refused; faults: a missing shard on one rank, a rank's non-finite loss,
#    a killed rank, and Ctrl-C (saved once, by rank 0).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
    echo "test_mpi: skipped (no mpirun/mpicc: apt-get install libopenmpi-dev openmpi-bin)"
    exit 0
fi
make -s train_tlm train_tlm_mpi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import struct, sys
text = bytes(range(32, 127)) * 40 + b"the quick brown fox jumps over the lazy dog. " * 300
for name, part in (("train", text), ("val", text[:4000])):
    header = struct.pack("<256i", 20240520, 1, len(part), 256, *([0] * 252))
    open(f"{sys.argv[1]}/{name}.bin", "wb").write(header + struct.pack(f"<{len(part)}H", *part))
PY
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
mpirun=(mpirun --oversubscribe -q)
[ "$(id -u)" = 0 ] && mpirun+=(--allow-run-as-root)
common=(--train "$dir/train.bin" --val "$dir/val.bin" --layers 2 --dim 32 --heads 2 --mlp-width 64
        --seq-len 32 --batch 2 --eval-batches 3 --eval-every 2 --sample-every 0 --taper-multiple 16 --seed 7)
fail() { echo "test_mpi: FAIL: $*"; exit 1; }
# the train and val records without the timings
records() { grep -E '"event":"(train|val)"' "$1" | sed -E 's/"(ms|tokens_per_s)":[^,]*,//g'; }
# two checkpoints (version 2) alike but for the rank count (header slot 41), --grad-accum and --steps
# in the option area, and so the checksum: parameters and AdamW moments bit for bit
same_ckpt() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
def parts(path):
    b = open(path, "rb").read()
    h = list(struct.unpack("<256i", b[:1024]))
    opts = [l for l in b[1024:1024 + h[40]].rstrip(b"\0").split(b"\n") if not l.startswith((b"grad-accum=", b"steps="))]
    h[41] = 0
    return h, opts, b[1024 + h[40]:-4]
sys.exit(parts(sys.argv[1]) != parts(sys.argv[2]))
PY
}

for arch in transformer gated titans hope; do
    a=("${common[@]}" --arch "$arch" --steps 4)
    ./train_tlm "${a[@]}" --grad-accum 2 --save "$dir/one.ckpt" --log "$dir/one.jsonl" > "$dir/one.out"
    "${mpirun[@]}" -np 2 ./train_tlm_mpi "${a[@]}" --save "$dir/two.ckpt" --log "$dir/two.jsonl" > "$dir/two.out"
    cmp -s <(records "$dir/one.jsonl") <(records "$dir/two.jsonl") || fail "$arch: 2 ranks' losses differ from --grad-accum 2"
    same_ckpt "$dir/one.ckpt" "$dir/two.ckpt" || fail "$arch: 2 ranks' checkpoint differs from --grad-accum 2's"
    grep -q "^ranks: 2; global batch 2 ranks x 2 sequences x 1 micro-batches = 4 sequences" "$dir/two.out" \
        || fail "$arch: no global batch line"
    [ "$(grep -c '^saved ' "$dir/two.out")" = 2 ] || fail "$arch: rank 0 alone should print and save, twice"
    echo "test_mpi: $arch: 2 ranks = --grad-accum 2, losses and checkpoint bit for bit"
    rm -f "$dir"/*.jsonl
done

for n in 3 4; do
    for arch in transformer titans; do
        a=("${common[@]}" --arch "$arch" --steps 4)
        ./train_tlm "${a[@]}" --grad-accum $n --log "$dir/one.jsonl" > /dev/null
        "${mpirun[@]}" -np $n ./train_tlm_mpi "${a[@]}" --log "$dir/many.jsonl" > /dev/null
        python3 - "$dir/one.jsonl" "$dir/many.jsonl" <<'PY' || fail "$arch: $n ranks beyond 1e-6 of --grad-accum $n"
import json, sys
def records(path): return [r for r in map(json.loads, open(path)) if r["event"] in ("train", "val")]
a, b = records(sys.argv[1]), records(sys.argv[2])
assert len(a) == len(b) == 7, (len(a), len(b))
worst = max(abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a, b))
print(f"test_mpi: {len(a)} losses, largest relative difference {worst:.1e}", end="")
sys.exit(worst > 1e-6)
PY
        echo " ($arch, $n ranks vs --grad-accum $n)"
        rm -f "$dir"/*.jsonl
    done
done

# resume: 2 steps, then 2 more on 2 ranks: the 4-step run's checkpoint; on one process
# --grad-accum 2 keeps the global batch, so the same checkpoint too; --grad-accum 1 is refused
a=("${common[@]}" --arch transformer)
"${mpirun[@]}" -np 2 ./train_tlm_mpi "${a[@]}" --steps 2 --save "$dir/half.ckpt" > /dev/null
"${mpirun[@]}" -np 2 ./train_tlm_mpi "${a[@]}" --steps 4 --load "$dir/half.ckpt" --save "$dir/resumed.ckpt" > /dev/null
./train_tlm "${a[@]}" --steps 4 --grad-accum 2 --save "$dir/one.ckpt" > /dev/null
same_ckpt "$dir/resumed.ckpt" "$dir/one.ckpt" || fail "a resumed 2-rank run differs from an uninterrupted one"
./train_tlm "${a[@]}" --steps 4 --load "$dir/half.ckpt" --save "$dir/single.ckpt" > "$dir/out"
grep -q "saved by 2 rank(s), on 1: --grad-accum 2 keeps its global batch of 4 sequences" "$dir/out" || fail "no resume line"
same_ckpt "$dir/single.ckpt" "$dir/one.ckpt" || fail "a 2-rank checkpoint resumed on one process differs"
if ./train_tlm "${a[@]}" --steps 4 --grad-accum 1 --load "$dir/half.ckpt" > /dev/null 2> "$dir/err"; then fail "another global batch was accepted"; fi
grep -q "saved by 2 rank(s) at a global batch of 4 sequences a step; here 1 ranks x --batch 2 x --grad-accum 1" "$dir/err" \
    || fail "refusal: $(cat "$dir/err")"
echo "test_mpi: resume on 2 ranks and on one process bit for bit; another global batch refused"

# faults: a shard missing on rank 1 alone (MPMD: the same relative --train, rank 1 in a directory
# without it)
mkdir -p "$dir/w0" "$dir/w1"
cp "$dir/train.bin" "$dir/w0/t.bin"
if "${mpirun[@]}" -np 1 --wdir "$dir/w0" "$PWD/train_tlm_mpi" "${a[@]}" --train t.bin : \
    -np 1 --wdir "$dir/w1" "$PWD/train_tlm_mpi" "${a[@]}" --train t.bin > /dev/null 2> "$dir/err"; then
    fail "a missing shard on rank 1 passed"; fi
grep -q "^error: rank 1: --train t.bin: no such file" "$dir/err" || fail "missing shard: $(head -3 "$dir/err")"
# a huge learning rate: the parameters blow up, a loss or gradient is not finite; the rank that
# sees it first stops every rank with its reason (the ranks must be given one command: below)
if "${mpirun[@]}" -np 2 ./train_tlm_mpi "${a[@]}" --steps 20 --lr 1e30 > /dev/null 2> "$dir/err"; then
    fail "a non-finite loss passed"; fi
grep -q -E "^error: rank [01]: step [0-9]+: (the loss of micro-batch [01]|this rank's gradient norm) is -?nan; stopping every rank" "$dir/err" \
    || fail "non-finite loss: $(head -3 "$dir/err")"
# ranks given different options, or different shards under one name (each its own directory):
# one line before the first step, not MPI's MPI_ERR_TRUNCATE or a silent run
if "${mpirun[@]}" -np 1 ./train_tlm_mpi "${a[@]}" --steps 2 : -np 1 ./train_tlm_mpi "${a[@]}" --steps 2 --batch 4 \
    > "$dir/out" 2> "$dir/err"; then fail "ranks given different --batch passed"; fi
grep -q "^error: rank 1 was given other options than rank 0" "$dir/err" && ! grep -q "step  *1" "$dir/out" \
    || fail "different --batch: $(head -3 "$dir/err")"
python3 - "$dir/train.bin" "$dir/w1/t.bin" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
n = 5000
open(sys.argv[2], "wb").write(struct.pack("<3i", 20240520, 1, n) + b[12:1024 + 2 * n])
PY
if "${mpirun[@]}" -np 1 --wdir "$dir/w0" "$PWD/train_tlm_mpi" "${a[@]}" --train t.bin --steps 2 : \
    -np 1 --wdir "$dir/w1" "$PWD/train_tlm_mpi" "${a[@]}" --train t.bin --steps 2 > "$dir/out" 2> "$dir/err"; then
    fail "ranks given different shards passed"; fi
grep -q "^error: rank 1 was given other --train shards than rank 0" "$dir/err" || fail "different shards: $(head -3 "$dir/err")"
echo "test_mpi: a missing shard on rank 1, a non-finite gradient, ranks given other options or shards: one line, every rank stops"
# a killed rank, and Ctrl-C (mpirun sends the ranks SIGTERM; they finish the step, rank 0 saves)
for what in kill interrupt; do
    "${mpirun[@]}" -np 2 ./train_tlm_mpi "${a[@]}" --steps 100000 --eval-every 0 --save "$dir/int.ckpt" \
        > "$dir/out" 2> "$dir/err" &
    pid=$!
    for _ in $(seq 100); do grep -q "^step .*/100000" "$dir/out" && break; sleep 0.1; done
    # interrupt: SIGTERM to both ranks, as mpirun sends on Ctrl-C (after odls_base_sigkill_timeout)
    # and a batch system on cancel; under load mpirun's own forwarding came too late to test on
    if [ $what = kill ]; then kill -KILL "$(pgrep -P $pid train_tlm_mpi | tail -1)"; else kill -TERM $(pgrep -P $pid train_tlm_mpi); fi
    for _ in $(seq 200); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    kill -0 $pid 2>/dev/null && { kill -KILL $pid; fail "$what: mpirun still running after 20 s"; }
    if wait $pid; then fail "$what: mpirun exited 0"; fi
done
[ "$(grep -c '^saved ' "$dir/out")" -le 1 ] && grep -q "^interrupted at step [0-9]*, checkpoint saved" "$dir/out" \
    || fail "Ctrl-C: $(tail -3 "$dir/out")"
./train_tlm_mpi "${a[@]}" --load "$dir/int.ckpt" --eval-only > /dev/null || fail "Ctrl-C's checkpoint does not load"
echo "test_mpi: a killed rank stops mpirun; SIGTERM (Ctrl-C) saves once and stops both ranks"
echo "test_mpi: all passed"
