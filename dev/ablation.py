#!/usr/bin/env python3
"""Taper ablation for tlm.c: does a tapered MLP beat the uniform one at equal parameters?

The experiment. A Tapered Language Model keeps the total MLP parameter budget of a model
fixed but moves hidden width across depth: `cosine` goes from 1.5x the uniform width in
the first layer to 0.5x in the last, `reverse` does the opposite (and should hurt),
`linear` is an optional third shape. For every architecture (transformer, gated, titans,
hope) this script trains uniform / cosine / reverse (/ linear) with several seeds, all at
the same config and token budget, then reports the final validation loss per cell, the
paired per-seed difference to uniform, and whether its sign is the same for every seed.
With --analyze it also runs `train_tlm --analyze` on the uniform seed-1 checkpoint of
each architecture: how much each layer changes the residual stream and how much the
validation loss rises when a layer's MLP (or the whole layer) is skipped -- the
observation that motivates tapering.

Usage (from the repository root, after `make`):
    python3 dev/ablation.py --quick               # small grid, <= 10 min on 2 cores
    python3 dev/ablation.py                       # full grid, <= 3 h on 2 cores, + analysis
    python3 dev/ablation.py --archs transformer,gated --seeds 5 --linear -j 2
    python3 dev/ablation.py --train-args "--steps 300 --dim 96"   # override trainer flags
    python3 dev/ablation.py --train-args=--untied # a single flag needs the '=' form
    python3 dev/ablation.py --dry-run             # print the commands only
    python3 dev/ablation.py --report-only         # table + plots from the existing logs

Outputs in --out (default runs/ablation; runs/ablation_quick with --quick):
    {arch}_{taper}_s{seed}.jsonl / .ckpt / .log   one run: JSONL log, checkpoint, stdout+stderr
    {arch}_analysis.jsonl / .log                  layer-contribution analysis
    results.md                                    the results table (also printed)
    loss_curves.svg (+ .png with gnuplot)         val loss vs training tokens
    analysis.svg                                  per-layer analysis
    ablation.json                                 the trainer flags and grid of this directory

Re-running the same command resumes: finished runs (log ends with a `done` event) are
skipped, an interrupted run continues from its checkpoint (`--load`), or restarts from
scratch if it has none. Ctrl-C stops all children; run the same command again to go on.
Python 3 standard library only.
"""
import argparse, json, math, os, shlex, shutil, signal, subprocess, sys, time
from html import escape

# ---------------------------------------------------------------------------------------
# Constants to tune once the real trainer's speed is known. Measured on 2 cores with an
# early train_tlm: 6 layers, dim 128, seq 128, batch 8 costs ~0.23 s/step (transformer,
# gated), ~0.5 s/step (titans), ~0.57 s/step (hope), i.e. ~14 s per step of the whole
# 4-arch x 3-taper x 3-seed grid -> 500 steps ~ 2 h + evals. The quick model (4 layers,
# dim 64, seq 64) runs 100 steps in 2.5 s (transformer) to 8.6 s (hope).
# ---------------------------------------------------------------------------------------
ARCHS = ["transformer", "gated", "titans", "hope"]
TAPERS = ["uniform", "cosine", "reverse"]        # --linear adds "linear"
BASELINE = "uniform"                             # the Δ column is relative to this
ANALYZE_TAPER = "uniform"                        # checkpoint analysed by --analyze (first seed)

# Full run: 4 archs x 3 tapers x 3 seeds = 36 runs, ~2-2.5 h on 2 cores (1M tokens each:
# 500 steps x 8 x 128 tokens of Brown bytes).
DEFAULT_ARGS = ("--layers 6 --dim 128 --heads 4 --mlp-width 384 --seq-len 128 --batch 8 "
                "--steps 500 --eval-every 50 --eval-batches 8 --sample-every 0")
DEFAULT_SEEDS = 3
# --quick: 4 archs x 3 tapers x 2 seeds = 24 tiny runs (widths 288/256/128/96 for the
# cosine taper; 100k tokens each): 4m22s on 2 cores with the early train_tlm, analysis
# included (off unless --analyze). Noisy: the reverse taper's seeds differed by up to 0.4.
QUICK_ARGS = ("--layers 4 --dim 64 --heads 4 --mlp-width 192 --seq-len 64 --batch 8 "
              "--steps 200 --eval-every 25 --eval-batches 4 --sample-every 0")
QUICK_SEEDS = 2

