#!/usr/bin/env python3
"""Taper ablations for tlm.c: does moving MLP width across depth beat the uniform model
at equal parameters, by more than the noise of the seeds?

A Tapered Language Model keeps the total MLP parameter budget fixed (the widths sum to
L*H) but moves hidden width across depth. Six grids, chosen with --grid; every cell is
trained by `train_tlm` with several seeds at the same config and token budget and compared
with the uniform model of the same seed (hence the same data order: --data-seed defaults
to --seed; a pair's two models share every weight their widths share), or, in the memory
grid, with its own baseline arm of the same seed:

  taper   (default) uniform / cosine (1.5x H in the first layer -> 0.5x in the last) /
          reverse (the cosine's widths, last layer first) [/ linear with --linear], for every
          architecture: transformer, gated, titans, hope; 6 layers x 128, 1000 steps (1M
          tokens) a run, 6 seeds (groups and ratios alike)
  groups  the three-group allocation: layers split into early / middle / late thirds with
          width multiples 1,1,1 (uniform), 1.5,1,0.5 (wider early), 0.75,1.5,0.75 (wider
          middle), 0.5,1,1.5 (wider late); the transformer unless --archs says otherwise
  ratios  linear, sigmoid and cosine schedules at start/end multiples 1.25/0.75, 1.5/0.5,
          1.75/0.25, plus uniform: is the loss U-shaped in the ratio? transformer by default
  depth   where the taper starts to pay, in depth: uniform / cosine / reverse /
          groups:1.5,1,0.5 at L 4, 8, 16, 24 with a fixed width (dim 48), and at L 4, 12,
          16, 24 with a fixed parameter count (~0.5M: dims 96, 56, 48, 40; MLP width 3 x dim,
          widths rounded to multiples of 8); 0.5M tokens per run, 6 seeds
  tokens  ... and in training length: the same four schedules at L 8, dim 48 for 0.5M, 2M
          and 8M tokens (500, 2000, 8000 steps), 6 seeds, on more text than Brown: the five
          corpora of `make data-mix` (brown+sotu+austen+mobydick+web as bytes, 24.3M training
          tokens), so that 8M tokens is 0.33 epochs (Brown's 5.36M would be 1.5: every text
          seen again); the report gives every point's epochs. Its final evaluation takes 584
          batches spread over the mix's 2.59M val tokens (Brown's whole split is 584). The
          Brown-only grid is one flag away: --train-args "--train data/brown_byte_train.bin
          --val data/brown_byte_val.bin" (its rows are another grid's flags: not mixed up).
  memory  the memories' own controls at the classroom grid's size, every arm cosine-tapered:
          Titans with --persist 4 and --persist 16 persistent tokens against --persist 0;
          Titans' test-time learning off (--persist 4 --mem-lr 0: the memory reads its learned
          W_0 for every token) against --persist 4; Hope's fast levels' learning off
          (--mem-lr 0) against Hope's default; 6 seeds. Arms differ in parameters (persistent
          tokens are parameters): the table gives each arm's, and the equal-parameter check
          of the taper grids does not apply. (Needs a trainer with --persist and --mem-lr 0;
          an older one is refused by the probe, in one line.)
Every run's final evaluation covers the whole val split (--final-eval-batches 0; --quick:
64 batches); the periodic ones take a few batches spread over it.

Statistics, per comparison (a schedule against uniform at one point and architecture), over
the seeds where both runs finished:
  Δ          mean d of the paired differences d_s = loss(schedule, s) - loss(uniform, s)
             and its 95% interval d ± t(0.975, n-1) · sd(d) / sqrt(n)   (Student t)
  r          the correlation of the two arms' losses over the seeds: how much the pairing
             buys (sd(d)^2 = sd1^2 + sd2^2 - 2 r sd1 sd2)
  p, p Holm  the paired t test's two-sided p-value, and that p adjusted by Holm's step-down
             method over every comparison of the grid (all points, architectures, schedules)
  seeds for 80% power   the pairs a paired t test (two-sided, alpha 0.05; the noncentral t,
             not a normal approximation) needs to find the observed effect d/sd(d) 80% of
             the time; the observed effect is itself uncertain, so read it as a rough guide
  verdict    "distinguishable from uniform" where the Holm-adjusted p is below 0.05; an
             unadjusted interval that excludes 0 without it is said so
The t distribution (the regularized incomplete beta function) and the power are computed
here, in the standard library. A run that diverged (the trainer's NaN guard stopped it) or
failed is named in the table and left out of the pairs.

Seeds: --seeds N runs seeds 1..N; the report takes every seed the data file holds for this
code and these flags (more, if an earlier session ran more). --target-halfwidth X adds
seeds after them in rounds: each round gives every cell (point x architecture) with an
interval wider than ±X as many new seeds (all its schedules together, so they pair) as its
sd says would reach X, at most as many as it has; until every interval is within ±X or the
budget is spent: --max-seeds N per cell [20], --max-hours H (no round starts that its
estimate, from the runs' times so far, says would end after H hours from the start; a
round can overrun by the estimate's error).

Schedules whose widths round to the same allocation (ask the trainer: every schedule is
probed before anything runs, see below) are one model: the later one is not run and is
reported as the same as the earlier (e.g. linear and cosine 1.25/0.75 at L 6, multiple 32).

The data file. Every finished (or diverged) run is one row of --data [OUT/runs.csv], a CSV
with the columns grid, point, arch, schedule, schedule_flags, seed, data_seed, status (ok,
diverged, or alias: a schedule run once, same_as the schedule it equals), val_loss,
val_batches (the final evaluation's batches: the trainer's count, or 'all'), tokens,
epochs (tokens / the training shards' tokens), steps, params, mlp_widths, cms_widths
(Hope's fast levels), seconds, resumed, fingerprint, code (the git commit, for people),
machine, date, grid_flags and trainer_flags (the run's command but for its files). Rows
are only appended, each flushed at once. The table and the effects plot are computed from
the data file alone: `--report-only --data FILE` recomputes them anywhere (the loss curves
need the runs' logs in --out and are left out, said so, where they are missing). A run the
data file already holds for the same code and flags is not run again, so a grid too long
for one sitting goes on later from a committed file:
    python3 dev/ablation.py --grid depth --data dev/results/grid_depth/runs.csv
"The same code" is the numerics fingerprint: before anything runs, ablation.py trains the
uniform model of every point and architecture for 3 steps with the grid's own flags (one
evaluation batch, one thread) and hashes its logged losses and gradient norms with the bytes
of its checkpoint's weights and AdamW moments (not the checkpoint's option text); every
other schedule runs 0 steps for its widths (an arm of other model flags, the memory grid's,
trains 3 steps too, and the fingerprint hashes every probe's). A row counts if its
fingerprint, widths and flags are this invocation's. A commit that leaves the arithmetic
alone (results, docs, new options with old defaults) keeps the fingerprint, and so does the
thread count; a trainer whose numbers differ in any bit (a changed kernel, another
compiler's or machine's float rounding: -O2 against -O3 -march=native differs in most
weights after one step) does not, and its runs are made again (the other rows stay in the
file). --report-only reports, per point and architecture, the fingerprint and flags of the
file's latest row.

With --analyze (taper, groups and ratios grids: on unless --quick; memory: off unless asked)
`train_tlm --analyze` runs on the first seed's checkpoint of every schedule: how much each
layer changes the residual stream, how much the val loss rises when a layer (or its MLP) is
skipped, and, where the trainer logs it, the alignment probe cos(MLP output, residual stream
it is added to) per layer, plotted per schedule.

What the depth and tokens grids cost, per seed of a point (its four schedules: 500 steps of
training, the final whole-split evaluation, the periodic ones, the checkpoints), on the
2-core AMD EPYC at -j 1, 2 threads, from one full run per point with the trainer of
--data-seed and --final-eval-batches, at light load (load average up to 2, the run
included; with other jobs on the two cores, two-thread runs took 2 to 7 times longer, so
read these as the quiet machine's):
  depth   L 4/8/16/24 at dim 48: 45 s, 80 s, 193 s, 284 s;  L 4 dim 96: 96 s, L 12 dim 56:
          140 s, L 24 dim 40: ~256 s (from its step time); L 16 dim 48 is on both series:
          18 min per seed, 6 seeds 1.8 hours. Larger: L 32 at dim 48 ~380 s per seed,
          L 24 at dim 128 ~800 s.
  tokens  0.5M 80 s, 2M ~250 s, 8M ~920 s (the last two from the step time; measured on
          Brown: a step costs the same on the mix, and the final evaluation reads as many
          batches): 21 min per seed, 6 seeds 2.1 hours. A 16M point (16000 steps, 0.66 epochs
          of the mix) would add ~1800 s per seed, 3 hours for its 6 seeds, 5.1 hours for
          the grid: past the ~3 hours the grid is sized for, so it is not in the default.
The 6 seeds assume a paired sd of about 0.015 nats: measured at L 8 dim 48 with 5 seeds,
cosine - uniform 0.017, reverse - uniform 0.013 (r 0.86, 0.88); the classroom grid's
pooled 0.015 before the pairing shared weights and data order. An effect of 1% of these
models' val loss (1.95-2.15 at 0.5M tokens), about 0.02, is then resolved, the 95%
half-width about 0.016; it is found with about 73% power at alpha 0.05 (7 seeds for 80%;
before Holm over the grid's 21 or 9 comparisons). Where the sd is larger, the table's
seeds-for-80%-power says how many; --target-halfwidth 0.02 --max-hours 3 adds them
within three hours.

Usage (from the repository root, after `make`):
    python3 dev/ablation.py --quick               # small taper grid, a few minutes on 2 cores
    python3 dev/ablation.py                       # full taper grid, 5 seeds, + analysis
    python3 dev/ablation.py --grid groups         # the three-group allocation (transformer)
    python3 dev/ablation.py --grid ratios --archs transformer,titans
    python3 dev/ablation.py --grid depth          # make ablation GRID=depth
    python3 dev/ablation.py --grid tokens --target-halfwidth 0.02 --max-hours 3
    python3 dev/ablation.py --archs transformer,gated --seeds 3 --linear -j 2
    python3 dev/ablation.py --train-args "--steps 300 --dim 96"   # override trainer flags
    python3 dev/ablation.py --train-args=--untied # a single flag needs the '=' form
    python3 dev/ablation.py --dry-run             # check all, print the commands only
    python3 dev/ablation.py --report-only --out dev/runs/ablation_groups   # report again
    python3 dev/ablation.py --report-only --data dev/results/grid_depth/runs.csv
    python3 dev/ablation.py --grid memory         # Titans' persist / mem-lr 0, Hope's mem-lr 0
    python3 dev/ablation.py --figure dev/results/taper_study.svg \
        dev/results/grid_depth/runs.csv dev/results/grid_tokens/runs.csv   # the study figure

Outputs in --out (default dev/runs/ablation, dev/runs/ablation_GRID for the others; with
--quick the same with _quick appended):
    runs.csv              the data file (unless --data names another)
    [point_]{arch}_{schedule}_s{seed}.jsonl / .ckpt / .log   one run: JSONL log, checkpoint,
                          output (opening with its command and numerics fingerprint)
    {arch}_{schedule}_analysis.jsonl / .log         layer analysis of the first seed
    results.md            the results table (also printed) and the analysis tables
    effects.svg           Δ vs uniform with 95% intervals (ratios: the U-curve in the ratio;
                          depth, tokens: against layers or tokens, one line per series)
    loss_curves.svg       val loss vs training tokens
    analysis.svg          per-layer contributions of the uniform model
    alignment.svg         cos(MLP output, residual stream) per layer and schedule
    ablation.json         the grid and trainer flags of this directory
  every .svg also as .png when rsvg-convert or ImageMagick is installed.
--figure OUT.svg DATA.csv... draws the study figure from the depth and tokens grids' rows of
the data files (nothing runs): Δ vs uniform with its 95% interval against depth (both series)
and against training tokens, one row of panels per grid, cosine, reverse and groups beside
each other.

Re-running the same command resumes: runs the data file holds are skipped, a finished log
of this code becomes its row, an interrupted run continues from its checkpoint (`--load`),
or restarts from scratch if it has none. Ctrl-C stops all children; run the same command
again to go on. --dry-run checks everything the run would (it runs the trainer's probes,
writes nothing) and refuses where the run would. Every user error is one line on stderr
and a non-zero exit. Python 3 standard library only.
"""
import argparse, csv, fcntl, glob, hashlib, io, json, math, os, shlex, shutil, signal, struct
import subprocess, sys, tempfile, time
from html import escape

# ---------------------------------------------------------------------------------------
# Sizes. Measured on the 2-core AMD EPYC (Zen 5), 2 threads, quiet machine, train_tlm at
# main e1e5031 (dev/ablation.py's docstring has the per-point costs of the depth and tokens
# grids): 6 layers, dim 128, seq 128, batch 8 costs ~0.07 s/step (transformer); the whole
# val split (584 batches of 8 x 128) ~15 s.
# ---------------------------------------------------------------------------------------
ARCHS = ["transformer", "gated", "titans", "hope"]
BASELINE = "uniform"                             # every Δ is relative to this schedule

# Full run: 1000 steps x 8 x 128 tokens of Brown bytes (1M tokens) per run; periodic
# evaluations on 8 batches spread over the val split, the final one on all of it. From the
# paired noise study (dev/results/noise_study_2026-12-08/): cosine - uniform's paired sd 0.010,
# 0.007, 0.0045 at 500, 1000, 2000 steps; per 2-core hour 1000 and 2000 steps give intervals
# the study cannot tell apart, and 2000 would take the four-architecture grid past 3 hours.
DEFAULT_ARGS = ("--layers 6 --dim 128 --heads 4 --mlp-width 384 --seq-len 128 --batch 8 "
                "--steps 1000 --eval-every 100 --eval-batches 8 --final-eval-batches 0 "
                "--sample-every 0")
