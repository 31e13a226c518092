"""Tests of measure.py: following a train.py run through its log (stopped on a condition, or at a
time limit), reading a log as it is written, and the time-to-target summary of a run."""
import json
import sys

import pytest

from conftest import TINY
from configurator import UserError
from measure import iteration_rows, measure_processes, memory_bandwidth, read_rows, time_to_target, watch_training


def test_watch_training_stops_the_run_when_asked_and_at_its_time_limit(data_dir, tmp_path):
    args = [*TINY, f"--data_dir={data_dir}", "--max_iters=100000", "--eval_interval=100000"]
    rows, how = watch_training(args, tmp_path / "a", stop=lambda rows: len(iteration_rows(rows)) >= 5)
    steps = iteration_rows(rows)
    assert how == "stopped" and 5 <= len(steps) < 1000, (how, len(steps))
    assert [r["iter"] for r in steps] == list(range(len(steps)))
    assert not (tmp_path / "a" / "ckpt.pt").exists(), "stopped long before its first checkpoint"
    rows, how = watch_training(args, tmp_path / "b", timeout_s=1.0)
    assert how == "timed out" and len(iteration_rows(rows)) < 100000, how


def test_a_run_that_fails_is_a_user_error_quoting_train_py(data_dir, tmp_path):
    with pytest.raises(UserError, match="train.py failed: pos_emb must be one of"):
        watch_training([*TINY, f"--data_dir={data_dir}", "--pos_emb=rotary"], tmp_path / "out")


def test_read_rows_leaves_a_line_still_being_written_for_later(tmp_path):
    log = tmp_path / "log.jsonl"
    assert read_rows(log) == []  # not written yet
    log.write_text(json.dumps({"iter": 0, "loss": 4.1}) + "\n" + '{"iter": 1, "lo')
    assert read_rows(log) == [{"iter": 0, "loss": 4.1}]


def evaluation(it, val, seconds):
    return {"iter": it, "train_loss": val, "val_loss": val, "time_s": seconds}


def test_time_to_target_is_the_first_evaluation_at_the_target_else_the_best():
    rows = [evaluation(0, 4.2, 1.0), {"iter": 0, "loss": 4.2, "ms_per_iter": 10.0},
            {"iter": 1, "loss": 3.0, "ms_per_iter": 20.0}, {"iter": 2, "loss": 2.0, "ms_per_iter": 30.0},
            evaluation(250, 1.5, 30.0), evaluation(500, 1.46, 55.0), evaluation(750, 1.40, 80.0)]
    hit = time_to_target(rows, "stopped", target=1.47)
    assert (hit["iter"], hit["time_s"], hit["best_val"], hit["best_iter"]) == (500, 55.0, 1.40, 750), hit
    assert hit["ms_per_iter"] == 20.0 and hit["last_iter"] == 750 and hit["how"] == "stopped", hit
    miss = time_to_target(rows, "finished", target=1.3)
    assert miss["iter"] is None and miss["time_s"] is None and miss["best_val"] == 1.40, miss
    with pytest.raises(UserError, match="timed out before its first evaluation"):
        time_to_target(rows[1:4], "timed out", target=1.47)


def test_time_to_target_interpolates_the_crossing_between_the_evaluations_around_it():
    rows = [evaluation(0, 4.0, 0.0), evaluation(50, 2.0, 10.0), evaluation(100, 1.8, 20.0), evaluation(150, 1.7, 30.0)]
    run = time_to_target(rows, "finished", target=1.88)
    assert run["crossed_s"] == pytest.approx(10.0 + 10.0 * 0.12 / 0.2) and run["time_s"] == 20.0, run
    assert (run["last_val"], run["last_time_s"]) == (1.7, 30.0), run
    assert time_to_target(rows, "finished", target=2.0)["crossed_s"] == 10.0  # reached at an evaluation
    assert time_to_target(rows, "finished", target=5.0)["crossed_s"] == 0.0  # there from the start
    assert time_to_target(rows, "finished", target=1.5)["crossed_s"] is None


def test_measure_processes_takes_turns_and_reports_each_commands_median():
    def sleeper(seconds):
        return [sys.executable, "-c", f"import time; time.sleep({seconds})"]
    runs = measure_processes({"short": sleeper(0.05), "long": sleeper(0.4)}, rounds=3)
    assert [len(runs[name]["runs_s"]) for name in ("short", "long")] == [3, 3]
    assert runs["short"]["seconds"] == sorted(runs["short"]["runs_s"])[1], "the median of the three"
    assert 0.05 <= runs["short"]["seconds"] < runs["long"]["seconds"] and runs["long"]["seconds"] >= 0.4
    assert runs["long"]["peak_rss_mb"] > 0


def test_memory_bandwidth_is_measured_afresh_on_every_call():
    # bench.py reads it before and after the timed decodings: a remembered first reading would be
    # both (it was, for a while)
    reads = [memory_bandwidth("cpu", quick=True) for _ in range(2)]
    assert reads[0] != reads[1] and min(reads) > 1e8, reads
