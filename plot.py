"""Loss curves as SVG pictures, drawn by hand: no plotting library needed.

    python plot.py out-adamw out-muon              # both runs on one chart: compare.svg
    python plot.py out-adamw out-muon --out=a.svg

train.py calls write_loss_svg(out_dir) after every evaluation, which redraws out_dir/loss.svg from
out_dir/log.jsonl: the training loss at every logged iteration (thin), the train and val losses at
evaluations (markers), iterations below and, when the log records tokens_per_iter, tokens above.
"""
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from xml.sax.saxutils import escape, quoteattr

from configurator import UserError, run
from fileio import write_text

W, H = 900, 560  # picture size, px
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 78, 56  # margins around the plotting frame, px
# matplotlib's default cycle ("tab10"): distinct, and familiar to the eye
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'
FRAME = f'x="{LEFT}" y="{TOP}" width="{W - RIGHT - LEFT}" height="{H - BOTTOM - TOP}"'  # the plotting area


def read_log(out_dir):
    """The losses in out_dir/log.jsonl: train [(iter, loss)], evals [(iter, train, val)], sorted by
    iter, and tokens_per_iter (its latest value, or None). A run resumed from an earlier checkpoint
    logs some iterations again: the last row of each iteration wins, as it is the run that went on."""
    path = Path(out_dir) / "log.jsonl"
    if not path.is_file():
        raise UserError(f"{out_dir} has no log.jsonl; is it a training run's out_dir?")
    train, evals, tokens_per_iter = {}, {}, None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash mid-write
        if not isinstance(row, dict) or not finite(row, "iter"):
            continue
        tokens_per_iter = row.get("tokens_per_iter", tokens_per_iter)
        if finite(row, "loss"):
            train[row["iter"]] = row["loss"]
        if finite(row, "train_loss") and finite(row, "val_loss"):
            evals[row["iter"]] = (row["train_loss"], row["val_loss"])
    if not train and not evals:
        raise UserError(f"{path} holds no losses to plot yet")
    return SimpleNamespace(train=sorted(train.items()), evals=[(i, *evals[i]) for i in sorted(evals)],
                           tokens_per_iter=tokens_per_iter)


def finite(row, key):
    """Whether row[key] is a number to plot (a diverged run may have logged NaN or inf)."""
    return isinstance(row.get(key), (int, float)) and math.isfinite(row[key])


def nice_ticks(lo, hi, target=6, min_step=0.0):
    """About `target` round values (1, 2 or 5 times a power of ten apart) within [lo, hi]; and the step."""
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = max(min_step, next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * 0.999))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)], step