DEFAULT_SEEDS = 6
# --quick: tiny runs of 100k tokens each (widths 288/256/128/96 for the cosine taper); the
# final evaluation on 64 batches (the whole split would take longer than the training).
QUICK_ARGS = ("--layers 4 --dim 64 --heads 4 --mlp-width 192 --seq-len 64 --batch 8 "
              "--steps 200 --eval-every 25 --eval-batches 4 --final-eval-batches 64 "
              "--sample-every 0")
QUICK_SEEDS = 3                                  # the fewest that give an interval of some use

# The depth and tokens grids: small models (the points set --layers/--dim/--mlp-width, or
# --steps/--eval-every); widths rounded to multiples of 8 so that dims down to 40 taper.
SMALL_ARGS = ("--heads 4 --seq-len 128 --batch 8 --steps 500 --eval-every 50 --eval-batches 4 "
              "--final-eval-batches 0 --sample-every 0 --taper-multiple 8")
SMALL_QUICK_ARGS = ("--heads 4 --seq-len 64 --batch 8 --steps 200 --eval-every 25 "
                    "--eval-batches 4 --final-eval-batches 64 --sample-every 0 --taper-multiple 8")
TOKENS_SHAPE, TOKENS_QUICK_SHAPE = (8, 48), (4, 32)      # the tokens grid's (layers, dim)
SMALL_SEEDS = 6
# The tokens grid trains on more text than Brown: five corpora as bytes, 24.3M training tokens
# (dev/results/data.md), so its 8M-token point is a third of an epoch. The final evaluation
# takes 584 batches spread over their 2.59M val tokens: as many as Brown's whole split holds
# (the whole mix split would add ~4x the evaluation time to every run).
MIX = "brown+sotu+austen+mobydick+web"
MIX_FILES = {"--train": f"data/{MIX}_byte_train.bin", "--val": f"data/{MIX}_byte_val.bin"}
MIX_COMMAND = f"`make data-mix` (python3 dev/prepare_data.py --corpus {MIX} --tokenizer byte)"
MIX_ARGS = " ".join(f"{f} {p}" for f, p in MIX_FILES.items())
TOKENS_ARGS = " ".join([SMALL_ARGS.replace("--final-eval-batches 0", "--final-eval-batches 584"),
                        MIX_ARGS])
TOKENS_QUICK_ARGS = SMALL_QUICK_ARGS + " " + MIX_ARGS

# Flags the grids set; --train-args may not contain them (nor the flags a grid's points
# set: Grid.sets). --taper-start/--taper-end shape the taper grid's cosine.
RESERVED = {"--arch", "--taper", "--mlp-widths", "--seed", "--log", "--save", "--load",
            "--analyze", "--eval-only"}
TAPER_FLAGS = ("--taper", "--taper-start", "--taper-end")   # an arm's schedule, not its model
PROBE_STEPS = 3                                  # steps of the numerics fingerprint's run
TARGET_FLAGS = ("--target-halfwidth", "--max-seeds", "--max-hours")   # (not with --report-only)
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


# ------------------------------------ the grids ----------------------------------------
class Variant:
    """One arm of a grid (a schedule, or a memory setting). name: in file names; label: in
    tables and legends; flags: what it adds to the trainer's command line; base: the name of
    the arm it is compared with (None: it is a baseline), short: its name in "Δ vs ..."; archs:
    the architectures it is run for (None: every one the grid runs); family, x: the ratios
    grid's schedule and start multiple (one line of the U-curve per family)."""
    def __init__(self, name, label, flags, color, family=None, x=None, detail="",
                 base=BASELINE, short=None, archs=None):
        self.name, self.label, self.flags, self.color = name, label, flags, color
        self.family, self.x, self.detail = family or name, x, detail   # detail: 2nd tick line
        self.base, self.short = (None if name == base else base), short or name
        self.archs = archs


class Point:
    """One size of a grid. name: in file names ('' for the grids of one size); label: in
    tables; flags: trainer flags over the grid's; x: its place on the plot's x axis (layers,
    tokens); series: the plot's lines it is on."""
    def __init__(self, name, label, flags, x=None, series=()):
        self.name, self.label, self.flags, self.x, self.series = name, label, flags, x, series


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


def scaling_grid(linear):
    """The depth and tokens grids' schedules: the taper grid's three and the wider-early groups."""
    groups = Variant("groups", "groups 1.5,1,0.5", ["--taper", "groups:1.5,1,0.5"], "#9467bd")
    return taper_grid(False) + [groups]


def memory_grid(linear):
    """The memories' own controls, every arm at the taper's default (cosine 1.5 -> 0.5), each
    compared within its architecture: Titans' persistent tokens (4, titans-pytorch's count,
    and 16, a quarter of the 64-token window) against none; Titans' test-time learning off
    (--mem-lr 0: the memory reads its learned W_0 for every token) against persist 4; Hope's
    fast levels' learning off against Hope's default."""
    cos, titans, hope = ["--taper", "cosine"], ("titans",), ("hope",)
    persist = lambda n: cos + ["--persist", str(n)]
    return [Variant("persist0", "persist 0", persist(0), "#444444", base=None, short="persist 0",
                    archs=titans),
            Variant("persist4", "persist 4", persist(4), "#1f6fd1", base="persist0",
                    short="persist 4", archs=titans),
            Variant("persist16", "persist 16", persist(16), "#2ca02c", base="persist0",
                    archs=titans),
            Variant("memlr0", "persist 4, mem-lr 0", persist(4) + ["--mem-lr", "0"], "#d62728",
                    base="persist4", archs=titans),
            Variant("default", "default", cos, "#444444", base=None, archs=hope),
            Variant("memlr0", "mem-lr 0", cos + ["--mem-lr", "0"], "#d62728", base="default",
                    archs=hope)]


def one_point(quick):
    return [Point("", "", [])]


def shape_point(L, C, series):
    return Point(f"L{L}_d{C}", f"L {L}, dim {C}",
                 ["--layers", str(L), "--dim", str(C), "--mlp-width", str(3 * C)], L, series)


def depth_points(quick):
    """Two series: a fixed width at 4..24 layers, and a fixed parameter count (~0.5M; the
    width shrinks as the depth grows, MLP width 3 x dim). L 16 at dim 48 is on both."""
    if quick:
        width, depths, shapes = 32, [3, 6, 12], [(3, 64), (6, 48), (12, 32)]
    else:
        width, depths, shapes = 48, [4, 8, 16, 24], [(4, 96), (12, 56), (16, 48), (24, 40)]
    series = {(L, width): ["width"] for L in depths}
    for shape in shapes:
        series.setdefault(shape, []).append("params")
    return [shape_point(L, C, s) for (L, C), s in sorted(series.items())]


