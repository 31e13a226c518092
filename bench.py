"""Measure the numbers sprout's speed claims rest on; print a table and write bench.json.

    python bench.py                                   # every section, a few minutes on 2 CPU cores
    python bench.py --only=sample,cpu                 # any of: train, sample, prepare, cpu, serve, gpu
    python bench.py --config=config/train_shakespeare_char.py --batch_size=32   # another training config
    python bench.py --quick                           # tiny sizes, seconds: the test suite runs this
    python bench.py --only=gpu                        # the GPU check, minutes on a CUDA machine (below)

Sections:
  train    ms/iter, tokens/s, MFU and peak memory of `python train.py` as users run it, on a
           synthetic dataset: the medians of what its log.jsonl says over the timed iterations after
           warm-up. Default: the CPU shakespeare_char recipe (block 64, batch 12, 4 layers, 4 heads,
           128 wide, vocab 65); config files (--config=FILE) and train.py's --key=value settings
           are handed on to train.py.
  sample   decoding tokens/s of a 6-layer, 384-wide GPT-2-vocabulary model for 500 new tokens,
           with the KV cache (GPT.generate_stream, what sample.py runs) and without it (a full
           forward over the context for every token), batch 1 and 8, same weights and seed.
  prepare  tokens/s and peak memory of `prepare.py --input=...` on a ~10 MB corpus built from
           ../shared/data, beside the usual datasets.map + per-document encode + np.concatenate.
  cpu      the matmul peak that MFU on a CPU is measured against, and the memory bandwidth that
           bounds decoding (each new token reads every weight once).
  serve    serve.py under load: 1 streaming client, then 8 at once, on a 6-layer, 384-wide model:
           tokens/s in all and per client, time to first token, replies whole or lost; 8 clients
           batched against 1 client alone, and against 8 served one at a time (--max_batch=1).
  gpu      not run by default: GPT-2 124M training MFU, GPU decoding, and the shakespeare_char GPU
           recipe's time to val 1.47 with AdamW and with Muon (see "The GPU check" below).
Every figure comes with the device, torch version and thread count (bench.json's "env").
"""
import inspect
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

import configurator
from checkpoint import GPT2_META, save_checkpoint
from configurator import UserError, device_peak_flops, measured_matmul_flops, pick_device, pick_dtype
from loadtest import load_test, summary
from measure import (ROOT, SHARED, environment, first_at_target, measure_process, memory_bandwidth, time_decoding,
                     time_to_target, timed, train_speed, watch_training, write_random_dataset)
from model import GPT, GPTConfig

SHARED_DATA = SHARED / "data"
# in this order: cpu's bandwidth bounds sampling
SECTIONS = ("cpu", "train", "sample", "prepare", "serve", "gpu")

BENCH_DEFAULTS = dict(
    only="train,sample,prepare,cpu,serve",  # comma-separated sections to run
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
    device="auto",  # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...
    dtype="auto",  # 'auto' (bfloat16 or float16 on CUDA, else float32), 'float32', ...
    seed=1337,
    shakespeare_dir="data/shakespeare_char",  # the gpu section's recipe data: python prepare.py shakespeare_char
    gpu_budget_s=480.0,  # the gpu section's parts are capped at shares of this (GPU_SHARES)
)
# The CPU shakespeare_char recipe from the README, on top of train.py's defaults (a config file that
# train.py reads first: the user's config files and flags come after it and win).
TRAIN_RECIPE = dict(compile=False, block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                    gradient_accumulation_steps=1)
QUICK_MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32"]  # train.py flags for --quick
SAMPLE_MODEL = dict(block_size=1024, vocab_size=50257, n_layer=6, n_head=6, n_embd=384)
# --quick: one thread and one process, since with other work on the machine OpenMP threads and worker
# pools can take many times longer to start than the tiny work they do
QUICK = dict(warmup_iters=1, timed_iters=3, new_tokens=8, corpus_mb=0.2, threads=1, num_proc=1,
             serve_seconds=0.5)
QUICK_SAMPLE_MODEL = dict(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)
QUICK_SERVE_MODEL = dict(block_size=64, vocab_size=95, n_layer=1, n_head=2, n_embd=32)  # printable ASCII
SERVE_TARGET = 3.0  # 8 streaming clients, batched, against 1: total tokens/s (issue 15)


# -----------------------------------------------------------------------------
# Training


