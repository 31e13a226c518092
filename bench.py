"""Measure the numbers sprout's speed claims rest on; print a table and write bench.json.

    python bench.py                                   # every section, a few minutes on 2 CPU cores
    python bench.py --only=sample,cpu                 # any of: train, sample, prepare, cpu, serve, tokenizer
    python bench.py --only=payoff                     # a BPE's payoff in training: minutes, apart
    python bench.py --only=recipe                     # time to quality against nanoGPT: minutes, apart
    python bench.py --config=config/train_shakespeare_char.py --batch_size=32   # another training config
    python bench.py --quick                           # tiny sizes, seconds: the test suite runs this

Sections:
  train    ms/iter, tokens/s and MFU of train.py's own training step (train.train_step) on a
           synthetic dataset, after warm-up, median of several iterations. Default: the CPU
           shakespeare_char recipe (block 64, batch 12, 4 layers, 4 heads, 128 wide, vocab 65).
  sample   decoding tokens/s of a 6-layer, 384-wide GPT-2-vocabulary model for 500 new tokens,
           with the KV cache (GPT.generate_stream, what sample.py runs) and without it (a full
           forward over the context for every token), batch 1 and 8, same weights and seed.
  prepare  tokens/s and peak memory of `prepare.py --input=...` on a ~10 MB corpus built from
           ../shared/data, beside the usual datasets.map + per-document encode + np.concatenate.
  tokenizer  learning a BPE through prepare.py's code against the `tokenizers` trainer on the file,
           time and peak memory on 10 and 40 MB corpora; then prepare.py's tokens/s with that BPE
           against GPT-2's (tiktoken), on the same text and processes.
  payoff   the CPU recipe's model on the TinyStories sample with a 4,096-token BPE and with GPT-2's
           vocabulary, each trained for the same wall time: training tokens/s and val bits per byte.
  cpu      the matmul peak that MFU on a CPU is measured against, and the memory bandwidth that
           bounds decoding (each new token reads every weight once).
  serve    serve.py under load: 1 streaming client, then 8 at once, on a 6-layer, 384-wide model:
           tokens/s in all and per client, time to first token, replies whole or lost; 8 clients
           batched against 1 client alone, and against 8 served one at a time (--max_batch=1).
  recipe   the README's CPU shakespeare_char run with its config's recipe and with nanoGPT's, side by
           side for 2000 iterations: wall time to val 1.88 over nanoGPT's 2000 iterations; val at 2000.
Every figure comes with the device, torch version and thread count (bench.json's "env").
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import asdict
from functools import lru_cache
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import torch

import configurator
from checkpoint import GPT2_META, save_checkpoint
from configurator import UserError, measured_matmul_flops, pick_device, pick_dtype
from loadtest import load_test, summary
from measure import (ROOT, SHARED_DATA, baseline_prepare, build_corpus, find_gpt2_files, learn_directly,
                     learn_through_prepare, measure_process, python_call, time_to_reach, train_side_by_side,
                     write_random_dataset)
from model import GPT, GPTConfig, sample_logits

# in this order: cpu's bandwidth bounds sampling
SECTIONS = ("cpu", "train", "sample", "prepare", "serve", "tokenizer", "payoff", "recipe")

BENCH_DEFAULTS = dict(
    only="train,sample,prepare,cpu,serve,tokenizer",  # comma-separated sections to run (payoff: apart)
    quick=False,  # tiny sizes everywhere: checks that the script runs, not how fast anything is
    out="bench.json",  # where the results go
    threads=0,  # torch threads; 0 = torch's default (one per core)
    warmup_iters=5,  # training steps run before timing
    timed_iters=20,  # training steps timed; the median is reported
    vocab_size=65,  # the synthetic training set's vocabulary: 65 like shakespeare_char, 50257 GPT-2
    new_tokens=500,  # tokens each decoding run generates
    corpus_mb=10.0,  # size of the prepare corpus
    num_proc=0,  # tokenizer processes for both ways of preparing it; 0 = one per core
    serve_seconds=20.0,  # how long the clients of each serve phase keep asking
    bpe_vocab_size=8192,  # the tokenizer section's BPE
    tokenizer_corpus_mb=(10.0, 40.0),  # the corpora it learns from (the first is also tokenized)
    payoff_vocab_size=4096,  # the payoff's BPE, against GPT-2's 50,257 tokens
    payoff_seconds=120.0,  # training time for each of the two models
    payoff_eval_iters=20,  # batches per evaluation (ten of them, spread over the time, not counted)
)
# The CPU shakespeare_char recipe from the README, on top of train.py's defaults.
TRAIN_RECIPE = dict(device="auto", dtype="auto", compile=False, block_size=64, batch_size=12, n_layer=4,
                    n_head=4, n_embd=128, dropout=0.0, gradient_accumulation_steps=1)
SAMPLE_MODEL = dict(block_size=1024, vocab_size=50257, n_layer=6, n_head=6, n_embd=384)
# --quick: one thread and one process, since with other work on the machine OpenMP threads and worker
# pools can take many times longer to start than the tiny work they do
QUICK = dict(warmup_iters=1, timed_iters=3, new_tokens=8, corpus_mb=0.2, threads=1, num_proc=1,
             serve_seconds=0.5, bpe_vocab_size=512, tokenizer_corpus_mb=(0.2,), payoff_vocab_size=512,
             payoff_seconds=0.5, payoff_eval_iters=1)
QUICK_SAMPLE_MODEL = dict(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)
QUICK_SERVE_MODEL = dict(block_size=64, vocab_size=95, n_layer=1, n_head=2, n_embd=32)  # printable ASCII
SERVE_TARGET = 3.0  # 8 streaming clients, batched, against 1: total tokens/s (issue 15)


# -----------------------------------------------------------------------------
# Training


def bench_train(cfg, device):
    """Time train.py's step on the configured model, reading batches from a synthetic dataset."""
    import train

    with tempfile.TemporaryDirectory() as tmp:
        write_random_dataset(tmp, cfg.vocab_size, n_tokens=max(100_000, 4 * cfg.block_size))
        tcfg = SimpleNamespace(**{k: getattr(cfg, k) for k in train.DEFAULTS} | dict(
            data_dir=tmp, out_dir=os.path.join(tmp, "out"), init_from="scratch", eval_only=False,
            wandb_log=False, device=device))
        with redirect_stdout(StringIO()):  # train.py's config printout
            rt = train.setup(tcfg)
            run = train.prepare_run(tcfg, rt)
        times = []
        for i in range(cfg.warmup_iters + cfg.timed_iters):
            starts = run.splits["train"].starts(run.batch_rng, (rt.accum, cfg.batch_size))  # (accum, B)
            t0 = time.perf_counter()
            train.train_step(run, starts, tcfg, rt, want_loss=True).item()  # .item() waits for the device
            if i >= cfg.warmup_iters:
                times.append(time.perf_counter() - t0)
        peak_mb = step_peak_memory_mb(lambda: train.train_step(run, starts, tcfg, rt, want_loss=True).item(),
                                      rt.device)
    dt = statistics.median(times)
    model = run.raw_model
    return {"step": "train.train_step", "ms_per_iter": dt * 1000, "tokens_per_s": run.tokens_per_iter / dt,
            "mfu": model.flops_per_token() * run.tokens_per_iter / dt / rt.peak_flops, "timed_iters": cfg.timed_iters,
            "warmup_iters": cfg.warmup_iters, "dtype": rt.dtype, "compile": rt.compile,
            "params": model.get_num_params(), "tokens_per_iter": run.tokens_per_iter,
            "step_peak_memory_mb": peak_mb,
            "model": {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                                                   "gradient_accumulation_steps", "dropout", "bias")}
            | {"vocab_size": model.config.vocab_size}, "variants": variant_settings(model.config)}