def tokens_points(quick):
    """One shape at 0.5M, 2M and 8M tokens (quick: 51k to 205k); Experiment labels them by
    the tokens their flags give."""
    L, C = TOKENS_QUICK_SHAPE if quick else TOKENS_SHAPE
    shape = ["--layers", str(L), "--dim", str(C), "--mlp-width", str(3 * C)]
    return [Point(f"s{steps}", f"{steps} steps",
                  shape + ["--steps", str(steps), "--eval-every", str(max(1, steps // 10))],
                  steps, ["tokens"]) for steps in ([100, 200, 400] if quick else [500, 2000, 8000])]


def tokens_of(flags):
    """Training tokens of a run: steps x batch x sequence length x gradient accumulation."""
    num = lambda f, d: int(flag_value(flags, f) or d)
    return num("--steps", 600) * num("--batch", 8) * num("--seq-len", 256) * num("--grad-accum", 1)


class Grid:
    """An experiment: its arms (variants(linear)), default architectures, sizes
    (points(quick)), trainer flags and seeds (full, quick); sets: the flags its points and
    arms set; series: {name: legend} of the lines against x (the depth and tokens grids);
    equal_params: whether an arm and its baseline must have the same parameter count;
    analyze: whether --analyze is on by default (not with --quick)."""
    def __init__(self, name, what, variants, archs, points=one_point,
                 args=(DEFAULT_ARGS, QUICK_ARGS), seeds=(DEFAULT_SEEDS, QUICK_SEEDS), sets=(),
                 xlabel=None, series=None, equal_params=True, analyze=True):
        self.name, self.what, self.variants, self.archs = name, what, variants, archs
        self.points, self.args, self.seeds, self.sets = points, args, seeds, set(sets)
        self.xlabel, self.series, self.equal_params = xlabel, series, equal_params
        self.analyze = analyze and not self.scaling

    @property
    def scaling(self):                           # an x axis: the depth and tokens grids
        return self.series is not None


GRIDS = {g.name: g for g in [
    Grid("taper", "uniform / cosine / reverse (/ linear) x architectures", taper_grid, ARCHS),
    Grid("groups", "three-group allocations (early/middle/late)", groups_grid, ["transformer"]),
    Grid("ratios", "linear/sigmoid/cosine x 3 start/end ratios", ratios_grid, ["transformer"],
         sets={"--taper-start", "--taper-end"}),
    Grid("depth", "uniform/cosine/reverse/groups at 4-24 layers, fixed width and fixed params",
         scaling_grid, ["transformer"], depth_points, (SMALL_ARGS, SMALL_QUICK_ARGS),
         (SMALL_SEEDS, QUICK_SEEDS), {"--layers", "--dim", "--mlp-width"}, "layers",
         {"width": "fixed width", "params": "fixed parameter count"}),
    Grid("tokens", "uniform/cosine/reverse/groups at 0.5M, 2M, 8M tokens", scaling_grid,
         ["transformer"], tokens_points, (TOKENS_ARGS, TOKENS_QUICK_ARGS),
         (SMALL_SEEDS, QUICK_SEEDS),
         {"--steps", "--eval-every"}, "training tokens", {"tokens": "one shape"}),
    Grid("memory", "Titans' persistent tokens and test-time learning, Hope's (--mem-lr 0)",
         memory_grid, ["titans", "hope"], seeds=(SMALL_SEEDS, QUICK_SEEDS),
         sets={"--persist", "--mem-lr"}, equal_params=False,
         analyze=False)]}


def default_out(grid, quick):
    return "dev/runs/ablation" + ("" if grid == "taper" else f"_{grid}") + "_quick" * quick


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
    """Flags of the token list `extra` override those of `base` with the same name."""
    merged = {f: v for f, v in parse_flags(shlex.join(base))}
    for f, v in parse_flags(shlex.join(extra)):
        merged.pop(f, None)
        merged[f] = v
    return [x for f, v in merged.items() for x in ([f] if v is None else [f, v])]


def flag_value(tokens, name):
    return next((tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i] == name), None)


def model_flags(variant):
    """An arm's flags but for the taper's: arms with the same widths and model_flags are one
    model (the taper grids' arms have none; the memory grid's differ in --persist, --mem-lr)."""
    return tuple(sorted((f, v) for f, v in parse_flags(shlex.join(variant.flags))
                        if f not in TAPER_FLAGS))


def flag_key(tokens):
    """The flags as a sorted tuple: equal for the same flags in any order."""
    return tuple(sorted(map(tuple, parse_flags(shlex.join(tokens)))))


# ------------------------------------ log parsing --------------------------------------
class RunLog:
    """What one JSONL log says. status: ok | missing | corrupt | incomplete | diverged."""
    def __init__(self, path):
        self.path, self.status, self.error = path, "missing", ""
        self.config, self.vals, self.done, self.analysis, self.stopped = {}, {}, None, [], None
        self.train, self.batches, self.resumed = {}, {}, False
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
        ev, step = rec.get("event"), rec.get("step", 0)
        if ev == "config":
            self.config = rec
            resumed = rec.get("resumed_step") or 0
            self.resumed = self.resumed or resumed > 0
            # a resumed run repeats the steps after its checkpoint: forget the old ones
            self.vals = {s: v for s, v in self.vals.items() if s <= resumed}
            self.train = {s: v for s, v in self.train.items() if s <= resumed}
            self.done = None
        elif ev == "val" and is_number(rec.get("loss")):
            self.vals[step] = (rec.get("tokens", 0), rec["loss"])
            self.batches[step] = batch_count(rec)
        elif ev == "train" and is_number(rec.get("loss")):
            self.train[step] = (rec["loss"], rec.get("grad_norm"), rec.get("tokens"))
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

    def tokens(self):
        """Training tokens at the last record: the last val event's or train event's count."""
        counts = [t for t, _ in self.curve()] + [t for _, _, t in self.train.values()]
        counts = [t for t in counts if is_number(t)]
        return int(max(counts)) if counts else None

    def val_batches(self):
        """The batches the final evaluation averaged: logged with it if the trainer does,
        else the configured count ('all' for 0, the whole split)."""
        logged = batch_count(self.done or {})
        if logged is None and self.vals:
            logged = self.batches.get(max(self.vals))
        if logged is not None:
            return str(logged)
        n = self.config.get("final_eval_batches", self.config.get("eval_batches"))
        return "all" if n == 0 else "" if n is None else str(n)


def batch_count(rec):
    """A record's count of evaluation batches, whatever its key ('batches', 'val_batches', ..)."""
    return next((v for k, v in rec.items() if "batches" in k and isinstance(v, int)
                 and not isinstance(v, bool)), None)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def widths_of(config):
    """(MLP widths, Hope's fast-level widths or ''), as the data file writes them: '576/544/..'."""
    join = lambda ws: "/".join(map(str, ws)) if isinstance(ws, list) and any(ws) else ""
    return join(config.get("mlp_widths")), join(config.get("cms_widths"))


_SHARDS = {}


def shard_tokens(pattern):
    """Tokens in the training shard(s) `pattern` (a file or a glob): the sum of their
    headers' counts (data/README.md); None if they cannot be read."""
    if pattern not in _SHARDS:
        total, files = 0, sorted(glob.glob(pattern)) or [pattern]
        try:
            for path in files:
                with open(path, "rb") as f:
                    magic, _, ntok = struct.unpack("<3i", f.read(12))
                if magic != 20240520 or ntok <= 0:
                    raise ValueError
                total += ntok
        except (OSError, ValueError, struct.error):
            total = None
        _SHARDS[pattern] = total
    return _SHARDS[pattern]


# ------------------------------------ the data file ------------------------------------
# One row per finished run (and per schedule run once because its widths equal another's).
COLUMNS = ["grid", "point", "arch", "schedule", "schedule_flags", "seed", "data_seed", "status",
           "same_as", "val_loss", "val_batches", "tokens", "epochs", "steps", "params",
           "mlp_widths", "cms_widths", "seconds", "resumed", "fingerprint", "code", "machine",
           "date", "grid_flags", "trainer_flags"]
STATUSES = ("ok", "diverged", "alias")


class DataFile:
    """The runs' rows (dicts of COLUMNS' strings), read once; add() appends one row and
    flushes it to disk at once (a run's row is never lost to a later crash)."""
    def __init__(self, path):
        self.path, self.rows, self.header, self.by_cell = path, [], list(COLUMNS), {}
        if os.path.isdir(path):
            raise UserError(f"--data {path}: is a directory (give the file, e.g. {path}/runs.csv)")
        if not os.path.exists(path):
            return
        with open(path, "rb") as f:
            raw = f.read()
        if b"\n" not in raw:                      # empty, or a killed writer's half header
            return
        text = raw[:raw.rfind(b"\n") + 1].decode("utf-8", "replace")   # not a half row
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"--data {path}: not an ablation data file (no column"
                            f"{'s' * (len(missing) > 1)} {', '.join(missing)})")
        self.header = reader.fieldnames
        for i, row in enumerate(reader, start=2):
            why = bad_row(row)
            if why:
                raise UserError(f"--data {path}: line {i}: {why}")
            self._index(row)

    def add(self, row):
        row = {c: str(row.get(c, "")) for c in COLUMNS}
        if self.path is not None:                 # None: rows in memory only (old --out dirs)
            text = io.StringIO()
            w = csv.DictWriter(text, fieldnames=self.header, lineterminator="\n", restval="")
            w.writerow({c: row.get(c, "") for c in self.header})
            with open(self.path, "a+b") as f:     # every write goes to the end
                fcntl.flock(f, fcntl.LOCK_EX)     # two invocations append whole rows
                end = f.seek(0, os.SEEK_END)
                f.seek(max(0, end - 65536))
                tail = f.read()
                if not tail.endswith(b"\n"):     # a killed writer's half row: cut it off
                    end -= len(tail) - tail.rfind(b"\n") - 1
                    f.truncate(end)
                if end == 0:
                    f.write((",".join(self.header) + "\n").encode())
                f.write(text.getvalue().encode())
                f.flush()
                os.fsync(f.fileno())
        self._index(row)

    def _index(self, row):
        self.rows.append(row)
        self.by_cell.setdefault(tuple(row[c] for c in ("grid", "point", "arch", "schedule")),
                                []).append(row)

    def of(self, grid, point, arch, schedule):
        """The rows of one grid, point, architecture and schedule, in file order."""
        return self.by_cell.get((grid, point, arch, schedule), [])


def bad_row(row):
    """Why a data row cannot be used, or None."""
    if row.get("status") not in STATUSES:
        return f"status {row.get('status')!r} is not one of {', '.join(STATUSES)}"
    if row["status"] != "alias" and not row["seed"].isdigit():
        return f"seed {row['seed']!r} is not a number"
    if row["status"] == "ok":
        try:
            if not math.isfinite(float(row["val_loss"])):
                raise ValueError
        except ValueError:
            return f"val_loss {row['val_loss']!r} is not a finite number"
    return None


def row_key(row, column):
    """flag_key of a row's flags column, computed once per row."""
    cache = row.setdefault("_keys", {})
    if column not in cache:
        try:
            cache[column] = flag_key(shlex.split(row[column]))
        except ValueError:
            cache[column] = None
    return cache[column]


# ------------------------------------ the experiment -----------------------------------
class Experiment:
    """A grid as this invocation runs (or reports) it: its points, architectures, arms and
    trainer flags; what the trainer says of them (numerics fingerprint per point and
    architecture, widths per arm, arms that are an earlier arm's model: the same widths and
    the same flags but for the taper's); the data file, and the rows of it that belong to
    this grid."""
    def __init__(self, args, grid, points, archs, variants, targs):
        self.args, self.grid, self.points, self.archs = args, grid, points, archs
        self.variants, self.targs, self.out = variants, targs, args.out
        self.fingerprint, self.widths, self.aliases = {}, {}, {}
        self.setups = {}          # (point, arch) -> (grid flags key, fingerprint) of its rows
        self.errors = {}          # (point, arch, schedule, seed) -> why it failed this session
        self.durations = {}       # (point, arch) -> [seconds of a finished run]
        self.data = self.made_by = None   # made_by: (code, machine) of an old --out's logs
        self.target_note = None           # --target-halfwidth: reached, or why not
        self.analyze = False              # --analyze: keep the first seed's checkpoints
        self.set_points(points)

    def set_points(self, points):
        self.points = points
        if self.grid.name == "tokens":            # x and label: the tokens, not the steps
            for p in points:
                p.x = tokens_of(self.point_args(p))
                p.label = f"{p.x / 1e6:.2g}M tokens"

    def point_args(self, point):
        return merge_flags(self.targs, point.flags)

    def run(self, point, arch, variant, seed):
        return Run(self, point, arch, variant, seed)

    def alias(self, point, arch, variant):
        return self.aliases.get((point.name, arch, variant.name))

    def variants_of(self, arch):
        """The arms run for an architecture, in the grid's order."""
        return [v for v in self.variants if v.archs is None or arch in v.archs]

    def variant(self, name, arch):
        return next((v for v in self.variants_of(arch) if v.name == name), None)

    def reference(self, arch):
        """The arm whose probe run every fingerprint starts from: the architecture's first
        baseline (uniform, in the taper grids)."""
        return next(v for v in self.variants_of(arch) if v.base is None)

    def bases(self):
        """The short names of the arms the grid's comparisons are against ('uniform')."""
        return list(dict.fromkeys(self.variant(v.base, a).short for a in self.archs
                                  for v in self.variants_of(a) if v.base))

    def base_words(self):
        """'uniform', or 'baseline' where the comparisons are against several arms."""
        bases = self.bases()
        return bases[0] if len(bases) == 1 else "baseline"

    def cells(self):
        """(point, arch): the grid's cells in order."""
        return [(p, a) for p in self.points for a in self.archs]

    def arms(self):
        """(point, arch, variant): every arm of every cell, in order."""
        return [(p, a, v) for p, a in self.cells() for v in self.variants_of(a)]

    def set_probed(self, fingerprint, widths):
        """The trainer's answers (probe()): the rows that count are those of this code."""
        self.fingerprint, self.widths = fingerprint, widths
        gkey = flag_key(self.targs)
        for p, a in self.cells():
            self.setups[(p.name, a)] = (gkey, fingerprint[(p.name, a)])
            seen = {}
            for v in self.variants_of(a):
                w = widths[(p.name, a, v.name)][:2], model_flags(v)
                if w in seen:
                    self.aliases[(p.name, a, v.name)] = seen[w]
                else:
                    seen[w] = v.name

    def set_from_rows(self):
        """--report-only: every cell reports the code and flags of its latest row."""
        for row in self.data.rows:
            if row["grid"] == self.grid.name:
                self.setups[(row["point"], row["arch"])] = (row_key(row, "grid_flags"),
                                                            row["fingerprint"])
        for p, a, v in self.arms():
            twins = [r["same_as"] for r in self.data.of(self.grid.name, p.name, a, v.name)
                     if r["status"] == "alias" and self.matches(r, p, a, v)]
            if twins:
                self.aliases[(p.name, a, v.name)] = twins[-1]

    def matches(self, row, point, arch, variant):
        """Whether a row of this cell and schedule (DataFile.of) was made with this code
        (fingerprint, widths) and these flags."""
        if (row_key(row, "grid_flags"), row["fingerprint"]) != self.setups.get((point.name, arch)):
            return False
        w = self.widths.get((point.name, arch, variant.name))
        if w and (row["mlp_widths"], row["cms_widths"]) != w[:2]:
            return False
        if w and row["status"] != "alias":        # the same command but for the files
            return row_key(row, "trainer_flags") == \
                flag_key(self.run(point, arch, variant, int(row["seed"])).flags)
        return True

    def rows_of(self, point, arch, variant):
        """{seed: the latest matching row} of one cell and schedule."""
        rows = self.data.of(self.grid.name, point.name, arch, variant.name)
        return {int(r["seed"]): r for r in rows
                if r["status"] != "alias" and self.matches(r, point, arch, variant)}

    def find_row(self, run):
        return self.rows_of(run.point, run.arch, run.variant).get(run.seed)

    def unused_rows(self):
        """Rows of this grid's cells that were made with other code or flags."""
        return sum(1 for p, a, v in self.arms()
                   for r in self.data.of(self.grid.name, p.name, a, v.name)
                   if not self.matches(r, p, a, v))

    def base_row(self, point, arch, variant, status):
        w = self.widths.get((point.name, arch, variant.name), ("", "", ""))   # old --out: none
        return {"grid": self.grid.name, "point": point.name, "arch": arch, "schedule": variant.name,
                "schedule_flags": shlex.join(variant.flags), "status": status,
                "mlp_widths": w[0], "cms_widths": w[1], "params": w[2],
                "fingerprint": self.fingerprint.get((point.name, arch), ""),
                "code": self.made_by[0] if self.made_by else git_commit(self.args.trainer),
                "machine": self.made_by[1] if self.made_by else machine(),
                "date": time.strftime("%Y-%m-%d %H:%M"), "grid_flags": shlex.join(self.targs)}

    def add_run_row(self, run, log):
        """The row of a finished (or diverged) run, from its log."""
        cfg, done = log.config, log.done or {}
        ok = log.status == "ok"
        row = self.base_row(run.point, run.arch, run.variant, "ok" if ok else "diverged")
        tokens, shard = log.tokens(), shard_tokens(cfg.get("train", ""))
        mlp, cms = widths_of(cfg)
        steps = done.get("step", max(log.train, default=""))
        row.update(seed=run.seed, data_seed=cfg.get("data_seed", ""),
                   val_loss=repr(float(done["val_loss"])) if ok else "",
                   val_batches=log.val_batches() if ok else "", tokens=tokens or "",
                   epochs=f"{tokens / shard:.3f}" if tokens and shard else "", steps=steps,
                   params=cfg.get("params", row["params"]), mlp_widths=mlp, cms_widths=cms,
                   seconds=done.get("seconds", ""), resumed=int(log.resumed),
                   trainer_flags=shlex.join(run.flags))
        self.data.add(row)

    def add_alias_rows(self):
        """One row per schedule run once because its widths equal an earlier schedule's."""
        for p, a, v in self.arms():
            twin = self.alias(p, a, v)
            have = any(r["status"] == "alias" and r["same_as"] == twin and self.matches(r, p, a, v)
                       for r in self.data.of(self.grid.name, p.name, a, v.name))
            if twin and not have:
                self.data.add(dict(self.base_row(p, a, v, "alias"), same_as=twin))


# ------------------------------------ asking the trainer -------------------------------
def probe(exp):
    """Short trainer runs with the grid's own flags, before anything is run: for every point
    and architecture the reference arm (uniform) for PROBE_STEPS steps, whose numbers hash to
    the numerics fingerprint (numerics_fingerprint()); every other schedule for 0 steps, for
    its widths. An arm whose flags differ from the reference's in more than the taper (the
    memory grid's --persist, --mem-lr 0) is another computation: it is trained PROBE_STEPS
    steps too, and the fingerprint hashes all of their numbers. Evaluations on one batch,
    one thread (the trainer's numbers are bit-identical for any thread count; one thread is
    not slowed by a busy machine's other processes). A refusal of the trainer is the grid's
    error, said once."""
    args, fingerprint, widths, env = exp.args, {}, {}, run_env(1)
    tmp = tempfile.mkdtemp(prefix="ablation_probe_")
    try:
        for p, a in exp.cells():
            pargs, ref, prints = exp.point_args(p), exp.reference(a), []
            for v in exp.variants_of(a):
                trained = v is ref or model_flags(v) != model_flags(ref)
                over = ["--steps", str(PROBE_STEPS if trained else 0), "--eval-every", "0",
                        "--eval-batches", "1"]
                if flag_value(pargs, "--final-eval-batches") is not None:
                    over += ["--final-eval-batches", "1"]
                log = os.path.join(tmp, f"{len(widths)}.jsonl")
                ckpt = log[:-6] + ".ckpt"
                cmd = [args.trainer, "--arch", a, *v.flags, "--seed", str(args.first_seed),
                       *merge_flags(pargs, over), "--log", log] + \
                    (["--save", ckpt] if trained else [])
                r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
                lg = RunLog(log)
                what = f"{a} {v.label}" + (f" at {p.label}" if p.label else "")
                if r.returncode != 0 or lg.status != "ok" or "mlp_widths" not in lg.config:
                    lines = [l.strip() for l in (r.stdout + r.stderr).splitlines() if l.strip()]
                    said = [l for l in lines if "error" in l.lower()] or lines   # not its hint
                    why = said[-1] if said else f"exit {r.returncode}, {lg.status} log"
                    raise UserError(f"the trainer refused the {exp.grid.name} grid's run {what}: "
                                    f"{why} (tried: {shlex.join(without_files(cmd))})")
                widths[(p.name, a, v.name)] = widths_of(lg.config) + (lg.config.get("params", ""),)
                if trained:
                    if not lg.train:
                        raise UserError(f"the trainer logged no train records for {what} "
                                        f"(tried: {shlex.join(without_files(cmd))})")
                    prints.append(numerics_fingerprint(lg, ckpt))
            fingerprint[(p.name, a)] = prints[0] if len(prints) == 1 else \
                hashlib.sha256(" ".join(prints).encode()).hexdigest()[:16]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return fingerprint, widths


def numerics_fingerprint(log, ckpt):
    """16 hex digits of the SHA-256 of a probe run's numbers: its logged train losses (%.9g),
    gradient norms and val losses, and the bytes of its checkpoint's parameters and AdamW
    moments (data/README.md: after the 1 KB header and the option area, before the CRC). The
    weights are what make it sensitive: builds whose logged losses agreed for 14 steps
    (-O2 against -O3 -march=native) differed in most weights after one step, and in the
    final val loss. The option text is left out, so new options with old defaults keep it."""
    nums = [[s, *log.train[s][:2]] for s in sorted(log.train)] + \
           [[s, log.vals[s][1]] for s in sorted(log.vals)]
    h = hashlib.sha256(json.dumps(nums).encode())
    try:
        with open(ckpt, "rb") as f:
            raw = f.read()
        head = struct.unpack("<256i", raw[:1024])
        if head[0] == 20260623 and head[1] == 2 and 1024 + head[40] <= len(raw) - 4:
            h.update(raw[1024 + head[40]:-4])
    except (OSError, struct.error):
        pass                                      # no checkpoint of this format: the log's
    return h.hexdigest()[:16]


# ------------------------------------ running the grid ---------------------------------
class Run:
    """One training run: (point, arch, schedule, seed). flags: its trainer flags but for the
    files; its files in --out are [point_]arch_schedule_sSEED.jsonl / .ckpt / .log, the .log
    opening with the command and the numerics fingerprint it was started with."""
    def __init__(self, exp, point, arch, variant, seed):
        self.exp, self.point, self.arch, self.variant, self.seed = exp, point, arch, variant, seed
        self.name = (f"{point.name}_" if point.name else "") + f"{arch}_{variant.name}_s{seed}"
        self.flags = ["--arch", arch, *variant.flags, "--seed", str(seed), *exp.point_args(point)]
        base = os.path.join(exp.out, self.name)
        self.jsonl, self.ckpt, self.logfile = base + ".jsonl", base + ".ckpt", base + ".log"
        self.proc = self.start = None
        self.resume = False
        self.keep = False      # keep the checkpoint (first seed: --analyze reads it)
        self.error = ""        # why this run failed in this session

    @property
    def label(self):
        return (f"{self.point.label} " if self.point.label else "") + \
            f"{self.arch} {self.variant.label} s{self.seed}"

    def command(self, trainer):
        cmd = [trainer, *self.flags, "--log", self.jsonl, "--save", self.ckpt]
        return cmd + (["--load", self.ckpt] if self.resume else [])

    def remove_files(self):
        # (the trainer's temporaries: PATH.tmp.PID, and PATH.tmp of older versions; its lock)
        stale = glob.glob(glob.escape(self.ckpt) + ".tmp*") + [self.ckpt + ".lock"]
        for p in (self.jsonl, self.ckpt, self.logfile, *stale):
            if os.path.exists(p):
                os.remove(p)

    def log_origin(self):
        """'mine' if the files in --out are this run's (same command, same numerics
        fingerprint, same widths), 'stale' if they are its command under other numerics,
        'other' if another command's, None if there are none."""
        if not os.path.exists(self.logfile):
            return "other" if os.path.exists(self.jsonl) or os.path.exists(self.ckpt) else None
        cmd = fp = None
        with open(self.logfile, errors="replace") as f:
            for line in f:
                if line.startswith("$ ") and cmd is None:
                    try:
                        cmd = flag_key(without_files(shlex.split(line[2:])[1:]))
                    except ValueError:
                        return "other"
                elif line.startswith("# numerics fingerprint: ") and fp is None:
                    fp = line.split(":", 1)[1].strip()
        if cmd != flag_key(self.flags):
            return "other"
        if fp != self.exp.fingerprint[(self.point.name, self.arch)]:
            return "stale"
        cfg = RunLog(self.jsonl).config
        w = self.exp.widths[(self.point.name, self.arch, self.variant.name)]
        return "mine" if not cfg or widths_of(cfg) == w[:2] else "stale"

    def plan(self):
        """What to do: 'have' (the data file holds it), 'done' / 'diverged' (its log in --out
        is finished: its row is added), 'resume' (from its checkpoint), 'stale' (its files
        are another build's), or 'fresh'."""
        retry = self.exp.args.retry_diverged
        row = self.exp.find_row(self)
        if row and (row["status"] == "ok" or not retry):
            return "have"
        origin = self.log_origin()
        if origin == "stale":
            return "stale"
        if origin != "mine":
            return "fresh"
        log = RunLog(self.jsonl)
        if log.status == "ok":
            return "done"
        if log.status == "diverged":
            return "fresh" if retry else "diverged"
        if log.status == "incomplete" and log.config and os.path.exists(self.ckpt):
            return "resume"
        return "fresh"

    def prepare(self, what):
        """Acts on plan(): adds the row of a finished log, readies a resume, or cleans up."""
        if what in ("done", "diverged"):
            log = RunLog(self.jsonl)
            self.exp.add_run_row(self, log)
            if what == "diverged":
                self.error = run_problem(log)
        elif what == "resume":
            with open(self.jsonl, "rb+") as f:   # drop a half-written last line
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
            self.resume = True
        elif what in ("fresh", "stale"):
            self.remove_files()
            self.resume = False


def without_files(tokens):
    """A command's flags without --log, --save, --load and their values."""
    out, skip = [], False
    for t in tokens:
        if skip:
            skip = False
        elif t in ("--log", "--save", "--load"):
            skip = True
        else:
            out.append(t)
    return out


def fmt_time(s):
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_cost(run):
    """A rough relative cost (layers x dim^2 x steps, by architecture) to start long runs first."""
    num = lambda f, d: int(flag_value(run.flags, f) or d)
    return ((ARCHS.index(run.arch) + 1) * num("--layers", 6) * num("--dim", 128) ** 2
            * num("--steps", 500))


def run_grid(exp, runs, env_threads):
    """Runs what the data file and --out do not hold yet, with -j workers; every finished run
    becomes a row. Returns True if it was not interrupted."""
    args = exp.args
    todo, total, t0 = [], len(runs), time.time()
    for r in runs:
        what = r.plan()
        r.prepare(what)
        if what == "have" and exp.find_row(r)["status"] == "diverged":
            r.error = "diverged (its row in the data file)"
        if r.error:
            exp.errors[(r.point.name, r.arch, r.variant.name, r.seed)] = r.error
        if what not in ("have", "done", "diverged"):
            todo.append(r)
    ndone = total - len(todo)
    if args.jobs > 1:                             # longest first, so no slow run is left for last
        todo.sort(key=lambda r: -run_cost(r))
    print(f"{total} runs, {ndone} already finished, {len(todo)} to run with -j {args.jobs}"
          + (f" (OMP_NUM_THREADS={env_threads} each)" if env_threads else "")
          + f"; logs in {args.out}/, rows in {exp.data.path}")
    env = run_env(env_threads)

    def estimate(r):
        ds = exp.durations.get((r.point.name, r.arch)) or \
            [d for (p, _), ds in exp.durations.items() if p == r.point.name for d in ds]
        return sum(ds) / len(ds) if ds else None

    def eta(running):
        rest = [estimate(r) for r in todo] + \
               [max(0.0, (estimate(r) or 0) - (time.time() - r.start)) for r in running]
        return None if any(x is None for x in rest) else sum(rest) / args.jobs

    running = []
    try:
        while todo or running:
            while todo and len(running) < args.jobs:
                r = todo.pop(0)
                if r.resume:
                    print(f"  resuming {r.name} from its checkpoint")
                cmd = r.command(args.trainer)
                with open(r.logfile, "a") as lf:
                    lf.write(f"$ {shlex.join(cmd)}\n# numerics fingerprint: "
                             f"{exp.fingerprint[(r.point.name, r.arch)]}\n")
                    lf.flush()
                    r.proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True)
                r.start = time.time()
                running.append(r)
            time.sleep(0.02)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                rc, dt, log = r.proc.returncode, time.time() - r.start, RunLog(r.jsonl)
                if rc == 0 and log.status == "ok":
                    exp.add_run_row(r, log)
                    if not r.resume:              # a resumed run's time says little
                        exp.durations.setdefault((r.point.name, r.arch), []).append(dt)
                    if not args.keep_checkpoints and not r.keep and os.path.exists(r.ckpt):
                        os.remove(r.ckpt)         # ~16 MB each at the default size; the log stays
                    msg = f"val_loss {log.final_loss:.4f} ({fmt_time(dt)})"
                elif log.status == "diverged":
                    exp.add_run_row(r, log)
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
                if r.error:
                    exp.errors[(r.point.name, r.arch, r.variant.name, r.seed)] = r.error
                ndone += 1
                print(f"[{ndone}/{total}] {r.label}: {msg} | "
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


def run_env(threads):
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def last_line(path, width=120):
    """The last line a run printed (its error message, usually), shortened to width."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [l for l in lines if l and not l.startswith(("$ ", "# ", "(run "))]
    last = lines[-1] if lines else ""
    return last[:width - 3] + "..." if len(last) > width else last


def analysis_path(out, arch, variant):
    return os.path.join(out, f"{arch}_{variant.name}_analysis.jsonl")


def analysis_command(exp, arch, variant, seed):
    extra = []
    for f in ("--val", "--eval-batches"):
        v = flag_value(exp.targs, f)
        if v is not None:
            extra += [f, v]
    ckpt = os.path.join(exp.out, f"{arch}_{variant.name}_s{seed}.ckpt")
    return ckpt, [exp.args.trainer, "--load", ckpt, "--analyze", "--log",
                  analysis_path(exp.out, arch, variant), *extra]


def run_analysis(exp, seed):
    """train_tlm --load <first-seed checkpoint> --analyze, once per architecture and schedule."""
    point = exp.points[0]
    for arch in exp.archs:
        for v in exp.variants_of(arch):
            if exp.alias(point, arch, v):
                continue                          # not run: the same model as its twin
            ckpt, cmd = analysis_command(exp, arch, v, seed)
            out = analysis_path(exp.out, arch, v)
            src = RunLog(ckpt[:-5] + ".jsonl")
            if src.status != "ok" or not os.path.exists(ckpt):
                print(f"analysis {arch} {v.label}: skipped (s{seed} did not finish here, or its "
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
# Student's t and the power of the paired t test, in the standard library: the t
# distribution's tail through the regularized incomplete beta function, the power through
# the noncentral t distribution, integrated over the chi distribution of the sample sd.
ALPHA, POWER = 0.05, 0.8


def betainc(a, b, x):
    """The regularized incomplete beta function I_x(a, b): its continued fraction (modified
    Lentz), on the side of the mean where it converges fast."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(1000):                     # terms: 1, d_1, d_2, ... of 1/(1+ d_1/(1+ d_2/...))
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0) / a


