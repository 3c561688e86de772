#!/usr/bin/env python3
"""Taper ablations for tlm.c: does moving MLP width across depth beat the uniform model
at equal parameters, by more than the noise of the seeds?

A Tapered Language Model keeps the total MLP parameter budget fixed (the widths sum to
L*H) but moves hidden width across depth. Three grids, chosen with --grid; every cell is
trained by `train_tlm` with several seeds at the same config and token budget and compared
with the uniform model of the same seed:

  taper   (default) uniform / cosine (1.5x H in the first layer -> 0.5x in the last) /
          reverse (the cosine's widths, last layer first) [/ linear with --linear], for every
          architecture: transformer, gated, titans, hope
  groups  the three-group allocation: layers split into early / middle / late thirds with
          width multiples 1,1,1 (uniform), 1.5,1,0.5 (wider early), 0.75,1.5,0.75 (wider
          middle), 0.5,1,1.5 (wider late); the transformer unless --archs says otherwise
  ratios  linear, sigmoid and cosine schedules at start/end multiples 1.25/0.75, 1.5/0.5,
          1.75/0.25, plus uniform: is the loss U-shaped in the ratio? transformer by default

Statistics, per architecture and schedule, over the seeds whose runs finished:
  val loss   the final validation loss: mean ± sample std; ppl = exp(mean)
  Δ          the paired difference to uniform (same architecture, same seed) over the n seeds
             where both runs finished: mean d and the 95% confidence interval
             d ± t(0.975, n-1) · sd(d) / sqrt(n)   (Student t)
  same sign / pairs   how many of the n pairs have the sign of the mean, and n
  verdict    "distinguishable from uniform" only where the interval excludes 0, else
             "not distinguishable" (also for a single pair: no interval)
A run that diverged (the trainer's NaN guard stopped it) or failed is named in the table
and left out of the pairs.

With --analyze (on unless --quick) `train_tlm --analyze` runs on the first seed's checkpoint
of every schedule: how much each layer changes the residual stream, how much the val loss
rises when a layer (or its MLP) is skipped, and, where the trainer logs it, the alignment
probe cos(MLP output, residual stream it is added to) per layer, plotted per schedule.

Usage (from the repository root, after `make`):
    python3 dev/ablation.py --quick               # small taper grid, a few minutes on 2 cores
    python3 dev/ablation.py                       # full taper grid, 5 seeds, + analysis
    python3 dev/ablation.py --grid groups         # the three-group allocation (transformer)
    python3 dev/ablation.py --grid ratios --archs transformer,titans
    python3 dev/ablation.py --archs transformer,gated --seeds 3 --linear -j 2
    python3 dev/ablation.py --train-args "--steps 300 --dim 96"   # override trainer flags
    python3 dev/ablation.py --train-args=--untied # a single flag needs the '=' form
    python3 dev/ablation.py --dry-run             # print the commands only
    python3 dev/ablation.py --report-only --out dev/runs/ablation_groups   # report existing logs

Outputs in --out (default dev/runs/ablation, dev/runs/ablation_groups, dev/runs/ablation_ratios; with
--quick the same with _quick appended):
    {arch}_{schedule}_s{seed}.jsonl / .ckpt / .log  one run: JSONL log, checkpoint, output
    {arch}_{schedule}_analysis.jsonl / .log         layer analysis of the first seed
    results.md            the results table (also printed) and the analysis tables
    effects.svg           Δ vs uniform with 95% intervals (ratios: the U-curve in the ratio)
    loss_curves.svg       val loss vs training tokens
    analysis.svg          per-layer contributions of the uniform model
    alignment.svg         cos(MLP output, residual stream) per layer and schedule
    ablation.json         the grid and trainer flags of this directory
  every .svg also as .png when rsvg-convert or ImageMagick is installed.

Re-running the same command resumes: finished runs (log ends with a `done` event) are
skipped, an interrupted run continues from its checkpoint (`--load`), or restarts from
scratch if it has none. Ctrl-C stops all children; run the same command again to go on.
Every user error is one line on stderr and a non-zero exit. Python 3 standard library only.
"""
import argparse, json, math, os, shlex, shutil, signal, subprocess, sys, time
from html import escape

# ---------------------------------------------------------------------------------------
# Constants to tune once the real trainer's speed is known. Measured on 2 cores with an
# early train_tlm: 6 layers, dim 128, seq 128, batch 8 costs ~0.23 s/step (transformer,
# gated), ~0.5 s/step (titans), ~0.57 s/step (hope). The quick model (4 layers, dim 64,
# seq 64) runs 100 steps in 2.5 s (transformer) to 8.6 s (hope).
# ---------------------------------------------------------------------------------------
ARCHS = ["transformer", "gated", "titans", "hope"]
BASELINE = "uniform"                             # every Δ is relative to this schedule

# Full run: 500 steps x 8 x 128 tokens of Brown bytes (0.5M tokens) per run.
DEFAULT_ARGS = ("--layers 6 --dim 128 --heads 4 --mlp-width 384 --seq-len 128 --batch 8 "
                "--steps 500 --eval-every 50 --eval-batches 8 --sample-every 0")
DEFAULT_SEEDS = 5
# --quick: tiny runs of 100k tokens each (widths 288/256/128/96 for the cosine taper).
# Noisy: the reverse taper's seeds differed by up to 0.4.
QUICK_ARGS = ("--layers 4 --dim 64 --heads 4 --mlp-width 192 --seq-len 64 --batch 8 "
              "--steps 200 --eval-every 25 --eval-batches 4 --sample-every 0")
QUICK_SEEDS = 3                                  # the fewest that give an interval of some use

# Flags the grids set; --train-args may not contain them (--taper-start/--taper-end only
# in the ratios grid, which sets them; elsewhere they shape the taper grid's cosine).
RESERVED = {"--arch", "--taper", "--mlp-widths", "--seed", "--log", "--save", "--load",
            "--analyze", "--eval-only"}
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


# ------------------------------------ the grids ----------------------------------------
class Variant:
    """One schedule of a grid. name: in file names; label: in tables and legends;
    flags: what it adds to the trainer's command line; family, x: the ratios grid's
    schedule and start multiple (one line of the U-curve per family)."""
    def __init__(self, name, label, flags, color, family=None, x=None, detail=""):
        self.name, self.label, self.flags, self.color = name, label, flags, color
        self.family, self.x, self.detail = family or name, x, detail   # detail: 2nd tick line


def taper_grid(linear):
    colors = {"uniform": "#444444", "cosine": "#1f6fd1", "reverse": "#d62728", "linear": "#2ca02c"}
    names = ["uniform", "cosine", "reverse"] + (["linear"] if linear else [])
    return [Variant(t, t, ["--taper", t], colors[t]) for t in names]


GROUPS = [("uniform", "uniform", "1,1,1", "#444444"),        # name, words, multiples, color
          ("early", "wider early", "1.5,1,0.5", "#1f6fd1"),
          ("middle", "wider middle", "0.75,1.5,0.75", "#2ca02c"),
          ("late", "wider late", "0.5,1,1.5", "#d62728")]


def groups_grid(linear):
    return [Variant(n, f"{words} {m}", ["--taper", "uniform" if n == BASELINE else f"groups:{m}"],
                    c, detail=m) for n, words, m, c in GROUPS]


RATIOS = [(1.25, 0.75), (1.5, 0.5), (1.75, 0.25)]                 # (start, end) multiples
FAMILIES = {"linear": ("#8fd18f", "#2ca02c", "#146314"),           # one shade per ratio
            "sigmoid": ("#c9b3e0", "#9467bd", "#5b3a80"),
            "cosine": ("#9cc2f0", "#1f6fd1", "#0f3f80")}


def ratios_grid(linear):
    out = [Variant("uniform", "uniform", ["--taper", "uniform"], "#444444", x=1.0)]
    for fam, shades in FAMILIES.items():
        for (s, e), c in zip(RATIOS, shades):
            out.append(Variant(f"{fam}-{s:g}-{e:g}", f"{fam} {s:g}/{e:g}",
                               ["--taper", fam, "--taper-start", f"{s:g}", "--taper-end", f"{e:g}"],
                               c, family=fam, x=s))
    return out


# name -> (variants(linear), default architectures, one line for -h)
GRIDS = {"taper": (taper_grid, ARCHS, "uniform / cosine / reverse (/ linear) x architectures"),
         "groups": (groups_grid, ["transformer"], "three-group allocations (early/middle/late)"),
         "ratios": (ratios_grid, ["transformer"], "linear/sigmoid/cosine x 3 start/end ratios")}


