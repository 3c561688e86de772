#!/usr/bin/env bash
# A short training run of every architecture with a sanitized trainer (make test-asan):
# save, resume, sample, analyze, on tiny shards this script writes itself.
set -euo pipefail
trainer=${1:-dev/build/train_tlm_asan}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import struct, sys
text = (b"the quick brown fox jumps over the lazy dog. " * 200)
for name, part in (("train", text), ("val", text[:3000])):
    header = struct.pack("<256i", 20240520, 1, len(part), 256, *([0] * 252))
    open(f"{sys.argv[1]}/{name}.bin", "wb").write(header + struct.pack(f"<{len(part)}H", *part))
PY
common="--train $dir/train.bin --val $dir/val.bin --layers 2 --dim 32 --heads 2 --mlp-width 64 --seq-len 32 --batch 2 --eval-batches 2 --eval-every 3 --sample-every 6 --sample-len 16"
for arch in transformer gated titans hope; do
    OMP_NUM_THREADS=2 "$trainer" $common --arch $arch --steps 6 --save "$dir/$arch.ckpt" --log "$dir/$arch.jsonl" > "$dir/$arch.out"
    OMP_NUM_THREADS=2 "$trainer" $common --arch $arch --steps 8 --load "$dir/$arch.ckpt" >> "$dir/$arch.out"
    OMP_NUM_THREADS=1 "$trainer" $common --load "$dir/$arch.ckpt" --analyze >> "$dir/$arch.out"
    echo "sanitized run: $arch ok"
done
