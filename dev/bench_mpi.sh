#!/usr/bin/env bash
# Scaling of train_tlm_mpi on one machine: R ranks x (16/R) threads, beside one process x 16.
# For a machine without Open MPI and without a network (the 16-core device machine): gather in
# one folder train_tlm.c and dev/tlmc/ (as dev/tlmc/ beside it), the Brown shards (data/brown_{byte,gpt2}_{train,val}.bin) and, in debs/,
# the .deb files of openmpi-bin, libopenmpi3 and their libraries (`apt-get download` them here;
# `ldd` on the binaries lists them), copy this script there as bench.sh and run it there.
# LIMIT (seconds, default 300) skips the configurations that would start after it.
# usage: bash bench.sh OUTDIR [smoke]   (Open MPI from the .deb files in debs/, unpacked privately)
set -u
cd "$(dirname "$0")"
OUT=${1:-out}; SMOKE=${2:-}; mkdir -p "$OUT"
exec > >(tee "$OUT/bench.log") 2>&1
t_begin=$(date +%s)
date -u; nproc; lscpu | grep -i -E "model name|^cpu\(s\)|thread|socket|numa node\(s\)"
P=/tmp/ompi_private; rm -rf $P; mkdir -p $P
unpack() { # a .deb's data.tar.* into $P, by dpkg -x or else by Python (an ar archive of tar files)
    dpkg -x "$1" $P 2>/dev/null || python3 - "$1" $P <<'PY'
import io, sys, tarfile
d = open(sys.argv[1], "rb").read(); i = 8
while i < len(d):
    name, size = d[i:i + 16].decode().strip(), int(d[i + 48:i + 58]); body = d[i + 60:i + 60 + size]; i += 60 + size + (size & 1)
    if name.startswith("data.tar"): tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
PY
}
for d in debs/*.deb; do unpack "$d" || echo "unpacking $d failed"; done
L=$P/usr/lib/x86_64-linux-gnu
CF="-O3 -march=native -std=c11 -Wall -fno-math-errno -fopenmp"
gcc $CF train_tlm.c -lm -o train_tlm & plain=$!
gcc $CF -DTLM_MPI -I$L/openmpi/include train_tlm.c -L$L/openmpi/lib -lmpi -lm -o train_tlm_mpi || { echo "mpi build failed"; exit 1; }
wait $plain; [ -x train_tlm ] || exit 1; echo "built: $(( $(date +%s) - t_begin )) s"
export PATH=$P/usr/bin:$PATH OPAL_PREFIX=$P/usr
export LD_LIBRARY_PATH=$L:$L/openmpi/lib:$L/pmix2/lib:$L/libfabric${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PMIX_MCA_mca_base_component_path=$L/pmix2/lib/pmix
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_mtl=^ofi OMPI_MCA_osc=^ucx,pt2pt
export OMPI_MCA_btl_base_warn_component_unused=0 OMP_WAIT_POLICY=PASSIVE
MPIRUN=(orterun --allow-run-as-root -q)
orterun --version | head -1
# CMA (process_vm_readv) may be refused in a container: then vader copies through shared memory
if ! timeout 30 "${MPIRUN[@]}" -np 2 ./train_tlm_mpi --steps 2 --batch 1 --seq-len 32 --layers 1 --dim 32 --heads 2 --mlp-width 32 \
     --eval-batches 1 --sample-every 0 --train brown_byte_train.bin --val brown_byte_val.bin > "$OUT/check.txt" 2>&1 \
     || grep -q -i "process_vm\|single.copy\|CMA" "$OUT/check.txt"; then
    echo "CMA check failed, vader single copy off:"; tail -5 "$OUT/check.txt"
    export OMPI_MCA_btl_vader_single_copy_mechanism=none
fi
# median tokens/s of the train records from step 3 on
median() { grep '"event":"train"' "$1" | awk -F'"tokens_per_s":' '{split($2,a,","); split($0,s,"\"step\":"); split(s[2],b,","); if (b[1]+0 >= 3) print a[1]}' | sort -n | awk '{v[NR]=$1} END {print NR ? v[int((NR+1)/2)] : "-"}'; }
run() { # name ranks threads batch args...
    local name=$1 R=$2 T=$3 B=$4; shift 4
    local elapsed=$(( $(date +%s) - t_begin ))
    if [ $elapsed -gt ${LIMIT:-300} ]; then echo "$name: skipped (time)"; return; fi
    rm -f "$OUT/$name.jsonl"
    if [ "$R" = 0 ]; then
        OMP_NUM_THREADS=$T ./train_tlm "$@" --batch $B --log "$OUT/$name.jsonl" > "$OUT/$name.out" 2>&1
    else
        OMP_NUM_THREADS=$T timeout 120 "${MPIRUN[@]}" -np $R --map-by slot:PE=$T --bind-to core ./train_tlm_mpi "$@" --batch $B \
            --log "$OUT/$name.jsonl" > "$OUT/$name.out" 2>&1 \
        || OMP_NUM_THREADS=$T timeout 120 "${MPIRUN[@]}" -np $R --bind-to none ./train_tlm_mpi "$@" --batch $B \
            --log "$OUT/$name.jsonl" > "$OUT/$name.out" 2>&1 || { echo "$name failed:"; tail -5 "$OUT/$name.out"; }
    fi
    echo "$name | ranks $R | threads $T | batch $B | median tok/s $(median "$OUT/$name.jsonl") | $(grep -h '^all-reduce' "$OUT/$name.out") | $(( $(date +%s) - t_begin )) s"
}
CLS_STEPS=30; [ -n "$SMOKE" ] && CLS_STEPS=4
common=(--eval-every 0 --eval-batches 1 --sample-every 0 --warmup 2)
cls=(--train brown_byte_train.bin --val brown_byte_val.bin --steps $CLS_STEPS "${common[@]}")
g124=(--train brown_gpt2_train.bin --val brown_gpt2_val.bin --layers 12 --dim 768 --heads 12 --vocab 50257
      --mlp-width 2048 --seq-len 64 --steps 7 "${common[@]}")
[ -n "$SMOKE" ] && g124=(--train brown_gpt2_train.bin --val brown_gpt2_val.bin --layers 2 --dim 128 --heads 2 --vocab 50257 --mlp-width 256 --seq-len 64 --steps 4 "${common[@]}")
N=16; [ -n "$SMOKE" ] && N=2
# the classroom transformer (./train_tlm defaults), a global batch of 8 sequences of 256
run cls-plain 0 $N 8 "${cls[@]}"
for R in 1 2 4 8; do [ $R -le $N ] || continue; [ $((8 % R)) = 0 ] && run cls-$R $R $((N / R)) $((8 / R)) "${cls[@]}"; done
# GPT-2 124M-shaped (make bench's config: 12 x 768, vocab 50257, T 64), a global batch of 16
run g124-plain 0 $N 16 "${g124[@]}"
for R in 1 2 4 8; do [ $R -le $N ] || continue; run g124-$R $R $((N / R)) $((16 / R)) "${g124[@]}"; done
# the classroom transformer, 8 sequences per rank (global batch 8 x ranks)
for R in 2 4 8; do [ $R -le $N ] || continue; run clsweak-$R $R $((N / R)) 8 "${cls[@]}"; done
date -u