def bench_train(cfg, device):
    """`python train.py` on the configured model and a synthetic dataset, as users run it."""
    with tempfile.TemporaryDirectory() as tmp:
        write_random_dataset(tmp, cfg.vocab_size, n_tokens=1_000_000)
        recipe = Path(tmp, "recipe.py")
        recipe.write_text("".join(f"{k} = {v!r}\n" for k, v in TRAIN_RECIPE.items()))
        args = [recipe, *cfg.train_args, *(QUICK_MODEL if cfg.quick else []), f"--device={device}",
                f"--dtype={cfg.dtype}", f"--data_dir={tmp}"]
        result = train_speed(args, Path(tmp, "out"), cfg.warmup_iters, cfg.timed_iters, env=train_env(cfg))
    flags = [a.removeprefix("--").partition("=") for a in cfg.train_args + (QUICK_MODEL if cfg.quick else [])]
    configs = [a for a in cfg.train_args if not a.startswith("--")]  # their settings are train.py's to read
    settings = ({} if configs else TRAIN_RECIPE) | {key: value or "True" for key, _, value in flags if key}
    return {"command": " ".join(["train.py", *cfg.train_args]), "settings": settings, "dtype": cfg.dtype,
            **result}


def train_env(cfg):
    """train.py subprocesses run on the threads bench was given, if it was given a number."""
    return {"OMP_NUM_THREADS": str(cfg.threads)} if cfg.threads > 0 else {}


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


# -----------------------------------------------------------------------------
# CPU (or device) peaks


def bench_cpu(cfg, device):
    n = 256 if cfg.quick else 1024
    dtype = "float32"
    return {"matmul_gflops": measured_matmul_flops(device, dtype, n=n) / 1e9, "matmul_n": n,
            "matmul_dtype": dtype, "memory_gb_s": memory_bandwidth(device, cfg.quick) / 1e9}


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
        # the function's own source, run in a fresh interpreter that never imports torch (as bench does)
        call = f"baseline_prepare({str(corpus)!r}, {str(baseline_out)!r}, {num_proc})"
        code = f"{inspect.getsource(baseline_prepare)}\n{call}"
        base = measure_process([sys.executable, "-c", code], env={"HF_DATASETS_CACHE": tmp})
        base["tokens"] = baseline_out.stat().st_size // 2
        corpus_mb = corpus.stat().st_size / 1e6
    for result in (ours, base):
        result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return {"corpus_mb": corpus_mb, "num_proc": num_proc, "prepare_py": ours, "datasets_map": base,
            "speedup": ours["tokens_per_s"] / base["tokens_per_s"]}