# Flags the grid itself sets; --train-args may not contain them.
RESERVED = {"--arch", "--taper", "--seed", "--log", "--save", "--load", "--analyze", "--eval-only"}
COLORS = {"uniform": "#444444", "cosine": "#1f6fd1", "reverse": "#d62728",
          "linear": "#2ca02c", "sigmoid": "#9467bd"}
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


# ------------------------------------ trainer flags ------------------------------------
def parse_flags(text):
    """'--steps 300 --untied' -> [['--steps', '300'], ['--untied', None]]."""
    toks, out = shlex.split(text), []
    for i, t in enumerate(toks):
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
        if self.done is None and self.stopped:   # the trainer's NaN guard: it would stop there again
            self.status = "diverged"
            self.error = f"stopped at step {self.stopped.get('step')}: {self.stopped.get('message', 'error')}"
        elif self.done is None:
            self.status, self.error = "incomplete", "no done event"
        elif not isinstance(self.done.get("val_loss"), (int, float)) or not math.isfinite(self.done["val_loss"]):
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
        elif ev == "val" and isinstance(rec.get("loss"), (int, float)):
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


# ------------------------------------ the grid -----------------------------------------
class Run:
    def __init__(self, out, arch, taper, seed):
        self.arch, self.taper, self.seed = arch, taper, seed
        self.name = f"{arch}_{taper}_s{seed}"
        base = os.path.join(out, self.name)
        self.jsonl, self.ckpt, self.logfile = base + ".jsonl", base + ".ckpt", base + ".log"
        self.proc = self.start = None
        self.resume = False
        self.retry = False     # --retry-diverged
        self.error = ""        # why this run failed in this session

    def command(self, trainer, targs):
        cmd = [trainer, "--arch", self.arch, "--taper", self.taper, "--seed", str(self.seed),
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
            self.error = log.error
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
          + (f" (OMP_NUM_THREADS={env_threads} each)" if env_threads else "") + f"; logs in {args.out}/")
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
                with open(r.logfile, "a") as lf:
                    lf.write(f"$ {shlex.join(r.command(args.trainer, targs))}\n")
                    lf.flush()
                    r.proc = subprocess.Popen(r.command(args.trainer, targs), stdout=lf,
                                              stderr=subprocess.STDOUT, env=env, start_new_session=True)
                r.start = time.time()
                running.append(r)
            time.sleep(0.1)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                rc, dt, log = r.proc.returncode, time.time() - r.start, RunLog(r.jsonl)
                if rc == 0 and log.status == "ok":
                    if not args.keep_checkpoints and not (r.taper == ANALYZE_TAPER and r.seed == 1):
                        os.remove(r.ckpt)         # ~16 MB each at the default size; the log stays
                    if not r.resume:              # a resumed run's time says little
                        durations.setdefault(r.arch, []).append(dt)
                    msg = f"val_loss {log.final_loss:.4f} ({fmt_time(dt)})"
                elif log.status == "diverged":
                    r.error = log.error
                    msg = f"DIVERGED, {log.error}"
                elif r.resume:                    # a failed resume: try once from scratch
                    print(f"  {r.name}: resume failed (exit {rc}), restarting from scratch")
                    r.remove_files()
                    r.resume = False
                    todo.insert(0, r)
                    continue
                else:
                    r.error = f"failed (exit {rc})" if rc != 0 else f"failed (bad log: {log.error})"
                    msg = f"{r.error.upper()}, see {r.logfile}"
                ndone += 1
                print(f"[{ndone}/{total}] {r.arch} {r.taper} s{r.seed}: {msg} | "
                      f"elapsed {fmt_time(time.time() - t0)}, ETA {fmt_time(eta(running))}", flush=True)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut the saves short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"\ninterrupted: stopping {len(running)} running job(s) ...", flush=True)
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
        return False
    return True


def run_analysis(archs, seed, args, targs):
    """train_tlm --load <ANALYZE_TAPER first-seed ckpt> --analyze, once per architecture."""
    extra = []
    for f in ("--val", "--eval-batches"):
        v = flag_value(targs, f)
        if v is not None:
            extra += [f, v]
    for arch in archs:
        ckpt = os.path.join(args.out, f"{arch}_{ANALYZE_TAPER}_s{seed}.ckpt")
        src = RunLog(ckpt[:-5] + ".jsonl")
        out = os.path.join(args.out, f"{arch}_analysis.jsonl")
        if src.status != "ok" or not os.path.exists(ckpt):
            print(f"analysis {arch}: skipped ({ANALYZE_TAPER} s{seed} did not finish)")
            continue
        if RunLog(out).status == "ok" and os.path.getmtime(out) >= os.path.getmtime(ckpt):
            continue                              # up to date
        if os.path.exists(out):
            os.remove(out)                        # the trainer appends
        cmd = [args.trainer, "--load", ckpt, "--analyze", "--log", out, *extra]
        with open(out[:-6] + ".log", "w") as lf:
            lf.write(f"$ {shlex.join(cmd)}\n")
            lf.flush()
            rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT).returncode
        if rc != 0 or RunLog(out).status != "ok":
            print(f"analysis {arch}: FAILED (exit {rc}, see {out[:-6]}.log)")