def t_pvalue(t, df):
    """Two-sided p-value of Student's t with df degrees of freedom: P(|T| >= |t|)."""
    return betainc(df / 2, 0.5, df / (df + t * t))


def t_critical(df, alpha=ALPHA):
    """The t with two-sided p-value alpha (alpha 0.05: t(0.975, df)), by bisection."""
    lo, hi = 0.0, 2.0
    while t_pvalue(hi, df) > alpha:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_pvalue(mid, df) > alpha else (lo, mid)
    return (lo + hi) / 2


def normal_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


def paired_power(dz, n, alpha=ALPHA, steps=400):
    """Power of the two-sided paired t test with n pairs for an effect of dz = mean / sd of the
    differences: P(|T'| > t_crit), T' = (Z + dz sqrt(n)) / S noncentral t with df = n - 1,
    S = sqrt(V / df), V ~ chi^2(df): the integral over S of P(|Z + delta| > t_crit S)
    (Simpson's rule over +-12 sd of S)."""
    df, delta = n - 1, dz * math.sqrt(n)
    c = t_critical(df, alpha)
    half = 12 / math.sqrt(2 * df)
    a, b = max(0.0, 1 - half), 1 + half
    lnk = math.log(2) + df / 2 * math.log(df / 2) - math.lgamma(df / 2)   # density of S

    def f(s):
        dens = math.exp(lnk + (df - 1) * math.log(s) - df * s * s / 2) if s > 0 else \
            (math.exp(lnk) if df == 1 else 0.0)
        return dens * (normal_cdf(delta - c * s) + normal_cdf(-delta - c * s))
    h = (b - a) / steps
    return h / 3 * sum((1 if i in (0, steps) else 4 if i % 2 else 2) * f(a + i * h)
                       for i in range(steps + 1))


def seeds_needed(dz, power=POWER, alpha=ALPHA, cap=10000):
    """The fewest pairs (n >= 2) whose paired t test has `power` for an effect dz; None for
    dz 0 or beyond cap. Starts at the normal approximation, then steps to the exact n."""
    if not dz > 0:
        return None
    z = 1.959963984540054 + 0.8416212335729143 if (power, alpha) == (0.8, 0.05) else None
    n = max(2, min(cap, int(((z or 2.8) / dz) ** 2)))
    while n > 2 and paired_power(dz, n - 1, alpha) >= power:
        n -= 1
    while paired_power(dz, n, alpha) < power:
        n += 1
        if n > cap:
            return None
    return n