def build_corpus(path, size):
    """Copies of the shared sample corpora, concatenated to about `size` bytes."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(SHARED_DATA.glob("*.txt"))]
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        for text in itertools.cycle(texts):
            if written >= size:
                return path
            text = text[:size - written] + "\n\n"
            f.write(text)
            written += len(text.encode("utf-8"))


def baseline_prepare(corpus, out_path, num_proc):
    """The usual recipe, for comparison: a datasets.Dataset of documents, a per-document
    tiktoken encode in datasets.map, and one np.concatenate of everything in memory."""
    from pathlib import Path

    import datasets
    import numpy as np
    import tiktoken

    datasets.disable_progress_bars()
    enc = tiktoken.get_encoding("gpt2")
    docs = [d for d in Path(corpus).read_text(encoding="utf-8").split("\n\n") if d.strip()]
    ds = datasets.Dataset.from_dict({"text": docs})
    tokenized = ds.map(lambda doc: {"ids": enc.encode_ordinary(doc["text"]) + [enc.eot_token]},
                       remove_columns=["text"], num_proc=num_proc if num_proc > 1 else None)
    np.concatenate(tokenized["ids"]).astype(np.uint16).tofile(out_path)


# -----------------------------------------------------------------------------
# serve.py under load


def bench_serve(cfg):
    """serve.py, run as users run it, with the sample section's random model (GPT-2's vocabulary;
    --quick: a tiny one with characters): 1 streaming client, 8 at once, and in full runs 8 against
    a server with --max_batch=1 (one request at a time), in rounds taking turns as the machine drifts."""
    shape = QUICK_SERVE_MODEL if cfg.quick else SAMPLE_MODEL
    phases = [(8, "one_client", 1), (8, "eight_clients", 8)] + [(1, "one_at_a_time", 8)] * (not cfg.quick)
    rounds, max_tokens = (1, 16) if cfg.quick else (4, 128)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(cfg.threads)} if cfg.threads else {})}
    if "TIKTOKEN_CACHE_DIR" not in env and (SHARED / "tiktoken").is_dir():  # offline: GPT-2's BPE files
        env["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
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
# The GPU check: `python bench.py --only=gpu` on a CUDA machine, 5-8 minutes on an H200. The parts run
# in this order (by importance), each capped at its share of --gpu_budget_s (GPU_SHARES) and saved to
# bench.json as soon as it ends; one that fails records its error and the next one runs. `--quick`
# runs every part at toy sizes on any device in seconds, which keeps it alive in the test suite.
#   mfu     GPT-2 124M training as `python train.py config/train_gpt2.py` runs on one GPU (12 layers,
#           12 heads, 768 wide, block 1024, GPT-2's 50257 tokens; bfloat16, torch.compile, fused
#           AdamW), micro-batch 32 x 1024, random tokens: ms/iter, tokens/s and MFU (medians of 5 log
#           rows of 10 iterations each, after 21 iterations of warm-up and compilation), against the
#           datasheet peak (configurator.GPU_PEAK_FLOPS) and against an 8192^3 bfloat16 matmul timed here.
#   recipe  config/train_shakespeare_char.py as it stands (6 layers, 384 wide, block 256, batch 64,
#           dropout 0.2, 5000 iterations, compiled) on --shakespeare_dir, with --optimizer=adamw, then
#           =muon; each run is stopped at its first evaluation with val <= 1.47: its wall time (time_s
#           in train.py's log, compilation included) and iteration; else the best val and its iteration.
#   sample  decoding tokens/s with the KV cache, as sample.py runs it, batch 1 and 8: the sample
#           section's 6-layer, 384-wide model and GPT-2 124M's shape, random weights.
#   vocab   the output layer and its loss, forward and backward, compiled, at GPT-2's 50257 tokens and
#           padded to 50304 (a multiple of 64): what padding the vocabulary would save per step.

GPU_SHARES = dict(mfu=0.29, adamw=0.32, muon=0.22, sample=0.05)  # of gpu_budget_s; the rest: vocab, start-up
GPU_VAL_TARGET = 1.47  # nanoGPT's shakespeare_char reached 1.4697 on one GPU in 5000 iterations
GPT2_RUN = ["config/train_gpt2.py", "--batch_size=32", "--gradient_accumulation_steps=1", "--compile=True",
            "--dtype=bfloat16", "--log_interval=10"]
GPU_QUICK = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4", "--compile=False",
             "--dtype=float32", "--max_iters=20", "--eval_interval=10", "--eval_iters=2"]


def bench_gpu(cfg, device, save):
    """The GPU check's parts in turn; save(partial results) after each."""
    if not device.startswith("cuda") and not cfg.quick:
        raise UserError("the gpu section needs a CUDA GPU; --quick runs it at toy sizes here")
    results = {"budget_s": cfg.gpu_budget_s, "val_target": GPU_VAL_TARGET}
    parts = {"mfu": gpu_mfu, "recipe": gpu_recipe, "sample": gpu_sample, "vocab": gpu_vocab}  # by importance
    with tempfile.TemporaryDirectory() as tmp:
        for name, part in parts.items():
            print(f"gpu {name}: running", flush=True)
            t0 = time.perf_counter()
            try:
                results[name] = part(cfg, device, Path(tmp))
            except Exception as e:  # a one-shot check on a lent machine: keep what the others measure
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            results[name]["elapsed_s"] = time.perf_counter() - t0
            save(results)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()  # what this part held stays out of the next one's way
            print("\n".join(f"gpu {name}: {f}: {v}" for f, v in _gpu_rows({name: results[name]})), flush=True)
    return results


def gpu_mfu(cfg, device, tmp):
    data = tmp / "gpt2-data"
    data.mkdir()
    write_random_dataset(data, 50257, n_tokens=10_000 if cfg.quick else 2_000_000)
    dtype = "float32" if cfg.quick else "bfloat16"
    measured = measured_matmul_flops(device, dtype, n=256 if cfg.quick else 8192)
    args = [*GPT2_RUN, *(GPU_QUICK if cfg.quick else []), f"--device={device}", f"--data_dir={data}"]
    rows = dict(warmup_rows=1, timed_rows=3, log_interval=1) if cfg.quick else \
        dict(warmup_rows=3, timed_rows=5, log_interval=10)
    run = train_speed(args, tmp / "gpt2", **rows, timeout_s=GPU_SHARES["mfu"] * cfg.gpu_budget_s,
                      env=train_env(cfg))
    peak = device_peak_flops(device, dtype)  # what train.py's MFU divides by
    return {**run, "dtype": dtype, "train_py_peak_tflops": peak / 1e12, "measured_matmul_tflops": measured / 1e12,
            "mfu_of_measured_peak": run["mfu"] * peak / measured}