# ------------------------------------ statistics / table -------------------------------
def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None)


def pm(m, s, nd=4, sign=False):
    f = f"{{:{'+' if sign else ''}.{nd}f}}"
    return f.format(m) + ("" if s is None else f" ± {s:.{nd}f}")


def build_table(archs, tapers, seeds, out, errors):
    """Returns (markdown lines, warnings, logs[arch][taper][seed])."""
    logs = {a: {t: {s: RunLog(os.path.join(out, f"{a}_{t}_s{s}.jsonl")) for s in seeds} for t in tapers}
            for a in archs}
    head = ["arch", "schedule", "params", "val loss (mean ± std)", "ppl", f"Δ vs {BASELINE} (paired)",
            "same sign", "seeds"]
    rows, warns = [], []
    for a in archs:
        params = {t: {lg.config.get("params") for lg in logs[a][t].values() if lg.status == "ok"} for t in tapers}
        allp = set().union(*params.values()) - {None}
        if len(allp) > 1:
            warns.append(f"!!! PARAMETER MISMATCH in {a}: " +
                         ", ".join(f"{t}={'/'.join(map(str, sorted(p - {None})))}" for t, p in params.items()))
        toks = {lg.curve()[-1][0] for t in tapers for lg in logs[a][t].values() if lg.status == "ok" and lg.vals}
        if len(toks) > 1:
            warns.append(f"!!! TOKEN BUDGET MISMATCH in {a}: final val records at {sorted(toks)} tokens")
        base = {s: lg.final_loss for s, lg in logs[a][BASELINE].items() if lg.status == "ok"} if BASELINE in tapers else {}
        for t in tapers:
            ok = {s: lg.final_loss for s, lg in logs[a][t].items() if lg.status == "ok"}
            bad = [f"s{s} {errors.get((a, t, s)) or lg.status + (f' ({lg.error})' if lg.error and lg.status != 'missing' else '')}" for s, lg in logs[a][t].items() if lg.status != "ok"]
            pstr = "/".join(f"{p:,}" for p in sorted(params[t] - {None})) or "—"
            if len(allp) > 1:
                pstr += " ⚠"
            seedcol = f"{len(ok)}/{len(seeds)}" + (", " + ", ".join(bad) if bad else "")
            if not ok:
                rows.append([a, t, pstr, "—", "—", "—", "—", seedcol])
                continue
            m, s = mean_std(list(ok.values()))
            delta = sign = "—"
            paired = [ok[k] - base[k] for k in ok if k in base]
            if t != BASELINE and paired:
                dm, ds = mean_std(paired)
                delta = pm(dm, ds, sign=True)
                agree = sum(1 for d in paired if (d > 0) == (dm > 0) and d != 0)
                sign = (f"✓ {agree}/{len(paired)}" if agree == len(paired) and len(paired) > 1
                        else f"✗ {agree}/{len(paired)}" if len(paired) > 1 else "1 seed")
            rows.append([a, t, pstr, pm(m, s), f"{math.exp(m):.3f}", delta, sign, seedcol])
    width = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, width)) + " |"
    md = [line(head), "|" + "|".join("-" * (w + 2) for w in width) + "|"] + [line(r) for r in rows]
    return md, warns, logs


def analysis_table(arch, log):
    cols = [("layer", "layer", "{}"), ("mlp width", "mlp_width", "{}"), ("rel upd mixer", "rel_update_mixer", "{:.4f}"),
            ("rel upd mlp", "rel_update_mlp", "{:.4f}"), ("rel upd", "rel_update", "{:.4f}"),
            ("cos sim", "cos_sim", "{:.4f}"), ("Δloss skip mlp", "dloss_skip_mlp", "{:+.4f}"),
            ("Δloss skip layer", "dloss_skip_layer", "{:+.4f}")]
    rows = [[c[0] for c in cols]] + [[(f.format(r[k]) if isinstance(r.get(k), (int, float)) else "?")
                                      for _, k, f in cols] for r in log.analysis]
    w = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return [f"{arch} ({ANALYZE_TAPER} checkpoint, val loss {log.done.get('val_loss', float('nan')):.4f}):"] + \
           ["  " + "  ".join(c.rjust(x) for c, x in zip(r, w)) for r in rows]