def step_peak_memory_mb(step, device):
    """Peak memory one call of step() allocates above what was held before it (activations, gradients,
    optimizer temporaries): CUDA's allocator counters, or on a CPU, which has none, the running total
    of the allocations and frees torch's profiler records. None on other devices."""
    if device.startswith("cuda"):
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return (torch.cuda.max_memory_allocated(device) - base) / 1e6
    if device != "cpu":
        return None
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        step()
    total = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        total += event.self_cpu_memory_usage  # + bytes allocated, - bytes freed, by this op alone
        peak = max(peak, total)
    return peak / 1e6


def variant_settings(config):
    """The model variants (model.py) that differ from GPT-2's defaults, e.g. {"pos_emb": "rope"}."""
    default = GPTConfig()
    keys = ("pos_emb", "mlp", "norm", "n_expert", "n_expert_active", "grad_checkpoint")
    return {k: getattr(config, k) for k in keys if getattr(config, k) != getattr(default, k)}


# -----------------------------------------------------------------------------
# Sampling


def bench_sample(cfg, device):
    """Decoding speed with and without the KV cache, batch 1 and 8, same weights and seed."""
    from engine import SAMPLING, ready_for_decoding

    torch.manual_seed(cfg.seed)
    shape = QUICK_SAMPLE_MODEL if cfg.quick else SAMPLE_MODEL
    model = GPT(GPTConfig(**shape))
    params = model.get_num_params()  # what one token reads: every weight once (of the positions, a row)
    weight_bytes = params * torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    model = ready_for_decoding(model, device, cfg.dtype)  # as sample.py runs it
    settings = {k: SAMPLING[k] for k in ("temperature", "top_k", "top_p")}
    runs = {}
    repeats = 1 if cfg.quick else 5  # cached runs take seconds: a median of five evens out a noisy machine
    for batch in (1, 8):
        for cache in (True, False):
            idx = torch.zeros(batch, 1, dtype=torch.long, device=device)  # a one-token prompt
            runs[f"{'cache' if cache else 'no_cache'}_batch{batch}"] = time_decoding(
                model, idx, cfg.new_tokens, cache, settings, cfg.seed, repeats if cache else 1)
    if device == "cpu" and cfg.dtype == "float32":  # what sample.py --dtype=float16 does instead
        torch.manual_seed(cfg.seed)  # the same weights, in half the bytes
        half = ready_for_decoding(GPT(GPTConfig(**shape)), device, "float16")
        idx = torch.zeros(1, 1, dtype=torch.long)
        runs["cache_batch1_float16"] = time_decoding(half, idx, cfg.new_tokens, True, settings, cfg.seed,
                                                     repeats)
    # Decoding one token reads every weight once (a batch shares the read), so the read bandwidth
    # bounds the speed: 120 MB of float32 weights (plus ~5 MB of cache) at the 33-40 GB/s a sum
    # read on the 2-core test machine is 277-334 tokens/s. Cached batch 1 ran at 150-175 in those
    # runs, 49-56% of the bound: the 77 MB output layer streams at ~35 GB/s, the blocks' 24 small
    # products at ~20, and attention over the cache, sampling and ~360 small operations take ~2 ms.
    bound = memory_bandwidth(device, cfg.quick) / weight_bytes
    return {"model": shape, "params": params, "new_tokens": cfg.new_tokens,
            "prompt_tokens": 1, "sampling": settings, **runs,
            "batch8_over_batch1": runs["cache_batch8"]["tokens_per_s"] / runs["cache_batch1"]["tokens_per_s"],
            "weight_mb": weight_bytes / 1e6, "memory_bound_tokens_per_s": bound,
            "cache_batch1_share_of_bound": runs["cache_batch1"]["tokens_per_s"] / bound}