def gpu_vocab(cfg, device, tmp):
    rows, width = (64, 32) if cfg.quick else (32 * 1024, 768)
    dtype = torch.float32 if cfg.quick else torch.bfloat16
    # compiled as in train.py (whose shape padding may pad the product itself), a graph per vocabulary
    # size (not one for any size: dynamic=False); --quick: eager
    loss_of = (lambda f: f) if cfg.quick else partial(torch.compile, dynamic=False)
    ms = {}
    for vocab in (50257, 50304):
        x = torch.randn(rows, width, device=device, dtype=dtype, requires_grad=True)  # (B*T, C)
        w = torch.randn(vocab, width, device=device, dtype=dtype, requires_grad=True)  # (V, C)
        y = torch.randint(50257, (rows,), device=device)  # (B*T,): padded ids are never targets
        # the loss in float32, as autocast computes train.py's
        loss = loss_of(lambda x, w, y: torch.nn.functional.cross_entropy((x @ w.T).float(), y))

        def step():
            loss(x, w, y).backward()
        ms[vocab] = 1000 * min(timed(step, device) for _ in range(3 if cfg.quick else 20))
    return {"rows": rows, "ms_50257": ms[50257], "ms_50304": ms[50304], "padded_speedup": ms[50257] / ms[50304]}


def gpu_sample(cfg, device, tmp):
    from engine import SAMPLING, ready_for_decoding

    shapes = {"sample_model": SAMPLE_MODEL, "gpt2_124m": dict(vocab_size=50257)}  # GPTConfig's defaults: 124M
    settings = {k: SAMPLING[k] for k in ("temperature", "top_k", "top_p")}
    deadline = time.perf_counter() + GPU_SHARES["sample"] * cfg.gpu_budget_s
    results = {"new_tokens": 8 if cfg.quick else 300}
    for name, shape in shapes.items():
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig(**(QUICK_SAMPLE_MODEL if cfg.quick else shape)))
        model = ready_for_decoding(model, device, cfg.dtype)
        for batch in (1, 8):
            if time.perf_counter() < deadline:  # else left out: the part is over its share
                idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
                results[f"{name}_batch{batch}"] = time_decoding(model, idx, results["new_tokens"], True, settings,
                                                                cfg.seed, repeats=1 if cfg.quick else 3)
    return results


def gpu_recipe(cfg, device, tmp):
    data = Path(cfg.shakespeare_dir).resolve()
    if cfg.quick:  # random tokens and a toy model: runs the code, never reaches the target
        data = tmp / "toy-data"
        data.mkdir()
        write_random_dataset(data, 65, n_tokens=10_000)
    elif not (data / "meta.json").is_file():
        return {"skipped": f"no {data}/meta.json: run python prepare.py shakespeare_char, or set --shakespeare_dir"}
    def reached(rows):
        return first_at_target(rows, GPU_VAL_TARGET) is not None

    results = {}
    for optimizer in ("adamw", "muon"):
        args = ["config/train_shakespeare_char.py", f"--optimizer={optimizer}", f"--device={device}",
                f"--data_dir={data}", "--init_from=scratch", "--wandb_log=False", *(GPU_QUICK if cfg.quick else [])]
        rows, how = watch_training(args, tmp / optimizer, stop=reached,
                                   timeout_s=GPU_SHARES[optimizer] * cfg.gpu_budget_s, env=train_env(cfg))
        results[optimizer] = time_to_target(rows, how, GPU_VAL_TARGET)
    if results["adamw"]["time_s"] and results["muon"]["time_s"]:
        results["muon_over_adamw_time"] = results["muon"]["time_s"] / results["adamw"]["time_s"]
    return results


# -----------------------------------------------------------------------------
# Settings, table, main