# ------------------------------------ SVG plotting -------------------------------------
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
        svg.append(f"<clipPath id='{self.clip}'><rect x='{x}' y='{y}' width='{w}' height='{h}'/></clipPath>")

    def px(self, v):
        return self.x + (v - self.xlim[0]) / ((self.xlim[1] - self.xlim[0]) or 1) * self.w

    def py(self, v):
        lo, hi = self.ylim
        if self.ylog:
            v, lo, hi = math.log10(max(v, 1e-12)), math.log10(lo), math.log10(hi)
        return self.y + self.h - (v - lo) / ((hi - lo) or 1) * self.h

    def frame(self, title, xlabel, ylabel, xfmt=fmt_num, xticks=None):
        s = self.svg
        if self.ylog:
            a, b = math.floor(math.log10(self.ylim[0])), math.ceil(math.log10(self.ylim[1]))
            yt = [(10.0 ** e, f"{10.0 ** e:g}") for e in range(a, b + 1) if self.ylim[0] <= 10 ** e <= self.ylim[1]]
        else:
            ticks, step = nice_ticks(*self.ylim)
            yt = [(t, fmt_num(t, step)) for t in ticks if self.ylim[0] <= t <= self.ylim[1]]
        for v, lab in yt:
            yy = self.py(v)
            s.append(f"<line x1='{self.x}' x2='{self.x + self.w}' y1='{yy:.1f}' y2='{yy:.1f}' stroke='#e4e4e4'/>")
            s.append(f"<text x='{self.x - 6}' y='{yy + 4:.1f}' text-anchor='end' font-size='11'>{lab}</text>")
        if xticks is None:
            ticks, step = nice_ticks(*self.xlim)
            xticks = [(t, xfmt(t, step)) for t in ticks if self.xlim[0] <= t <= self.xlim[1]]
        for v, lab in xticks:
            xx = self.px(v)
            s.append(f"<line x1='{xx:.1f}' x2='{xx:.1f}' y1='{self.y + self.h}' y2='{self.y + self.h + 4}' stroke='#333'/>")
            first, _, second = lab.partition("\n")   # optional 2nd line, small and grey
            s.append(f"<text x='{xx:.1f}' y='{self.y + self.h + 17}' text-anchor='middle' font-size='11'>"
                     f"{escape(first)}</text>")
            if second:
                s.append(f"<text x='{xx:.1f}' y='{self.y + self.h + 29}' text-anchor='middle' font-size='9' "
                         f"fill='#666'>{escape(second)}</text>")
        two = any("\n" in lab for _, lab in xticks)
        s.append(f"<rect x='{self.x}' y='{self.y}' width='{self.w}' height='{self.h}' fill='none' stroke='#333'/>")
        s.append(f"<text x='{self.x + self.w / 2}' y='{self.y - 8}' text-anchor='middle' font-size='13' "
                 f"font-weight='bold'>{escape(title)}</text>")
        s.append(f"<text x='{self.x + self.w / 2}' y='{self.y + self.h + (44 if two else 34)}' text-anchor='middle' "
                 f"font-size='11.5'>{escape(xlabel)}</text>")
        cy = self.y + self.h / 2
        s.append(f"<text x='{self.x - 48}' y='{cy}' text-anchor='middle' font-size='11.5' "
                 f"transform='rotate(-90 {self.x - 48} {cy})'>{escape(ylabel)}</text>")

    def line(self, pts, color, width=2, dash=None, marker=False):
        d = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in pts)
        da = f" stroke-dasharray='{dash}'" if dash else ""
        self.svg.append(f"<polyline points='{d}' fill='none' stroke='{color}' stroke-width='{width}'{da} "
                        f"clip-path='url(#{self.clip})'/>")
        if marker:
            for x, y in pts:
                self.svg.append(f"<circle cx='{self.px(x):.1f}' cy='{self.py(y):.1f}' r='3' fill='{color}' "
                                f"clip-path='url(#{self.clip})'/>")

    def band(self, xs, lo, hi, color):
        d = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in list(zip(xs, hi)) + list(zip(xs, lo))[::-1])
        self.svg.append(f"<polygon points='{d}' fill='{color}' fill-opacity='0.18' stroke='none' "
                        f"clip-path='url(#{self.clip})'/>")


