"""Tests of bench.py: `python bench.py --quick` runs every section at tiny sizes and writes them all."""
import importlib.util
import json

import torch

from conftest import GPT2_FILES, SHARED, assert_one_line_error, may_use_gpt2_files, run_script


@may_use_gpt2_files  # its prepare section tokenizes with GPT-2's BPE, and skips without the files
def test_bench_quick_runs_and_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    sections = "cpu,train,sample,prepare,serve,tokenizer,payoff"  # payoff is not a default section
    result = run_script("bench.py", "--quick", f"--out={out}", f"--only={sections}", "--batch_size=4")  # train.py's
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert {"device", "torch", "threads"} <= set(data["env"]), data["env"]
    assert data["env"]["torch"] == torch.__version__
    train = data["train"]
    assert train["command"] == "train.py --batch_size=4" and train["ms_per_iter"] > 0, train
    assert train["tokens_per_iter"] == 4 * 32, "--quick's block of 32 and the flag's batch of 4 reach train.py"
    assert 0 < train["mfu"] < 1 and train["peak_memory_mb"] > 0 and train["timed_iters"] == 3, train
    runs = ["cache_batch1", "no_cache_batch1", "cache_batch8", "no_cache_batch8", "cache_batch1_past_block"]
    for run in runs + ["hf_generate_batch1"] * (importlib.util.find_spec("transformers") is not None):
        assert data["sample"][run]["tokens_per_s"] > 0, data["sample"]
    assert data["sample"]["ratios"]["past_block_over_within"] > 0, data["sample"]
    assert data["sample"]["memory_bound_tokens_per_s"] > 0 and data["cpu"]["matmul_gflops"] > 0
    # the bound comes from the faster of the two bandwidth readings that bracket the timed decodings
    reads = data["sample"]["memory_gb_s_before_after"]
    assert len(reads) == 2 and min(reads) > 0, reads
    bound = max(reads) * 1e9 / (data["sample"]["weight_mb"] * 1e6)
    assert abs(data["sample"]["memory_bound_tokens_per_s"] - bound) < 1e-6 * bound, (bound, data["sample"])
    # decoding reads the output layer (50,257 x 32) in float16 (decoding.ScreenedOutput): 2 bytes less each
    assert abs(data["sample"]["weight_mb"] - data["sample"]["read_mb"] - 50257 * 32 * 2 / 1e6) < 1e-9
    if "skipped" in data["prepare"]:  # only for want of the sample corpora or GPT-2's BPE files
        assert not ((SHARED / "data").is_dir() and GPT2_FILES), data["prepare"]
    else:
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


def test_a_mistyped_train_setting_is_train_pys_one_line_error(tmp_path):
    result = run_script("bench.py", "--quick", "--only=train", "--n_layr=2", f"--out={tmp_path / 'b.json'}")
    assert_one_line_error(result, "train.py failed: unknown option --n_layr; did you mean --n_layer")
    result = run_script("bench.py", "--only=sample", "--n_layer=2")
    assert_one_line_error(result, "--n_layer=2 is not a bench option", "the train and payoff sections")


def test_bench_recipe_quick_runs_both_recipes_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench.py", "--quick", "--only=recipe", f"--out={out}")
    assert result.returncode == 0, result.stderr
    r = json.loads(out.read_text())["recipe"]
    for name in ("recipe", "nanogpt"):  # the toy's 20 iterations, evaluated at 0, 10 and 20
        assert r[name]["last_iter"] == 20 and r[name]["last_time_s"] > 0 and r[name]["how"] == "finished", r
    assert r["recipe"]["last_val"] != r["nanogpt"]["last_val"], "two different recipes"
    assert "time to 1.88" in result.stdout, result.stdout
