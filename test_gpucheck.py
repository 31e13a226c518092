"""Tests of gpucheck.py: `python bench.py --only=gpu --quick` runs every part of the GPU check at toy
sizes on this machine (a CPU will do), so that the command a lent GPU runs once keeps working."""
import json

import pytest

from conftest import assert_one_line_error, run_script


def test_gpu_check_quick_runs_every_part_at_toy_size(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench.py", "--quick", "--only=gpu", f"--out={out}")
    assert result.returncode == 0, result.stderr
    gpu = json.loads(out.read_text())["gpu"]
    assert not [part for part in ("mfu", "vocab", "sample", "recipe") if "error" in gpu[part]], gpu
    mfu = gpu["mfu"]
    assert mfu["tokens_per_iter"] == 4 * 16 and mfu["ms_per_iter"] > 0 and mfu["mfu"] > 0, mfu
    ratio = mfu["train_py_peak_tflops"] / mfu["measured_matmul_tflops"]
    assert mfu["mfu_of_measured_peak"] == pytest.approx(mfu["mfu"] * ratio), mfu
    assert gpu["vocab"]["ms_50257"] > 0 and gpu["vocab"]["ms_50304"] > 0, gpu["vocab"]
    for run in ("sample_model_batch1", "sample_model_batch8", "gpt2_124m_batch1", "gpt2_124m_batch8"):
        assert gpu["sample"][run]["tokens_per_s"] > 0, gpu["sample"]
    for optimizer in ("adamw", "muon"):  # random tokens: the loss cannot get near 1.47
        run = gpu["recipe"][optimizer]
        assert run["how"] == "finished" and run["last_iter"] == 20 and run["iter"] is None, run
        assert run["best_val"] < 4.3 and run["ms_per_iter"] > 0, run
    for part in ("mfu", "vocab", "sample", "recipe"):  # progress, as each part ends
        assert f"gpu {part}: running" in result.stdout, result.stdout


def test_gpu_check_without_a_gpu_or_quick_is_a_one_line_error():
    assert_one_line_error(run_script("bench.py", "--only=gpu", "--device=cpu"), "needs a CUDA GPU", "--quick")
