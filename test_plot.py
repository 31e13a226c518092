"""Tests of plot.py: `python -m pytest -q test_plot.py`. No torch; well under a second.

Each test is named after the claim it checks. The pictures are read back with xml.etree, as any
SVG reader would: the val curve is the polyline of class "val", tick labels are text of class
"ytick" / "xtick" / "tokentick" placed at their tick's coordinate.
"""
import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import plot
from conftest import REPO, assert_one_line_error, run_script

SVG = "{http://www.w3.org/2000/svg}"


def write_log(out_dir, rows, tail=""):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return out_dir


def curve(it):
    """A made-up loss: ln(65) ~ 4.17 at initialisation, decaying toward 1.6."""
    return 1.6 + 2.57 * math.exp(-it / 300)


def run_rows(iters=2000, log_every=10, eval_every=250, tokens_per_iter=None):
    """A log like train.py's: training rows every log_every iterations, evaluations every eval_every."""
    rows = []
    for it in range(0, iters + 1):
        extra = {"tokens_per_iter": tokens_per_iter} if tokens_per_iter else {}
        if it % log_every == 0 and it < iters:
            noise = 0.05 * math.sin(it * 1.7)
            rows.append({"iter": it, "loss": curve(it) + noise, "lr": 1e-3, "ms_per_iter": 50.0, **extra})
        if it % eval_every == 0:
            rows.append({"iter": it, "train_loss": curve(it) - 0.02, "val_loss": curve(it) + 0.05, **extra})
    return rows


def parse(path):
    return ET.parse(path).getroot()


def points(root, cls, run=None):
    """The (x, y) pixel points of the polyline of class `cls` (and data-run `run`)."""
    lines = [e for e in root.iter(f"{SVG}polyline") if e.get("class") == cls
             and (run is None or e.get("data-run") == run)]
    assert len(lines) == 1, f"{len(lines)} polylines of class {cls!r}"
    return [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]


def unhuman(label):
    """'1.5k' -> 1500.0: the inverse of plot.human, for reading tick labels."""
    scale = {"k": 1e3, "M": 1e6, "B": 1e9}.get(label[-1])
    return float(label[:-1]) * scale if scale else float(label)


def ticks(root, cls, coord):
    """[(value, pixel)] of the tick labels of class `cls`; coord 'x' or 'y' is the pixel read."""
    return [(unhuman(t.text), float(t.get(coord))) for t in root.iter(f"{SVG}text") if t.get("class") == cls]


def axis_map(tick_list):
    """The linear map value -> pixel through the first and last tick: the axis as a reader sees it."""
    (v0, p0), (v1, p1) = tick_list[0], tick_list[-1]
    return lambda v: p0 + (v - v0) * (p1 - p0) / (v1 - v0)


# -----------------------------------------------------------------------------
# One run's picture


def test_loss_svg_has_one_val_point_per_evaluation_placed_by_the_axis_ticks(tmp_path):
    rows = run_rows()
    path = plot.write_loss_svg(write_log(tmp_path / "run", rows))
    assert path == str(tmp_path / "run" / "loss.svg")
    root = parse(path)
    evals = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]
    val = points(root, "val")
    assert len(val) == len(evals) == 9
    to_x, to_y = axis_map(ticks(root, "xtick", "x")), axis_map(ticks(root, "ytick", "y"))
    for (it, loss), (x, y) in zip(evals, val):
        assert x == pytest.approx(to_x(it), abs=0.15) and y == pytest.approx(to_y(loss), abs=0.15)
    xs = [x for x, _ in val]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # in order of iteration
    # higher loss, higher on screen (smaller y): the val loss falls, so its y grows
    assert all(a[1] < b[1] for a, b in zip(val, val[1:]))
    assert len(points(root, "train")) == 200 and len(points(root, "train-eval")) == 9