def default_out(grid, quick):
    return "dev/runs/ablation" + ("" if grid == "taper" else f"_{grid}") + ("_quick" if quick else "")


class UserError(Exception):
    """Bad input: main() prints it as one line on stderr and exits non-zero."""


# ------------------------------------ trainer flags ------------------------------------
def parse_flags(text):
    """'--steps 300 --untied' -> [['--steps', '300'], ['--untied', None]]."""
    toks, out = shlex.split(text), []
    for t in toks:
        if t.startswith("--"):
            out.append([t, None])
        elif out and out[-1][1] is None:
            out[-1][1] = t
        else:
            raise ValueError(f"stray value {t!r} (expected --flag [value])")
    return out


def merge_flags(base, extra):
    """Flags of `extra` override those of `base` with the same name; returns a token list."""
    merged = {f: v for f, v in base}
    for f, v in extra:
        merged.pop(f, None)
        merged[f] = v
    return [x for f, v in merged.items() for x in ([f] if v is None else [f, v])]


def flag_value(tokens, name):
    return next((tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i] == name), None)


def same_flags(x, y):
    norm = lambda toks: sorted(map(tuple, parse_flags(shlex.join(toks))))
    return norm(x) == norm(y)


# ------------------------------------ log parsing --------------------------------------
class RunLog:
    """What one JSONL log says. status: ok | missing | corrupt | incomplete | diverged."""
    def __init__(self, path):
        self.path, self.status, self.error = path, "missing", ""
        self.config, self.vals, self.done, self.analysis, self.stopped = {}, {}, None, [], None
        if not os.path.exists(path):
            return
        with open(path, "rb") as f:
            raw = f.read().decode("utf-8", "replace")
        lines = raw.split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                if i == len(lines) - 1:          # unterminated last line: a killed writer
                    break
                diverged = any(w in line.lower() for w in ("nan", "inf"))
                self.status = "corrupt"
                self.error = f"line {i + 1}: " + ("nan/inf, diverged?" if diverged else "not JSON")
                return
            self._add(rec)
        if self.done is None and self.stopped:   # the NaN guard: it would stop there again
            self.status = "diverged"
            self.error = (f"stopped at step {self.stopped.get('step')}: "
                          f"{self.stopped.get('message', 'error')}")
        elif self.done is None:
            self.status, self.error = "incomplete", "no done event"
        elif not is_number(self.done.get("val_loss")):
            self.status, self.error = "corrupt", "done event without a finite val_loss"
        else:
            self.status = "ok"

    def _add(self, rec):
        ev = rec.get("event")
        if ev == "config":
            self.config = rec
            resumed = rec.get("resumed_step") or 0
            # a resumed run repeats the steps after its checkpoint: forget the old ones
            self.vals = {s: v for s, v in self.vals.items() if s <= resumed}
            self.done = None
        elif ev == "val" and is_number(rec.get("loss")):
            self.vals[rec.get("step", 0)] = (rec.get("tokens", 0), rec["loss"])
        elif ev == "analysis":
            self.analysis.append(rec)
        elif ev == "done":
            self.done = rec
        elif ev == "error":
            self.stopped = rec

    @property
    def final_loss(self):
        return self.done["val_loss"] if self.status == "ok" else None

    def curve(self):
        return [self.vals[s] for s in sorted(self.vals)]


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------ running the grid ---------------------------------
class Run:
    def __init__(self, out, arch, variant, seed):
        self.arch, self.variant, self.seed = arch, variant, seed
        self.name = f"{arch}_{variant.name}_s{seed}"
        base = os.path.join(out, self.name)
        self.jsonl, self.ckpt, self.logfile = base + ".jsonl", base + ".ckpt", base + ".log"
        self.proc = self.start = None
        self.resume = False
        self.retry = False     # --retry-diverged
        self.keep = False      # keep the checkpoint (first seed: --analyze reads it)
        self.error = ""        # why this run failed in this session

    def command(self, trainer, targs):
        cmd = [trainer, "--arch", self.arch, *self.variant.flags, "--seed", str(self.seed),
               *targs, "--log", self.jsonl, "--save", self.ckpt]
        return cmd + (["--load", self.ckpt] if self.resume else [])

    def remove_files(self):
        for p in (self.jsonl, self.ckpt, self.ckpt + ".tmp", self.logfile):
            if os.path.exists(p):
                os.remove(p)

    def prepare(self):
        """Decide how to (re)start: returns 'skip', 'resume' or 'fresh' and cleans up."""
        log = RunLog(self.jsonl)
        if log.status == "ok":
            return "skip"
        if log.status == "diverged" and not self.retry:   # deterministic: it would diverge again
            self.error = run_problem(log)
            return "skip"
        if log.status == "incomplete" and log.config and os.path.exists(self.ckpt):
            with open(self.jsonl, "rb+") as f:   # drop a half-written last line
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
            self.resume = True
            return "resume"
        self.remove_files()
        self.resume = False
        return "fresh"


def fmt_time(s):
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_grid(runs, args, targs, env_threads):
    """Runs the grid with args.jobs workers; returns True if it was not interrupted."""
    todo, total, t0 = [], len(runs), time.time()
    durations = {}                                # arch -> [seconds] (for the ETA)
    for r in runs:
        what = r.prepare()
        if what == "skip":
            d = (RunLog(r.jsonl).done or {}).get("seconds")
            if isinstance(d, (int, float)):
                durations.setdefault(r.arch, []).append(d)
        else:
            todo.append(r)
    ndone = total - len(todo)
    if args.jobs > 1:                             # longest first, so no slow run is left for last
        todo.sort(key=lambda r: -ARCHS.index(r.arch))
    print(f"{total} runs, {ndone} already finished, {len(todo)} to run with -j {args.jobs}"
          + (f" (OMP_NUM_THREADS={env_threads} each)" if env_threads else "")
          + f"; logs in {args.out}/")
    env = dict(os.environ)
    if env_threads:
        env["OMP_NUM_THREADS"] = str(env_threads)

    def estimate(arch):
        alld = [d for ds in durations.values() for d in ds]
        ds = durations.get(arch) or alld
        return sum(ds) / len(ds) if ds else None

    def eta(running):
        rest = [estimate(r.arch) for r in todo] + \
               [max(0.0, (estimate(r.arch) or 0) - (time.time() - r.start)) for r in running]
        return None if any(x is None for x in rest) else sum(rest) / args.jobs

    running = []
    try:
        while todo or running:
            while todo and len(running) < args.jobs:
                r = todo.pop(0)
                if r.resume:
                    print(f"  resuming {r.name} from its checkpoint")
                cmd = r.command(args.trainer, targs)
                with open(r.logfile, "a") as lf:
                    lf.write(f"$ {shlex.join(cmd)}\n")
                    lf.flush()
                    r.proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True)
                r.start = time.time()
                running.append(r)
            time.sleep(0.1)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                rc, dt, log = r.proc.returncode, time.time() - r.start, RunLog(r.jsonl)
                if rc == 0 and log.status == "ok":
                    if not args.keep_checkpoints and not r.keep and os.path.exists(r.ckpt):
                        os.remove(r.ckpt)         # ~16 MB each at the default size; the log stays
                    if not r.resume:              # a resumed run's time says little
                        durations.setdefault(r.arch, []).append(dt)
                    msg = f"val_loss {log.final_loss:.4f} ({fmt_time(dt)})"
                elif log.status == "diverged":
                    r.error = run_problem(log)
                    msg = f"DIVERGED, {log.error}"
                elif r.resume:                    # a failed resume: try once from scratch
                    print(f"  {r.name}: resume failed (exit {rc}), restarting from scratch")
                    r.remove_files()
                    r.resume = False
                    todo.insert(0, r)
                    continue
                else:
                    why = last_line(r.logfile)
                    r.error = (f"failed (exit {rc}{': ' + why if why else ''})" if rc != 0
                               else f"failed (bad log: {log.error})")
                    msg = f"{r.error.upper()}, see {r.logfile}"
                ndone += 1
                print(f"[{ndone}/{total}] {r.arch} {r.variant.label} s{r.seed}: {msg} | "
                      f"elapsed {fmt_time(time.time() - t0)}, ETA {fmt_time(eta(running))}",
                      flush=True)
    except BaseException as e:                   # Ctrl-C, kill, or an error here (disk full)
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a 2nd Ctrl-C must not cut the saves short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"\n{'interrupted' if isinstance(e, KeyboardInterrupt) else 'error'}: "
              f"stopping {len(running)} running job(s) ...", flush=True)
        for r in running:
            try:
                os.killpg(r.proc.pid, signal.SIGINT)   # the trainer saves a checkpoint, exits
            except ProcessLookupError:
                pass
        deadline = time.time() + 60              # a hope step at -j 1 can take seconds
        for r in running:
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait()
        if not isinstance(e, KeyboardInterrupt):
            raise
        return False
    return True


