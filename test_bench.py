"""Tests of bench.py: `python bench.py --quick` runs every section at tiny sizes and writes them all."""
import json

import pytest
import torch

import bench
from conftest import SHARED, run_script


def test_bench_quick_runs_and_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench.py", "--quick", f"--out={out}")
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert {"device", "torch", "threads"} <= set(data["env"]), data["env"]
    assert data["env"]["torch"] == torch.__version__
    assert data["train"]["step"] == "train.train_step" and data["train"]["ms_per_iter"] > 0, data["train"]
    assert 0 < data["train"]["mfu"] < 1, data["train"]
    for run in ("cache_batch1", "no_cache_batch1", "cache_batch8", "no_cache_batch8"):
        assert data["sample"][run]["tokens_per_s"] > 0, data["sample"]
    assert data["sample"]["memory_bound_tokens_per_s"] > 0 and data["cpu"]["matmul_gflops"] > 0
    if SHARED.is_dir():
        for key in ("prepare_py", "datasets_map"):
            p = data["prepare"][key]
            assert p["tokens"] > 0 and p["tokens_per_s"] > 0 and p["peak_rss_mb"] > 0, data["prepare"]
        ours, theirs = data["prepare"]["prepare_py"]["tokens"], data["prepare"]["datasets_map"]["tokens"]
        assert abs(ours - theirs) < 0.01 * ours, f"the two ways tokenized {ours} and {theirs} tokens"
    for needle in ("ms/iter", "cache batch1", "tok/s", "GFLOP/s"):
        assert needle in result.stdout, result.stdout


def test_bench_recipe_quick_runs_both_recipes_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench.py", "--quick", "--only=recipe", f"--out={out}")
    assert result.returncode == 0, result.stderr
    r = json.loads(out.read_text())["recipe"]
    for name in ("recipe", "nanogpt"):
        iters = [it for it, _, _ in r[name]["evals"]]
        assert iters == [0, 10, 20], r[name]  # evaluated every 10 of the toy's 20 iterations
        assert r[name]["seconds"] > 0 and r[name]["final_val_loss"] == r[name]["evals"][-1][2]
    assert "time to val 1.88" in result.stdout, result.stdout


def test_time_to_reach_interpolates_between_the_evaluations_around_the_crossing():
    evals = [(0, 0.0, 4.0), (50, 10.0, 2.0), (100, 20.0, 1.8), (150, 30.0, 1.7)]
    assert bench.time_to_reach(evals, 1.88) == pytest.approx(10.0 + 10.0 * 0.12 / 0.2)
    assert bench.time_to_reach(evals, 2.0) == 10.0  # reached exactly at an evaluation
    assert bench.time_to_reach(evals, 1.5) is None
    assert bench.time_to_reach(evals, 5.0) == 0.0  # already there at the first evaluation