def settings(argv):
    """Bench options, from flags; config files (--config=FILE) and every other --key=value go to
    train.py, for the train section (train.py checks them)."""
    ours = [a for a in argv if a.removeprefix("--").partition("=")[0] in BENCH_DEFAULTS or a in ("-h", "--help")]
    train_args = [a.removeprefix("--config=") for a in argv if a not in ours]
    cfg = configurator.configure(BENCH_DEFAULTS, ours)  # a bare --quick means --quick=True
    if cfg["quick"]:
        cfg |= {k: v for k, v in QUICK.items() if cfg[k] == BENCH_DEFAULTS[k]}
    only = [s.strip() for s in cfg["only"].split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown or not only:
        raise UserError(f"--only={cfg['only']}: choose among {', '.join(SECTIONS)}")
    if train_args and "train" not in only:
        raise UserError(f"{train_args[0]} is not a bench option; train.py's settings apply to --only=train")
    return SimpleNamespace(**cfg, train_args=train_args), only


def table(results):
    """The results as aligned rows: section, figure, value."""
    rows = []
    for name, rows_of in (("cpu", _cpu_rows), ("train", _train_rows), ("sample", _sample_rows),
                          ("prepare", _prepare_rows), ("serve", _serve_rows), ("gpu", _gpu_rows)):
        if name in results:
            rows += [(name, figure, value) for figure, value in rows_of(results[name])]
    width = max(len(figure) for _, figure, _ in rows)
    return "\n".join(f"{name:<8} {figure:<{width}}  {value}" for name, figure, value in rows)


def _cpu_rows(c):
    return [(f"matmul peak ({c['matmul_dtype']}, n={c['matmul_n']})", f"{c['matmul_gflops']:.1f} GFLOP/s"),
            ("memory bandwidth (read)", f"{c['memory_gb_s']:.1f} GB/s")]


def _train_rows(t):
    m = t["settings"]
    keys = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps")
    shape = "iteration"  # a config file's shape is train.py's to read
    if all(k in m for k in keys):
        shape = (f"{m['n_layer']}L {m['n_head']}H {m['n_embd']}C, block {m['block_size']}, "
                 f"batch {m['batch_size']}x{m['gradient_accumulation_steps']}")
    rows = [(shape, f"{t['ms_per_iter']:.1f} ms/iter (median of {t['timed_iters']})"),
            ("tokens/s", f"{t['tokens_per_s']:,.0f}"), ("MFU", f"{t['mfu'] * 100:.1f}%"),
            ("peak memory (train.py's log)", f"{t['peak_memory_mb']:,.0f} MB")]
    return rows + [("command", t["command"])] if t["command"] != "train.py" else rows


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


def _gpu_rows(g):
    rows = []
    for part, r in g.items():
        if not isinstance(r, dict):
            continue
        if "error" in r or "skipped" in r:
            rows.append((part, r.get("error") or r["skipped"]))
        elif part == "mfu":
            rows += [(f"GPT-2 124M, {r['tokens_per_iter']:,} tokens/iter", f"{r['ms_per_iter']:.1f} ms/iter, "
                      f"{r['tokens_per_s']:,.0f} tok/s, peak memory {r['peak_memory_mb']:,.0f} MB"),
                     (f"MFU of {r['train_py_peak_tflops']:.3g} TFLOP/s (train.py's peak)", f"{r['mfu'] * 100:.1f}%"),
                     (f"MFU of {r['measured_matmul_tflops']:.3g} TFLOP/s (measured matmul)",
                      f"{r['mfu_of_measured_peak'] * 100:.1f}%")]
        elif part == "vocab":
            rows.append(("output layer + loss, 50257 / 50304 tokens", f"{r['ms_50257']:.2f} / "
                         f"{r['ms_50304']:.2f} ms ({r['padded_speedup']:.2f}x)"))
        elif part == "sample":
            rows += [(f"decoding, {key.replace('_', ' ')}, {r['new_tokens']} tokens",
                      f"{r[key]['tokens_per_s']:,.0f} tok/s") for key in r if key.endswith(("batch1", "batch8"))]
        elif part == "recipe":
            rows += [(f"shakespeare_char {opt}, val {GPU_VAL_TARGET}", f"iter {o['iter']}, {o['time_s']:.0f} s"
                      if o["iter"] is not None else f"not reached ({o['how']} at iter {o['last_iter']}); best "
                      f"{o['best_val']:.4f} at iter {o['best_iter']}") for opt, o in r.items() if isinstance(o, dict)]
            if "muon_over_adamw_time" in r:
                rows.append(("Muon's time to it / AdamW's", f"{r['muon_over_adamw_time']:.2f}x"))
    return rows


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

    def save(**partial):  # after every section (and every part of gpu): a later one may be cut short
        results.update(partial)
        Path(cfg.out).write_text(json.dumps(results, indent=1) + "\n")

    runners = {"cpu": lambda: bench_cpu(cfg, device), "train": lambda: bench_train(cfg, device),
               "sample": lambda: bench_sample(cfg, device), "prepare": lambda: bench_prepare(cfg),
               "serve": lambda: bench_serve(cfg),
               "gpu": lambda: bench_gpu(cfg, device, lambda part: save(gpu=part))}
    for name in SECTIONS:
        if name in only:
            t0 = time.perf_counter()
            results[name] = runners[name]()
            results[name]["elapsed_s"] = time.perf_counter() - t0
            save()
    print(table(results))
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    configurator.run(main)
