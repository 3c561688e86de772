#!/usr/bin/env bash
# dev/baseline.sh [REV] — the arithmetic of a revision, as text to diff against another's:
#   bash dev/baseline.sh main > /tmp/a; bash dev/baseline.sh WORK > /tmp/b; diff /tmp/a /tmp/b
# Builds train_tlm of git revision REV (WORK, the default: the working tree, untracked files
# included) with that revision's Makefile, in a temporary directory, and runs 12 training
# steps of every architecture x taper on a small synthetic shard at 1 and 2 threads. One line
# per run: every logged train loss (%.9g, the float exactly) and val loss, and the SHA-256 of
# the checkpoint saved at the end (parameters, AdamW moments, data position, option area).
# Then, per architecture: 2 micro-batches a step (--grad-accum 2), a resume from step 6 that
# must end in the same checkpoint, --eval-only, --analyze and --sample from the checkpoint.
# The data and checkpoints live at fixed paths under dev/build/baseline/ (the option area
# stores the data paths), so two revisions' checkpoints are comparable byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
# threads that sleep at a barrier instead of spinning: on a shared machine a spinning team waits
# for a descheduled thread ten times longer (the arithmetic does not depend on it)
export OMP_WAIT_POLICY=passive
rev=${1:-WORK}
root=$PWD
out=$root/dev/build/baseline
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
if [ "$rev" = WORK ]; then
    git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$src"
else
    git archive "$rev" | tar -x -C "$src"
fi
make -s -C "$src" train_tlm CC="${CC:-gcc}" >/dev/null
bin=$src/train_tlm
mkdir -p "$out"

# the shard: 24,000 train and 6,000 val byte tokens of words drawn by a fixed LCG
python3 - "$out" <<'EOF'
import struct, sys
words = b"the of and to a in is was he that it for on with as his at by be this had not are".split()
def text(seed, n):
    x, out = seed, bytearray()
    while len(out) < n:
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out += words[(x >> 33) % len(words)] + (b".\n" if (x >> 20) % 11 == 0 else b" ")
    return bytes(out[:n])
for name, seed, n in (("train", 1, 24000), ("val", 2, 6000)):
    header = [20240520, 1, n, 256] + [0] * 252
    with open(f"{sys.argv[1]}/{name}.bin", "wb") as f:
        f.write(struct.pack("<256i", *header) + struct.pack(f"<{n}H", *text(seed, n)))
EOF

shape="--layers 4 --dim 32 --heads 2 --mlp-width 64 --taper-multiple 8 --seq-len 32 --batch 4"
shape="$shape --window 16 --mem-hidden 16 --mem-chunk 8 --cms-width 32 --cms-chunks 4,8"
data="--train $out/train.bin --val $out/val.bin --eval-batches 3 --sample-every 0"
steps="--steps 12 --warmup 3 --eval-every 6 --save-every 6"
archs=("transformer" "gated" "titans" "titans --mem-depth 1" "hope" "hope --cms-levels 3")
tapers=("uniform" "cosine" "reverse" "linear" "sigmoid" "groups:1.5,1,0.5" "explicit")
taper_args() { # the taper's flags
    case "$1" in
        explicit) echo "--mlp-widths 96,80,48,32" ;;
        *) echo "--taper $1" ;;
    esac
}
losses() { # the log's train and val losses, one line
    python3 -c '
import json, sys
t, v = [], []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["event"] == "train": t.append("%.9g" % r["loss"])
    if r["event"] == "val": v.append("%.6f" % r["loss"])
print("train", " ".join(t), "| val", " ".join(v))' "$1"
}
digest() { sha256sum "$1" | cut -c1-16; }
run() { # label, threads, flags...: one training run, its line
    local label=$1 threads=$2; shift 2
    rm -f "$out/run.jsonl" "$out/run.ckpt"
    OMP_NUM_THREADS=$threads "$bin" $shape $data $steps "$@" \
        --log "$out/run.jsonl" --save "$out/run.ckpt" >"$out/run.out" 2>&1 ||
        { echo "$label | $threads threads | failed: $(tail -n 1 "$out/run.out")"; return 0; }
    echo "$label | $threads threads | $(losses "$out/run.jsonl") | ckpt $(digest "$out/run.ckpt")"
}

echo "baseline of $rev: $(${CC:-gcc} --version | head -n 1)" >&2 # (stdout: what to diff)
for arch in "${archs[@]}"; do
    for taper in "${tapers[@]}"; do
        for threads in 1 2; do
            # shellcheck disable=SC2046 # taper_args: words
            run "$arch $taper" "$threads" --arch $arch $(taper_args "$taper")
        done
    done
done
for arch in "${archs[@]}"; do
    # shellcheck disable=SC2086 # arch: words
    run "$arch cosine --grad-accum 2" 2 --arch $arch --grad-accum 2
    run "$arch cosine" 2 --arch $arch
    cp "$out/run.ckpt" "$out/full.ckpt"
    rm -f "$out/half.ckpt" "$out/half.jsonl"
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 "$bin" $shape $data --steps 6 --warmup 3 --eval-every 6 --decay-steps 12 \
        --arch $arch --save "$out/half.ckpt" >/dev/null 2>&1
    OMP_NUM_THREADS=2 "$bin" --load "$out/half.ckpt" --steps 12 --save "$out/half.ckpt" \
        >/dev/null 2>&1
    echo "$arch resumed at step 6 | ckpt $(digest "$out/half.ckpt")"
    OMP_NUM_THREADS=1 "$bin" --load "$out/full.ckpt" --eval-only | sed "s/^/$arch eval-only | /"
    OMP_NUM_THREADS=1 "$bin" --load "$out/full.ckpt" --analyze | sed "s/^/$arch analyze | /"
    OMP_NUM_THREADS=1 "$bin" --load "$out/full.ckpt" --sample --prompt "the " --sample-len 40 \
        --samples 2 --temperature 0.8 --seed 5 2>/dev/null | tr '\n' '~' | sed "s/^/$arch sample | /"
    echo
done