def time_decoding(model, idx, n, cache, settings, seed, repeats):
    """Tokens/s (all rows together) of n new tokens; the median of `repeats` runs, each seeded alike."""
    decode = decode_with_cache if cache else decode_without_cache
    decode(model, idx, 2, **settings)  # warm-up: first-call allocations
    seconds = []
    for _ in range(repeats):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        decode(model, idx, n, **settings)
        if idx.is_cuda:
            torch.cuda.synchronize()  # the last tokens may still be in flight
        seconds.append(time.perf_counter() - t0)
    dt = statistics.median(seconds)
    return {"tokens_per_s": idx.size(0) * n / dt, "seconds": dt, "batch": idx.size(0), "runs_s": seconds}


def decode_with_cache(model, idx, n, temperature, top_k, top_p):
    """n new tokens through the KV cache: what sample.py does."""
    for _ in model.generate_stream(idx, n, temperature, top_k or None, top_p):
        pass


@torch.no_grad()
def decode_without_cache(model, idx, n, temperature, top_k, top_p):
    """n new tokens the slow way: every token runs the whole (cropped) context through the model."""
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])  # (B, 1, V)
        next_token = sample_logits(logits[:, -1], temperature, top_k or None, top_p)  # (B,)
        idx = torch.cat([idx, next_token[:, None]], dim=1)  # (B, T + 1)
    return idx