def test_loss_svg_range_leaves_the_initial_loss_off_the_frame_and_every_later_evaluation_on_it(tmp_path):
    root = parse(plot.write_loss_svg(write_log(tmp_path / "run", run_rows())))
    frame = next(root.iter(f"{SVG}clipPath"))[0]
    top, bottom = float(frame.get("y")), float(frame.get("y")) + float(frame.get("height"))
    val = points(root, "val")
    assert val[0][1] < top  # iter 0: ~4.2, above the frame (clipped)
    assert all(top < y < bottom for _, y in val[1:])
    labels = [v for v, _ in ticks(root, "ytick", "y")]
    assert max(labels) < curve(0) and min(labels) <= 1.7  # the range fits the curve after the first steps


def test_range_leaves_the_initial_loss_off_even_when_few_training_losses_are_logged(tmp_path):
    # one training loss every 100 iterations: the 98th percentile of 20 losses is the initial ~4.2
    root = parse(plot.write_loss_svg(write_log(tmp_path / "run", run_rows(log_every=100, eval_every=200))))
    labels = [v for v, _ in ticks(root, "ytick", "y")]
    assert max(labels) < curve(100) and min(labels) <= 2.0, labels  # fits the curve from iter 200 on


def test_resumed_log_keeps_the_last_row_of_each_iteration(tmp_path):
    # a run logged up to 500, crashed, and was resumed from its checkpoint at 250: iterations
    # 250-500 are logged twice, and the second time is the run that went on
    before = [r for r in run_rows() if r["iter"] < 250]
    abandoned = [{**r, "val_loss": 9.0} if "val_loss" in r else {**r, "loss": 8.0}
                 for r in run_rows() if 250 <= r["iter"] <= 500]
    rows = before + abandoned + [r for r in run_rows() if r["iter"] >= 250]
    log = plot.read_log(write_log(tmp_path / "run", rows))
    assert [e[0] for e in log.evals] == list(range(0, 2001, 250))
    assert dict((it, v) for it, _, v in log.evals)[500] == curve(500) + 0.05
    assert max(loss for _, loss in log.train) < 4.3 and len(log.train) == 200
    root = parse(plot.write_loss_svg(tmp_path / "run"))
    to_y = axis_map(ticks(root, "ytick", "y"))
    assert points(root, "val")[2][1] == pytest.approx(to_y(curve(500) + 0.05), abs=0.15)


def test_rows_without_a_usable_loss_are_skipped(tmp_path):
    rows = [{"iter": 0, "loss": 4.0}, {"iter": 10, "loss": float("nan")}, {"iter": 20, "loss": 3.0},
            {"iter": 20, "train_loss": 3.0, "val_loss": float("inf")}, {"note": "no iter"}]
    log = plot.read_log(write_log(tmp_path / "run", rows, tail='{"iter": 30, "lo'))  # cut short by a crash
    assert log.train == [(0, 4.0), (20, 3.0)] and log.evals == [] and log.tokens_per_iter is None


def test_tokens_axis_appears_with_tokens_per_iter_and_lines_up_with_iterations(tmp_path):
    root = parse(plot.write_loss_svg(write_log(tmp_path / "a", run_rows(tokens_per_iter=1000))))
    tokens = ticks(root, "tokentick", "x")
    to_x = axis_map(ticks(root, "xtick", "x"))
    assert len(tokens) >= 4
    for value, x in tokens:  # 1000 tokens per iteration: token t sits above iteration t / 1000
        assert x == pytest.approx(to_x(value / 1000), abs=0.15)
    assert "tokens" in [t.text for t in root.iter(f"{SVG}text")]
    plain = parse(plot.write_loss_svg(write_log(tmp_path / "b", run_rows())))
    assert ticks(plain, "tokentick", "x") == [] and "tokens" not in [t.text for t in plain.iter(f"{SVG}text")]


def test_run_name_with_markup_characters_is_escaped(tmp_path):
    out_dir = write_log(tmp_path / 'a<&>"b', run_rows(iters=500))
    root = parse(plot.write_loss_svg(out_dir))  # raises if the escaping were wrong
    assert 'a<&>"b: loss' in [t.text for t in root.iter(f"{SVG}text")]
    assert {e.get("data-run") for e in root.iter(f"{SVG}polyline")} == {'a<&>"b'}