def human(v):
    """1500 -> '1.5k', 8.2e6 -> '8.2M': short labels for iterations and tokens."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{round(v / size, 6):g}{unit}"
    return f"{round(v, 6):g}"


def y_range(logs):
    """Loss range to show. The first iterations' loss (about ln(vocab_size) at initialisation) is far
    above all that follows; fitting it would squash the part of the curve worth reading into a thin
    band. So: every evaluation except the one at iter 0, and the training losses from a run's first
    evaluation past 0 on (all of them if it has none), between their 2nd and 98th percentiles (a
    percentile alone cannot drop the first steps when only a few iterations are logged); the rest
    runs off the frame (clipped)."""
    train = []
    for log in logs:
        start = next((it for it, *_ in log.evals if it > 0), 0)
        train += [loss for it, loss in log.train if it >= start] or [loss for _, loss in log.train]
    evals = [e for log in logs for e in log.evals]
    shown = [v for it, *vs in evals if it > 0 for v in vs] or [v for _, *vs in evals for v in vs]
    if train:
        train.sort()
        shown += [train[round(q * (len(train) - 1))] for q in (0.02, 0.98)]
    lo, hi = min(shown), max(shown)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


class Frame:
    """Data to pixels: iterations to x (left to right), loss to y (higher loss nearer the top)."""

    def __init__(self, logs):
        iters = [p[0] for log in logs for p in log.train + log.evals]
        self.first, self.last = min(iters), max(max(iters), min(iters) + 1)  # one iteration: 1 wide
        pad = 0.02 * (self.last - self.first)  # as matplotlib: no dot sits on the frame's edge
        self.x0, self.x1 = self.first - pad, self.last + pad
        self.y0, self.y1 = y_range(logs)

    def x(self, it):
        return LEFT + (it - self.x0) / (self.x1 - self.x0) * (W - RIGHT - LEFT)

    def y(self, loss):
        return H - BOTTOM - (loss - self.y0) / (self.y1 - self.y0) * (H - BOTTOM - TOP)


def text(x, y, s, size=12, anchor="middle", extra=""):
    attrs = f'x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {extra}'
    return f"<text {attrs}>{escape(str(s))}</text>"  # escaped: a run's name may hold < or &


def line(x1, y1, x2, y2, stroke="#333", extra=""):
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" {extra}/>'


def axes(f, title, tokens_per_iter):
    """Grid, ticks and labels of both axes (tokens on top when known), and the title."""
    right, bottom = W - RIGHT, H - BOTTOM
    out = []
    yticks, ystep = nice_ticks(f.y0, f.y1)
    decimals = max(0, -math.floor(math.log10(ystep)))  # 0.2 apart: one decimal
    for v in yticks:
        y = f.y(v)
        out += [line(LEFT, y, right, y, "#e6e6e6"), line(LEFT - 5, y, LEFT, y),
                text(LEFT - 8, y, f"{v:.{decimals}f}", anchor="end",
                     extra='class="ytick" dominant-baseline="central"')]  # centred on its tick
    for v in nice_ticks(f.first, f.last, 8, min_step=1)[0]:  # whole iterations
        x = f.x(v)
        out += [line(x, bottom, x, bottom + 5), text(x, bottom + 19, human(v), extra='class="xtick"')]
    if tokens_per_iter:
        for v in nice_ticks(f.first * tokens_per_iter, f.last * tokens_per_iter, 8, min_step=1)[0]:
            x = f.x(v / tokens_per_iter)
            out += [line(x, TOP - 5, x, TOP), text(x, TOP - 9, human(v), extra='class="tokentick"')]
        out.append(text((LEFT + right) / 2, TOP - 28, "tokens", size=13))
    mid = (TOP + bottom) / 2
    return out + [f'<rect {FRAME} fill="none" stroke="#333"/>',
                  text((LEFT + right) / 2, H - 14, "iteration", size=13),
                  text(18, mid, "loss", size=13, extra=f'transform="rotate(-90 18 {mid:.1f})"'),
                  text(W / 2, 24, title, size=16, extra='font-weight="bold"')]


def thin(points, buckets):
    """At most ~2 * buckets points: the lowest and highest of each run of neighbours, in order, so a
    curve with more points than pixels keeps its spikes and its envelope."""
    size = math.ceil(len(points) / buckets)
    if size <= 2:
        return points
    chunks = (points[i:i + size] for i in range(0, len(points), size))
    return [p for c in chunks for p in sorted({min(c, key=lambda p: p[1]), max(c, key=lambda p: p[1])})]


def series(f, points, color, cls, label, width=1.5, opacity=1.0, markers=False):
    """One loss curve: a polyline (class `cls`, data-run `label`) and, if asked, a dot per point."""
    coords = " ".join(f"{f.x(it):.1f},{f.y(v):.1f}" for it, v in points)
    out = [f'<polyline class="{cls}" data-run={quoteattr(label)} points="{coords}" fill="none" stroke="{color}" '
           f'stroke-opacity="{opacity}" stroke-width="{width}" stroke-linejoin="round"/>']
    if markers:
        out += [f'<circle class="{cls}" cx="{f.x(it):.1f}" cy="{f.y(v):.1f}" r="3" fill="{color}"/>'
                for it, v in points]
    return out


def legend(entries):
    """A boxed key in the frame's top right corner: (label, color, opacity, markers) per entry."""
    width = 44 + 7.2 * max(len(e[0]) for e in entries)  # ~7 px per character at 12 px
    x, y = W - RIGHT - width - 10, TOP + 10
    out = [f'<g class="legend"><rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{8 + 20 * len(entries)}" '
           'fill="white" fill-opacity="0.9" stroke="#ccc" rx="3"/>']
    for i, (label, color, opacity, markers) in enumerate(entries):
        cy = y + 14 + 20 * i
        out.append(line(x + 8, cy, x + 32, cy, color, f'stroke-opacity="{opacity}" stroke-width="2"'))
        if markers:
            out.append(f'<circle cx="{x + 20:.1f}" cy="{cy}" r="3" fill="{color}"/>')
        out.append(text(x + 38, cy + 4, label, anchor="start"))
    return out + ["</g>"]