def last_line(path, width=120):
    """The last line a run printed (its error message, usually), shortened to width."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [l for l in lines if l and not l.startswith("$ ") and not l.startswith("(run ")]
    last = lines[-1] if lines else ""
    return last[:width - 3] + "..." if len(last) > width else last


def analysis_path(out, arch, variant):
    return os.path.join(out, f"{arch}_{variant.name}_analysis.jsonl")


def analysis_command(args, targs, arch, variant, seed):
    extra = []
    for f in ("--val", "--eval-batches"):
        v = flag_value(targs, f)
        if v is not None:
            extra += [f, v]
    ckpt = os.path.join(args.out, f"{arch}_{variant.name}_s{seed}.ckpt")
    return ckpt, [args.trainer, "--load", ckpt, "--analyze", "--log",
                  analysis_path(args.out, arch, variant), *extra]


def run_analysis(archs, variants, seed, args, targs):
    """train_tlm --load <first-seed checkpoint> --analyze, once per architecture and schedule."""
    for arch in archs:
        for v in variants:
            ckpt, cmd = analysis_command(args, targs, arch, v, seed)
            out = analysis_path(args.out, arch, v)
            src = RunLog(ckpt[:-5] + ".jsonl")
            if src.status != "ok" or not os.path.exists(ckpt):
                print(f"analysis {arch} {v.label}: skipped (s{seed} did not finish, or its "
                      f"checkpoint is gone)")
                continue
            if RunLog(out).status == "ok" and os.path.getmtime(out) >= os.path.getmtime(ckpt):
                continue                          # up to date
            if os.path.exists(out):
                os.remove(out)                    # the trainer appends
            with open(out[:-6] + ".log", "w") as lf:
                lf.write(f"$ {shlex.join(cmd)}\n")
                lf.flush()
                rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT).returncode
            if rc != 0 or RunLog(out).status != "ok":
                print(f"analysis {arch} {v.label}: FAILED (exit {rc}, see {out[:-6]}.log)")


# ------------------------------------ statistics ---------------------------------------
# t(0.975, df): the two-sided 95% quantile of Student's t, tabulated for df = 1..30; beyond,
# the Cornish-Fisher expansion in 1/df around the normal quantile z (error < 1e-4 at df 31).
T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423]
Z975 = 1.959963984540054


def t975(df):
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def mean_std(xs):
    """Mean and sample standard deviation (None for a single value)."""
    xs = list(xs)
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None)


class Paired:
    """The paired differences d_s = loss(schedule, seed s) - loss(uniform, seed s) over the
    seeds where both runs finished; mean, 95% interval mean ± t(0.975, n-1) sd / sqrt(n)."""
    def __init__(self, diffs):
        self.diffs, self.n = diffs, len(diffs)
        self.mean, self.sd = mean_std(diffs.values()) if diffs else (None, None)
        self.lo = self.hi = None
        if self.n >= 2:
            half = t975(self.n - 1) * self.sd / math.sqrt(self.n)
            self.lo, self.hi = self.mean - half, self.mean + half
        self.same_sign = sum(1 for d in diffs.values() if d != 0 and (d > 0) == (self.mean > 0))

    @property
    def distinguishable(self):
        return self.lo is not None and (self.lo > 0 or self.hi < 0)

    def verdict(self):
        if self.n == 0:
            return "—"
        if self.distinguishable:
            return f"distinguishable from uniform ({'worse' if self.mean > 0 else 'better'})"
        return "not distinguishable" + (" (1 pair, no interval)" if self.n == 1 else "")

    def interval(self):
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean:+.4f} (1 pair)"
        return f"{self.mean:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}]"


def run_problem(log):
    return log.status + (f" ({log.error})" if log.error and log.status != "missing" else "")


class Cell:
    """One architecture x schedule: its runs' logs, the finished seeds' final val losses,
    and (for every schedule but uniform) the comparison with uniform."""
    def __init__(self, out, arch, variant, seeds, errors):
        self.arch, self.variant = arch, variant
        self.logs = {s: RunLog(os.path.join(out, f"{arch}_{variant.name}_s{s}.jsonl"))
                     for s in seeds}
        self.ok = {s: lg.final_loss for s, lg in self.logs.items() if lg.status == "ok"}
        self.failed = {s: errors.get((arch, variant.name, s)) or run_problem(lg)
                       for s, lg in self.logs.items() if lg.status != "ok"}
        self.mean, self.std = mean_std(self.ok.values()) if self.ok else (None, None)
        self.params = {self.logs[s].config.get("params") for s in self.ok} - {None}
        self.paired = None

    def compare(self, base):
        self.paired = Paired({s: self.ok[s] - base.ok[s] for s in sorted(self.ok) if s in base.ok})


def build_cells(archs, variants, seeds, out, errors):
    """Returns ({(arch, schedule name): Cell}, warnings)."""
    cells, warns = {}, []
    for a in archs:
        row = [Cell(out, a, v, seeds, errors) for v in variants]
        base = next((c for c in row if c.variant.name == BASELINE), None)
        for c in row:
            cells[(a, c.variant.name)] = c
            if base is not None and c is not base:
                c.compare(base)
        allp = set().union(*(c.params for c in row))
        if len(allp) > 1:
            warns.append(f"!!! PARAMETER MISMATCH in {a}: " + ", ".join(
                f"{c.variant.name}={'/'.join(map(str, sorted(c.params)))}" for c in row))
        toks = {lg.curve()[-1][0] for c in row for s, lg in c.logs.items() if s in c.ok and lg.vals}
        if len(toks) > 1:
            warns.append(f"!!! TOKEN BUDGET MISMATCH in {a}: final val records at "
                         f"{sorted(toks)} tokens")
    return cells, warns


def md_table(head, rows):
    width = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, width)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in width) + "|"
    return [line(head), rule] + [line(r) for r in rows]


def results_table(cells, archs, variants, seeds):
    head = ["arch", "schedule", "params", "val loss (mean ± std)", "ppl",
            f"Δ vs {BASELINE} [95% CI]", "same sign / pairs", "verdict", "seeds"]
    rows = []
    for a in archs:
        mismatch = len(set().union(*(cells[(a, v.name)].params for v in variants))) > 1
        for v in variants:
            c = cells[(a, v.name)]
            pstr = "/".join(f"{p:,}" for p in sorted(c.params)) or "—"
            seedcol = f"{len(c.ok)}/{len(seeds)}" + (
                " (" + ", ".join(f"s{s} {why.split(' ')[0]}" for s, why in c.failed.items()) + ")"
                if c.failed else "")
            if not c.ok:
                rows.append([a, v.label, pstr] + ["—"] * 4 + ["no finished runs", seedcol])
                continue
            p = c.paired
            if v.name == BASELINE:
                delta, sign, verdict = "—", "—", "baseline"
            elif p is None:
                delta, sign, verdict = "—", "—", f"no {BASELINE} runs"
            else:
                delta, sign = p.interval(), (f"{p.same_sign}/{p.n}" if p.n else "—")
                verdict = p.verdict() if p.n else f"no pairs with {BASELINE}"
            loss = f"{c.mean:.4f}" + ("" if c.std is None else f" ± {c.std:.4f}")
            rows.append([a, v.label, pstr + (" ⚠" if mismatch else ""), loss,
                         f"{math.exp(c.mean):.3f}", delta, sign, verdict, seedcol])
    return md_table(head, rows)


def failures(cells):
    return [f"{c.arch} {c.variant.label} s{s}: {why}" for c in cells.values()
            for s, why in c.failed.items() if not why.startswith("missing")]


ANALYSIS_COLS = [("layer", "layer", "{}"), ("mlp width", "mlp_width", "{}"),   # title, key, format
                 ("rel upd mixer", "rel_update_mixer", "{:.4f}"),
                 ("rel upd mlp", "rel_update_mlp", "{:.4f}"), ("rel upd", "rel_update", "{:.4f}"),
                 ("cos sim", "cos_sim", "{:.4f}"),
                 ("cos(mlp, resid)", "cos_mlp_residual", "{:.4f}"),
                 ("Δloss skip mlp", "dloss_skip_mlp", "{:+.4f}"),
                 ("Δloss skip layer", "dloss_skip_layer", "{:+.4f}")]


def analysis_table(arch, label, log):
    recs = sorted(log.analysis, key=lambda r: r.get("layer", 0))
    cols = [c for c in ANALYSIS_COLS if any(k == c[1] for r in recs for k in r)]
    rows = [[c[0] for c in cols]] + [[f.format(r[k]) if is_number(r.get(k)) else "?"
                                      for _, k, f in cols] for r in recs]
    w = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    val = (log.done or {}).get("val_loss")
    return [f"{arch}, {label} (first seed's checkpoint, val loss "
            f"{val:.4f}):" if is_number(val) else f"{arch}, {label} (first seed's checkpoint):"] + \
           ["  " + "  ".join(c.rjust(x) for c, x in zip(r, w)) for r in rows]


def alignment_table(arch, alogs):
    """Markdown: cos(MLP output, residual stream) per layer (columns) and schedule (rows)."""
    L = max(len(lg.analysis) for lg in alogs.values())
    rows = []
    for v, lg in alogs.items():
        recs = sorted(lg.analysis, key=lambda r: r.get("layer", 0))
        cos = [f"{r['cos_mlp_residual']:.3f}" if is_number(r.get("cos_mlp_residual")) else "?"
               for r in recs]
        widths = "/".join(str(r.get("mlp_width", "?")) for r in recs)
        rows.append([arch, v.label, widths] + cos + [""] * (L - len(cos)))
    return md_table(["arch", "schedule", "MLP widths"] + [f"layer {i}" for i in range(L)], rows)


# ------------------------------------ SVG plotting -------------------------------------
def el(name, text=None, **attrs):
    """One SVG element: el('line', x1=0.0, stroke_width=2) -> <line x1='0' stroke-width='2'/>
    (underscores become dashes; numbers are rounded to 0.01); text is escaped."""
    fmt = lambda v: f"{round(v, 2):g}" if isinstance(v, float) else str(v)
    a = " ".join(f"{k.replace('_', '-')}='{fmt(v)}'" for k, v in attrs.items())
    return f"<{name} {a}/>" if text is None else f"<{name} {a}>{escape(str(text))}</{name}>"


def nice_ticks(lo, hi, n=5):
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1e-9 + abs(lo) * 1e-3
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t, out = math.ceil(lo / step - 1e-9) * step, []
    while t <= hi + step * 1e-9:
        out.append(round(t, 12))
        t += step
    return out, step


def fmt_num(v, step):
    """v with just enough decimals to tell ticks `step` apart (2.5 -> 1 decimal)."""
    nd = next(d for d in range(7) if abs(step * 10 ** d - round(step * 10 ** d)) < 1e-6 or d == 6)
    return f"{v:.{nd}f}"


def fmt_tokens(v, step):
    if v == 0:
        return "0"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if max(abs(v), step) >= div:
            return fmt_num(v / div, step / div) + suf
    return fmt_num(v, step)


class Panel:
    """A plot area at (x, y, w, h) in SVG pixels with data limits; appends to svg list."""
    def __init__(self, svg, x, y, w, h, xlim, ylim, ylog=False):
        self.svg, self.x, self.y, self.w, self.h, self.ylog = svg, x, y, w, h, ylog
        self.xlim, self.ylim = xlim, ylim
        self.clip = f"c{len(svg)}"
        box = el("rect", x=x, y=y, width=w, height=h)
        svg.append(f"<clipPath id='{self.clip}'>{box}</clipPath>")
        self.clipped = f"url(#{self.clip})"

    def px(self, v):
        return self.x + (v - self.xlim[0]) / ((self.xlim[1] - self.xlim[0]) or 1) * self.w

    def py(self, v):
        lo, hi = self.ylim
        if self.ylog:
            v, lo, hi = math.log10(max(v, 1e-12)), math.log10(lo), math.log10(hi)
        return self.y + self.h - (v - lo) / ((hi - lo) or 1) * self.h

    def frame(self, title, xlabel, ylabel, xfmt=fmt_num, xticks=None):
        """Grid lines, ticks (a tick label's optional second line is small and grey), box,
        title and axis labels."""
        s, x, y, w, h = self.svg, self.x, self.y, self.w, self.h
        lo, hi = self.ylim
        if self.ylog:
            a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            yt = [(10.0 ** e, f"{10.0 ** e:g}") for e in range(a, b + 1) if lo <= 10 ** e <= hi]
        else:
            ticks, step = nice_ticks(lo, hi)
            yt = [(t, fmt_num(t, step)) for t in ticks if lo <= t <= hi]
        for v, lab in yt:
            yy = self.py(v)
            s.append(el("line", x1=x, x2=x + w, y1=yy, y2=yy, stroke="#e4e4e4"))
            s.append(el("text", lab, x=x - 6, y=yy + 4, text_anchor="end", font_size=11))
        if xticks is None:
            ticks, step = nice_ticks(*self.xlim)
            xticks = [(t, xfmt(t, step)) for t in ticks if self.xlim[0] <= t <= self.xlim[1]]
        for v, lab in xticks:
            xx = self.px(v)
            s.append(el("line", x1=xx, x2=xx, y1=y + h, y2=y + h + 4, stroke="#333"))
            first, _, second = lab.partition("\n")
            s.append(el("text", first, x=xx, y=y + h + 17, text_anchor="middle", font_size=11))
            if second:
                s.append(el("text", second, x=xx, y=y + h + 29, text_anchor="middle", font_size=9,
                            fill="#666"))
        two = any("\n" in lab for _, lab in xticks)
        s.append(el("rect", x=x, y=y, width=w, height=h, fill="none", stroke="#333"))
        s.append(el("text", title, x=x + w / 2, y=y - 8, text_anchor="middle", font_size=13,
                    font_weight="bold"))
        s.append(el("text", xlabel, x=x + w / 2, y=y + h + (46 if two else 34),
                    text_anchor="middle", font_size=11.5))
        cx, cy = x - 52, y + h / 2
        s.append(el("text", ylabel, x=cx, y=cy, text_anchor="middle", font_size=11.5,
                    transform=f"rotate(-90 {cx} {cy})"))

    def points(self, pts):
        return " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in pts)

    def line(self, pts, color, width=2, marker=False):
        self.svg.append(el("polyline", points=self.points(pts), fill="none", stroke=color,
                           stroke_width=width, clip_path=self.clipped))
        if marker:
            for x, y in pts:
                self.dot(x, y, color, 3)

    def band(self, xs, lo, hi, color):
        """The area between the curves lo(xs) and hi(xs)."""
        outline = list(zip(xs, hi)) + list(zip(xs, lo))[::-1]
        self.svg.append(el("polygon", points=self.points(outline), fill=color, fill_opacity=0.18,
                           stroke="none", clip_path=self.clipped))

    def dot(self, x, y, color, r=3, hollow=False):
        self.svg.append(el("circle", cx=self.px(x), cy=self.py(y), r=r,
                           fill="white" if hollow else color, stroke=color,
                           stroke_width=2 if hollow else 0, clip_path=self.clipped))

    def errbar(self, x, lo, hi, color, cap=5):
        """A vertical interval [lo, hi] at x, with caps."""
        xx, ya, yb = self.px(x), self.py(lo), self.py(hi)
        d = f"M{xx:.1f},{ya:.1f}V{yb:.1f}" + "".join(f"M{xx - cap:.1f},{yy:.1f}h{2 * cap}"
                                                     for yy in (ya, yb))
        self.svg.append(el("path", d=d, stroke=color, stroke_width=1.6, fill="none",
                           clip_path=self.clipped))

    def zero(self):
        yy = self.py(0)
        self.svg.append(el("line", x1=self.x, x2=self.x + self.w, y1=yy, y2=yy, stroke="#333",
                           stroke_dasharray="5,4"))

    def label(self, x, y, text, dx=0, dy=0, **attrs):
        self.svg.append(el("text", text, x=self.px(x) + dx, y=self.py(y) + dy, **attrs))


def legend(svg, x, y, items, maxw):
    """items: (label, color, kind), kind 'line' | 'band' | 'bar' | 'ci' | 'dot' | 'hollow';
    wraps to a new row past maxw pixels. Returns the y of the last row."""
    x0 = x
    for label, color, kind in items:
        w = 40 + 6.5 * len(label)
        if x > x0 and x + w - x0 > maxw:
            x, y = x0, y + 20
        if kind == "line":
            svg.append(el("line", x1=x, x2=x + 24, y1=y, y2=y, stroke=color, stroke_width=2.5))
        elif kind == "ci":
            d = f"M{x + 12},{y - 8}V{y + 8}M{x + 7},{y - 8}h10M{x + 7},{y + 8}h10"
            svg.append(el("path", d=d, stroke=color, stroke_width=1.6, fill="none"))
            svg.append(el("circle", cx=x + 12, cy=y, r=4, fill=color))
        elif kind == "dot":
            svg.append(el("circle", cx=x + 12, cy=y, r=2.5, fill=color))
        elif kind == "hollow":
            svg.append(el("circle", cx=x + 12, cy=y, r=4, fill="white", stroke=color,
                          stroke_width=2))
        else:
            svg.append(el("rect", x=x, y=y - 6, width=24, height=12, fill=color,
                          fill_opacity=0.18 if kind == "band" else 1))
        svg.append(el("text", label, x=x + 30, y=y + 4, font_size=12))
        x += w
    return y


def figure(title, ncols, pw, gap, ml=80):
    """Starts a figure of ncols panels: returns (svg list, total width, left margin)."""
    W = max(ml + ncols * (pw + gap) - gap + 25, 560,   # wide enough for the panels and for
            round(len(title) * 10.5) + 40)               # the title (bold 17 px: ~10.5 px a letter)
    head = el("text", title, x=W / 2, y=26, text_anchor="middle", font_size=17, font_weight="bold")
    return [head], W, ml


def no_data(svg, x, y, text):
    svg.append(el("text", text, x=x, y=y, text_anchor="middle", font_size=13))


def write_svg(path, W, H, body):
    with open(path, "w") as f:
        f.write(f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
                f"viewBox='0 0 {W} {H}' {FONT}>\n"
                + el("rect", width="100%", height="100%", fill="white") + "\n"
                + "\n".join(body) + "\n</svg>\n")
    return path


def seed_stats(logs):
    """Mean/min/max over the finished seeds at every eval step all of them have."""
    curves = [lg.curve() for lg in logs.values() if lg.status == "ok" and lg.vals]
    if not curves:
        return None
    n = min(len(c) for c in curves)
    rows = [[c[i] for c in curves] for i in range(n)]
    return ([r[0][0] for r in rows], [sum(p[1] for p in r) / len(r) for r in rows],
            [min(p[1] for p in r) for r in rows], [max(p[1] for p in r) for r in rows], len(curves))


def plot_curves(cells, archs, variants, path, title):
    """Val loss vs tokens: row 1 the whole run, row 2 the last 40% of tokens (where the
    schedules separate). One column per architecture."""
    PW, PH, GAP = (300 if len(archs) > 2 else 420), 215, 75
    svg, W, ML = figure(title, len(archs), PW, GAP)
    banded = variants if len(variants) <= 4 else [v for v in variants if v.name == BASELINE]
    band = "min–max over seeds" + ("" if banded == variants else f" ({BASELINE})")
    items = [(v.label, v.color, "line") for v in variants] + [(band, "#777", "band")]
    MT = legend(svg, ML, 56, items, W - ML - 20) + 36
    H = MT + 2 * PH + GAP + 10 + 50
    for col, a in enumerate(archs):
        stats = {v: seed_stats(cells[(a, v.name)].logs) for v in variants}
        stats = {v: s for v, s in stats.items() if s}
        x0 = ML + col * (PW + GAP)
        if not stats:
            no_data(svg, x0 + PW / 2, MT + PH / 2, f"{a}: no finished runs")
            continue
        tmax = max(s[0][-1] for s in stats.values()) or 1
        for row, frac in enumerate((0.0, 0.6)):
            sel = {v: [i for i, x in enumerate(s[0]) if x >= frac * tmax]
                      or list(range(len(s[0])))[-2:] for v, s in stats.items()}
            # y range: everything in the zoom; in the full view ignore the first 20% (the
            # initial loss would squash the interesting part), lines are clipped instead
            ysel = {v: [i for i in idx if row == 1 or stats[v][0][i] >= 0.2 * tmax] or idx
                    for v, idx in sel.items()}
            lo = min(stats[v][2][i] for v in stats for i in ysel[v])
            hi = max(stats[v][3][i] for v in stats for i in ysel[v])
            pad = (hi - lo) * 0.08 or 0.01
            xlo = min(stats[v][0][sel[v][0]] for v in stats)
            p = Panel(svg, x0, MT + row * (PH + GAP + 10), PW, PH, (xlo, tmax),
                      (lo - pad, hi + pad))
            n = max(s[4] for s in stats.values())
            p.frame(f"{a}" if row == 0 else f"{a}: last 40% of tokens", "training tokens",
                    "val loss" + (f" (mean of {n} seeds)" if n > 1 else ""), xfmt=fmt_tokens)
            for v, s in stats.items():
                xs = [s[0][i] for i in sel[v]]
                if s[4] > 1 and v in banded:      # many overlapping bands would hide the lines
                    p.band(xs, [s[2][i] for i in sel[v]], [s[3][i] for i in sel[v]], v.color)
                p.line(list(zip(xs, [s[1][i] for i in sel[v]])), v.color, marker=(row == 1))
    return write_svg(path, W, H, svg)


def delta_limits(paired):
    """y limits around 0, every interval and every seed's difference."""
    vals = [0.0] + [d for p in paired for d in p.diffs.values()] + \
           [x for p in paired for x in (p.lo, p.hi) if x is not None]
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.1 or 0.01
    return lo - pad, hi + pad


def ci_marker(p, x, pr, color):
    """A comparison's mean with its 95% interval; the dot filled where the interval excludes 0."""
    if pr.lo is not None:
        p.errbar(x, pr.lo, pr.hi, color)
    p.dot(x, pr.mean, color, 5, hollow=not pr.distinguishable)


CI_LEGEND = [("mean, 95% CI: distinguishable from uniform", "#333", "ci"),
             ("not distinguishable", "#333", "hollow")]


def plot_effects(cells, archs, variants, path, title):
    """Per architecture: each schedule's paired Δ vs uniform, every seed's difference (grey
    dots) and the mean with its 95% interval (filled where the interval excludes 0)."""
    comps = [v for v in variants if v.name != BASELINE]
    PW, PH, GAP = max(240, 105 * len(comps)), 260, 85
    svg, W, ML = figure(title, len(archs), PW, GAP)
    MT = legend(svg, ML, 56, CI_LEGEND + [("one seed's Δ", "#999", "dot")], W - ML - 20) + 40
    H = MT + PH + 70
    for col, a in enumerate(archs):
        x0 = ML + col * (PW + GAP)
        got = [(i, v, cells[(a, v.name)].paired) for i, v in enumerate(comps)]
        got = [(i, v, pr) for i, v, pr in got if pr is not None and pr.n]
        if not got:
            no_data(svg, x0 + PW / 2, MT + PH / 2, f"{a}: no pairs with {BASELINE}")
            continue
        ylim = delta_limits([pr for _, _, pr in got])
        p = Panel(svg, x0, MT, PW, PH, (-0.5, len(comps) - 0.5), ylim)
        npairs = {v.name: pr.n for _, v, pr in got}
        xt = [(i, (v.label.replace(v.detail, "").strip() or v.label) + "\n" +
               (f"{v.detail} · " if v.detail else "") + f"n={npairs.get(v.name, 0)}")
              for i, v in enumerate(comps)]
        p.frame(a, "schedule (n = seed pairs)", f"Δ val loss vs {BASELINE} (nats)", xticks=xt)
        p.zero()
        for i, v, pr in got:
            ds = list(pr.diffs.values())
            for j, d in enumerate(ds):                # the seeds, spread left of the interval
                p.dot(i - 0.2 + (j - (len(ds) - 1) / 2) * min(0.05, 0.25 / len(ds)), d, "#999", 2.5)
            ci_marker(p, i + 0.08, pr, v.color)
            p.label(i + 0.08, pr.mean, f"{pr.mean:+.3f}", dx=9, dy=4, font_size=10, fill="#333")
    return write_svg(path, W, H, svg)


def plot_ucurve(cells, archs, variants, path, title):
    """The ratios grid: Δ vs uniform against the start/end multiples, one line per schedule
    family with 95% intervals, through uniform (1/1, Δ = 0)."""
    fams = [f for f in FAMILIES if any(v.family == f for v in variants)]
    ratio = {s: e for s, e in RATIOS if any(v.x == s for v in variants)}   # start -> end
    PW, PH, GAP = 440, 300, 85
    svg, W, ML = figure(title, len(archs), PW, GAP)
    items = [(f, FAMILIES[f][1], "line") for f in fams] + CI_LEGEND
    MT = legend(svg, ML, 56, items, W - ML - 20) + 40
    H = MT + PH + 70
    xlim = (0.9, max(ratio, default=1.75) + 0.1)
    xt = [(1.0, "1/1\nuniform")] + [(s, f"{s:g}/{e:g}") for s, e in sorted(ratio.items())]
    for col, a in enumerate(archs):
        x0 = ML + col * (PW + GAP)
        got = {f: [(v, cells[(a, v.name)].paired) for v in variants if v.family == f] for f in fams}
        got = {f: [(v, pr) for v, pr in vs if pr is not None and pr.n] for f, vs in got.items()}
        allp = [pr for vs in got.values() for _, pr in vs]
        if not allp:
            no_data(svg, x0 + PW / 2, MT + PH / 2, f"{a}: no pairs with {BASELINE}")
            continue
        lo, hi = delta_limits(allp)
        p = Panel(svg, x0, MT, PW, PH, xlim, (min(lo, -(hi - lo) * 0.05), hi))
        p.frame(a, "first / last layer's width (multiples of H)",
                f"Δ val loss vs {BASELINE} (nats)", xticks=xt)
        p.zero()
        for k, f in enumerate(fams):
            off = (k - (len(fams) - 1) / 2) * 0.022          # side by side, so the bars stay apart
            p.line([(1.0, 0.0)] + [(v.x + off, pr.mean) for v, pr in got[f]], FAMILIES[f][1])
            for v, pr in got[f]:
                ci_marker(p, v.x + off, pr, FAMILIES[f][1])
        p.dot(1.0, 0.0, "#444444", 5)
    return write_svg(path, W, H, svg)


def plot_analysis(alogs, path):
    """Per architecture (uniform model): Δ val loss when skipping a layer's MLP / the whole
    layer (bars), and the relative update |dx|/|x| of mixer, MLP and layer (lines)."""
    archs = list(alogs)
    PW, PH, GAP = 300, 215, 80
    svg, W, ML = figure(f"Layer contributions ({BASELINE} model, first seed)", len(archs), PW, GAP)
    bars = [("skip MLP", "dloss_skip_mlp", "#1f6fd1"),
            ("skip whole layer", "dloss_skip_layer", "#ff7f0e")]
    lines = [("rel. update mixer", "rel_update_mixer", "#2ca02c"),
             ("rel. update MLP", "rel_update_mlp", "#9467bd"),
             ("rel. update layer", "rel_update", "#444444")]
    items = [(l, c, "bar") for l, _, c in bars] + [(l, c, "line") for l, _, c in lines]
    MT = legend(svg, ML, 56, items, W - ML - 20) + 36
    H = MT + 2 * PH + GAP + 10 + 50
    get = lambda r, k: r.get(k) if is_number(r.get(k)) else 0.0
    for col, a in enumerate(archs):
        recs = sorted(alogs[a].analysis, key=lambda r: r.get("layer", 0))
        x0, L = ML + col * (PW + GAP), len(recs)
        every = 1 if L <= 12 else 2 if L <= 24 else 4      # thin out ticks of deep models
        xt = [(i, f"{r.get('layer', i)}\n{r.get('mlp_width', '?')}") for i, r in enumerate(recs)
              if i % every == 0]
        vals = [get(r, k) for r in recs for _, k, _ in bars]
        lo, hi = min(0.0, *vals), max(0.0, *vals)
        pad = (hi - lo) * (0.22 if L <= 8 else 0.08) or 0.01    # room for the value labels
        p = Panel(svg, x0, MT, PW, PH, (-0.5, L - 0.5), (lo - (pad if lo < 0 else 0), hi + pad))
        p.frame(f"{a}: Δ val loss when skipped", "layer / MLP width", "Δ val loss", xticks=xt)
        bw = 0.8 / len(bars)
        for i, r in enumerate(recs):
            for j, (_, k, c) in enumerate(bars):
                v = get(r, k)
                xa, xb = p.px(i - 0.4 + j * bw), p.px(i - 0.4 + (j + 1) * bw)
                ya, yb = sorted((p.py(0), p.py(v)))
                svg.append(el("rect", x=xa, y=ya, width=xb - xa - 1, height=max(yb - ya, 0.5),
                              fill=c))
                if L <= 8:                        # value labels keep tiny bars readable
                    lx, ly = (xa + xb) / 2 + 3, (ya - 3 if v >= 0 else yb + 3)
                    svg.append(el("text", f"{v:.2g}", x=lx, y=ly, font_size=9, fill="#333",
                                  text_anchor="start" if v >= 0 else "end",
                                  transform=f"rotate(-90 {lx:.1f} {ly:.1f})"))
        vals = [get(r, k) for r in recs for _, k, _ in lines if get(r, k) > 0]
        lo, hi = (min(vals), max(vals)) if vals else (0.1, 1)
        log = hi / lo > 30
        ylim = ((10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))) if log
                else (0, hi * 1.1))
        p = Panel(svg, x0, MT + PH + GAP + 10, PW, PH, (-0.5, L - 0.5), ylim, ylog=log)
        p.frame(f"{a}: relative update |Δx|/|x|", "layer / MLP width",
                "|Δx| / |x|" + (" (log)" if log else ""), xticks=xt)
        for _, k, c in lines:
            p.line([(i, get(r, k)) for i, r in enumerate(recs)], c, marker=True)
    return write_svg(path, W, H, svg)