# -----------------------------------------------------------------------------
# CPU (or device) peaks


def bench_cpu(cfg, device):
    n = 256 if cfg.quick else 1024
    dtype = "float32"
    return {"matmul_gflops": measured_matmul_flops(device, dtype, n=n) / 1e9, "matmul_n": n,
            "matmul_dtype": dtype, "memory_gb_s": memory_bandwidth(device, cfg.quick) / 1e9}


@lru_cache(maxsize=None)
def memory_bandwidth(device, quick=False):
    """Bytes per second read by a sum over a tensor larger than the caches, best of several: the
    speed at which weights can stream in (decoding reads them, and writes next to nothing)."""
    data = torch.ones((8 if quick else 64) * 2**20, device=device)  # 32 or 256 MB of float32
    best = float("inf")
    for _ in range(3 if quick else 10):
        t0 = time.perf_counter()
        data.sum()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return data.numel() * data.element_size() / best


# -----------------------------------------------------------------------------
# prepare.py


def bench_prepare(cfg):
    """prepare.py against the usual datasets.map recipe, each as a subprocess, on the same corpus."""
    if not SHARED_DATA.is_dir():
        return {"skipped": f"no sample corpora at {SHARED_DATA}"}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(Path(tmp, "corpus.txt"), int(cfg.corpus_mb * 1e6))
        out_dir = Path(tmp, "data")
        num_proc = cfg.num_proc or os.cpu_count()
        ours = measure_process([sys.executable, "prepare.py", f"--input={corpus}", "--name=bench",
                                f"--out_dir={out_dir}", f"--num_proc={num_proc}"])
        meta = json.loads((out_dir / "bench" / "meta.json").read_text())
        ours["tokens"] = meta["train_tokens"] + meta["val_tokens"]
        baseline_out = Path(tmp, "baseline.bin")
        base = measure_process(python_call(baseline_prepare, str(corpus), str(baseline_out), num_proc),
                               env={"HF_DATASETS_CACHE": tmp})
        base["tokens"] = baseline_out.stat().st_size // 2
        corpus_mb = corpus.stat().st_size / 1e6
    for result in (ours, base):
        result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return {"corpus_mb": corpus_mb, "num_proc": num_proc, "prepare_py": ours, "datasets_map": base,
            "speedup": ours["tokens_per_s"] / base["tokens_per_s"]}


# -----------------------------------------------------------------------------
# A BPE of one's own: learning it, tokenizing with it, and what it buys in training