def svg_doc(w, h, body):
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' viewBox='0 0 {w} {h}' {FONT}>\n"
            f"<rect width='100%' height='100%' fill='white'/>\n" + "\n".join(body) + "\n</svg>\n")


def legend(svg, x, y, items):
    """items: (label, color, kind) with kind 'line' | 'band' | 'bar'."""
    for label, color, kind in items:
        if kind == "line":
            svg.append(f"<line x1='{x}' x2='{x + 24}' y1='{y}' y2='{y}' stroke='{color}' stroke-width='2.5'/>")
        else:
            op = "0.18" if kind == "band" else "1"
            svg.append(f"<rect x='{x}' y='{y - 6}' width='24' height='12' fill='{color}' fill-opacity='{op}'/>")
        svg.append(f"<text x='{x + 30}' y='{y + 4}' font-size='12'>{escape(label)}</text>")
        x += 40 + 7 * len(label)


def seed_stats(logs):
    """Mean/min/max over the finished seeds at every eval step all of them have."""
    curves = [lg.curve() for lg in logs.values() if lg.status == "ok" and lg.vals]
    if not curves:
        return None
    n = min(len(c) for c in curves)
    rows = [[c[i] for c in curves] for i in range(n)]
    return ([r[0][0] for r in rows], [sum(p[1] for p in r) / len(r) for r in rows],
            [min(p[1] for p in r) for r in rows], [max(p[1] for p in r) for r in rows], len(curves))


def plot_curves(logs, archs, tapers, path, title):
    """Val loss vs tokens: row 1 the whole run, row 2 the last 40% of tokens (where the
    schedules separate). One column per architecture."""
    PW, PH, ML, MT, GAP = 300, 215, 70, 90, 70
    W = ML + len(archs) * (PW + GAP) - GAP + 25
    H = MT + 2 * (PH + GAP + 10) + 10
    svg = [f"<text x='{W / 2}' y='26' text-anchor='middle' font-size='17' font-weight='bold'>{escape(title)}</text>"]
    legend(svg, ML, 56, [(t, COLORS.get(t, "#000"), "line") for t in tapers] +
           [("min–max over seeds", "#777", "band")])
    for col, a in enumerate(archs):
        stats = {t: seed_stats(logs[a][t]) for t in tapers}
        stats = {t: s for t, s in stats.items() if s}
        x0 = ML + col * (PW + GAP)
        if not stats:
            svg.append(f"<text x='{x0 + PW / 2}' y='{MT + PH / 2}' text-anchor='middle' font-size='13'>"
                       f"{escape(a)}: no finished runs</text>")
            continue
        tmax = max(s[0][-1] for s in stats.values()) or 1
        for row, frac in enumerate((0.0, 0.6)):
            sel = {t: [i for i, x in enumerate(s[0]) if x >= frac * tmax] or list(range(len(s[0])))[-2:]
                   for t, s in stats.items()}
            # y range: everything in the zoom; in the full view ignore the first 20% (the
            # initial loss would squash the interesting part), lines are clipped instead
            ysel = {t: [i for i in idx if row == 1 or s[0][i] >= 0.2 * tmax] or idx
                    for (t, s), idx in zip(stats.items(), sel.values())}
            lo = min(stats[t][2][i] for t in stats for i in ysel[t])
            hi = max(stats[t][3][i] for t in stats for i in ysel[t])
            pad = (hi - lo) * 0.08 or 0.01
            xlo = min(stats[t][0][sel[t][0]] for t in stats)
            p = Panel(svg, x0, MT + row * (PH + GAP + 10), PW, PH, (xlo, tmax), (lo - pad, hi + pad))
            n = max(s[4] for s in stats.values())
            p.frame(f"{a}" if row == 0 else f"{a}: last 40% of tokens", "training tokens",
                    "val loss" + (f" (mean of {n} seeds)" if n > 1 else ""), xfmt=fmt_tokens)
            for t, s in stats.items():
                idx = sel[t]
                xs = [s[0][i] for i in idx]
                if s[4] > 1:
                    p.band(xs, [s[2][i] for i in idx], [s[3][i] for i in idx], COLORS.get(t, "#000"))
                p.line(list(zip(xs, [s[1][i] for i in idx])), COLORS.get(t, "#000"), marker=(row == 1))
    with open(path, "w") as f:
        f.write(svg_doc(W, H, svg))