def plot_alignment(alogs, path):
    """The alignment probe: cos(MLP output, residual stream it is added to) per layer, one
    line per schedule (first seed's checkpoint), one panel per architecture."""
    archs = list(alogs)
    variants = list({v.name: v for a in archs for v in alogs[a]}.values())
    PW, PH, GAP = (300 if len(archs) > 2 else 420), 260, 80
    svg, W, ML = figure("Alignment probe: cos(MLP output, residual stream) per layer", len(archs),
                        PW, GAP)
    MT = legend(svg, ML, 56, [(v.label, v.color, "line") for v in variants], W - ML - 20) + 40
    H = MT + PH + 60
    for col, a in enumerate(archs):
        curves = {v: [(r.get("layer", i), r["cos_mlp_residual"]) for i, r in
                      enumerate(sorted(lg.analysis, key=lambda r: r.get("layer", 0)))
                      if is_number(r.get("cos_mlp_residual"))] for v, lg in alogs[a].items()}
        vals = [y for c in curves.values() for _, y in c]
        L = max(x for c in curves.values() for x, _ in c) + 1
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.1 or 0.02
        p = Panel(svg, ML + col * (PW + GAP), MT, PW, PH, (-0.3, L - 0.7), (lo - pad, hi + pad))
        every = 1 if L <= 12 else 2 if L <= 24 else 4
        p.frame(a, "layer", "cos(MLP output, residual)",
                xticks=[(i, str(i)) for i in range(0, L, every)])
        for v, c in curves.items():
            p.line(c, v.color, marker=True)
    return write_svg(path, W, H, svg)