def test_a_failed_write_keeps_the_previous_picture_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    out_dir = write_log(tmp_path / "run", run_rows(iters=500))
    before = Path(plot.write_loss_svg(out_dir)).read_text()
    write_log(out_dir, run_rows(iters=1000))

    def full_disk(fd):
        raise OSError("no space left on device")

    monkeypatch.setattr(plot.os, "fsync", full_disk)
    with pytest.raises(OSError):
        plot.write_loss_svg(out_dir)
    assert (out_dir / "loss.svg").read_text() == before
    assert sorted(os.listdir(out_dir)) == ["log.jsonl", "loss.svg"]
    monkeypatch.undo()
    assert len(points(parse(plot.write_loss_svg(out_dir)), "val")) == 5  # the new log, redrawn


def test_thin_keeps_the_envelope_of_a_long_curve_in_order():
    pts = [(i, math.sin(i / 50) + (3.0 if i == 77_777 else 0.0)) for i in range(200_000)]
    kept = plot.thin(pts, 900)
    assert len(kept) <= 2 * 900 + 2
    assert max(kept, key=lambda p: p[1]) == (77_777, pts[77_777][1])  # the lone spike survives
    assert min(p[1] for p in kept) == min(p[1] for p in pts)
    assert [p[0] for p in kept] == sorted(p[0] for p in kept)
    assert plot.thin(pts[:1000], 900) == pts[:1000]  # fewer points than pixels: untouched


def test_nice_ticks_are_round_and_within_the_range():
    assert plot.nice_ticks(1.43, 3.92) == ([1.5, 2.0, 2.5, 3.0, 3.5], 0.5)
    assert plot.nice_ticks(0, 2000, 8) == ([0, 500, 1000, 1500, 2000], 500)
    assert [plot.human(v) for v in (0, 500, 1500, 2e6, 3.5e9)] == ["0", "500", "1.5k", "2M", "3.5B"]


# -----------------------------------------------------------------------------
# Several runs, and the command line


def test_overlay_draws_one_val_series_per_run_and_names_them_in_the_legend(tmp_path):
    a = write_log(tmp_path / "out-adamw", run_rows())
    b = write_log(tmp_path / "out-muon", [{**r, "val_loss": r["val_loss"] - 0.1} if "val_loss" in r else r
                                         for r in run_rows()])
    root = parse(plot.overlay([a, b], tmp_path / "compare.svg"))
    vals = [e for e in root.iter(f"{SVG}polyline") if e.get("class") == "val"]
    assert [e.get("data-run") for e in vals] == ["out-adamw", "out-muon"]
    assert vals[0].get("stroke") != vals[1].get("stroke")
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    assert [t.text for t in legend.iter(f"{SVG}text")] == ["out-adamw", "out-muon"]
    # out-muon's val loss is lower, so each of its points sits lower on the screen (larger y)
    pairs = zip(points(root, "val", "out-adamw"), points(root, "val", "out-muon"), strict=True)
    assert all(adamw[1] < muon[1] for adamw, muon in pairs)


def plot_cli(*args, cwd=REPO):
    return run_script(REPO / "plot.py", *args, cwd=cwd, timeout=60)


def test_cli_writes_compare_svg_in_the_working_folder_and_prints_its_path(tmp_path):
    write_log(tmp_path / "a", run_rows(iters=500))
    write_log(tmp_path / "b", run_rows(iters=500))
    result = plot_cli("a", "b", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "compare.svg", result.stderr
    assert len(points(parse(tmp_path / "compare.svg"), "val", "b")) == 3
    result = plot_cli(tmp_path / "a", f"--out={tmp_path / 'one.svg'}")
    assert result.returncode == 0 and (tmp_path / "one.svg").is_file()


def test_cli_errors_are_one_line(tmp_path):
    assert_one_line_error(plot_cli("missing_dir"), "missing_dir has no log.jsonl")
    write_log(tmp_path / "empty", [{"iter": 0, "lr": 1e-3}])
    assert_one_line_error(plot_cli(tmp_path / "empty"), "holds no losses")
    assert_one_line_error(plot_cli(), "usage: python plot.py")
    assert_one_line_error(plot_cli(tmp_path / "empty", "--output=x.svg"), "usage: python plot.py")