def plot_analysis(alogs, path, seed):
    """Per architecture: Δ val loss when skipping a layer's MLP / the whole layer (bars),
    and the relative update |dx|/|x| of mixer, MLP and layer (lines, log scale if wide)."""
    archs = list(alogs)
    PW, PH, ML, MT, GAP = 300, 215, 75, 90, 75
    W = ML + len(archs) * (PW + GAP) - GAP + 25
    H = MT + 2 * (PH + GAP + 10) + 10
    svg = [f"<text x='{W / 2}' y='26' text-anchor='middle' font-size='17' font-weight='bold'>"
           f"Layer contributions ({ANALYZE_TAPER} model, seed {seed})</text>"]
    bars = [("skip MLP", "dloss_skip_mlp", "#1f6fd1"), ("skip whole layer", "dloss_skip_layer", "#ff7f0e")]
    lines = [("rel. update mixer", "rel_update_mixer", "#2ca02c"), ("rel. update MLP", "rel_update_mlp", "#9467bd"),
             ("rel. update layer", "rel_update", "#444444")]
    legend(svg, ML, 56, [(l, c, "bar") for l, _, c in bars] + [(l, c, "line") for l, _, c in lines])
    for col, a in enumerate(archs):
        recs = sorted(alogs[a].analysis, key=lambda r: r.get("layer", 0))
        x0, L = ML + col * (PW + GAP), len(recs)
        every = 1 if L <= 12 else 2 if L <= 24 else 4      # thin out ticks of deep models
        xt = [(i, f"{r.get('layer', i)}\n{r.get('mlp_width', '?')}") for i, r in enumerate(recs) if i % every == 0]
        get = lambda r, k: r.get(k) if isinstance(r.get(k), (int, float)) else 0.0
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
                svg.append(f"<rect x='{xa:.1f}' y='{ya:.1f}' width='{xb - xa - 1:.1f}' height='{max(yb - ya, 0.5):.1f}' fill='{c}'/>")
                if L <= 8:                        # value labels keep tiny bars readable
                    lx, ly = (xa + xb) / 2 + 3, (ya - 3 if v >= 0 else yb + 3)
                    svg.append(f"<text x='{lx:.1f}' y='{ly:.1f}' text-anchor='{'start' if v >= 0 else 'end'}' "
                               f"font-size='9' fill='#333' transform='rotate(-90 {lx:.1f} {ly:.1f})'>{v:.2g}</text>")
        vals = [get(r, k) for r in recs for _, k, _ in lines if get(r, k) > 0]
        lo, hi = (min(vals), max(vals)) if vals else (0.1, 1)
        log = hi / lo > 30
        ylim = (10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))) if log else (0, hi * 1.1)
        p = Panel(svg, x0, MT + PH + GAP + 10, PW, PH, (-0.5, L - 0.5), ylim, ylog=log)
        p.frame(f"{a}: relative update |Δx|/|x|", "layer / MLP width", "|Δx| / |x|" + (" (log)" if log else ""), xticks=xt)
        for _, k, c in lines:
            p.line([(i, get(r, k)) for i, r in enumerate(recs)], c, marker=True)
    with open(path, "w") as f:
        f.write(svg_doc(W, H, svg))


def gnuplot_png(logs, archs, tapers, out):
    """Optional PNG of the loss curves through gnuplot (if installed), same layout as the
    SVG: whole run on top (y clipped above the loss at 20% of tokens), last 40% below."""
    if not shutil.which("gnuplot"):
        return None
    datfile, blocks, panels = os.path.join(out, "loss_curves.dat"), [], []
    for a in archs:
        cmds, tops, tmax = [], [], 0
        for t in tapers:
            s = seed_stats(logs[a][t])
            if s:
                blocks.append(f"# {a} {t}: tokens mean min max\n" + "\n".join(" ".join(map(str, r)) for r in zip(*s[:4])))
                i, c = len(blocks) - 1, COLORS.get(t, "#000000")
                cmds += [f"'{datfile}' index {i} using 1:3:4 with filledcurves lc rgb '{c}' fs transparent solid 0.18 notitle",
                         f"'{datfile}' index {i} using 1:2 with linespoints pt 7 ps 0.5 lw 2 lc rgb '{c}' title '{t}'"]
                tmax = max(tmax, s[0][-1])
                tops += [hi for x, hi in zip(s[0], s[3]) if x >= 0.2 * s[0][-1]] or s[3]
        if cmds:
            panels.append((a, ", \\\n  ".join(cmds), max(tops), tmax))
    if not panels:
        return None
    with open(datfile, "w") as f:
        f.write("\n\n\n".join(blocks) + "\n")
    png = os.path.join(out, "loss_curves.png")
    rows = [f"set title '{a}'\nset xrange [*:*]\nset yrange [*:{top * 1.02}]\nplot {c}" for a, c, top, _ in panels]
    rows += [f"set title '{a}: last 40% of tokens'\nset xrange [{0.6 * tm}:{tm}]\nset yrange [*:*]\nplot {c}"
             for a, c, _, tm in panels]
    script = (f"set terminal pngcairo size {400 * len(panels)},760 font ',10'\nset output '{png}'\n"
              f"set multiplot layout 2,{len(panels)} title 'validation loss vs training tokens (mean, min-max over seeds)'\n"
              "set xlabel 'training tokens'\nset ylabel 'val loss'\nset format x '%.0s%c'\nset grid\n"
              "set key top right\nset autoscale noextend\n" + "\n".join(rows) + "\nunset multiplot\n")
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        print(f"gnuplot failed (PNG skipped): {r.stderr.strip()[:300]}", file=sys.stderr)
    return png if r.returncode == 0 else None


