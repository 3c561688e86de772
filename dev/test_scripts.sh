#!/usr/bin/env bash
# dev/test_scripts.sh — every user error of the Python scripts in dev/ (ablation.py,
# prepare_data.py, plot_runs.py) must give a non-zero exit, exactly one line on stderr and no
# traceback (argparse's own usage errors aside). Run by `make test`; a few seconds (ablation.py's runs use
# dev/test_fake_trainer.py, a stand-in for train_tlm that writes plausible logs at once).
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
S=$(mktemp -d /tmp/test_scripts.XXXXXX)
trap 'rm -rf "$S"' EXIT
F=dev/test_fake_trainer.py
passed=0 failed=0

# check SCRIPT ARGS...: the script must fail with one line on stderr, no traceback
check() {
    local script=$1; shift
    $PY "dev/$script" "$@" >"$S/out" 2>"$S/err" </dev/null
    local rc=$? n
    n=$(wc -l <"$S/err")
    if [ $rc -eq 0 ] || [ "$n" -ne 1 ] || grep -q Traceback "$S/err"; then
        echo "FAIL: $script $* (exit $rc, $n stderr lines)"; sed 's/^/    /' "$S/err" | head -5
        failed=$((failed + 1))
    else
        passed=$((passed + 1))
    fi
}

# fixtures: a file, an empty directory, broken manifests, a taper-grid run of the fake trainer
: >"$S/afile"
mkdir -p "$S/emptydir" "$S/badman" "$S/badman2"
echo '{"grid": 3' >"$S/badman/ablation.json"
echo '{"grid": "taper", "trainer_args": "x", "archs": [], "variants": [], "seeds": []}' >"$S/badman2/ablation.json"
$PY dev/ablation.py --quick --archs transformer --seeds 1 --out "$S/g_taper" --trainer "$F" >/dev/null 2>&1 ||
    { echo "FAIL: the fake-trainer ablation run did not succeed"; failed=$((failed + 1)); }
# its report names the machine and the code version it was made with
if grep -q "cores;" "$S/g_taper/results.md" 2>/dev/null && grep -q '"machine"' "$S/g_taper/ablation.json"; then
    passed=$((passed + 1))
else echo "FAIL: results.md / ablation.json do not name the machine"; failed=$((failed + 1)); fi

# dev/ablation.py
check ablation.py --archs '' --dry-run
check ablation.py --archs ' , ' --dry-run
check ablation.py --archs foo --dry-run
check ablation.py --archs transformer,transformer --dry-run
check ablation.py --archs 'transformer,,gated' --dry-run
check ablation.py --grid foo --dry-run
check ablation.py --grid '' --dry-run
check ablation.py --report-only --out "$S/nonexistent"
check ablation.py --report-only --out "$S/afile"
check ablation.py --out "$S/afile" --trainer "$F"
check ablation.py --out "$S/afile" --dry-run
check ablation.py --out "$S/afile/sub" --trainer "$F"
check ablation.py --report-only --out "$S/emptydir"
check ablation.py --report-only --out "$S/badman"
check ablation.py --report-only --out "$S/badman2"
check ablation.py --seeds 0 --dry-run
check ablation.py --seeds abc --dry-run
check ablation.py -j 0 --dry-run
check ablation.py --bogus
check ablation.py --linear --grid groups --dry-run
check ablation.py --grid ratios --train-args '--taper-start 1.2' --dry-run
check ablation.py --train-args '--taper cosine' --dry-run
check ablation.py --train-args '--mlp-widths 1,2' --dry-run
check ablation.py --train-args "'unbalanced" --dry-run
check ablation.py --train-args 'stray' --dry-run
check ablation.py --trainer "$S/nonexistent" --out "$S/e_run"
check ablation.py --dry-run --report-only
check ablation.py --grid groups --out "$S/g_taper" --trainer "$F"
check ablation.py --grid groups --out "$S/g_taper" --report-only
check ablation.py --out "$S/g_taper" --trainer "$F" --train-args '--steps 100'

