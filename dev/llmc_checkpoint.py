#!/usr/bin/env python3
"""Write a GPT-2 checkpoint in llm.c's format with random weights, so that llm.c's CPU
trainer (train_gpt2.c) can be timed at any size without downloading GPT-2's weights.

Format (llm.c, gpt2_build_from_checkpoint): 256 int32 header
[20240326, 3, maxT, V, L, NH, C, Vp, 0, ...], then the float32 parameters in the order of
llm.c's fill_in_parameter_sizes: wte (Vp, C), wpe (maxT, C), then per layer stacked over L:
ln1 w, b, qkv w, b, attn proj w, b, ln2 w, b, fc w, b, fc proj w, b; then lnf w, b.
Weights: matrices N(0, 0.02) (one pool of 2^20 samples, each tensor read from a random
offset: fast in plain Python), LayerNorm weights 1, biases 0, wte's padding rows 0.

    python3 dev/llmc_checkpoint.py --layers 12 --heads 12 --dim 768 gpt2_124M.bin
"""
import argparse
import array
import random
import struct
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="checkpoint file to write")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--padded-vocab", type=int, default=50304)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1337)
    a = ap.parse_args()
    L, NH, C, V, Vp, maxT = a.layers, a.heads, a.dim, a.vocab, a.padded_vocab, a.max_seq_len
    if min(L, NH, C, V, Vp, maxT) < 1 or C % NH or Vp < V:
        sys.exit("llmc_checkpoint.py: need positive sizes, --dim a multiple of --heads, --padded-vocab >= --vocab")
    if sys.byteorder != "little":
        sys.exit("llmc_checkpoint.py: llm.c's files are little-endian; this machine is not")

    rng = random.Random(a.seed)
    pool_n = 1 << 20
    pool = array.array("f", (rng.gauss(0.0, 0.02) for _ in range(pool_n)))

    def gauss(f, n):
        while n > 0:
            k, off = min(n, pool_n), rng.randrange(pool_n)
            (pool[off:] + pool[:off])[:k].tofile(f)
            n -= k

    def const(f, n, v):
        block = array.array("f", [v]) * min(max(n, 1), pool_n)
        while n > 0:
            k = min(n, pool_n)
            block[:k].tofile(f)
            n -= k

    tensors = [  # (size, kind) in llm.c's order
        (Vp * C, "wte"), (maxT * C, "gauss"),
        (L * C, "one"), (L * C, "zero"), (L * 3 * C * C, "gauss"), (L * 3 * C, "zero"),
        (L * C * C, "gauss"), (L * C, "zero"), (L * C, "one"), (L * C, "zero"),
        (L * 4 * C * C, "gauss"), (L * 4 * C, "zero"), (L * C * 4 * C, "gauss"), (L * C, "zero"),
        (C, "one"), (C, "zero"),
    ]
    with open(a.out, "wb") as f:
        header = [0] * 256
        header[:8] = [20240326, 3, maxT, V, L, NH, C, Vp]
        f.write(struct.pack("<256i", *header))
        for n, kind in tensors:
            if kind == "wte":
                gauss(f, V * C)
                const(f, (Vp - V) * C, 0.0)
            elif kind == "gauss":
                gauss(f, n)
            else:
                const(f, n, 1.0 if kind == "one" else 0.0)
    print(f"{a.out}: GPT-2 L{L} H{NH} C{C}, {sum(n for n, _ in tensors)} parameters")


if __name__ == "__main__":
    main()
