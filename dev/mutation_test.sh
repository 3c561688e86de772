#!/usr/bin/env bash
# A test must be able to fail: break the backward pass in one place at a time (a copy of
# train_tlm.c with one line changed) and check that ./test_tlm then fails.
#   bash dev/mutation_test.sh        (make test-mutants; JOBS=N runs N mutants at once)
set -u
cd "$(dirname "$0")/.."
CC=${CC:-gcc}
JOBS=${JOBS:-1}
FLAGS="-O2 -march=native -fopenmp -std=c11 -Wno-unused-function -I." # (-I.: dev/tlmc/, as from here)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
names=() exprs=()
mutate() { names+=("$1"); exprs+=("$2"); }   # $1: what is broken, $2: the sed expression
run_one() { # mutant $1 in $work/$1; its one-line verdict in $work/$1/verdict
    local d="$work/$1" name="${names[$1]}"; mkdir -p "$d"
    sed "${exprs[$1]}" train_tlm.c > "$d/train_tlm.c"
    if cmp -s "$d/train_tlm.c" train_tlm.c; then echo "not applied (update this script): $name" > "$d/verdict"; return; fi
    sed 's|#include "train_tlm.c"|#include "'"$d"'/train_tlm.c"|' test_tlm.c > "$d/test_tlm.c"
    $CC $FLAGS -DTLM_DOUBLE -c "$d/test_tlm.c" -o "$d/d.o" && $CC $FLAGS -c "$d/test_tlm.c" -o "$d/f.o" &&
        $CC -fopenmp "$d/f.o" "$d/d.o" -lm -o "$d/test_tlm" || { echo "build failed: $name" > "$d/verdict"; return; }
    local result; result=$(cd "$d" && cp -r "$OLDPWD/train_tlm" . 2>/dev/null; ./test_tlm 2>&1 | tail -n 1)
    case "$result" in
        *" 0 failed"*) echo "MISSED  $name: $result" > "$d/verdict" ;;
        *) echo "caught  $name: $result" > "$d/verdict" ;;
    esac
}
mutate "RMSNorm backward without the r^3 term" 's/- k \* xn\[c\];/;/'
mutate "SwiGLU backward without silu'"        's/dh1\[i\] += d \* h3\[i\] \* s \* (1 + h1\[i\] \* (1 - s));/dh1[i] += d * h3[i] * s;/'
mutate "softmax backward without the mean"    's/? pt\[j\] \* (dst\[j\] - pdp) \* scale : 0;/? pt[j] * dst[j] * scale : 0;/'
mutate "gate backward without sigmoid'"       's/dz\[(size_t)n \* G + j\] += s \* gj \* (1 - gj);/dz[(size_t)n * G + j] += s * gj;/'
mutate "elementwise gate without sigmoid'"   's/dz\[i\] += dout\[i\] \* a\[i\] \* g\[i\] \* (1 - g\[i\]);/dz[i] += dout[i] * a[i] * g[i];/'
mutate "memory: no silu'' term"               's/f->dZ\[i\] = dU\[i\] \* f->R\[i\] \* silu_grad2(f->Z\[i\]);/f->dZ[i] = 0;/'
mutate "memory: forgetting gradient sign"     's/^        dalpha\[t\] += da;/        dalpha[t] -= da;/'
mutate "memory: end state's gradient lost"    's/        dW\[p\] = c\[0\] \* w;/        dW[p] = 0;/'
mutate "memory: reads give S_c no gradient"   's/    gemm_serial(dScb, D2, IN, rows, cols, n, 1, rows, 0, cols, cols, 1);/    (void)D2;/'
mutate "memory: closed form drops eta"        's/        de += g\[2\] \* p\[2\];  /        de += 0;  /'
mutate "attention: dV not accumulated"        's/^\( *\)gemm_serial(dv + (size_t)lo \* 3 \* C, p_blk, do_blk, keys, hs, rows, 1, T, 0,$/\1if (0) gemm_serial(dv, p_blk, do_blk, keys, hs, rows, 1, T, 0,/'
mutate "memory: L2 norm backward skipped"     's/dq_raw\[j\] += (dq\[j\] - q\[j\] \* qdq) \* ma->q_inv\[i\];/dq_raw[j] += dq[j] * ma->q_inv[i];/'
mutate "RoPE backward rotates the wrong way"  's/rope_rotate(dx, tab, B, T, heads, hs, ld, -1);/rope_rotate(dx, tab, B, T, heads, hs, ld, 1);/'
mutate "AdamW: no bias correction"            's/float update = (mj \/ bc1) \/ (sqrtf(vj \/ bc2) + eps)/float update = mj \/ (sqrtf(vj) + eps)/'
mutate "SwiGLU's dh not cleared"             's/    zero_parallel(a->dh, (size_t)N \* 2 \* F);/    ;/'
mutate "memory module's dmqkv not cleared"    's/    zero_parallel(a->dmqkv, (size_t)N \* 3 \* C);/    ;/'
mutate "memory: clipped step's gradient lost"  's/        real ds = -2 \* c \* theta\[t\] \* f->dstep\[t\] \/ (G \* G);/        real ds = 0;/'
mutate "memory: recurrence's clip gradient lost" 's/            if (c < 1)$/            if (0)/'
mutate "memory: theta's sigmoid' without mem_lr" 's/(1 - th \/ ms.lr);/(1 - th);/'
mutate "memory: SiLU backward without silu'"    's/    for (size_t i = 0; i < n; i++) dx\[i\] += dout\[i\] \* silu_grad(x\[i\]);/    for (size_t i = 0; i < n; i++) dx[i] += dout[i];/'
mutate "memory: conv dx taps not shifted"       's/\*gj = g + (size_t)j \* CH, \*wj = wt + (size_t)j \* CH;/*gj = g + (size_t)j * CH, *wj = wt;/'
mutate "memory: conv dw taps not shifted"       's/const real \*xr = x + (row - j) \* CH;/const real *xr = x + row * CH;/'

caught=0 missed=0
for i in "${!names[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    run_one "$i" &
done
wait
for i in "${!names[@]}"; do
    verdict=$(cat "$work/$i/verdict" 2>/dev/null || echo "no verdict: ${names[$i]}")
    echo "$verdict"
    case "$verdict" in caught*) caught=$((caught + 1)) ;; *) missed=$((missed + 1)) ;; esac
done
echo "$caught caught, $missed missed"
[ "$missed" -eq 0 ]
