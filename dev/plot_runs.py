#!/usr/bin/env python3
"""Plot train and val loss against training tokens for one or several train_tlm runs.

    python3 dev/plot_runs.py runs/default.jsonl -o runs/default.svg
    python3 dev/plot_runs.py a.jsonl b.jsonl c.jsonl -o compare.png --title "taper vs uniform"

Each LOG is a JSONL file that `train_tlm --log LOG` wrote: a {"event":"config", ...} record
(arch, taper, mlp_widths, ...), then "train" records (loss, tokens) and "val" records (loss,
tokens). A resumed run appends a second config record and goes on; a step logged twice (a
resume from an earlier checkpoint) keeps its last record.

The picture: on the left, every run's training loss (faint: each step; solid: smoothed) and
validation loss (dots) against tokens; on the right, one small bar chart per run of its
per-layer MLP widths (the taper), the dashed line at the uniform width H. Runs are labelled
by their config (architecture, taper, size). -o OUT.svg writes the SVG and, when rsvg-convert
or ImageMagick is installed, OUT.png beside it; -o OUT.png writes only the PNG.
Python 3 standard library only.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from html import escape

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
PALETTE = ["#1f6fd1", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22"]
TAPER_COLORS = {"uniform": "#444444", "cosine": "#1f6fd1", "reverse": "#d62728",
                "linear": "#2ca02c", "sigmoid": "#9467bd"}   # as in dev/ablation.py


class UserError(Exception):
    """Bad input: printed as one line on stderr, exit status 1."""


# ------------------------------------ reading logs -------------------------------------
class Run:
    """One log: its config, train points and val points, (tokens, loss) sorted by tokens."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise UserError(f"{path}: no such file")
        except OSError as e:
            raise UserError(f"{path}: cannot read: {e.strerror or e}")
        if not raw.strip():
            raise UserError(f"{path}: empty log")
        self.config, train, val = None, {}, {}
        lines = raw.decode("utf-8", "replace").split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if n == len(lines):              # an unterminated last line: a killed writer
                    print(f"note: {path} line {n}: incomplete last record skipped", file=sys.stderr)
                    continue
                raise UserError(f"{path} line {n}: not a JSON record ({str(e).split(':')[0]})")
            event = rec.get("event")
            if event == "config" and self.config is None:
                self.config = rec
            elif event in ("train", "val"):
                loss, tokens, step = rec.get("loss"), rec.get("tokens"), rec.get("step")
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in (loss, tokens)):
                    raise UserError(f"{path} line {n}: a {event} record without a numeric "
                                    f"loss and tokens")
                if math.isfinite(loss) and math.isfinite(tokens):
                    (train if event == "train" else val)[step if step is not None else tokens] = \
                        (tokens, loss)
        if self.config is None:
            raise UserError(f"{path}: no config record (is it a `train_tlm --log` file?)")
        if not train and not val:
            raise UserError(f"{path}: no train or val records (a run that did not train?)")
        self.train, self.val = sorted(train.values()), sorted(val.values())
        widths = self.config.get("mlp_widths")
        ok = isinstance(widths, list) and widths and \
            all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in widths)
        self.widths = widths if ok else None     # (drawn as "not in the log")
        self.color = None
        self.label = self.describe()

    def describe(self):
        """'transformer · cosine 1.5→0.5 · 6×128 · 1.31M params'."""
        c = self.config
        parts = [str(c.get("arch", "?")), taper_label(c)]
        if "layers" in c and "dim" in c:
            parts.append(f"{c['layers']}×{c['dim']}")
        if isinstance(c.get("params"), (int, float)):
            parts.append(f"{fmt_count(c['params'])} params")
        return " · ".join(parts)


def taper_label(c):
    """'cosine 1.5→0.5': the schedule and its first and last layer's multiple of H (reverse is
    the cosine from the last layer's end: 0.5→1.5)."""
    taper, s, e = str(c.get("taper", "?")), c.get("taper_start"), c.get("taper_end")
    if not all(isinstance(v, (int, float)) for v in (s, e)):
        return taper
    if taper in ("cosine", "linear", "sigmoid"):
        return f"{taper} {s:g}→{e:g}"
    if taper == "reverse":
        return f"{taper} {e:g}→{s:g}"
    return taper


def fmt_count(v):
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:g}"