def bench_tokenizer(cfg):
    """Learning a BPE through prepare.py's code against the trainer alone (time, peak memory), on
    growing corpora; then prepare.py with that BPE against prepare.py with GPT-2's, same text."""
    if not SHARED_DATA.is_dir():
        return {"skipped": f"no sample corpora at {SHARED_DATA}"}
    num_proc, learn, tokenize = cfg.num_proc or os.cpu_count(), {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mb in cfg.tokenizer_corpus_mb:  # the two ways in turn, on each corpus
            corpus, vocab = build_corpus(Path(tmp, f"{mb}.txt"), int(mb * 1e6)), Path(tmp, f"{mb}.json")
            ours = measure_process(learn_through_prepare(corpus, cfg.bpe_vocab_size, vocab))
            alone = measure_process(python_call(learn_directly, str(corpus), cfg.bpe_vocab_size))
            learn[f"{mb:g}"] = {"prepare_py": ours, "tokenizers": alone,
                                "time_ratio": ours["seconds"] / alone["seconds"]}
        first = cfg.tokenizer_corpus_mb[0]
        corpus = Path(tmp, f"{first}.txt")
        for name, tokenizer in (("gpt2", "gpt2"), ("bpe", Path(tmp, f"{first}.json"))):
            run = measure_process([sys.executable, "prepare.py", f"--input={corpus}", f"--out_dir={tmp}",
                                   f"--tokenizer={tokenizer}", f"--name={name}", f"--num_proc={num_proc}"])
            meta = json.loads(Path(tmp, name, "meta.json").read_text())
            tokens = meta["train_tokens"] + meta["val_tokens"]
            tokenize[name] = run | {"tokens_per_s": tokens / run["seconds"],
                                    "mb_per_s": corpus.stat().st_size / 1e6 / run["seconds"]}
    return {"vocab_size": cfg.bpe_vocab_size, "learn": learn, "num_proc": num_proc, "tokenize": tokenize,
            "tokens_per_s_ratio": tokenize["bpe"]["tokens_per_s"] / tokenize["gpt2"]["tokens_per_s"]}


def bench_payoff(cfg, device):
    """The CPU recipe's model on the TinyStories sample, with a BPE of payoff_vocab_size tokens and
    with GPT-2's vocabulary: each trained for payoff_seconds, then training tokens/s and val bits per
    byte (ten evaluations spread over the time: the last and the best)."""
    sample = SHARED_DATA / "tinystories_sample.txt"
    if not sample.is_file():
        return {"skipped": f"no {sample}"}
    find_gpt2_files(os.environ)  # train.py's bits per byte reads GPT-2's BPE files in this process
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in (("bpe", ["--tokenizer=bpe", f"--vocab_size={cfg.payoff_vocab_size}"]),
                            ("gpt2", ["--tokenizer=gpt2"])):
            measure_process([sys.executable, "prepare.py", f"--input={sample}", f"--out_dir={tmp}",
                             f"--name={name}", "--num_proc=1", *flags])
            runs[name] = train_for(cfg, device, Path(tmp, name))
    return {"seconds_each": cfg.payoff_seconds, **runs,
            "tokens_per_s_ratio": runs["bpe"]["tokens_per_s"] / runs["gpt2"]["tokens_per_s"]}


def train_for(cfg, device, data_dir):
    """train.py's step on data_dir for cfg.payoff_seconds (constant learning rate 1e-3)."""
    import train

    tcfg = SimpleNamespace(**{k: getattr(cfg, k) for k in train.DEFAULTS} | dict(
        data_dir=str(data_dir), out_dir=str(data_dir / "out"), init_from="scratch", eval_only=False,
        wandb_log=False, device=device, learning_rate=1e-3, decay_lr=False, eval_iters=cfg.payoff_eval_iters))
    with redirect_stdout(StringIO()):
        rt = train.setup(tcfg)
        run = train.prepare_run(tcfg, rt)
    trained, iters, curve = 0.0, 0, []
    for check in range(1, 11):
        while trained < cfg.payoff_seconds * check / 10:
            starts = run.splits["train"].starts(run.batch_rng, (rt.accum, tcfg.batch_size))  # (accum, B)
            t0 = time.perf_counter()
            train.train_step(run, starts, tcfg, rt, want_loss=True).item()  # .item() waits for the device
            trained, iters = trained + time.perf_counter() - t0, iters + 1
        val = {"val": run.splits["val"]}
        curve.append(train.evaluate(run.eval_model, val, tcfg, rt, run.bytes_of)[1]["val"])
    return {"params": run.raw_model.get_num_params(), "vocab_size": run.raw_model.config.vocab_size,
            "iters": iters, "tokens_per_s": iters * run.tokens_per_iter / trained, "val_bpb": curve[-1],
            "best_val_bpb": min(curve), "val_bpb_curve": curve}


# -----------------------------------------------------------------------------
# serve.py under load


def bench_serve(cfg):
    """serve.py, run as users run it, with the sample section's random model (GPT-2's vocabulary;
    --quick: a tiny one with characters): 1 streaming client, 8 at once, and in full runs 8 against
    a server with --max_batch=1 (one request at a time), in rounds taking turns as the machine drifts."""
    shape = QUICK_SERVE_MODEL if cfg.quick else SAMPLE_MODEL
    phases = [(8, "one_client", 1), (8, "eight_clients", 8)] + [(1, "one_at_a_time", 8)] * (not cfg.quick)
    rounds, max_tokens = (1, 16) if cfg.quick else (4, 128)
    env = find_gpt2_files({**os.environ, **({"OMP_NUM_THREADS": str(cfg.threads)} if cfg.threads else {})})
    runs = {name: [] for _, name, _ in phases}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig(**shape))
        meta = {"tokenizer": "char", "chars": [chr(i) for i in range(32, 127)]} if cfg.quick else GPT2_META
        save_checkpoint(Path(tmp, "ckpt.pt"), {"model_args": asdict(model.config), "meta": meta,
                                               "model": model.state_dict()})
        command = [sys.executable, "serve.py", f"--out_dir={tmp}", "--port=0", "--device=cpu"]
        servers = {batch: subprocess.Popen(command + [f"--max_batch={batch}"], cwd=ROOT, env=env, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                   for batch in {batch for batch, _, _ in phases}}  # an idle one waits, using no CPU
        try:
            urls = {batch: server.stdout.readline().split(" at ")[1].split("/ ")[0]
                    for batch, server in servers.items()}
            for _ in range(rounds):
                for batch, name, clients in phases:
                    runs[name].append(load_test(urls[batch], clients, cfg.serve_seconds / rounds, max_tokens))
        finally:
            for server in servers.values():
                server.terminate()
                server.wait()
    results = {name: summary(parts) for name, parts in runs.items()}
    ratio = results["eight_clients"]["tokens_per_s"] / results["one_client"]["tokens_per_s"]
    return {"model": shape, "seconds": cfg.serve_seconds, "rounds": rounds, **results,
            "batched_over_one_client": ratio}


# -----------------------------------------------------------------------------
# Time to quality: the shakespeare_char recipe against nanoGPT's

# The README's CPU first run; evaluations every 50 iterations (the README's: 250) place the time to
# the target finely, and both runs pay for them alike
RECIPE_RUN = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--block_size=64",
              "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
              "--lr_decay_iters=2000", "--dropout=0.0", "--eval_iters=20", "--eval_interval=50"]