# dev/prepare_data.py
printf 'good text\n' >"$S/ok.txt"
printf 'caf\xe9 au lait\n' >"$S/latin1.txt"
check prepare_data.py --corpus "$S/ok.txt" --tokenizer byte --out "$S/afile"
check prepare_data.py --corpus "$S/latin1.txt" --tokenizer byte --out "$S/pd"
check prepare_data.py --corpus "$S/missing.txt" --tokenizer byte --out "$S/pd"
check prepare_data.py --corpus "$S/ok.txt" --tokenizer byte --out "$S/pd" --val-frac 2
# an --out that cannot be made (under /proc nothing can be), and a full file system: the
# file-size limit makes every write past 8 KB fail with EFBIG (SIGXFSZ ignored), as ENOSPC would
check prepare_data.py --corpus "$S/ok.txt" --tokenizer byte --out /proc/tlm_test_scripts/pd
for i in $(seq 2000); do echo "line $i of a corpus that does not fit in 8 KB"; done >"$S/big.txt"
python_on_full_disk() { (trap '' XFSZ; ulimit -f 8; exec "${PYTHON:-python3}" "$@"); }
PY=python_on_full_disk check prepare_data.py --corpus "$S/big.txt" --tokenizer byte --out "$S/full"
if [ -z "$(ls -A "$S/full" 2>/dev/null | grep '\.bin$')" ]; then passed=$((passed + 1))
else echo "FAIL: prepare_data.py left a partial shard behind on a full file system: $(ls "$S/full")"; failed=$((failed + 1)); fi
# --shard-tokens below 2^16 (32 of the trainer's default batches) is refused before anything is
# written; above it, the train tokens are cut into shards of near-equal size (no short last one)
check prepare_data.py --corpus "$S/big.txt" --tokenizer byte --out "$S/sh" --shard-tokens 1
check prepare_data.py --corpus "$S/big.txt" --tokenizer byte --out "$S/sh" --shard-tokens 65535
if [ -z "$(ls -A "$S/sh" 2>/dev/null)" ]; then passed=$((passed + 1))
else echo "FAIL: a refused --shard-tokens left files behind: $(ls "$S/sh")"; failed=$((failed + 1)); fi
for i in 1 2 3 4 5 6 7 8 9; do cat "$S/big.txt"; done >"$S/big9.txt"   # 900 KB: 12 shards
$PY dev/prepare_data.py --corpus "$S/big9.txt" --tokenizer byte --out "$S/sh" --shard-tokens 65536 >/dev/null
sizes=$(stat -c %s "$S"/sh/big9_byte_train_0*.bin 2>/dev/null | sort -un | tr '\n' ' ')
set -- $sizes
if [ $# -ge 1 ] && [ $# -le 2 ] && [ $(( ${2:-$1} - $1 )) -le 2 ]; then passed=$((passed + 1))
else echo "FAIL: --shard-tokens 65536 shard sizes are not near-equal: $sizes"; failed=$((failed + 1)); fi
# a set is replaced whole or not at all: train shards of 130 KB fit under a 200 KB file-size
# limit, the 400 KB val shard does not; the earlier set must be left exactly as it was
$PY dev/prepare_data.py --corpus "$S/big9.txt" --tokenizer byte --out "$S/set" --val-frac 0.5 >/dev/null
before=$(cd "$S/set" && md5sum * | tr '\n' ' ')
python_limited() { (trap '' XFSZ; ulimit -f 200; exec "${PYTHON:-python3}" "$@"); }
PY=python_limited check prepare_data.py --corpus "$S/big9.txt" --tokenizer byte --out "$S/set" --val-frac 0.5 --shard-tokens 65536
if [ "$(cd "$S/set" && ls -A | grep -v '\.bin$'; md5sum * | tr '\n' ' ')" = "$before" ]; then passed=$((passed + 1))
else echo "FAIL: a failed write left the earlier shard set changed: $(ls -A "$S/set")"; failed=$((failed + 1)); fi

# dev/plot_runs.py
printf '{"event":"config"\nnot json\n' >"$S/bad.jsonl"
: >"$S/empty.jsonl"
check plot_runs.py "$S/missing.jsonl" -o "$S/p.svg"
check plot_runs.py "$S/bad.jsonl" -o "$S/p.svg"
check plot_runs.py "$S/empty.jsonl" -o "$S/p.svg"
check plot_runs.py "$S/g_taper/transformer_cosine_s1.jsonl" -o "$S/afile/p.svg"

# the Makefile's compiler: gcc by default (make predefines CC=cc), the one named by make CC=...
# (make -n prints the commands, runs none; the outer make's variables are kept out)
for want in gcc clang; do
    arg=; [ $want = gcc ] || arg="CC=$want"
    if env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u CC make -s -n -B $arg train_tlm 2>&1 | grep -q "^$want .*train_tlm\.c"; then
        passed=$((passed + 1))
    else
        echo "FAIL: make ${arg:-(no CC)} does not compile with $want"; failed=$((failed + 1))
    fi
done

echo "scripts: $passed passed, $failed failed"
[ $failed -eq 0 ]
