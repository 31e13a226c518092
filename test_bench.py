"""Tests of bench.py: `python bench.py --quick` runs every section at tiny sizes and writes them all."""
import json

import torch

from conftest import SHARED, run_script


def test_bench_quick_runs_and_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    sections = "cpu,train,sample,prepare,serve,tokenizer,payoff"  # payoff is not a default section
    result = run_script("bench.py", "--quick", f"--out={out}", f"--only={sections}")
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
        learned = data["tokenizer"]["learn"]["0.2"]
        assert learned["prepare_py"]["seconds"] > 0 and learned["tokenizers"]["peak_rss_mb"] > 0, learned
        assert data["tokenizer"]["tokenize"]["bpe"]["tokens_per_s"] > 0, data["tokenizer"]
        for name, vocab_size in (("bpe", 512), ("gpt2", 50257)):
            run = data["payoff"][name]
            assert run["vocab_size"] == vocab_size and 0 < run["val_bpb"] < 20 and run["tokens_per_s"] > 0, run
    serve = data["serve"]  # 1 streaming client, then 8 at once, against serve.py
    for run, clients in (("one_client", 1), ("eight_clients", 8)):
        r = serve[run]
        assert r["clients"] == clients and r["replies"] >= clients and r["lost"] == 0, r
        assert r["tokens_per_s"] > 0 and len(r["ttft_ms"]) == r["whole"], r
    assert serve["batched_over_one_client"] > 0
    for needle in ("ms/iter", "cache batch1", "tok/s", "GFLOP/s", "8 clients batched / 1 client"):
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
    assert "time to 1.88" in result.stdout, result.stdout