def unique_labels(runs):
    """Runs with the same label get their seed, then their file name, appended."""
    for extra in (lambda r: f"seed {r.config.get('seed', '?')}", lambda r: os.path.basename(r.path)):
        counts = {}
        for r in runs:
            counts[r.label] = counts.get(r.label, 0) + 1
        for r in runs:
            if counts[r.label] > 1:
                r.label += " · " + extra(r)


def smooth(points, window):
    """Centered moving average of the losses over `window` points (shrinking at the ends)."""
    if window <= 1 or len(points) < 3:
        return points
    half, out = window // 2, []
    losses = [y for _, y in points]
    for i, (x, _) in enumerate(points):
        lo, hi = max(0, i - half), min(len(points), i + half + 1)
        out.append((x, sum(losses[lo:hi]) / (hi - lo)))
    return out


# ------------------------------------ SVG ----------------------------------------------
# round axis ticks and their labels: the ablation report's (dev/ablation.py, beside this file;
# importing it runs nothing)
from ablation import fmt_num, fmt_tokens, nice_ticks  # noqa: E402


def tint(color, amount):
    """'#rrggbb' mixed with white: amount 1 is the color, 0 white. (Rather than an opacity,
    which ImageMagick's SVG renderer ignores.)"""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(255 - amount * (255 - c)):02x}" for c in rgb)


def text(x, y, s, size=11, anchor="start", weight=None, fill=None, rotate=False):
    extra = (f" font-weight='{weight}'" if weight else "") + (f" fill='{fill}'" if fill else "")
    if rotate:
        extra += f" transform='rotate(-90 {x:.1f} {y:.1f})'"
    return (f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}'{extra}>"
            f"{escape(s)}</text>")


def clip_y(pts, lo, hi):
    """The parts of the polyline pts that lie within lo <= y <= hi, cut where it crosses.
    (Clipped in the data rather than with an SVG clipPath, which not every renderer
    honours: ImageMagick's own does not.)"""
    parts, cur = [], []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        # the segment is (x0, y0) + t (x1 - x0, y1 - y0), t in [0, 1]; inside for t in [ta, tb]
        if y0 == y1:
            ta, tb = (0, 1) if lo <= y0 <= hi else (1, 0)
        else:
            t_lo, t_hi = (lo - y0) / (y1 - y0), (hi - y0) / (y1 - y0)
            ta, tb = max(0, min(t_lo, t_hi)), min(1, max(t_lo, t_hi))
        if ta > tb:
            continue
        at = lambda t: (x0 + t * (x1 - x0), y0 + t * (y1 - y0))
        if not cur:
            cur = [at(ta)]
        cur.append(at(tb))
        if tb < 1:                               # it leaves the band
            parts.append(cur)
            cur = []
    return parts + [cur] if cur else parts


class Axes:
    """A plot area at (x, y, w, h) pixels showing data limits xlim, ylim (x within xlim)."""

    def __init__(self, svg, x, y, w, h, xlim, ylim):
        self.svg, self.x, self.y, self.w, self.h, self.xlim, self.ylim = svg, x, y, w, h, xlim, ylim

    def px(self, v):
        return self.x + (v - self.xlim[0]) / ((self.xlim[1] - self.xlim[0]) or 1) * self.w

    def py(self, v):
        return self.y + self.h - (v - self.ylim[0]) / ((self.ylim[1] - self.ylim[0]) or 1) * self.h

    def grid(self, xfmt, yfmt, nx=6, ny=6):
        s = self.svg
        ticks, step = nice_ticks(*self.ylim, ny)
        for t in ticks:
            if self.ylim[0] <= t <= self.ylim[1]:
                yy = self.py(t)
                s.append(f"<line x1='{self.x}' x2='{self.x + self.w}' y1='{yy:.1f}' y2='{yy:.1f}' "
                         f"stroke='#e6e6e6'/>")
                s.append(text(self.x - 6, yy + 4, yfmt(t, step), anchor="end"))
        ticks, step = nice_ticks(*self.xlim, nx)
        for t in ticks:
            if self.xlim[0] <= t <= self.xlim[1]:
                xx = self.px(t)
                s.append(f"<line x1='{xx:.1f}' x2='{xx:.1f}' y1='{self.y}' y2='{self.y + self.h}' "
                         f"stroke='#f0f0f0'/>")
                s.append(f"<line x1='{xx:.1f}' x2='{xx:.1f}' y1='{self.y + self.h}' "
                         f"y2='{self.y + self.h + 4}' stroke='#333'/>")
                s.append(text(xx, self.y + self.h + 17, xfmt(t, step), anchor="middle"))

    def frame(self):
        self.svg.append(f"<rect x='{self.x}' y='{self.y}' width='{self.w}' height='{self.h}' "
                        f"fill='none' stroke='#333'/>")

    def polyline(self, pts, color, width=2.0, dash=None):
        extra = f" stroke-dasharray='{dash}'" if dash else ""
        for part in clip_y(pts, *self.ylim) if len(pts) > 1 else []:
            d = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in part)
            self.svg.append(f"<polyline points='{d}' fill='none' stroke='{color}' "
                            f"stroke-width='{width}' stroke-linejoin='round'{extra}/>")

    def dots(self, pts, color, r=3.2):
        for x, y in pts:
            if self.ylim[0] <= y <= self.ylim[1]:
                self.svg.append(f"<circle cx='{self.px(x):.1f}' cy='{self.py(y):.1f}' r='{r}' "
                                f"fill='white' stroke='{color}' stroke-width='1.8'/>")