NANOGPT = ["config/gpt2_block.py", "--bias=False", "--beta2=0.99", "--weight_decay=0.1", "--grad_clip=1.0",
           "--learning_rate=1e-3", "--min_lr=1e-4", "--warmup_iters=100"]  # AdamW on GPT-2's block
RECIPE_QUICK = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--max_iters=20",
                "--lr_decay_iters=20", "--eval_interval=10", "--eval_iters=2"]  # a toy on random tokens
RECIPE_TARGET = 1.88
RECIPE_GOALS = {"time_to_target_over_nanogpt": 0.4, "final_val_loss": 1.60}  # issue 14


def bench_recipe(cfg):
    """The config's recipe and nanoGPT's for the README's run, side by side on half the cores each."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(ROOT, "data", "shakespeare_char")
        if cfg.quick:
            data = Path(tmp, "data")
            data.mkdir()
            write_random_dataset(data, 65, n_tokens=10_000)
        elif not (data / "meta.json").is_file():
            return {"skipped": "no data/shakespeare_char: run python prepare.py shakespeare_char"}
        flags = RECIPE_RUN + RECIPE_QUICK * cfg.quick + [f"--data_dir={data}", f"--seed={cfg.seed}"]
        threads = max(1, (os.cpu_count() or 2) // 2)
        logs = train_side_by_side({"recipe": flags, "nanogpt": flags + NANOGPT}, tmp, threads)
    runs = {}
    for name, rows in logs.items():
        evals = [(r["iter"], r["time_s"], r["val_loss"]) for r in rows if "val_loss" in r]
        runs[name] = {"evals": evals, "final_val_loss": evals[-1][2], "seconds": evals[-1][1],
                      "time_to_target_s": time_to_reach(evals, RECIPE_TARGET)}
    reached, base_s = runs["recipe"]["time_to_target_s"], runs["nanogpt"]["seconds"]
    return {**runs, "target": RECIPE_TARGET, "goals": RECIPE_GOALS, "threads_each": threads,
            "time_to_target_over_nanogpt": reached / base_s if reached is not None else None,
            "recipe_val_at_nanogpt_seconds": [v for _, t, v in runs["recipe"]["evals"] if t <= base_s][-1]}


# -----------------------------------------------------------------------------
# Settings, table, main


def settings(argv):
    """Bench options plus train.py's settings (the recipe as defaults), from config files and flags."""
    from train import DEFAULTS as TRAIN_DEFAULTS

    defaults = {**TRAIN_DEFAULTS, **TRAIN_RECIPE, **BENCH_DEFAULTS}
    # --config=FILE is a config file, as train.py takes them; a bare --quick means --quick=True
    argv = [a.removeprefix("--config=") + ("=True" if a == "--quick" else "") for a in argv]
    cfg = configurator.configure(defaults, argv)
    if cfg["quick"]:
        cfg |= {k: v for k, v in QUICK.items() if cfg[k] == defaults[k]}
        cfg |= {k: min(cfg[k], 2) for k in ("n_layer", "n_head")} | {"n_embd": 32, "block_size": 32}
    only = [s.strip() for s in cfg["only"].split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown or not only:
        raise UserError(f"--only={cfg['only']}: choose among {', '.join(SECTIONS)}")
    return SimpleNamespace(**cfg), only


def environment(device):
    """What every figure depends on: the device, torch and the threads it runs."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_name()
    return {"device": device, "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cores": os.cpu_count(), "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def table(results):
    """The results as aligned rows: section, figure, value."""
    rows = []
    for name, rows_of in (("cpu", _cpu_rows), ("train", _train_rows), ("sample", _sample_rows),
                          ("prepare", _prepare_rows), ("serve", _serve_rows), ("tokenizer", _tokenizer_rows),
                          ("payoff", _payoff_rows), ("recipe", _recipe_rows)):
        if name in results:
            rows += [(name, figure, value) for figure, value in rows_of(results[name])]
    width = max(len(figure) for _, figure, _ in rows)
    return "\n".join(f"{name:<9} {figure:<{width}}  {value}" for name, figure, value in rows)


def _cpu_rows(c):
    return [(f"matmul peak ({c['matmul_dtype']}, n={c['matmul_n']})", f"{c['matmul_gflops']:.1f} GFLOP/s"),
            ("memory bandwidth (read)", f"{c['memory_gb_s']:.1f} GB/s")]


def _train_rows(t):
    m = t["model"]
    shape = (f"{m['n_layer']}L {m['n_head']}H {m['n_embd']}C, block {m['block_size']}, "
             f"batch {m['batch_size']}x{m['gradient_accumulation_steps']}")
    rows = [(shape, f"{t['ms_per_iter']:.1f} ms/iter (median of {t['timed_iters']})"),
            ("tokens/s", f"{t['tokens_per_s']:,.0f}"), ("MFU", f"{t['mfu'] * 100:.1f}%")]
    if t["variants"]:
        rows.append(("model variants", " ".join(f"{k}={v}" for k, v in t["variants"].items())))
    if t["step_peak_memory_mb"] is not None:
        rows.append(("peak memory of one step", f"{t['step_peak_memory_mb']:.0f} MB"))
    return rows


def _sample_rows(s):
    rows = [(f"{key.replace('_', ' ')}, {s['new_tokens']} tokens", f"{s[key]['tokens_per_s']:.1f} tok/s")
            for key in ("cache_batch1", "no_cache_batch1", "cache_batch8", "no_cache_batch8",
                        "cache_batch1_float16") if key in s]
    return rows + [("memory-bound limit, batch 1", f"{s['memory_bound_tokens_per_s']:.1f} tok/s "
                    f"(cached batch 1 reaches {s['cache_batch1_share_of_bound'] * 100:.0f}%)"),
                   ("batch 8 / batch 1 (cached)", f"{s['batch8_over_batch1']:.2f}x")]


def _prepare_rows(p):
    if "skipped" in p:
        return [("skipped", p["skipped"])]
    rows = []
    for key in ("prepare_py", "datasets_map"):
        r = p[key]
        rows += [(f"{key} tokens/s ({p['corpus_mb']:.1f} MB)", f"{r['tokens_per_s']:,.0f}"),
                 (f"{key} peak memory (largest RSS / all PSS)",
                  f"{r['peak_rss_mb']:.0f} / {r['peak_pss_total_mb']:.0f} MB")]
    return rows + [("prepare.py speed-up", f"{p['speedup']:.1f}x")]


def _serve_rows(s):
    rows = [(f"{what}: tok/s in all (median per client), TTFT median/max",
             f"{r['tokens_per_s']:.0f} ({statistics.median(r['client_tokens_per_s']):.0f}), "
             f"{statistics.median(r['ttft_ms'] or [0]):.0f}/{max(r['ttft_ms'] or [0]):.0f} ms, "
             f"{r['whole']}/{r['replies']} whole")
            for key, what in (("one_client", "1 client"), ("eight_clients", "8 clients, batched"),
                              ("one_at_a_time", "8 clients, --max_batch=1")) if (r := s.get(key))]
    ratio = s["batched_over_one_client"]
    return rows + [(f"8 clients batched / 1 client (target >= {SERVE_TARGET:g}x)", f"{ratio:.2f}x")]


def _tokenizer_rows(t):
    if "skipped" in t:
        return [("skipped", t["skipped"])]
    rows = []
    for mb, r in t["learn"].items():
        ours, alone = r["prepare_py"], r["tokenizers"]
        rows.append((f"learn {t['vocab_size']:,} BPE, {mb} MB: prepare.py / trainer alone",
                     f"{r['time_ratio']:.2f}x ({ours['seconds']:.1f} / {alone['seconds']:.1f} s), peak "
                     f"{ours['peak_rss_mb']:.0f} / {alone['peak_rss_mb']:.0f} MB"))
    bpe, gpt2 = t["tokenize"]["bpe"], t["tokenize"]["gpt2"]
    speeds = f"{bpe['tokens_per_s']:,.0f} / {gpt2['tokens_per_s']:,.0f} tok/s"
    rates = f"{bpe['mb_per_s']:.1f} / {gpt2['mb_per_s']:.1f} MB/s"
    return rows + [(f"prepare.py tokens/s, BPE / GPT-2 ({t['num_proc']} processes)",
                    f"{t['tokens_per_s_ratio']:.2f}x ({speeds}; {rates})")]


def _payoff_rows(p):
    if "skipped" in p:
        return [("skipped", p["skipped"])]
    rows = [(f"{name}, {r['vocab_size']:,} tokens, {r['params'] / 1e6:.2f}M params, {p['seconds_each']:.0f} s",
             f"{r['tokens_per_s']:,.0f} tok/s, val {r['val_bpb']:.3f} bits/byte (best {r['best_val_bpb']:.3f})")
            for name, r in (("BPE", p["bpe"]), ("GPT-2", p["gpt2"]))]
    return rows + [("training tokens/s, BPE / GPT-2", f"{p['tokens_per_s_ratio']:.1f}x")]


def _recipe_rows(r):
    if "skipped" in r:
        return [("skipped", r["skipped"])]
    rows = [(f"{name}: val at {r[name]['evals'][-1][0]} iterations, time to {r['target']}",
             f"{r[name]['final_val_loss']:.3f} in {r[name]['seconds']:.0f} s, " + ("not reached" if reach is None
                                                                                 else f"{reach:.0f} s"))
            for name in ("recipe", "nanogpt") for reach in [r[name]["time_to_target_s"]]]
    ratio, goals = r["time_to_target_over_nanogpt"], r["goals"]
    return rows + [(f"time to {r['target']} / nanogpt's whole run (goal <= {goals['time_to_target_over_nanogpt']})",
                    "-" if ratio is None else f"{ratio:.2f}x"),
                   ("recipe's val when nanogpt ended", f"{r['recipe_val_at_nanogpt_seconds']:.3f}")]


def main():
    cfg, only = settings(sys.argv[1:])
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    cfg.dtype = pick_dtype(device, cfg.dtype)
    results = {"env": environment(device)}
    env = results["env"]
    print(f"bench: {env['device']} ({env['device_name']}), torch {env['torch']}, threads={env['threads']}"
          + (" [quick: tiny sizes, not a measurement]" if cfg.quick else ""))
    runners = {"cpu": lambda: bench_cpu(cfg, device), "train": lambda: bench_train(cfg, device),
               "sample": lambda: bench_sample(cfg, device), "prepare": lambda: bench_prepare(cfg),
               "serve": lambda: bench_serve(cfg), "tokenizer": lambda: bench_tokenizer(cfg),
               "payoff": lambda: bench_payoff(cfg, device), "recipe": lambda: bench_recipe(cfg)}
    for name in SECTIONS:
        if name in only:
            t0 = time.perf_counter()
            results[name] = runners[name]()
            results[name]["elapsed_s"] = time.perf_counter() - t0
    print(table(results))
    Path(cfg.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    configurator.run(main)