def machine():
    """'Intel(R) Xeon(R) Processor (family 6 model 207), 2 cores': where the table was made."""
    name, fam, model = "unknown CPU", "?", "?"
    try:
        for line in open("/proc/cpuinfo"):
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "model name": name = val
            elif key == "cpu family": fam = val
            elif key == "model": model = val
            elif not key and name != "unknown CPU": break      # the first processor is enough
    except OSError:
        pass
    return f"{name} (family {fam} model {model}), {os.cpu_count()} cores"


def code_version(trainer):
    """The git commit of the trainer's checkout ('+ changes' when train_tlm.c differs from it)."""
    where = os.path.dirname(os.path.abspath(trainer))
    try:
        run = lambda *a: subprocess.run(["git", "-C", where, *a], capture_output=True, text=True,
                                        timeout=10)
        head = run("rev-parse", "--short", "HEAD")
        if head.returncode:
            return "code version unknown"
        dirty = run("diff", "--quiet", "HEAD", "--", "train_tlm.c").returncode
        return f"code at commit {head.stdout.strip()}" + (" + changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "code version unknown"


def run_minutes(cells):
    """The finished runs' training time (their `done` events' seconds) summed, in minutes."""
    secs = [(lg.done or {}).get("seconds") for c in cells.values() for lg in c.logs.values()]
    return sum(d for d in secs if isinstance(d, (int, float))) / 60


def svg_to_png(svg):
    """SVG -> PNG with the first converter that works (rsvg-convert, ImageMagick); None if none."""
    png = svg[:-4] + ".png"
    if os.path.exists(png):                       # never leave a PNG of an older report
        os.remove(png)
    for cmd in (["rsvg-convert", "-b", "white", "-o", png, svg], ["magick", svg, png],
                ["convert", svg, png]):
        if shutil.which(cmd[0]):
            try:
                r = subprocess.run(cmd, capture_output=True, timeout=120)
            except subprocess.TimeoutExpired:
                continue
            if r.returncode == 0 and os.path.isfile(png) and os.path.getsize(png) > 0:
                return png
            if os.path.exists(png):
                os.remove(png)
    return None


# ------------------------------------ the report ---------------------------------------
STATS_NOTE = (
    "val loss: the final validation loss (`done` event), mean ± sample std over the finished "
    "seeds; ppl = exp(mean). Δ: the mean of the per-seed differences to {b} (same architecture "
    "and seed; negative = lower loss than {b}) and its 95% confidence interval, "
    "mean ± t(0.975, n−1)·sd/√n (Student t) over the n seed pairs where both runs finished. "
    "same sign / pairs: how many of the n pairs have the sign of the mean. verdict: "
    "\"distinguishable from {b}\" only where the interval excludes 0. Diverged or failed runs "
    "are left out of the pairs.").format(b=BASELINE)


def load_analyses(out, archs, variants):
    """{arch: {variant: RunLog}} of the finished analysis logs."""
    got = {}
    for a in archs:
        logs = {v: RunLog(analysis_path(out, a, v)) for v in variants}
        logs = {v: lg for v, lg in logs.items() if lg.status == "ok" and lg.analysis}
        if logs:
            got[a] = logs
    return got


def report(grid, archs, variants, seeds, args, targs, errors):
    """Prints the results table; writes results.md and the figures (SVG, PNG if possible)."""
    out, made = args.out, []
    where = read_manifest(os.path.join(out, "ablation.json")) or {}   # machine, code version
    cells, warns = build_cells(archs, variants, seeds, out, errors)
    table, fails = results_table(cells, archs, variants, seeds), failures(cells)
    print("\n" + "\n".join(table))
    if fails:
        print("left out of the pairs:\n  " + "\n  ".join(fails))
    for w in warns:
        print(w, file=sys.stderr)

    def image(svg, what):                         # the figure as PNG too; its markdown link
        png = svg_to_png(svg)
        made.extend([svg] + ([png] if png else []))
        return f"![{what}]({os.path.basename(png or svg)})"

    doc = [f"# Taper ablation: `--grid {grid}`", "",
           f"{time.strftime('%Y-%m-%d %H:%M')}, trainer `{args.trainer}` "
           f"({where.get('code') or 'code version not recorded'}), "
           f"{where.get('machine') or 'machine not recorded'}; the runs took {run_minutes(cells):.0f} min summed; "
           f"seeds {seeds[0]}..{seeds[-1]}, trainer flags:", "", "    " + shlex.join(targs), ""]
    doc += table + ["", STATS_NOTE, ""]
    if fails:
        doc += ["Left out of the pairs:", ""] + [f"- {f}" for f in fails] + [""]
    doc += [f"**{w}**\n" for w in warns]
    nseeds = f"{len(seeds)} seed{'s' * (len(seeds) > 1)}"
    effects = os.path.join(out, "effects.svg")
    if grid == "ratios":
        plot_ucurve(cells, archs, variants, effects,
                    f"Schedule x ratio: Δ val loss vs {BASELINE} with 95% CI ({nseeds})")
    else:
        plot_effects(cells, archs, variants, effects,
                     f"{grid} grid: Δ val loss vs {BASELINE} with 95% CI ({nseeds})")
    curves = plot_curves(cells, archs, variants, os.path.join(out, "loss_curves.svg"),
                         f"Validation loss vs training tokens ({nseeds})")
    doc += [image(effects, f"Δ vs {BASELINE} with 95% CI"), "",
            image(curves, "val loss vs training tokens"), ""]

    alogs = load_analyses(out, archs, variants)
    base = {a: lg for a, lgs in alogs.items() for v, lg in lgs.items() if v.name == BASELINE}
    if base:
        text = [line for a, lg in base.items() for line in analysis_table(a, BASELINE, lg) + [""]]
        print("\nLayer contributions (|Δx|/|x| per sublayer, cos(x, x'), Δ val loss when "
              "skipped):")
        print("\n".join(text))
        svg = plot_analysis(base, os.path.join(out, "analysis.svg"))
        doc += ["## Layer contributions", "", "```"] + text + ["```", ""]
        doc += [image(svg, "layer contributions"), ""]
    probe = lambda lg: any(is_number(r.get("cos_mlp_residual")) for r in lg.analysis)
    aligned = {a: {v: lg for v, lg in lgs.items() if probe(lg)} for a, lgs in alogs.items()}
    aligned = {a: lgs for a, lgs in aligned.items() if lgs}
    if aligned:
        md = [line for a, lgs in aligned.items() for line in alignment_table(a, lgs) + [""]]
        print("Alignment probe, cos(MLP output, residual stream) per layer:\n" + "\n".join(md))
        svg = plot_alignment(aligned, os.path.join(out, "alignment.svg"))
        doc += ["## Alignment probe", "", "cos(MLP output, residual stream it is added to), "
                "averaged over positions, per layer, for the first seed's checkpoint of every "
                "schedule:", ""]
        doc += md + [image(svg, "alignment probe"), ""]
    results = os.path.join(out, "results.md")
    with open(results, "w") as f:
        f.write("\n".join(doc))
    pngs = any(m.endswith(".png") for m in made)
    nopng = "" if pngs else " (no PNG: neither rsvg-convert nor ImageMagick works here)"
    print("\nwrote " + ", ".join([results] + made) + nopng)


# ------------------------------------ command line -------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):                     # one line, no usage block
        raise UserError(f"{message} (see -h)")


def make_parser(cores):
    ap = Parser(description="Taper ablation grids for tlm.c (see the module docstring).")
    add = ap.add_argument
    grids = "; ".join(f"{g}: {what} [{'all archs' if a == ARCHS else ','.join(a)}]"
                      for g, (_, a, what) in GRIDS.items())
    add("--grid", default=None, help=f"the experiment: {grids} [taper, or the grid in --out]")
    add("--archs", default=None,
        help=f"comma-separated architectures from {','.join(ARCHS)}, or all [the grid's]")
    add("--seeds", type=int, default=None,
        help=f"seeds 1..N [{DEFAULT_SEEDS}; --quick {QUICK_SEEDS}]")
    add("--linear", action="store_true", help="taper grid: add the linear taper")
    add("--train-args", default="",
        help="extra trainer flags, e.g. '--steps 300 --dim 96'; override DEFAULT_ARGS/QUICK_ARGS")
    add("--out", default=None,
        help="output dir [dev/runs/ablation, dev/runs/ablation_GRID for the others; + _quick with --quick]")
    add("--trainer", default="./train_tlm", help="trainer binary [./train_tlm]")
    add("-j", "--jobs", type=int, default=None,
        help=f"parallel runs [--quick: one per core ({cores} here), each on one thread; else "
             f"{1 if cores < 4 else cores // 2} here: 1 below 4 cores, else cores/2]")
    add("--quick", action="store_true", help="small runs (QUICK_ARGS, QUICK_SEEDS)")
    add("--analyze", action=argparse.BooleanOptionalAction, default=None,
        help="layer analysis of every schedule's first-seed checkpoint [on; off with --quick]")
    add("--keep-checkpoints", action="store_true",
        help="keep every finished run's checkpoint [only the first seed's, for --analyze]")
    add("--retry-diverged", action="store_true",
        help="run again the runs the trainer stopped on a non-finite loss [they are skipped]")
    add("--dry-run", action="store_true", help="print the commands, run nothing")
    add("--report-only", action="store_true", help="table + plots from the logs in --out")
    add("--force", action="store_true", help="reuse an --out made with other trainer flags")
    return ap


def parse_archs(text):
    """--archs: None (the grid's default), 'all', or distinct names from ARCHS."""
    if text is None:
        return None
    if text.strip() == "all":
        return list(ARCHS)
    archs = [a.strip() for a in text.split(",")]
    known = f"{','.join(ARCHS)}, or all"
    if not any(archs):
        raise UserError(f"--archs is empty: give one or more of {known}")
    for a in archs:
        if not a:
            raise UserError(f"--archs: an empty name in {text!r}")
        if a not in ARCHS:
            raise UserError(f"--archs: unknown architecture {a!r} in {text!r} (known: {known})")
    if len(set(archs)) != len(archs):
        raise UserError(f"--archs: an architecture is named twice in {text!r}")
    return archs


def read_manifest(path):
    """ablation.json as {grid, trainer_args, archs, variants, seeds}, None if absent. Reads the
    older taper-only form ({trainer_args, archs, tapers, seeds}) too."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            m = json.load(f)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete it or use another --out")
    if isinstance(m, dict) and "variants" not in m and "tapers" in m:
        m = dict(m, variants=m["tapers"])
    if isinstance(m, dict):
        m.setdefault("grid", "taper")
    strs = lambda x: isinstance(x, list) and all(isinstance(s, str) for s in x)
    seeds = lambda x: isinstance(x, list) and all(isinstance(s, int) and s >= 1 for s in x)
    checks = [("grid", lambda g: g in GRIDS), ("trainer_args", strs), ("variants", strs),
              ("archs", lambda x: strs(x) and set(x) <= set(ARCHS)), ("seeds", seeds)]
    for key, ok in checks:
        if not isinstance(m, dict) or not ok(m.get(key)):
            raise UserError(f"{path}: not an ablation manifest (bad or missing {key!r}); "
                            f"delete it or use another --out")
    return m


def write_manifest(path, old, grid, targs, archs, variants, seeds, trainer):
    """The grid of this directory: the union with the runs made here before; the machine and
    the code version of this invocation (the report names them)."""
    def union(key, new, order):
        have = set(new) | set((old or {}).get(key, []))
        return [x for x in order if x in have]
    all_names = [v.name for v in GRIDS[grid][0](True)]
    with open(path, "w") as f:
        json.dump({"grid": grid, "trainer_args": targs, "archs": union("archs", archs, ARCHS),
                   "variants": union("variants", [v.name for v in variants], all_names),
                   "seeds": sorted(set(seeds) | set((old or {}).get("seeds", []))),
                   "machine": machine(), "code": code_version(trainer)}, f, indent=1)


def dry_run(runs, archs, variants, seeds, args, targs, threads, analyze):
    pre = f"OMP_NUM_THREADS={threads} " if threads else ""
    for r in runs:
        state = RunLog(r.jsonl).status
        r.resume = state == "incomplete" and os.path.exists(r.ckpt)
        skip_diverged = state == "diverged" and not args.retry_diverged
        tag = ("# done, skip: " if state == "ok" else "# diverged, skip: " if skip_diverged
               else "# resume: " if r.resume else "")
        print(tag + pre + shlex.join(r.command(args.trainer, targs)))
    if analyze:
        for a in archs:
            for v in variants:
                print(shlex.join(analysis_command(args, targs, a, v, seeds[0])[1]))


def main():
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    args = make_parser(cores).parse_args()
    if args.grid is not None and args.grid not in GRIDS:
        raise UserError(f"--grid: unknown grid {args.grid!r} (known: {', '.join(GRIDS)})")
    archs = parse_archs(args.archs)
    if args.jobs is not None and args.jobs < 1:
        raise UserError("-j must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        raise UserError("--seeds must be >= 1")
    if args.dry_run and args.report_only:
        raise UserError("--dry-run and --report-only exclude each other")

    # the output directory and the grid it holds
    args.out = args.out or default_out(args.grid or "taper", args.quick)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a directory")
    if args.report_only and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: no such directory, nothing to report "
                        f"(run the grid first)")
    manifest = os.path.join(args.out, "ablation.json")
    old = read_manifest(manifest)
    grid = args.grid or (old["grid"] if old else "taper")
    have_logs = os.path.isdir(args.out) and any(f.endswith(".jsonl") for f in os.listdir(args.out))
    if old and old["grid"] != grid and have_logs:
        raise UserError(f"--out {args.out} holds the {old['grid']} grid, not {grid}: use another "
                        f"--out (--grid {grid} defaults to {default_out(grid, args.quick)})")
    if args.linear and grid != "taper":
        raise UserError("--linear: only for --grid taper (the ratios grid has linear schedules)")
    make_variants, grid_archs, _ = GRIDS[grid]
    variants, archs = make_variants(args.linear), archs or list(grid_archs)

    # the trainer's flags
    try:
        extra = parse_flags(args.train_args)
    except ValueError as e:
        raise UserError(f"--train-args: {e}")
    reserved = RESERVED | ({"--taper-start", "--taper-end"} if grid == "ratios" else set())
    bad = sorted({f for f, _ in extra} & reserved)
    if bad:
        raise UserError(f"--train-args may not set {', '.join(bad)} (the {grid} grid sets "
                        f"{'it' if len(bad) == 1 else 'them'})")
    targs = merge_flags(parse_flags(QUICK_ARGS if args.quick else DEFAULT_ARGS), extra)
    seeds = list(range(1, (args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)) + 1))

    if args.report_only:                          # the grid of the last run unless given
        if not have_logs:
            raise UserError(f"--out {args.out}: no run logs (*.jsonl) to report")
        if old:
            targs = old["trainer_args"]
            archs = archs if args.archs else old["archs"] or archs
            names = set(old["variants"]) | ({"linear"} if args.linear else set())
            variants = [v for v in make_variants(True) if v.name in names] or variants
            seeds = seeds if args.seeds else sorted(old["seeds"]) or seeds
        report(grid, archs, variants, seeds, args, targs, {})
        return

    if args.jobs is None:                         # tiny quick models run best one per core
        args.jobs = cores if args.quick else (1 if cores < 4 else cores // 2)
    analyze = args.analyze if args.analyze is not None else not args.quick
    threads = max(1, cores // args.jobs) if args.jobs > 1 else None
    runs = [Run(args.out, a, v, s) for s in seeds for a in archs for v in variants]   # seed-major
    for r in runs:
        r.retry, r.keep = args.retry_diverged, r.seed == seeds[0]
    if args.dry_run:
        dry_run(runs, archs, variants, seeds, args, targs, threads, analyze)
        return
    if not (os.path.isfile(args.trainer) and os.access(args.trainer, os.X_OK)):
        raise UserError(f"trainer {args.trainer!r} not found or not executable "
                        f"(run `make` in the repo root)")
    os.makedirs(args.out, exist_ok=True)
    if old and not same_flags(old["trainer_args"], targs) and have_logs and not args.force:
        raise UserError(f"{args.out} holds runs made with other trainer flags (old: "
                        f"{shlex.join(old['trainer_args'])}; new: {shlex.join(targs)}): "
                        f"use another --out, delete the directory, or pass --force")
    write_manifest(manifest, old, grid, targs, archs, variants, seeds, args.trainer)

    def on_sigterm(signum, frame):                # `kill PID` stops as cleanly as Ctrl-C
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    if not run_grid(runs, args, targs, threads):
        again = shlex.join(["python3"] + sys.argv)
        print(f"stopped. Finished runs are kept; interrupted ones resume from their checkpoint.\n"
              f"  resume:          {again}\n  partial report:  {again} --report-only")
        sys.exit(130)
    if analyze:
        try:
            run_analysis(archs, variants, seeds[0], args, targs)
        except KeyboardInterrupt:
            print("\ninterrupted during the analysis; run the same command again to finish it.")
            sys.exit(130)
    errors = {(r.arch, r.variant.name, r.seed): r.error for r in runs if r.error}
    report(grid, archs, variants, seeds, args, targs, errors)
    if errors:
        print(f"{len(errors)} run(s) failed or diverged and are left out of the pairs; the same "
              f"command runs the failed ones again" +
              ("" if args.retry_diverged else ", with --retry-diverged the diverged ones too"),
              file=sys.stderr)
        sys.exit(1)


def cli():
    """main() with every user error as one line on stderr and a non-zero exit."""
    try:
        main()
    except UserError as e:
        print(f"ablation.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:                       # `... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:                          # unwritable --out, full disk, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"ablation.py: error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nablation.py: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