def loss_limits(runs, ymax):
    """y range of the loss plot: down to the lowest loss; up to the highest (smoothed) loss
    once the first 2% of each run's tokens are past (the first steps' losses, far above the
    rest, would squash the curves) unless --ymax says otherwise."""
    lows, highs = [], []
    for r in runs:
        pts = r.train + r.val
        end = max(x for x, _ in pts)
        later = [y for x, y in smooth(r.train, 5) + r.val if x >= 0.02 * end] or [y for _, y in pts]
        lows.append(min(y for _, y in pts))
        highs.append(max(later))
    lo, hi = min(lows), max(highs) if ymax is None else ymax
    if hi <= lo:
        hi = lo + 1
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + (pad if ymax is None else 0)


def plot(runs, title, ymax, smooth_window):
    W, ML, MT = 1060, 74, 66                     # width, left margin, top of the plot area
    PW, PH = 640, 400                            # the loss plot
    BX, BW = ML + PW + 56, W - (ML + PW + 56) - 24   # the width charts' column
    n = len(runs)
    legend_h = 20 * n + 30
    bar_gap, bar_title = 14, 20
    bar_h = max(56, min(180, (PH - (n - 1) * bar_gap) / n - bar_title))
    col_h = n * (bar_h + bar_title) + (n - 1) * bar_gap
    H = int(max(MT + PH + 44 + legend_h, MT + col_h + 30) + 10)
    svg = []

    # title, and what the runs share
    svg.append(text(W / 2, 28, title, size=17, anchor="middle", weight="bold"))
    shared = []
    for key, fmt in (("train", "{}"), ("batch", "batch {}"), ("seq_len", "seq {}"),
                     ("vocab", "vocab {}")):
        vals = {str(r.config.get(key)) for r in runs}
        if len(vals) == 1 and None not in (r.config.get(key) for r in runs):
            shared.append(fmt.format(vals.pop()))
    if shared:
        svg.append(text(W / 2, 48, " · ".join(shared), size=11.5, anchor="middle", fill="#555"))

    # the loss plot
    xmax = max(x for r in runs for x, _ in r.train + r.val) or 1
    ax = Axes(svg, ML, MT, PW, PH, (0, xmax * 1.015), loss_limits(runs, ymax))
    ax.grid(fmt_tokens, fmt_num)
    for r in runs:
        w = smooth_window or max(1, len(r.train) // 25)
        if len(r.train) > 1:
            ax.polyline(r.train, tint(r.color, 0.22), width=1)
            ax.polyline(smooth(r.train, w), r.color, width=2.2)
        elif r.train:
            ax.dots(r.train, r.color, r=2)
        ax.polyline(r.val, r.color, width=1.2, dash="4,3")
        ax.dots(r.val, r.color)
    ax.frame()
    svg.append(text(ML + PW / 2, MT + PH + 36, "training tokens", size=12, anchor="middle"))
    svg.append(text(ML - 46, MT + PH / 2, "loss (nats per token)", size=12, anchor="middle",
                    rotate=True))
    if any(y > ax.ylim[1] for r in runs for _, y in r.train + r.val):
        note = "the first steps' losses lie above the plot" if ymax is None else \
            f"losses above {ymax:g} lie outside the plot"
        svg.append(text(ML + PW - 6, MT + 14, note, size=10, anchor="end", fill="#777"))

    # legend: one row per run, and the key to the line styles
    ly = MT + PH + 62
    for r in runs:
        svg.append(f"<line x1='{ML}' x2='{ML + 26}' y1='{ly - 4}' y2='{ly - 4}' stroke='{r.color}' "
                   f"stroke-width='2.5'/>")
        svg.append(f"<circle cx='{ML + 13}' cy='{ly - 4}' r='3.2' fill='white' stroke='{r.color}' "
                   f"stroke-width='1.8'/>")
        final = f"val {r.val[-1][1]:.4f} at {fmt_count(r.val[-1][0])} tokens" if r.val \
            else f"train {r.train[-1][1]:.4f}"
        svg.append(text(ML + 34, ly, r.label, size=12))
        svg.append(text(ML + PW, ly, final, size=11.5, anchor="end", fill="#333"))
        ly += 20
    svg.append(text(ML, ly + 4, "solid: training loss, smoothed (faint: every step) · "
                    "dots: validation loss", size=10.5, fill="#666"))

    # the per-layer MLP widths, one small bar chart per run, on one scale
    top = max([max(r.widths) for r in runs if r.widths] + [1])
    H_uniform = [r.config.get("mlp_width") for r in runs]
    top = max([top] + [h for h in H_uniform if isinstance(h, (int, float))])
    svg.append(text(BX + BW / 2, MT - 10, "MLP width per layer", size=13, anchor="middle",
                    weight="bold"))
    y = MT
    for r, h_uni in zip(runs, H_uniform):
        if not r.widths:
            svg.append(text(BX, y + 13, short_label(r), size=11, fill=r.color, weight="bold"))
            svg.append(text(BX + BW / 2, y + bar_title + bar_h / 2, "(no mlp_widths in the log)",
                            size=10, anchor="middle", fill="#777"))
            y += bar_title + bar_h + bar_gap
            continue
        L = len(r.widths)
        bx = Axes(svg, BX, y + bar_title, BW, bar_h, (0, L), (0, top * 1.12))
        svg.append(text(BX, y + 13, short_label(r), size=11, fill=r.color, weight="bold"))
        slot = BW / L
        gap = min(4.0, slot * 0.2)
        for l, wid in enumerate(r.widths):
            x0, y0 = bx.px(l) + gap / 2, bx.py(wid)
            svg.append(f"<rect x='{x0:.1f}' y='{y0:.1f}' width='{slot - gap:.1f}' "
                       f"height='{bx.py(0) - y0:.1f}' fill='{tint(r.color, 0.85)}' stroke='none'/>")
            if slot >= 26:
                svg.append(text(x0 + (slot - gap) / 2, y0 - 3, str(wid), size=9, anchor="middle",
                                fill="#333"))
        if isinstance(h_uni, (int, float)):
            yy = bx.py(h_uni)
            svg.append(f"<line x1='{BX}' x2='{BX + BW}' y1='{yy:.1f}' y2='{yy:.1f}' stroke='#333' "
                       f"stroke-dasharray='4,3'/>")
            svg.append(text(BX + BW, y + 13, f"- - H = {h_uni}", size=9.5, anchor="end", fill="#333"))
        svg.append(f"<line x1='{BX}' x2='{BX + BW}' y1='{bx.py(0):.1f}' y2='{bx.py(0):.1f}' "
                   f"stroke='#333'/>")
        if slot < 26:                            # too narrow to label every bar
            svg.append(text(BX + BW - 78, y + 13, f"{min(r.widths)}–{max(r.widths)}", size=9.5,
                            anchor="end", fill="#333"))
        step = max(1, math.ceil(L / 12))
        for l in range(0, L, step):
            svg.append(text(bx.px(l + 0.5), bx.py(0) + 11, str(l), size=8.5, anchor="middle",
                            fill="#666"))
        y += bar_title + bar_h + bar_gap
    svg.append(text(BX + BW / 2, y - bar_gap + 22, "layer", size=10.5, anchor="middle",
                    fill="#555"))

    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
            f"viewBox='0 0 {W} {H}' font-family='{FONT}'>\n"
            f"<rect width='{W}' height='{H}' fill='white' stroke='none'/>\n" + "\n".join(svg)
            + "\n</svg>\n")