def holm(pvalues):
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), made
    monotone and capped at 1; returned in the input's order."""
    m, out, run = len(pvalues), [None] * len(pvalues), 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        run = max(run, min(1.0, (m - rank) * pvalues[i]))
        out[i] = run
    return out


def mean_std(xs):
    """Mean and sample standard deviation (None for a single value)."""
    xs = list(xs)
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None)


def pearson(xs, ys):
    """The correlation of two equally long lists; None where either has no spread."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def halfwidth_seeds(sd, target, cap=10000):
    """The fewest pairs whose 95% interval t(0.975, n-1) sd / sqrt(n) is at most target (it
    shrinks as n grows: bisection); None beyond cap."""
    fits = lambda n: t_critical(n - 1) * sd / math.sqrt(n) <= target
    if not fits(cap):
        return None
    lo, hi = 1, cap                               # fits(hi), not fits(lo) (n = 1: no interval)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


class Paired:
    """An arm against its baseline (a schedule against uniform) over the seeds where both
    finished: the differences d_s = loss(arm, s) - loss(baseline, s), their mean with the 95%
    t interval mean ± t(0.975, n-1) sd / sqrt(n), the within-pair correlation r of the two
    arms' losses, the paired t test's p (two-sided), the Holm-adjusted p (set by build_cells),
    and the seeds that 80% power at alpha 0.05 would need for the observed effect mean / sd."""
    def __init__(self, base, ok, against=BASELINE):
        seeds, self.against = sorted(set(base) & set(ok)), against   # against: its short name
        self.diffs = {s: ok[s] - base[s] for s in seeds}
        self.n = len(seeds)
        self.mean, self.sd = mean_std(self.diffs.values()) if seeds else (None, None)
        self.lo = self.hi = self.half = self.p = self.p_holm = self.r = self.needed = None
        if self.n >= 2:
            self.half = t_critical(self.n - 1) * self.sd / math.sqrt(self.n)
            self.lo, self.hi = self.mean - self.half, self.mean + self.half
            if self.sd > 0:
                self.p = t_pvalue(self.mean / (self.sd / math.sqrt(self.n)), self.n - 1)
                self.needed = seeds_needed(abs(self.mean) / self.sd)
            else:                                 # every pair differs by the same amount
                self.p, self.needed = (1.0, None) if self.mean == 0 else (0.0, 2)
        if self.n >= 3:
            self.r = pearson([base[s] for s in seeds], [ok[s] for s in seeds])
        self.same_sign = sum(1 for d in self.diffs.values()
                             if d != 0 and (d > 0) == ((self.mean or 0) > 0))

    @property
    def distinguishable(self):                   # by the Holm-adjusted p-value
        return self.p_holm is not None and self.p_holm < ALPHA

    @property
    def excludes_zero(self):                     # the unadjusted interval
        return self.lo is not None and (self.lo > 0 or self.hi < 0)

    def verdict(self):
        if self.n == 0:
            return "—"
        if self.distinguishable:
            return f"distinguishable from {self.against} ({'worse' if self.mean > 0 else 'better'})"
        if self.excludes_zero:
            return "not distinguishable after Holm (the interval alone excludes 0)"
        return "not distinguishable" + (" (1 pair, no interval)" if self.n == 1 else "")

    def interval(self):
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean:+.4f} (1 pair)"
        return f"{self.mean:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}]"


def fmt_p(p):
    return "—" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def run_problem(log):
    return log.status + (f" ({log.error})" if log.error and log.status != "missing" else "")


class Cell:
    """One point x architecture x schedule: its rows (one per seed), the finished seeds'
    final val losses, and (for every schedule but uniform) the comparison with uniform.
    alias: the schedule whose widths it shares (it was not run)."""
    def __init__(self, exp, point, arch, variant):
        self.exp, self.point, self.arch, self.variant = exp, point, arch, variant
        self.alias = exp.alias(point, arch, variant)
        self.rows = exp.rows_of(point, arch, variant)
        self.ok = {s: float(r["val_loss"]) for s, r in self.rows.items() if r["status"] == "ok"}
        self.failed = {s: "diverged" for s, r in self.rows.items() if r["status"] == "diverged"}
        for (p, a, v, s), why in exp.errors.items():
            if (p, a, v) == (point.name, arch, variant.name) and s not in self.ok:
                self.failed.setdefault(s, why)
        self.mean, self.std = mean_std(self.ok.values()) if self.ok else (None, None)
        col = lambda c, f: {f(r[c]) for s, r in self.rows.items() if s in self.ok and r[c]}
        self.params, self.tokens = col("params", int), col("tokens", int)
        self.epochs = col("epochs", float)
        self.batches = col("val_batches", str)
        self.paired = None
        self._logs = None

    @property
    def logs(self):
        """{seed: RunLog} of the runs whose log in --out is the row's run (the same final loss):
        the loss curves."""
        if self._logs is None:
            self._logs = {}
            for s, loss in self.ok.items():
                lg = RunLog(self.exp.run(self.point, self.arch, self.variant, s).jsonl)
                if lg.status == "ok" and lg.final_loss == loss:
                    self._logs[s] = lg
        return self._logs


def build_cells(exp):
    """Returns ({(point, arch, arm name): Cell}, warnings). Every arm with a baseline is paired
    with it (its twin's numbers, if it is an earlier arm's model; none if it is its
    baseline's); every comparison with a p-value is one of the Holm family: all the grid's
    points, architectures and arms."""
    cells, warns, family = {}, [], []
    for p, a in exp.cells():
        row = {v.name: Cell(exp, p, a, v) for v in exp.variants_of(a)}
        cells.update({(p.name, a, n): c for n, c in row.items()})
        model = lambda c: row[c.alias] if c.alias else c        # the cell that was run
        for c in row.values():
            v = c.variant
            if v.base and not c.alias:
                c.paired = Paired(model(row[v.base]).ok, c.ok, exp.variant(v.base, a).short)
                if c.paired.p is not None:
                    family.append(c.paired)
        for c in row.values():                    # a twin's numbers, for the plots
            if c.alias and c.variant.base and c.alias != c.variant.base and \
                    row[c.alias].variant.base == c.variant.base:
                c.paired = row[c.alias].paired
        where = f"{a}" + (f" at {p.label}" if p.label else "")
        run = [c for c in row.values() if not c.alias]
        pairs = [(c, model(row[c.variant.base])) for c in run if c.variant.base]
        if exp.grid.equal_params and any(len(c.params | b.params) > 1 for c, b in pairs):
            warns.append(f"!!! PARAMETER MISMATCH in {where}: " + ", ".join(
                f"{c.variant.name}={'/'.join(map(str, sorted(c.params)))}" for c in run))
        toks = set().union(*(c.tokens for c in run))
        if len(toks) > 1:
            warns.append(f"!!! TOKEN BUDGET MISMATCH in {where}: runs of {sorted(toks)} tokens")
    for pr, adj in zip(family, holm([pr.p for pr in family])):
        pr.p_holm = adj
    return cells, warns


def md_table(head, rows):
    width = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, width)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in width) + "|"
    return [line(head), rule] + [line(r) for r in rows]


def results_table(exp, cells):
    """One row per arm; a column 'vs' naming each arm's baseline where the grid has several."""
    multi, bases = len(exp.points) > 1, exp.bases()
    head = (["point"] if multi else []) + ["arch", "schedule" if len(bases) == 1 else "arm"] + \
        ["vs"] * (len(bases) > 1) + [
        "params", "val loss (mean ± sd)", f"Δ vs {bases[0]} [95% CI]" if len(bases) == 1 else
        "Δ [95% CI]", "r", "p", "p Holm", "seeds for 80% power", "same sign / pairs", "verdict",
        "seeds"]
    rows = []
    for p, a, v in exp.arms():
        c = cells[(p.name, a, v.name)]
        base = exp.variant(v.base, a).short if v.base else "—"
        pre = ([p.label] if multi else []) + [a, v.label] + [base] * (len(bases) > 1)
        if c.alias:
            twin = exp.variant(c.alias, a)
            same = twin.label if twin else c.alias
            rows.append(pre + ["—"] * 8 + [f"the same widths as {same}: not run, the same "
                                           f"model", "—"])
            continue
        pstr = "/".join(f"{n:,}" for n in sorted(c.params)) or "—"
        seedcol = f"{len(c.ok)}" + (" (" + ", ".join(f"s{s} {why.split(' ')[0]}" for s, why
                                                       in sorted(c.failed.items())) + ")"
                                    if c.failed else "")
        if not c.ok:
            rows.append(pre + [pstr] + ["—"] * 7 + ["no finished runs", seedcol])
            continue
        pr = c.paired
        loss = f"{c.mean:.4f}" + ("" if c.std is None else f" ± {c.std:.4f}")
        if not v.base:
            stats, verdict = ["—"] * 6, "baseline"
        elif not pr.n:
            stats, verdict = ["—"] * 6, f"no pairs with {base}"
        else:
            n80 = "—" if pr.p is None or pr.mean == 0 else \
                str(pr.needed) if pr.needed else ">10000"
            stats = [pr.interval(), "—" if pr.r is None else f"{pr.r:+.2f}", fmt_p(pr.p),
                     fmt_p(pr.p_holm), n80, f"{pr.same_sign}/{pr.n}"]
            verdict = pr.verdict()
        rows.append(pre + [pstr, loss] + stats + [verdict, seedcol])
    return md_table(head, rows)


def points_table(exp, cells):
    """The depth and tokens grids' sizes: flags, parameters, tokens and the epochs they are
    of the training shard, the val batches of the final evaluation."""
    rows = []
    for p in exp.points:
        cs = [cells[(p.name, a, v.name)] for a in exp.archs for v in exp.variants_of(a)]
        num = lambda key: sorted(set().union(*(getattr(c, key) for c in cs)))
        base = [cells[(p.name, a, exp.reference(a).name)] for a in exp.archs]
        params = sorted(set().union(*(c.params for c in base)))
        rows.append([p.label, shlex.join(p.flags), "/".join(f"{n:,}" for n in params) or "—",
                     "/".join(f"{t:,}" for t in num("tokens")) or "—",
                     "/".join(f"{e:.2f}" for e in num("epochs")) or "?",
                     "/".join(num("batches")) or "—",
                     ", ".join(exp.grid.series[s] for s in p.series)])
    return md_table(["point", "flags", f"params ({exp.base_words()})", "tokens", "epochs",
                     "val batches", "series"], rows)


def failures(cells):
    return [f"{c.point.label + ' ' if c.point.label else ''}{c.arch} {c.variant.label} s{s}: {why}"
            for c in cells.values() for s, why in sorted(c.failed.items())]

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
    def __init__(self, svg, x, y, w, h, xlim, ylim, ylog=False, xlog=False):
        self.svg, self.x, self.y, self.w, self.h, self.ylog, self.xlog = svg, x, y, w, h, ylog, xlog
        self.xlim, self.ylim = xlim, ylim
        self.clip = f"c{len(svg)}"
        box = el("rect", x=x, y=y, width=w, height=h)
        svg.append(f"<clipPath id='{self.clip}'>{box}</clipPath>")
        self.clipped = f"url(#{self.clip})"

    def px(self, v):
        lo, hi = self.xlim
        if self.xlog:
            v, lo, hi = math.log10(max(v, 1e-12)), math.log10(lo), math.log10(hi)
        return self.x + (v - lo) / ((hi - lo) or 1) * self.w

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

    def line(self, pts, color, width=2, marker=False, dash=None):
        extra = {"stroke_dasharray": dash} if dash else {}
        self.svg.append(el("polyline", points=self.points(pts), fill="none", stroke=color,
                           stroke_width=width, clip_path=self.clipped, **extra))
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
    """items: (label, color, kind), kind 'line' | 'dash' | 'band' | 'bar' | 'ci' | 'dot' | 'hollow';
    wraps to a new row past maxw pixels. Returns the y of the last row."""
    x0 = x
    for label, color, kind in items:
        w = 40 + 6.5 * len(label)
        if x > x0 and x + w - x0 > maxw:
            x, y = x0, y + 20
        if kind in ("line", "dash"):
            svg.append(el("line", x1=x, x2=x + 24, y1=y, y2=y, stroke=color, stroke_width=2.5,
                          **({"stroke_dasharray": DASH} if kind == "dash" else {})))
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


def plot_curves(exp, cells, path, title):
    """Val loss vs tokens: row 1 the whole run, row 2 the last 40% of tokens (where the
    schedules separate). One column per point and architecture."""
    cols = exp.cells()
    variants = list(dict.fromkeys(v for _, a in cols for v in exp.variants_of(a)))
    PW, PH, GAP = (420 if len(cols) <= 2 else 300 if len(cols) <= 4 else 230), 215, 75
    svg, W, ML = figure(title, len(cols), PW, GAP)
    banded = variants if len(variants) <= 4 else [v for v in variants if not v.base]
    band = "min–max over seeds" + ("" if banded == variants else f" ({exp.base_words()})")
    items = [(v.label, v.color, "line") for v in variants] + [(band, "#777", "band")]
    MT = legend(svg, ML, 56, items, W - ML - 20) + 36
    H = MT + 2 * PH + GAP + 10 + 50
    for col, (pt, a) in enumerate(cols):
        stats = {v: seed_stats(cells[(pt.name, a, v.name)].logs) for v in exp.variants_of(a)}
        stats = {v: s for v, s in stats.items() if s}
        x0, name = ML + col * (PW + GAP), (f"{pt.label}" if len(exp.archs) == 1 and pt.label
                                           else f"{a}, {pt.label}" if pt.label else a)
        if not stats:
            no_data(svg, x0 + PW / 2, MT + PH / 2, f"{name}: no logs")
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
            p.frame(name if row == 0 else f"{name}: last 40%", "training tokens",
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
    """A comparison's mean with its 95% interval; the dot filled where it is distinguishable
    (the Holm-adjusted p below 0.05)."""
    if pr.lo is not None:
        p.errbar(x, pr.lo, pr.hi, color)
    p.dot(x, pr.mean, color, 5, hollow=not pr.distinguishable)


def ci_legend(base=BASELINE):
    return [(f"mean, 95% CI: distinguishable from {base} (Holm)", "#333", "ci"),
            ("not distinguishable", "#333", "hollow")]


CI_LEGEND = ci_legend()
DASH = "6,4"


def plot_effects(exp, cells, path, title):
    """Per architecture: each arm's paired Δ vs its baseline (uniform), every seed's difference
    (grey dots) and the mean with its 95% interval (filled where distinguishable); where the
    grid has several baselines (the memory grid), each tick names its arm's."""
    archs, pt, several = exp.archs, exp.points[0], len(exp.bases()) > 1
    arms = {a: [v for v in exp.variants_of(a) if v.base] for a in archs}
    PW, PH, GAP = max(240, 105 * max(map(len, arms.values()), default=1)), 260, 85
    svg, W, ML = figure(title, len(archs), PW, GAP)
    MT = legend(svg, ML, 56, ci_legend(exp.base_words()) + [("one seed's Δ", "#999", "dot")],
                W - ML - 20) + 40
    H = MT + PH + 70
    for col, a in enumerate(archs):
        x0, comps = ML + col * (PW + GAP), arms[a]
        got = [(i, v, cells[(pt.name, a, v.name)].paired) for i, v in enumerate(comps)]
        got = [(i, v, pr) for i, v, pr in got if pr is not None and pr.n]
        if not got:
            no_data(svg, x0 + PW / 2, MT + PH / 2, f"{a}: no pairs with {exp.base_words()}")
            continue
        ylim = delta_limits([pr for _, _, pr in got])
        p = Panel(svg, x0, MT, PW, PH, (-0.5, len(comps) - 0.5), ylim)
        npairs = {v.name: pr.n for _, v, pr in got}
        xt = [(i, (v.label.replace(v.detail, "").strip() or v.label) + "\n" +
               (f"{v.detail} · " if v.detail else "") +
               (f"vs {exp.variant(v.base, a).short} · " if several else "") +
               f"n={npairs.get(v.name, 0)}") for i, v in enumerate(comps)]
        p.frame(a, ("arm" if several else "schedule") + " (n = seed pairs)",
                f"Δ val loss vs {exp.base_words()} (nats)", xticks=xt)
        p.zero()
        for i, v, pr in got:
            ds = list(pr.diffs.values())
            for j, d in enumerate(ds):                # the seeds, spread left of the interval
                p.dot(i - 0.2 + (j - (len(ds) - 1) / 2) * min(0.05, 0.25 / len(ds)), d, "#999", 2.5)
            ci_marker(p, i + 0.08, pr, v.color)
            p.label(i + 0.08, pr.mean, f"{pr.mean:+.3f}", dx=9, dy=4, font_size=10, fill="#333")
    return write_svg(path, W, H, svg)


def plot_ucurve(exp, cells, path, title):
    """The ratios grid: Δ vs uniform against the start/end multiples, one line per schedule
    family with 95% intervals, through uniform (1/1, Δ = 0)."""
    archs, variants, pt = exp.archs, exp.variants, exp.points[0]
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
        got = {f: [(v, cells[(pt.name, a, v.name)].paired) for v in variants if v.family == f]
               for f in fams}
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


def plot_series(exp, cells, path, title):
    """The depth and tokens grids: Δ vs uniform with its 95% interval against the points' x
    (layers; tokens on a log axis), one panel per schedule (cosine, then the others beside
    it) and architecture, one line per series (solid, dashed)."""
    comps = [v for v in exp.variants if v.base]
    PW, PH, GAP = 330, 260, 85
    svg, W, ML = figure(title, len(comps), PW, GAP)
    labels = series_labels(exp, cells)
    items = [(labels[s], "#333", "dash" if i else "line")
             for i, s in enumerate(exp.grid.series)] + CI_LEGEND
    MT = legend(svg, ML, 56, items, W - ML - 20) + 40
    H = MT + len(exp.archs) * (PH + GAP) - GAP + 60
    for row, a in enumerate(exp.archs):
        for col, v in enumerate(comps):
            series_panel(svg, exp, cells, a, v, ML + col * (PW + GAP), MT + row * (PH + GAP),
                         PW, PH, f"{v.label}" + (f" ({a})" if len(exp.archs) > 1 else ""))
    return write_svg(path, W, H, svg)


def series_panel(svg, exp, cells, arch, v, x0, y0, PW, PH, title):
    """One panel of plot_series: an arm's Δ vs uniform with its 95% interval at every point of
    every series of the grid (solid, then dashed; side by side, so the bars stay apart)."""
    series, xlog = list(exp.grid.series), exp.grid.name == "tokens"
    xs = sorted({p.x for p in exp.points})
    xlim = (xs[0] / 1.4, xs[-1] * 1.4) if xlog else (xs[0] - 2, xs[-1] + 2)
    xt = [(x, fmt_tokens(x, x) if xlog else str(x)) for x in xs]
    got = [(p, s, cells[(p.name, arch, v.name)].paired) for s in series for p in exp.points
           if s in p.series]
    got = [(p, s, pr) for p, s, pr in got if pr is not None and pr.n]
    if not got:
        no_data(svg, x0 + PW / 2, y0 + PH / 2, f"{arch} {v.label}: no pairs")
        return
    p = Panel(svg, x0, y0, PW, PH, xlim, delta_limits([pr for _, _, pr in got]), xlog=xlog)
    p.frame(title, exp.grid.xlabel, f"Δ val loss vs {BASELINE} (nats)", xticks=xt)
    p.zero()
    for k, s in enumerate(series):
        off = (k - (len(series) - 1) / 2) * 0.3
        at = lambda pt: pt.x * 10 ** (off * 0.1) if xlog else pt.x + off
        pts = [(pt, pr) for pt, s2, pr in got if s2 == s]
        p.line([(at(pt), pr.mean) for pt, pr in pts], v.color, dash=DASH if k else None)
        for pt, pr in pts:
            ci_marker(p, at(pt), pr, v.color)


def plot_study(exps, path):
    """The study figure: for every grid of exps ([(Experiment, cells)]: depth, tokens) and
    architecture a row of panels, one per schedule (cosine, reverse and groups beside it):
    Δ vs uniform with its 95% interval against depth (both series) or training tokens."""
    comps = list(dict.fromkeys(v.name for exp, _ in exps for v in exp.variants if v.base))
    arm = lambda exp, n: next((v for v in exp.variants if v.name == n), None)
    rows = [(exp, cells, a) for exp, cells in exps for a in exp.archs]
    PW, PH, GAP = 330, 260, 85
    svg, W, ML = figure("Where the taper pays: Δ val loss vs uniform with 95% CI, against "
                        "depth and training tokens", len(comps), PW, GAP)
    items = []
    for exp, cells in exps:
        labels = series_labels(exp, cells)
        items += [(f"{exp.grid.name}: {labels[s]}", "#333", "dash" if i else "line")
                  for i, s in enumerate(exp.grid.series)]
    MT = legend(svg, ML, 56, items + CI_LEGEND, W - ML - 20) + 40
    H = MT + len(rows) * (PH + GAP) - GAP + 60
    for row, (exp, cells, a) in enumerate(rows):
        for col, name in enumerate(comps):
            v, x0, y0 = arm(exp, name), ML + col * (PW + GAP), MT + row * (PH + GAP)
            if v is None:
                no_data(svg, x0 + PW / 2, y0 + PH / 2, f"{exp.grid.name}: no {name}")
                continue
            many = len({a for e, _ in exps for a in e.archs}) > 1
            series_panel(svg, exp, cells, a, v, x0, y0, PW, PH,
                         f"{v.label}, by {exp.grid.name}" + (f" ({a})" if many else ""))
    return write_svg(path, W, H, svg)


def series_labels(exp, cells):
    """The legend of a series: its name and what it holds fixed (the width, the parameter
    count or the shape) as measured."""
    out = {}
    for s, words in exp.grid.series.items():
        pts = [p for p in exp.points if s in p.series]
        dims = sorted({flag_value(exp.point_args(p), "--dim") for p in pts} - {None})
        params = [n for p in pts for a in exp.archs
                  for n in cells[(p.name, a, exp.reference(a).name)].params]
        if s == "width" and len(dims) == 1:
            out[s] = f"{words} (dim {dims[0]})"
        elif s == "params" and params:
            out[s] = f"{words} ({min(params) / 1e6:.2f}M-{max(params) / 1e6:.2f}M)"
        else:
            L = sorted({flag_value(exp.point_args(p), "--layers") for p in pts} - {None})
            out[s] = f"{words}" + (f" (L {L[0]}, dim {dims[0]})" if len(L) == 1 and dims else "")
    return out


def plot_analysis(alogs, path, base=BASELINE):
    """Per architecture (the baseline model: uniform): Δ val loss when skipping a layer's MLP /
    the whole layer (bars), and the relative update |dx|/|x| of mixer, MLP and layer (lines)."""
    archs = list(alogs)
    PW, PH, GAP = 300, 215, 80
    svg, W, ML = figure(f"Layer contributions ({base} model, first seed)", len(archs), PW, GAP)
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


_ONCE = {}


def once(f):
    """f's value, computed once per argument (machine(), git_commit())."""
    def g(*a):
        if (f, a) not in _ONCE:
            _ONCE[(f, a)] = f(*a)
        return _ONCE[(f, a)]
    return g


@once
def machine():
    """'AMD EPYC (family 26 model 2), 2 cores': where the runs were made."""
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


@once
def git_commit(trainer):
    """The git commit of the trainer's checkout, '+changes' when train_tlm.c differs from it;
    'unknown' outside a checkout. For people: the data file's rows match by fingerprint."""
    where = os.path.dirname(os.path.abspath(trainer))
    try:
        run = lambda *a: subprocess.run(["git", "-C", where, *a], capture_output=True, text=True,
                                        timeout=10)
        head = run("rev-parse", "--short", "HEAD")
        if head.returncode:
            return "unknown"
        dirty = run("diff", "--quiet", "HEAD", "--", "train_tlm.c").returncode
        return head.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
    "val loss: the final validation loss (`done` event), mean ± sample sd over the finished "
    "seeds. Δ: the mean of the per-seed differences to {b} (same point, architecture and seed, "
    "hence the same data order; negative = lower loss than {b}) and its 95% confidence interval "
    "mean ± t(0.975, n−1)·sd/√n over the n seed pairs where both runs finished. r: the "
    "correlation of the two arms' losses over the seeds (n ≥ 3): the nearer 1, the more the "
    "pairing removes of the seeds' noise. p: the paired t test's two-sided p-value; p Holm: "
    "adjusted by Holm's step-down method over all {m} comparisons of this table. seeds for 80% "
    "power: how many pairs a paired t test (two-sided, alpha 0.05, noncentral t) needs to find "
    "the observed effect mean/sd 80% of the time (the observed effect is itself uncertain). "
    "verdict: \"distinguishable from {b}\" where the Holm-adjusted p is below 0.05; an interval "
    "that excludes 0 without it is said so. A schedule whose widths round to another's is the "
    "same model: run once, reported once. Diverged or failed runs are left out of the pairs.")


def load_analyses(out, exp):
    """{arch: {arm: RunLog}} of the finished analysis logs."""
    got = {}
    for a in exp.archs:
        logs = {v: RunLog(analysis_path(out, a, v)) for v in exp.variants_of(a)}
        logs = {v: lg for v, lg in logs.items() if lg.status == "ok" and lg.analysis}
        if logs:
            got[a] = logs
    return got


def used_rows(exp, cells):
    return [r for c in cells.values() for r in c.rows.values()]


def report(exp):
    """Prints the results table; writes results.md and the figures (SVG, PNG if possible),
    all from the data file's rows (the loss curves and layer analysis from the logs in --out)."""
    out, made, grid = exp.out, [], exp.grid.name
    cells, warns = build_cells(exp)
    table, fails = results_table(exp, cells), failures(cells)
    print("\n" + "\n".join(table))
    if fails:
        print("left out of the pairs:\n  " + "\n  ".join(fails))
    for w in warns:
        print(w, file=sys.stderr)

    def image(svg, what):                         # the figure as PNG too; its markdown link
        png = svg_to_png(svg)
        made.extend([svg] + ([png] if png else []))
        return f"![{what}]({os.path.basename(png or svg)})"

    rows = used_rows(exp, cells)
    seeds = sorted({int(r["seed"]) for r in rows})
    col = lambda c: ", ".join(sorted({r[c] for r in rows if r[c]})) or "not recorded"
    secs = sum(float(r["seconds"]) for r in rows if r["seconds"]) / 60
    family = sum(1 for c in cells.values() if c.paired and c.paired.p is not None and not c.alias)
    nfp = len({r["fingerprint"] for r in rows})
    dseeds = (col("data_seed") if any(r["data_seed"] for r in rows) else
              "not recorded (a trainer without --data-seed: one data order for every seed)")
    doc = [f"# Taper ablation: `--grid {grid}`", "",
           f"{time.strftime('%Y-%m-%d %H:%M')}, from the {len(rows)} rows of `{exp.data.path}` "
           f"for this grid: code {col('code')} (numerics fingerprint{'s' * (nfp > 1)} "
           f"{col('fingerprint')}), {col('machine')}; the runs took {secs:.0f} min summed; "
           f"seeds {fmt_seeds(seeds)}; data seeds {dseeds}; trainer flags:", "",
           "    " + shlex.join(exp.targs), ""]
    if len(exp.points) > 1:
        doc += points_table(exp, cells) + [""]
    else:
        c = [cells[(exp.points[0].name, a, v.name)] for a in exp.archs
             for v in exp.variants_of(a) if not v.base]
        num = lambda key, f: "/".join(map(f, sorted(set().union(*(getattr(x, key) for x in c))))) \
            or "?"
        doc += [f"Every run: {num('tokens', lambda t: f'{t:,}')} training tokens "
                f"({num('epochs', lambda e: f'{e:.2f}')} epochs of the training shard); the final "
                f"evaluation averaged {num('batches', str)} val batches.", ""]
    b = exp.base_words() if len(exp.bases()) == 1 else "the arm's baseline (column vs)"
    doc += table + ["", STATS_NOTE.format(b=b, m=family), ""]
    if fails:
        doc += ["Left out of the pairs:", ""] + [f"- {f}" for f in fails] + [""]
    doc += [f"**{w}**\n" for w in warns]
    unused = exp.unused_rows()
    if unused:
        note = (f"{unused} row(s) of these cells in the data file are of other code or flags "
                f"and were not used.")
        print(note)
        doc += [note, ""]
    if exp.target_note:
        doc += [exp.target_note, ""]
    nseeds = f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"
    effects = os.path.join(out, "effects.svg")
    if exp.grid.scaling:
        plot_series(exp, cells, effects, f"{grid} grid: Δ val loss vs {BASELINE} with 95% CI "
                                         f"against {exp.grid.xlabel}")
    elif grid == "ratios":
        plot_ucurve(exp, cells, effects,
                    f"Schedule x ratio: Δ val loss vs {BASELINE} with 95% CI ({nseeds})")
    else:
        plot_effects(exp, cells, effects,
                     f"{grid} grid: Δ val loss vs {exp.base_words()} with 95% CI ({nseeds})")
    doc += [image(effects, f"Δ vs {exp.base_words()} with 95% CI"), ""]
    nlogs = sum(len(c.logs) for c in cells.values())
    nruns = sum(len(c.ok) for c in cells.values() if not c.alias)
    if nlogs:
        curves = plot_curves(exp, cells, os.path.join(out, "loss_curves.svg"),
                             f"Validation loss vs training tokens ({nseeds})")
        doc += [image(curves, "val loss vs training tokens"), ""]
    if nlogs < nruns:
        note = (f"Loss curves: {nruns - nlogs} of the {nruns} runs have no log in {out}/ "
                f"(the data file holds final losses only): " +
                ("their curves are left out." if nlogs else "no loss-curve plot."))
        print(note)
        doc += [note, ""]

    alogs = load_analyses(out, exp) if not exp.grid.scaling else {}
    base = {a: (v, lg) for a, lgs in alogs.items() for v, lg in lgs.items()
            if v is exp.reference(a)}
    if base:
        text = [line for a, (v, lg) in base.items() for line in analysis_table(a, v.label, lg)
                + [""]]
        print("\nLayer contributions (|Δx|/|x| per sublayer, cos(x, x'), Δ val loss when "
              "skipped):")
        print("\n".join(text))
        svg = plot_analysis({a: lg for a, (v, lg) in base.items()},
                            os.path.join(out, "analysis.svg"), exp.base_words())
        doc += ["## Layer contributions", "", "```"] + text + ["```", ""]
        doc += [image(svg, "layer contributions"), ""]
    probe_ok = lambda lg: any(is_number(r.get("cos_mlp_residual")) for r in lg.analysis)
    aligned = {a: {v: lg for v, lg in lgs.items() if probe_ok(lg)} for a, lgs in alogs.items()}
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


def fmt_seeds(seeds):
    """[1, 2, 3, 5] -> '1..3, 5'."""
    out, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        out.append(f"{seeds[i]}..{seeds[j]}" if j > i + 1 else
                   ", ".join(map(str, seeds[i:j + 1])))
        i = j + 1
    return ", ".join(out) or "none"


# ------------------------------------ seeds on demand ----------------------------------
def add_seeds(exp, plan, t0):
    """--target-halfwidth: after a round, the seeds the next one adds to every cell (point x
    architecture) with a comparison whose 95% interval is wider than the target: as many as
    the interval's sd says would reach it, at most as many as the cell has (the sd of a few
    seeds is itself uncertain), within --max-seeds and what --max-hours leaves. Returns
    whether seeds were added; exp.target_note says why not."""
    args, X = exp.args, exp.args.target_halfwidth
    cells, _ = build_cells(exp)
    want, wide = {}, []
    for p, a in exp.cells():
        have, need = len(plan[(p.name, a)]), 0
        for v in exp.variants_of(a):
            pr = cells[(p.name, a, v.name)].paired
            if not v.base or exp.alias(p, a, v):
                continue
            if pr is None or pr.half is None:     # no interval yet: one more seed
                need = max(need, have + 1)
            elif pr.half > X:
                need = max(need, halfwidth_seeds(pr.sd, X) or 10 ** 9)
            if pr is None or pr.half is None or pr.half > X:
                where = f"{a}{' ' + p.label if p.label else ''} {v.label}"
                wide.append(f"{where} (±{pr.half:.4f})" if pr and pr.half is not None
                            else f"{where} (no interval)")
        if need > have:
            want[(p.name, a)] = min(need - have, have, args.max_seeds - have)
    if not wide:
        exp.target_note = f"Every comparison's 95% interval is within ±{X:g} (--target-halfwidth)."
        return False
    def spent(budget):
        exp.target_note = (f"--target-halfwidth {X:g} not reached: {budget} spent; wider: "
                           + ", ".join(wide) + ".")
        return False
    want = {k: n for k, n in want.items() if n > 0}
    if not want:
        return spent(f"--max-seeds {args.max_seeds}")
    if args.max_hours:
        left = args.max_hours * 3600 - (time.time() - t0)
        nrun = lambda k: sum(1 for v in exp.variants_of(k[1])
                             if not exp.aliases.get((k[0], k[1], v.name)))
        alld = [d for ds in exp.durations.values() for d in ds] or [0.0]
        per = {k: sum(exp.durations.get(k) or alld) / len(exp.durations.get(k) or alld) * nrun(k)
               for k in want}
        cost = lambda: sum(n * per[k] for k, n in want.items()) / args.jobs
        while want and cost() > left:             # trim the dearest cell's round first
            k = max(want, key=lambda k: per[k])
            want[k] -= 1
            want = {k: n for k, n in want.items() if n > 0}
        if not want:
            return spent(f"--max-hours {args.max_hours:g}")
    for k, n in want.items():
        top = max(plan[k])
        plan[k] += list(range(top + 1, top + 1 + n))
    print("\nnext round (--target-halfwidth %g): " % X + ", ".join(
        f"{a}{' ' + next(p.label for p in exp.points if p.name == pn) if pn else ''} +{n} "
        f"seed{'s' * (n > 1)}" for (pn, a), n in want.items()))
    return True


def make_runs(exp, plan):
    """The runs of the plan ({(point, arch): seeds}), seed-major; not the schedules whose
    widths equal an earlier one's."""
    runs = [exp.run(p, a, v, s) for p, a in exp.cells() for s in plan[(p.name, a)]
            for v in exp.variants_of(a) if not exp.alias(p, a, v)]
    runs.sort(key=lambda r: (r.seed, exp.points.index(r.point), exp.archs.index(r.arch)))
    for r in runs:
        r.keep = r.seed == exp.args.first_seed and (exp.analyze or exp.grid.analyze)
    return runs


# ------------------------------------ command line -------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):                     # one line, no usage block
        raise UserError(f"{message} (see -h)")


def make_parser(cores):
    ap = Parser(description="Taper ablation grids for tlm.c (see the module docstring).")
    add = ap.add_argument
    grids = "; ".join(f"{g.name}: {g.what} "
                      f"[{'all archs' if g.archs == ARCHS else ','.join(g.archs)}]"
                      for g in GRIDS.values())
    add("--grid", default=None, help=f"the experiment: {grids} [taper, or the grid in --out]")
    add("--archs", default=None,
        help=f"comma-separated architectures from {','.join(ARCHS)}, or all [the grid's]")
    add("--seeds", type=int, default=None,
        help=f"seeds 1..N [{DEFAULT_SEEDS}, depth, tokens and memory {SMALL_SEEDS}; --quick "
             f"{QUICK_SEEDS}]")
    add("--target-halfwidth", type=float, default=None, metavar="X",
        help="after the seeds, add seeds in rounds until every comparison's 95%% interval is "
             "within ±X nats (or --max-seeds, --max-hours is spent)")
    add("--max-seeds", type=int, default=None, metavar="N",
        help="--target-halfwidth: at most N seeds per cell [20]")
    add("--max-hours", type=float, default=None, metavar="H",
        help="--target-halfwidth: start no round its estimate says ends later than H hours "
             "after the start [no limit]")
    add("--linear", action="store_true", help="taper grid: add the linear taper")
    add("--train-args", default="",
        help="extra trainer flags, e.g. '--steps 300 --dim 96'; override the grid's flags")
    add("--out", default=None,
        help="output dir [dev/runs/ablation, dev/runs/ablation_GRID for the others; + _quick "
             "with --quick; --report-only --data F: F's directory]")
    add("--data", default=None, metavar="FILE",
        help="the runs' data file (CSV) to go on from and append to; its runs of the same "
             "code and flags are not run again [OUT/runs.csv]")
    add("--trainer", default="./train_tlm", help="trainer binary [./train_tlm]")
    add("-j", "--jobs", type=int, default=None,
        help=f"parallel runs [--quick: one per core ({cores} here), each on one thread; else "
             f"{1 if cores < 4 else cores // 2} here: 1 below 4 cores, else cores/2]")
    add("--quick", action="store_true", help="small runs (the grid's quick flags and seeds)")
    add("--analyze", action=argparse.BooleanOptionalAction, default=None,
        help="layer analysis of every schedule's first-seed checkpoint [on for taper, groups, "
             "ratios; off with --quick]")
    add("--keep-checkpoints", action="store_true",
        help="keep every finished run's checkpoint [only the first seed's, for --analyze]")
    add("--retry-diverged", action="store_true",
        help="run again the runs the trainer stopped on a non-finite loss [they are skipped]")
    add("--dry-run", action="store_true",
        help="check everything a run would (the trainer's short probe runs included), print "
             "the commands, run nothing")
    add("--report-only", action="store_true", help="table + plots from the data file")
    add("--figure", nargs="+", default=None, metavar="FILE",
        help="--figure OUT.svg DATA.csv [DATA.csv ...]: the study figure, Δ vs uniform with "
             "95%% CI against depth (both series) and training tokens, cosine, reverse and "
             "groups beside each other, from the depth and tokens grids' rows of the data "
             "files; nothing runs")
    add("--force", action="store_true",
        help="run in an --out made with other trainer flags or another build's numerics: its "
             "runs are made again (the data file keeps every row)")
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


def write_manifest(path, old, exp, seeds):
    """The grid of this directory: the union with the runs made here before; the machine and
    the code version of this invocation."""
    def union(key, new, order):
        have = set(new) | set((old or {}).get(key, []))
        return [x for x in order if x in have]
    all_names = list(dict.fromkeys(v.name for v in exp.grid.variants(True)))
    with open(path, "w") as f:
        json.dump({"grid": exp.grid.name, "trainer_args": exp.targs,
                   "archs": union("archs", exp.archs, ARCHS),
                   "variants": union("variants", [v.name for v in exp.variants], all_names),
                   "seeds": sorted(set(seeds) | set((old or {}).get("seeds", []))),
                   "data": exp.data.path, "machine": machine(),
                   "code": git_commit(exp.args.trainer)}, f, indent=1)


def writable_dir(path, what):
    """The directory `path` exists or can be made: its nearest existing ancestor is a
    writable directory (else the one-line error a run would stop with, before anything runs)."""
    up = os.path.abspath(path)
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up) or not os.access(up, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: cannot be made ({up} is not a writable directory)")


def check_data(exp):
    """The shards the grid's flags name (--train, --val) exist: else one line saying which, and
    for the tokens grid's five-corpus mix the command that makes it."""
    for flag in ("--train", "--val"):
        path = flag_value(exp.targs, flag)
        if path and not glob.glob(path):
            how = (f": the {exp.grid.name} grid trains on the five-corpus mix; make it with "
                   f"{MIX_COMMAND}" if path == MIX_FILES[flag] else "")
            raise UserError(f"{flag} {path}: no such file{how}")


def dry_run(exp, runs, threads, analyze):
    pre = f"OMP_NUM_THREADS={threads} " if threads else ""
    tags = {"have": "# in the data file, skip: ", "done": "# done here, its row goes to the data "
            "file: ", "diverged": "# diverged, skip: ", "resume": "# resume: ",
            "stale": "# another build's files, run again: ", "fresh": ""}
    for (pn, a, vn), twin in exp.aliases.items():
        print(f"# {a}{' ' + pn if pn else ''} {vn}: the same widths as {twin}, not run")
    for r in runs:
        what = r.plan()
        r.resume = what == "resume"
        print(tags[what] + pre + shlex.join(r.command(exp.args.trainer)))
    if analyze:
        for a in exp.archs:
            for v in exp.variants_of(a):
                if not exp.alias(exp.points[0], a, v):
                    print(shlex.join(analysis_command(exp, a, v, exp.args.first_seed)[1]))
    if exp.args.target_halfwidth:
        print(f"# then rounds of added seeds until every 95% interval is within "
              f"±{exp.args.target_halfwidth:g} (--max-seeds {exp.args.max_seeds}"
              + (f", --max-hours {exp.args.max_hours:g}" if exp.args.max_hours else "")
              + "): how many depends on the runs")


def legacy_rows(exp, seeds, old):
    """An --out of an older ablation.py (logs, no data file): rows in memory from its logs."""
    code = (old or {}).get("code", "not recorded").replace("code at commit ", "")
    exp.made_by = (code.replace("code version unknown", "unknown"), (old or {}).get("machine", ""))
    for p, a in exp.cells():
        exp.fingerprint[(p.name, a)] = ""
        exp.setups[(p.name, a)] = (flag_key(exp.targs), "")
    for p, a in exp.cells():
        for v in exp.variants_of(a):
            for s in seeds:
                run = exp.run(p, a, v, s)
                log = RunLog(run.jsonl)
                if log.status in ("ok", "diverged"):
                    exp.add_run_row(run, log)


def report_only(exp, args, old, have_logs):
    """--report-only: the grid's cells from the data file (or, for an --out of an older
    ablation.py, from its logs): archs, schedules, points and seeds as the rows have them."""
    g = exp.grid
    writable_dir(exp.out, "--out")
    os.makedirs(exp.out, exist_ok=True)
    if not any(r["grid"] == g.name for r in exp.data.rows):
        if os.path.exists(exp.data.path) or not have_logs:
            raise UserError(f"--data {exp.data.path}: no rows of the {g.name} grid to report")
        exp.data.path = None                       # in memory only
        exp.targs = old["trainer_args"] if old else exp.targs
        if old and not args.archs:
            exp.archs = [a for a in ARCHS if a in old["archs"]] or exp.archs
        if old:
            exp.variants = [v for v in g.variants(True) if v.name in old["variants"]] \
                or exp.variants
        legacy_rows(exp, sorted(old["seeds"]) if old and not args.seeds else
                    list(range(1, (args.seeds or g.seeds[args.quick]) + 1)), old)
        exp.data.path = os.path.join(exp.out, "*.jsonl (no data file: rows from the logs)")
        report(exp)
        return
    from_rows(exp)
    report(exp)


def from_rows(exp):
    """The grid as the data file's rows of it have it: archs (unless --archs), arms, points,
    the latest row's trainer flags, every cell's code and flags."""
    g, rows = exp.grid, [r for r in exp.data.rows if r["grid"] == exp.grid.name]
    if not exp.args.archs:
        exp.archs = [a for a in ARCHS if any(r["arch"] == a for r in rows)]
    names = {r["schedule"] for r in rows} | {v.name for v in exp.variants}
    exp.variants = [v for v in g.variants(True) if v.name in names]
    defined = {p.name: p for p in g.points(True) + g.points(False)}
    points = [defined[n] for n in dict.fromkeys(r["point"] for r in rows) if n in defined]
    if not points:
        names = ", ".join(sorted({r["point"] for r in rows}))
        raise UserError(f"--data {exp.data.path}: its {g.name} rows are of points this "
                        f"version does not define ({names})")
    exp.targs = shlex.split(rows[-1]["grid_flags"])
    exp.set_points(sorted(points, key=lambda p: (p.x or 0, p.name)))
    exp.set_from_rows()


def study_figure(args):
    """--figure SVG DATA...: the study figure (plot_study) from the depth and tokens grids' rows
    of the data files, as --report-only would read them; the SVG, and a PNG if it can."""
    path, files = args.figure[0], args.figure[1:]
    if not path.endswith(".svg") or not files:
        raise UserError(f"--figure: give the SVG to write, then the data files (got "
                        f"{shlex.join(args.figure)})")
    for f in files:
        if not os.path.isfile(f):
            raise UserError(f"--figure: {f}: no such file")
    data = DataFile(files[0])
    for f in files[1:]:
        for row in DataFile(f).rows:
            data._index(row)                      # in memory: nothing is written to them
    writable_dir(os.path.dirname(path) or ".", "--figure's directory")
    args.out, args.first_seed = os.path.dirname(path) or ".", 1
    exps = []
    for name in ("depth", "tokens"):
        g = GRIDS[name]
        if any(r["grid"] == name for r in data.rows):
            exp = Experiment(args, g, g.points(False), list(g.archs), g.variants(False),
                             shlex.split(g.args[0]))
            exp.data = data
            from_rows(exp)
            exps.append((exp, build_cells(exp)[0]))
    if not exps:
        raise UserError(f"--figure: no rows of the depth or tokens grid in {', '.join(files)}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    plot_study(exps, path)
    png = svg_to_png(path)
    print(f"wrote {path}" + (f", {png}" if png else ""))


def check_args(args):
    """The command line's errors that need nothing but the command line."""
    if args.grid is not None and args.grid not in GRIDS:
        raise UserError(f"--grid: unknown grid {args.grid!r} (known: {', '.join(GRIDS)})")
    parse_archs(args.archs)
    if args.jobs is not None and args.jobs < 1:
        raise UserError("-j must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        raise UserError("--seeds must be >= 1")
    if args.dry_run and args.report_only:
        raise UserError("--dry-run and --report-only exclude each other")
    if args.figure is not None:
        given = [f for f, on in (("--dry-run", args.dry_run), ("--report-only", args.report_only),
                                 ("--grid", args.grid), ("--data", args.data),
                                 ("--target-halfwidth", args.target_halfwidth)) if on]
        if given:
            raise UserError(f"--figure: not with {given[0]} (it reads the data files it names)")
    X = args.target_halfwidth
    if X is not None and not (math.isfinite(X) and X > 0):
        raise UserError(f"--target-halfwidth must be a positive number of nats (got {X:g})")
    for flag, v in (("--max-seeds", args.max_seeds), ("--max-hours", args.max_hours)):
        if v is not None and X is None:
            raise UserError(f"{flag}: only with --target-halfwidth (the budget of its rounds)")
    if args.max_hours is not None and not (math.isfinite(args.max_hours) and args.max_hours > 0):
        raise UserError(f"--max-hours must be a positive number (got {args.max_hours:g})")
    if X is not None and args.report_only:
        raise UserError("--target-halfwidth runs seeds: not with --report-only")


def open_experiment(args):
    """The output directory, the data file and the grid they hold, the trainer's flags:
    returns (Experiment, the --out's manifest or None, whether --out holds logs, seeds)."""
    X = args.target_halfwidth
    if args.out is None and args.report_only and args.data:
        args.out = os.path.dirname(args.data) or "."
    args.out = args.out or default_out(args.grid or "taper", args.quick)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a directory")
    if args.report_only and not os.path.isdir(args.out) and not args.data:
        raise UserError(f"--out {args.out}: no such directory, nothing to report "
                        f"(run the grid first)")
    data = DataFile(args.data or os.path.join(args.out, "runs.csv"))
    if args.report_only and args.data and not os.path.exists(args.data):
        raise UserError(f"--data {args.data}: no such file, nothing to report")
    manifest = os.path.join(args.out, "ablation.json")
    old = read_manifest(manifest)
    in_data = list(dict.fromkeys(r["grid"] for r in data.rows))
    if args.grid is None and not old and args.report_only and len(in_data) > 1:
        raise UserError(f"--data {data.path} holds rows of the grids {', '.join(in_data)}: "
                        f"choose one with --grid")
    grid = args.grid or (old["grid"] if old else in_data[0] if args.report_only and in_data
                         else "taper")
    have_logs = os.path.isdir(args.out) and any(f.endswith(".jsonl") for f in os.listdir(args.out))
    if old and old["grid"] != grid and have_logs:
        raise UserError(f"--out {args.out} holds the {old['grid']} grid, not {grid}: use another "
                        f"--out (--grid {grid} defaults to {default_out(grid, args.quick)})")
    if args.linear and grid != "taper":
        raise UserError("--linear: only for --grid taper (the ratios grid has linear schedules)")
    g = GRIDS[grid]
    if args.analyze and g.scaling:
        raise UserError(f"--analyze: only for the taper, groups and ratios grids (the {grid} "
                        f"grid has too many sizes to analyze)")

    # the trainer's flags
    try:
        extra = parse_flags(args.train_args)
    except ValueError as e:
        raise UserError(f"--train-args: {e}")
    bad = sorted({f for f, _ in extra} & (RESERVED | g.sets))
    if bad:
        raise UserError(f"--train-args may not set {', '.join(bad)} (the {grid} grid sets "
                        f"{'it' if len(bad) == 1 else 'them'})")
    targs = merge_flags(shlex.split(g.args[args.quick]), shlex.split(args.train_args))
    nseeds = args.seeds or g.seeds[args.quick]
    if X is not None:
        args.max_seeds = 20 if args.max_seeds is None else args.max_seeds
        if args.max_seeds < nseeds:
            raise UserError(f"--max-seeds {args.max_seeds} is below the {nseeds} seeds a round "
                            f"starts with (--seeds)")
    args.first_seed = 1
    exp = Experiment(args, g, g.points(args.quick), parse_archs(args.archs) or list(g.archs),
                     g.variants(args.linear), targs)
    exp.data = data
    return exp, old, have_logs, nseeds


def run_experiment(exp, old, have_logs, nseeds, cores):
    """Checks what a run needs (the trainer, --out, the probes); then the dry run, or the
    rounds of runs, the analysis and the report."""
    args, g, targs, X = exp.args, exp.grid, exp.targs, exp.args.target_halfwidth
    manifest = os.path.join(args.out, "ablation.json")
    if args.jobs is None:                         # tiny quick models run best one per core
        args.jobs = cores if args.quick else (1 if cores < 4 else cores // 2)
    analyze = args.analyze if args.analyze is not None else g.analyze and not args.quick
    exp.analyze = analyze
    threads = max(1, cores // args.jobs) if args.jobs > 1 else None
    if not (os.path.isfile(args.trainer) and os.access(args.trainer, os.X_OK)):
        raise UserError(f"trainer {args.trainer!r} not found or not executable "
                        f"(run `make` in the repo root)")
    writable_dir(args.out, "--out")
    if args.data and not os.path.exists(args.data):
        writable_dir(os.path.dirname(os.path.abspath(args.data)), "--data's directory")
    if old and not same_flags(old["trainer_args"], targs) and have_logs and not args.force:
        raise UserError(f"{args.out} holds runs made with other trainer flags (old: "
                        f"{shlex.join(old['trainer_args'])}; new: {shlex.join(targs)}): "
                        f"use another --out, delete the directory, or pass --force")
    check_data(exp)
    nprobe = len(exp.arms())
    print(f"asking the trainer: {nprobe} short run{'s' * (nprobe > 1)} (numerics fingerprint, "
          f"widths) ...", flush=True)
    exp.set_probed(*probe(exp))
    plan = {(p.name, a): list(range(1, nseeds + 1)) for p, a in exp.cells()}
    if X is not None:                             # the rounds count the seeds the data holds
        for p, a in exp.cells():
            plan[(p.name, a)] = sorted(set(plan[(p.name, a)]) |
                                       set(exp.rows_of(p, a, exp.reference(a))))
    runs = make_runs(exp, plan)
    stale = [r for r in runs if r.plan() == "stale"]
    if stale and not args.force:
        raise UserError(f"--out {args.out} holds runs of a trainer whose numerics differ from this "
                        f"one's (first: {stale[0].name}; another build, machine or code): use "
                        f"another --out, or --force to run them again there (rows in the data "
                        f"file are kept)")
    if args.dry_run:
        dry_run(exp, runs, threads, analyze)
        return
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(exp.data.path)), exist_ok=True)
    write_manifest(manifest, old, exp, plan[next(iter(plan))])
    for p, a in exp.cells():                      # the ETA and --max-hours: from the rows
        for v in exp.variants_of(a):
            for r in exp.rows_of(p, a, v).values():
                if r["seconds"] and r["resumed"] != "1":
                    exp.durations.setdefault((p.name, a), []).append(float(r["seconds"]))
    exp.add_alias_rows()

    def on_sigterm(signum, frame):                # `kill PID` stops as cleanly as Ctrl-C
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_sigterm)
    t0 = time.time()
    while True:
        if not run_grid(exp, runs, threads):
            again = ["python3"] + sys.argv
            partial = [a for i, a in enumerate(again) if not a.startswith(TARGET_FLAGS) and not
                       (i and again[i - 1] in TARGET_FLAGS)] + ["--report-only"]
            print(f"stopped. Finished runs are kept (rows in {exp.data.path}); interrupted ones "
                  f"resume from their checkpoint.\n  resume:          {shlex.join(again)}\n"
                  f"  partial report:  {shlex.join(partial)}")
            sys.exit(130)
        if X is None or not add_seeds(exp, plan, t0):
            break
        runs = make_runs(exp, plan)
    if exp.target_note:
        print(exp.target_note)
    if analyze:
        try:
            run_analysis(exp, args.first_seed)
        except KeyboardInterrupt:
            print("\ninterrupted during the analysis; run the same command again to finish it.")
            sys.exit(130)
    report(exp)
    if exp.errors:
        print(f"{len(exp.errors)} run(s) failed or diverged and are left out of the pairs; the "
              f"same command runs the failed ones again" +
              ("" if args.retry_diverged else ", with --retry-diverged the diverged ones too"),
              file=sys.stderr)
        sys.exit(1)


def main():
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    args = make_parser(cores).parse_args()
    check_args(args)
    if args.figure is not None:
        study_figure(args)
        return
    exp, old, have_logs, nseeds = open_experiment(args)
    if args.report_only:
        report_only(exp, args, old, have_logs)
    else:
        run_experiment(exp, old, have_logs, nseeds, cores)


def same_flags(x, y):
    return flag_key(x) == flag_key(y)


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