# ------------------------------------ main ---------------------------------------------
def report(archs, tapers, seeds, args, targs, errors):
    md, warns, logs = build_table(archs, tapers, seeds, args.out, errors)
    print("\n" + "\n".join(md))
    for w in warns:
        print(w, file=sys.stderr)
    note = (f"val loss: final validation loss (`done` event), mean ± sample std over seeds; ppl = exp(mean). "
            f"Δ: mean ± std of the per-seed differences to {BASELINE} (same seed; negative = better); "
            f"same sign: ✓ when every seed's difference has the sign of the mean.")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"# Taper ablation\n\n{time.strftime('%Y-%m-%d %H:%M')}, trainer `{args.trainer}`, "
                f"seeds {seeds[0]}..{seeds[-1]}, trainer flags:\n\n    {shlex.join(targs)}\n\n"
                + "\n".join(md) + "\n\n" + note + "\n" + "".join(f"\n**{w}**\n" for w in warns))
    made = [os.path.join(args.out, "results.md"), os.path.join(args.out, "loss_curves.svg")]
    plot_curves(logs, archs, tapers, made[1], f"Validation loss vs training tokens ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
    png = gnuplot_png(logs, archs, tapers, args.out)
    made += [png] if png else []
    alogs = {a: RunLog(os.path.join(args.out, f"{a}_analysis.jsonl")) for a in archs}
    alogs = {a: lg for a, lg in alogs.items() if lg.status == "ok" and lg.analysis}
    if alogs:
        print("\nLayer-contribution analysis (|Δx|/|x| per sublayer, cos(x, x'), Δ val loss when skipped):")
        for a, lg in alogs.items():
            print("\n".join(analysis_table(a, lg)))
        made.append(os.path.join(args.out, "analysis.svg"))
        plot_analysis(alogs, made[-1], seeds[0])
    print("\nwrote " + ", ".join(made))


def main():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap = argparse.ArgumentParser(description="Taper ablation grid for tlm.c (see the module docstring).")
    ap.add_argument("--archs", default=None, help=f"comma-separated architectures [{','.join(ARCHS)}]")
    ap.add_argument("--seeds", type=int, default=None, help=f"seeds 1..N [{DEFAULT_SEEDS}; --quick {QUICK_SEEDS}]")
    ap.add_argument("--linear", action="store_true", help="add the linear taper to the grid")
    ap.add_argument("--train-args", default="", help="extra trainer flags, e.g. '--steps 300 --dim 96'; override DEFAULT_ARGS/QUICK_ARGS")
    ap.add_argument("--out", default=None, help="output dir [runs/ablation; --quick runs/ablation_quick]")
    ap.add_argument("--trainer", default="./train_tlm", help="trainer binary [./train_tlm]")
    ap.add_argument("-j", "--jobs", type=int, default=None,
                    help=f"parallel runs [--quick: one per core ({cores} here), each on one thread; "
                         f"else {1 if cores < 4 else cores // 2} here: 1 below 4 cores, else cores/2]")
    ap.add_argument("--quick", action="store_true", help="small grid (QUICK_ARGS, QUICK_SEEDS), <= 10 min")
    ap.add_argument("--analyze", action=argparse.BooleanOptionalAction, default=None,
                    help="layer analysis of the uniform seed-1 checkpoints [on; off with --quick]")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep every finished run's checkpoint [only the uniform seed-1 ones, for --analyze]")
    ap.add_argument("--retry-diverged", action="store_true",
                    help="run again the runs that the trainer stopped on a non-finite loss [they are skipped]")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--report-only", action="store_true", help="table + plots from existing logs")
    ap.add_argument("--force", action="store_true", help="reuse an --out made with other trainer flags")
    args = ap.parse_args()

    archs = [a.strip() for a in (args.archs or ",".join(ARCHS)).split(",") if a.strip()]
    if not archs or any(a not in ARCHS for a in archs) or len(set(archs)) != len(archs):
        ap.error(f"--archs: comma-separated, distinct, from {','.join(ARCHS)} (got {args.archs!r})")
    if args.jobs is None:                         # tiny quick models run best one per core
        args.jobs = cores if args.quick else (1 if cores < 4 else cores // 2)
    if args.jobs < 1:
        ap.error("-j must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if args.dry_run and args.report_only:
        ap.error("--dry-run and --report-only exclude each other")
    try:
        extra = parse_flags(args.train_args)
    except ValueError as e:
        ap.error(f"--train-args: {e}")
    bad = sorted({f for f, _ in extra} & RESERVED)
    if bad:
        ap.error(f"--train-args may not set {', '.join(bad)} (the grid sets them)")
    args.out = args.out or ("runs/ablation_quick" if args.quick else "runs/ablation")
    targs = merge_flags(parse_flags(QUICK_ARGS if args.quick else DEFAULT_ARGS), extra)
    seeds = list(range(1, (args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)) + 1))
    tapers = TAPERS + (["linear"] if args.linear else [])
    analyze = args.analyze if args.analyze is not None else not args.quick
    threads = max(1, cores // args.jobs) if args.jobs > 1 else None
    runs = [Run(args.out, a, t, s) for s in seeds for a in archs for t in tapers]   # seed-major
    for r in runs:
        r.retry = args.retry_diverged

    manifest = os.path.join(args.out, "ablation.json")
    old = json.load(open(manifest)) if os.path.exists(manifest) else None
    if args.report_only:                          # the grid of the last run unless given
        if old:
            targs = old.get("trainer_args", targs)
            archs = archs if args.archs else old.get("archs", archs)
            tapers = tapers if args.linear else old.get("tapers", tapers)
            seeds = seeds if args.seeds else old.get("seeds", seeds)
        report(archs, tapers, seeds, args, targs, {})
        return
    if args.dry_run:
        pre = f"OMP_NUM_THREADS={threads} " if threads else ""
        for r in runs:
            state = RunLog(r.jsonl).status
            r.resume = state == "incomplete" and os.path.exists(r.ckpt)
            skip_diverged = state == "diverged" and not args.retry_diverged
            tag = "# done, skip: " if state == "ok" else "# diverged, skip: " if skip_diverged else "# resume: " if r.resume else ""
            print(tag + pre + shlex.join(r.command(args.trainer, targs)))
        if analyze:
            for a in archs:
                print(shlex.join([args.trainer, "--load", os.path.join(args.out, f"{a}_{ANALYZE_TAPER}_s{seeds[0]}.ckpt"),
                                  "--analyze", "--log", os.path.join(args.out, f"{a}_analysis.jsonl")]))
        return
    if not (os.path.isfile(args.trainer) and os.access(args.trainer, os.X_OK)):
        sys.exit(f"error: trainer {args.trainer!r} not found or not executable (run `make` in the repo root)")
    os.makedirs(args.out, exist_ok=True)
    have_logs = any(f.endswith(".jsonl") for f in os.listdir(args.out))
    same = lambda x, y: sorted(map(tuple, parse_flags(shlex.join(x)))) == sorted(map(tuple, parse_flags(shlex.join(y))))
    if old and not same(old.get("trainer_args", []), targs) and have_logs and not args.force:
        sys.exit(f"error: {args.out} holds runs made with other trainer flags:\n  old: {shlex.join(old['trainer_args'])}"
                 f"\n  new: {shlex.join(targs)}\nuse another --out, delete the directory, or pass --force")
    with open(manifest, "w") as f:
        grid = lambda k, new, order: [x for x in order if x in set(new) | set((old or {}).get(k, []))]
        json.dump({"trainer_args": targs, "archs": grid("archs", archs, ARCHS),   # union with earlier grids
                   "tapers": grid("tapers", tapers, TAPERS + ["linear"]),
                   "seeds": sorted(set(seeds) | set((old or {}).get("seeds", [])))}, f, indent=1)

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
            run_analysis(archs, seeds[0], args, targs)
        except KeyboardInterrupt:
            print("\ninterrupted during the analysis; run the same command again to finish it.")
            sys.exit(130)
    errors = {(r.arch, r.taper, r.seed): r.error for r in runs if r.error}
    report(archs, tapers, seeds, args, targs, errors)
    if errors:
        print(f"{len(errors)} run(s) failed; run the same command again to retry them.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