def render(f, title, tokens_per_iter, curves, entries):
    """The whole SVG document: axes, the curves clipped to the frame, the legend."""
    body = [*axes(f, title, tokens_per_iter), f'<clipPath id="frame"><rect {FRAME}/></clipPath>',
            '<g clip-path="url(#frame)">', *curves, "</g>", *legend(entries)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" {FONT}>\n'
            f'<rect width="{W}" height="{H}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


def write_loss_svg(out_dir):
    """Draw out_dir/log.jsonl as out_dir/loss.svg; returns its path."""
    log = read_log(out_dir)
    f = Frame([log])
    blue, orange = COLORS[:2]
    name = Path(out_dir).resolve().name
    curves = series(f, thin(log.train, W), blue, "train", name, width=1, opacity=0.45)
    curves += series(f, [(i, t) for i, t, _ in log.evals], blue, "train-eval", name, markers=True)
    curves += series(f, [(i, v) for i, _, v in log.evals], orange, "val", name, width=2, markers=True)
    entries = [("train loss", blue, 0.45, False)] * bool(log.train)
    entries += [("train loss (evaluation)", blue, 1, True), ("val loss", orange, 1, True)] * bool(log.evals)
    path = os.path.join(out_dir, "loss.svg")
    write_text(path, render(f, f"{name}: loss", log.tokens_per_iter, curves, entries))
    return path


def overlay(out_dirs, path):
    """Several runs on one chart, one colour each: val loss as the main line, train loss faint."""
    logs = [read_log(d) for d in out_dirs]
    names = [Path(d).resolve().name for d in out_dirs]
    if len(set(names)) < len(names):  # e.g. a/out and b/out: name them by their paths
        names = [str(d) for d in out_dirs]
    f = Frame(logs)
    curves, entries = [], []
    for i, (log, name) in enumerate(zip(logs, names)):
        color = COLORS[i % len(COLORS)]
        train = log.train or [(it, t) for it, t, _ in log.evals]
        curves += series(f, thin(train, W), color, "train", name, width=1, opacity=0.3)
        curves += series(f, [(it, v) for it, _, v in log.evals], color, "val", name, width=2, markers=True)
        entries.append((name, color, 1, True))
    tokens = {log.tokens_per_iter for log in logs}  # a shared tokens axis only if the runs agree
    tokens_per_iter = tokens.pop() if len(tokens) == 1 else None
    write_text(path, render(f, "val loss (train loss faint)", tokens_per_iter, curves, entries))
    return path


def main():
    args = sys.argv[1:]
    dirs, flags = [a for a in args if not a.startswith("-")], [a for a in args if a.startswith("-")]
    if not dirs or any(not f.startswith("--out=") for f in flags):
        raise UserError("usage: python plot.py OUT_DIR [OUT_DIR ...] [--out=compare.svg]")
    print(overlay(dirs, flags[-1].removeprefix("--out=") if flags else "compare.svg"))


if __name__ == "__main__":
    run(main)