def short_label(r):
    return f"{r.config.get('arch', '?')} · {taper_label(r.config)}"


# ------------------------------------ output -------------------------------------------
def png_converter():
    """A command list that turns an SVG into a PNG (input and output appended), or None."""
    if shutil.which("rsvg-convert"):
        return lambda svg, png: ["rsvg-convert", "-z", "2", "-b", "white", "-o", png, svg]
    for tool in ("magick", "convert"):
        if shutil.which(tool):
            return lambda svg, png, tool=tool: [tool, "-density", "192", svg, png]
    return None


def write_file(path, data):
    """Writes data (bytes) to path through a temporary file beside it."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"-o {path}: cannot write: {e.strerror or e}")
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def to_png(svg_text, png, convert):
    """Renders svg_text into the file png with the converter."""
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "plot.svg"), os.path.join(d, "plot.png")
        with open(src, "w", encoding="utf-8") as f:
            f.write(svg_text)
        cmd = convert(src, out)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(out):
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"-o {png}: {cmd[0]} could not render the SVG: {last}")
        with open(out, "rb") as f:
            write_file(png, f.read())


def main():
    ap = argparse.ArgumentParser(
        description="Plot train and val loss against tokens for train_tlm runs (their --log "
                    "JSONL files), with each run's per-layer MLP widths beside the curves.",
        epilog="Example: python3 dev/plot_runs.py runs/default.jsonl -o runs/default.svg")
    ap.add_argument("logs", nargs="+", metavar="LOG.jsonl", help="train_tlm --log files")
    ap.add_argument("-o", "--out", metavar="OUT.svg|OUT.png",
                    help="the picture to write (default: the first log's name with .svg); "
                         ".svg also writes a .png beside it when rsvg-convert or ImageMagick "
                         "is installed")
    ap.add_argument("--title", help="the title (default: the run's label, or a generic one)")
    ap.add_argument("--ymax", type=float, metavar="LOSS",
                    help="the top of the loss axis (default: above the losses after the "
                         "first 2%% of tokens)")
    ap.add_argument("--smooth", type=int, default=0, metavar="N",
                    help="average the training loss over N steps (default: 1/25 of the run)")
    ap.add_argument("--no-png", action="store_true", help="with -o OUT.svg: no OUT.png")
    args = ap.parse_args()
    try:
        if args.smooth < 0:
            raise UserError("--smooth must be 0 (automatic) or a number of steps")
        if args.ymax is not None and not math.isfinite(args.ymax):
            raise UserError("--ymax must be a finite number")
        out = args.out or os.path.splitext(args.logs[0])[0] + ".svg"
        ext = os.path.splitext(out)[1].lower()
        if ext not in (".svg", ".png"):
            raise UserError(f"-o {out}: the picture must be a .svg or a .png file")
        if os.path.isdir(out):
            raise UserError(f"-o {out}: is a directory")
        convert = png_converter()
        if ext == ".png" and convert is None:
            raise UserError(f"-o {out}: no SVG to PNG converter found (install librsvg2-bin "
                            f"or imagemagick), or write a .svg")
        runs = [Run(p) for p in args.logs]
        unique_labels(runs)
        tapers = [r.config.get("taper") for r in runs]
        by_taper = len(set(tapers)) == len(runs) and all(t in TAPER_COLORS for t in tapers) \
            and len({r.config.get("arch") for r in runs}) == 1
        for i, r in enumerate(runs):
            r.color = TAPER_COLORS[r.config["taper"]] if by_taper else PALETTE[i % len(PALETTE)]
        if args.ymax is not None and args.ymax <= min(y for r in runs for _, y in r.train + r.val):
            raise UserError(f"--ymax {args.ymax:g} is below every loss in the logs")
        title = args.title or (runs[0].label if len(runs) == 1 else
                               "Training and validation loss against tokens")
        svg = plot(runs, title, args.ymax, args.smooth)
        written = []
        if ext == ".svg":
            write_file(out, svg.encode("utf-8"))
            written.append(out)
            if convert and not args.no_png:     # the PNG beside it is a bonus: a note if not
                png = os.path.splitext(out)[0] + ".png"
                try:
                    to_png(svg, png, convert)
                    written.append(png)
                except UserError as e:
                    print(f"note: no PNG: {e}", file=sys.stderr)
        else:
            to_png(svg, out, convert)
            written.append(out)
        print("wrote " + ", ".join(written))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
