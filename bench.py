"""Measure the numbers sprout's speed claims rest on; print a table and write bench.json.

    python bench.py                                   # every section, a few minutes on 2 CPU cores
    python bench.py --only=sample,cpu                 # any of: train, sample, prepare, cpu, serve, tokenizer
    python bench.py --only=payoff                     # a BPE's payoff in training: minutes, apart
    python bench.py --config=config/train_shakespeare_char.py --batch_size=32   # another training config
    python bench.py --quick                           # tiny sizes, seconds: the test suite runs this
    python bench.py --only=gpu                        # the GPU check, minutes on a CUDA machine
    python bench.py --only=recipe                     # time to quality against nanoGPT: minutes, apart

Sections:
  train    ms/iter, tokens/s, MFU and peak memory of `python train.py` as users run it, on a
           synthetic dataset: the medians of what its log.jsonl says over the timed iterations after
           warm-up. Default: the CPU shakespeare_char recipe (block 64, batch 12, 4 layers, 4 heads,
           128 wide, vocab 65); config files (--config=FILE) and train.py's --key=value settings
           are handed on to train.py.
  sample   decoding tokens/s of a 6-layer, 384-wide GPT-2-vocabulary model for 500 new tokens,
           with the KV cache (GPT.generate_stream, what sample.py runs) and without it (a full
           forward over the context for every token), batch 1 and 8, same weights and seed; with a
           256-token context, so that the tokens run past it; and Hugging Face's cached generate on
           the same weights (when transformers is installed). Ratios first, against DECODING_TARGETS.
  prepare  tokens/s and peak memory of `prepare.py --input=...` on a ~10 MB corpus built from
           ../shared/data, beside the usual datasets.map + per-document encode + np.concatenate;
           and the peak memory of the same text as one document on one line, and of 4 times it.
  tokenizer  learning a BPE through prepare.py's code against the `tokenizers` trainer on the file,
           time and peak memory on 10 and 40 MB corpora; then prepare.py's tokens/s with that BPE
           against GPT-2's (tiktoken), on the same text and processes.
  payoff   the CPU recipe's model on the TinyStories sample with a 4,096-token BPE and with GPT-2's
           vocabulary, each trained for the same wall time: training tokens/s and val bits per byte.
  cpu      the matmul peak that MFU on a CPU is measured against, and the memory bandwidth that
           bounds decoding (each new token reads every weight once; the sample section also states
           the bound for the bytes the decoding layout reads, with its output layer in float16).
  serve    serve.py under load: 1 streaming client, then 8 at once, on a 6-layer, 384-wide model:
           tokens/s in all and per client, time to first token, replies whole or lost; 8 clients
           batched against 1 client alone, and against 8 served one at a time (--max_batch=1).
  gpu      not run by default: GPT-2 124M training MFU, GPU decoding, and the shakespeare_char GPU
           recipe's time to val 1.47 with AdamW and with Muon: gpucheck.py says what each part measures.
  recipe   not run by default: the README's CPU shakespeare_char run with its config's recipe and with
           nanoGPT's, side by side: wall time to val 1.88 over nanoGPT's 2000 iterations; val at 2000.
Every figure comes with the device, torch version and thread count (bench.json's "env").
"""
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch

import configurator
from checkpoint import GPT2_META, load_checkpoint, model_from_checkpoint, save_checkpoint
from configurator import UserError, measured_matmul_flops, pick_device, pick_dtype
from gpucheck import gpu_rows, run_gpu_check
from loadtest import load_test, summary
from measure import (QUICK_SAMPLE_MODEL, ROOT, SAMPLE_MODEL, SHARED_DATA, baseline_prepare, build_corpus,
                     environment, find_gpt2_files, hugging_face_copy, iteration_rows, learn_directly,
                     learn_through_prepare, measure_process, measure_processes, memory_bandwidth, python_call,
                     thread_env, time_decoding, time_decodings, time_to_target, train_speed, watch_training,
                     write_random_dataset)
from model import GPT, GPTConfig
from tokenizer import load_tokenizer

# in this order: cpu's bandwidth bounds sampling
SECTIONS = ("cpu", "train", "sample", "prepare", "serve", "tokenizer", "payoff", "gpu", "recipe")

BENCH_DEFAULTS = dict(
    only="train,sample,prepare,cpu,serve,tokenizer",  # comma-separated sections to run (payoff, gpu: apart)
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
    tokenizer_rounds=3,  # the tokenizer section's two ways take turns this often; medians reported
    payoff_vocab_size=4096,  # the payoff's BPE, against GPT-2's 50,257 tokens
    payoff_corpus="tinystories_sample.txt",  # the payoff's text: a file of ../shared/data, or a path
    payoff_seconds=120.0,  # training time for each of the two models
    payoff_eval_iters=20,  # batches per evaluation (ten of them, spread over the time, not counted)
    device="auto",  # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...
    dtype="auto",  # 'auto' (bfloat16 or float16 on CUDA, else float32), 'float32', ...
    seed=1337,
    shakespeare_dir="data/shakespeare_char",  # the gpu and recipe sections' data: python prepare.py shakespeare_char
    gpu_budget_s=480.0,  # the gpu section's parts are capped at shares of this (GPU_SHARES)
)
# The CPU shakespeare_char recipe from the README, on top of train.py's defaults (a config file that
# train.py reads first: the user's config files and flags come after it and win).
TRAIN_RECIPE = dict(compile=False, block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                    gradient_accumulation_steps=1)
QUICK_MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32"]  # train.py flags for --quick
# --quick: one thread and one process, since with other work on the machine OpenMP threads and worker
# pools can take many times longer to start than the tiny work they do
QUICK = dict(warmup_iters=1, timed_iters=3, new_tokens=8, corpus_mb=0.2, threads=1, num_proc=1,
             serve_seconds=0.5, bpe_vocab_size=512, tokenizer_corpus_mb=(0.2,), tokenizer_rounds=1,
             payoff_vocab_size=512, payoff_seconds=0.5, payoff_eval_iters=1)
QUICK_SERVE_MODEL = dict(block_size=64, vocab_size=95, n_layer=1, n_head=2, n_embd=32)  # printable ASCII
SERVE_TARGET = 3.0  # 8 streaming clients, batched, against 1: total tokens/s (issue 15)
# Decoding targets (issue 17), ratios measured in one run: cached batch 1 against Hugging Face's cached
# generate and the memory-bound limit; tokens past a (quarter-size) context against tokens within it.
DECODING_TARGETS = dict(cache_batch1_over_hf=3.0, cache_batch1_share_of_bound=0.5, past_block_over_within=0.8)


# -----------------------------------------------------------------------------
# Training


def bench_train(cfg, device):
    """`python train.py` on the configured model and a synthetic dataset, as users run it."""
    with tempfile.TemporaryDirectory() as tmp:
        write_random_dataset(tmp, cfg.vocab_size, n_tokens=1_000_000)
        args = [write_recipe(tmp), *cfg.train_args, *(QUICK_MODEL if cfg.quick else []), f"--device={device}",
                f"--dtype={cfg.dtype}", f"--data_dir={tmp}"]
        result = train_speed(args, Path(tmp, "out"), cfg.warmup_iters, cfg.timed_iters, env=thread_env(cfg.threads))
    flags = [a.removeprefix("--").partition("=") for a in cfg.train_args + (QUICK_MODEL if cfg.quick else [])]
    configs = [a for a in cfg.train_args if not a.startswith("--")]  # their settings are train.py's to read
    settings = ({} if configs else TRAIN_RECIPE) | {key: value or "True" for key, _, value in flags if key}
    return {"command": " ".join(["train.py", *cfg.train_args]), "settings": settings, "dtype": cfg.dtype,
            **result}


def write_recipe(folder):
    """TRAIN_RECIPE as a config file in folder, for train.py to read before any other."""
    path = Path(folder, "recipe.py")
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in TRAIN_RECIPE.items()))
    return path


# -----------------------------------------------------------------------------
# Sampling


def bench_sample(cfg, device):
    """Decoding speed with and without the KV cache, batch 1 and 8, same weights and seed; past the
    context window; and Hugging Face's cached generate on the same weights, when installed."""
    from decoding import ScreenedOutput, ready_for_decoding
    from engine import SAMPLING

    torch.manual_seed(cfg.seed)
    shape = QUICK_SAMPLE_MODEL if cfg.quick else SAMPLE_MODEL
    model = GPT(GPTConfig(**shape))
    params = model.get_num_params()  # what one token reads: every weight once (of the positions, a row)
    weight_bytes = params * torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    settings = {k: SAMPLING[k] for k in ("temperature", "top_k", "top_p")}
    repeats = 1 if cfg.quick else 5  # cached runs take seconds: a median of five evens out a noisy machine
    hf_model = hugging_face_copy(model) if device == "cpu" and cfg.dtype == "float32" else None
    model = ready_for_decoding(model, device, cfg.dtype)  # as sample.py runs it
    # sampling with top_k, the CPU decoding layout reads its float32 output layer in float16 instead
    # (decoding.ScreenedOutput), and a few float32 rows of it
    read_bytes = weight_bytes - (model.lm_head.weight.numel() * 2 if isinstance(model.lm_head, ScreenedOutput) else 0)
    one = torch.zeros(1, 1, dtype=torch.long, device=device)  # a one-token prompt
    eight = torch.zeros(8, 1, dtype=torch.long, device=device)
    # the same weights with a quarter of the context: the new tokens run past it (GPT.generate_stream
    # restarts the window at its last half when it is full)
    (short := copy.deepcopy(model)).crop_block_size(shape["block_size"] // 4)
    cached = {"cache_batch1": (model, one, True), "cache_batch8": (model, eight, True),
              "cache_batch1_past_block": (short, one, True)}
    if hf_model is not None:
        cached["hf_generate_batch1"] = (hf_model, one, "hf")
    if device == "cpu" and cfg.dtype == "float32":  # what sample.py --dtype=float16 does instead
        torch.manual_seed(cfg.seed)  # the same weights, in half the bytes
        half = ready_for_decoding(GPT(GPTConfig(**shape)), device, "float16")
        cached["cache_batch1_float16"] = (half, one, True)
    # the runs whose ratios are claimed take turns, round by round, so that drift moves them alike;
    # the memory's speed drifts too (BENCH.md), so it is read before and after them, and the faster
    # reading sets the bound (the stricter one)
    reads = [memory_bandwidth(device, cfg.quick)]
    runs = time_decodings(cached, cfg.new_tokens, settings, cfg.seed, repeats)
    reads.append(memory_bandwidth(device, cfg.quick))
    for name, idx in (("no_cache_batch1", one), ("no_cache_batch8", eight)):  # slow: one run each
        runs[name] = time_decoding(model, idx, cfg.new_tokens, False, settings, cfg.seed, 1)
    bound = max(reads) / weight_bytes  # a token reads every weight (a batch, once)
    rate = {key: run["tokens_per_s"] for key, run in runs.items()}
    ratios = {"cache_batch1_over_hf": rate["cache_batch1"] / rate.get("hf_generate_batch1", float("nan")),
              "cache_batch1_share_of_bound": rate["cache_batch1"] / bound,
              "cache_batch1_share_of_read_bound": rate["cache_batch1"] / (max(reads) / read_bytes),
              "past_block_over_within": rate["cache_batch1_past_block"] / rate["cache_batch1"],
              "batch8_over_batch1": rate["cache_batch8"] / rate["cache_batch1"]}
    return {"model": shape, "params": params, "new_tokens": cfg.new_tokens, "prompt_tokens": 1,
            "sampling": settings, "past_block_size": short.config.block_size, **runs, "ratios": ratios,
            "weight_mb": weight_bytes / 1e6, "read_mb": read_bytes / 1e6, "memory_bound_tokens_per_s": bound,
            "memory_gb_s_before_after": [r / 1e9 for r in reads],
            "targets": {} if cfg.quick else DECODING_TARGETS}


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
    find_gpt2_files(os.environ)
    try:  # both ways tokenize with GPT-2's BPE
        load_tokenizer({"tokenizer": "gpt2"})
    except UserError as e:
        return {"skipped": str(e)}
    size, num_proc = int(cfg.corpus_mb * 1e6), cfg.num_proc or os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, out_dir = build_corpus(Path(tmp, "corpus.txt"), size), Path(tmp, "data")
        ours = measure_process([sys.executable, "prepare.py", f"--input={corpus}", "--name=bench",
                                f"--out_dir={out_dir}", f"--num_proc={num_proc}"])
        meta = json.loads((out_dir / "bench" / "meta.json").read_text())
        ours["tokens"] = meta["train_tokens"] + meta["val_tokens"]
        baseline_out = Path(tmp, "baseline.bin")
        base = measure_process(python_call(baseline_prepare, str(corpus), str(baseline_out), num_proc),
                               env={"HF_DATASETS_CACHE": tmp})
        base["tokens"] = baseline_out.stat().st_size // 2
        corpus_mb = corpus.stat().st_size / 1e6
        # one document on one line, of the corpus' size and of 4 times it: memory should not grow
        one = {f"{n}x": measure_process([sys.executable, "prepare.py", f"--name=one{n}", f"--out_dir={out_dir}",
                                         f"--input={build_corpus(Path(tmp, f'one{n}.txt'), n * size, True)}",
                                         f"--num_proc={num_proc}"]) for n in (1, 4)}
    for result in (ours, base):
        result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return {"corpus_mb": corpus_mb, "num_proc": num_proc, "prepare_py": ours, "datasets_map": base,
            "speedup": ours["tokens_per_s"] / base["tokens_per_s"], "one_document": one,
            "one_document_4x_over_1x_peak": one["4x"]["peak_rss_mb"] / one["1x"]["peak_rss_mb"],
            "one_document_over_documents_peak": one["1x"]["peak_rss_mb"] / ours["peak_rss_mb"]}


# -----------------------------------------------------------------------------
# A BPE of one's own: learning it, tokenizing with it, and what it buys in training


def bench_tokenizer(cfg):
    """Learning a BPE through prepare.py's code against the trainer alone (time, peak memory), on
    growing corpora; then prepare.py with that BPE against prepare.py with GPT-2's, same text."""
    if not SHARED_DATA.is_dir():
        return {"skipped": f"no sample corpora at {SHARED_DATA}"}
    num_proc, learn, tokenize = cfg.num_proc or os.cpu_count(), {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mb in cfg.tokenizer_corpus_mb:  # the two ways taking turns, on each corpus
            corpus, vocab = build_corpus(Path(tmp, f"{mb}.txt"), int(mb * 1e6)), Path(tmp, f"{mb}.json")
            runs = measure_processes({"prepare_py": learn_through_prepare(corpus, cfg.bpe_vocab_size, vocab),
                                      "tokenizers": python_call(learn_directly, str(corpus), cfg.bpe_vocab_size)},
                                     cfg.tokenizer_rounds)
            learn[f"{mb:g}"] = runs | {"time_ratio": runs["prepare_py"]["seconds"] / runs["tokenizers"]["seconds"]}
        first = cfg.tokenizer_corpus_mb[0]
        corpus = Path(tmp, f"{first}.txt")
        tokenize = measure_processes(
            {name: [sys.executable, "prepare.py", f"--input={corpus}", f"--out_dir={tmp}", f"--tokenizer={tokenizer}",
                    f"--name={name}", f"--num_proc={num_proc}", "--force"]
             for name, tokenizer in (("gpt2", "gpt2"), ("bpe", Path(tmp, f"{first}.json")))}, cfg.tokenizer_rounds)
        for name, run in tokenize.items():
            meta = json.loads(Path(tmp, name, "meta.json").read_text())
            tokens = meta["train_tokens"] + meta["val_tokens"]
            run |= {"tokens_per_s": tokens / run["seconds"], "mb_per_s": corpus.stat().st_size / 1e6 / run["seconds"]}
    return {"vocab_size": cfg.bpe_vocab_size, "learn": learn, "num_proc": num_proc, "tokenize": tokenize,
            "tokens_per_s_ratio": tokenize["bpe"]["tokens_per_s"] / tokenize["gpt2"]["tokens_per_s"]}


def bench_payoff(cfg, device):
    """The CPU recipe's model on payoff_corpus (the TinyStories sample), with a BPE of
    payoff_vocab_size tokens and with GPT-2's vocabulary: each trained for about payoff_seconds, then
    training tokens/s and val bits per byte (ten evaluations spread over the time: the last and the
    best)."""
    sample = SHARED_DATA / cfg.payoff_corpus  # an absolute path stays itself
    if not sample.is_file():
        return {"skipped": f"no {sample}"}
    find_gpt2_files(os.environ)  # train.py's bits per byte reads GPT-2's BPE files (it inherits this)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in (("bpe", ["--tokenizer=bpe", f"--vocab_size={cfg.payoff_vocab_size}"]),
                            ("gpt2", ["--tokenizer=gpt2"])):
            measure_process([sys.executable, "prepare.py", f"--input={sample}", f"--out_dir={tmp}",
                             f"--name={name}", "--num_proc=1", *flags])
            runs[name] = train_for(cfg, device, Path(tmp, name))
    return {"corpus": sample.name, "seconds_each": cfg.payoff_seconds, **runs,
            "tokens_per_s_ratio": runs["bpe"]["tokens_per_s"] / runs["gpt2"]["tokens_per_s"]}


def train_for(cfg, device, data_dir):
    """train.py (the CPU recipe, constant learning rate 1e-3) on data_dir for about cfg.payoff_seconds
    of training: as many iterations as a short first run says fit, with ten evaluations (val bits per
    byte) spread over them, whose time does not count."""
    base = [write_recipe(data_dir), *cfg.train_args, f"--device={device}", f"--data_dir={data_dir}",
            "--learning_rate=1e-3", "--decay_lr=False", f"--eval_iters={cfg.payoff_eval_iters}", "--log_interval=1"]
    iters = 10  # --quick's
    if not cfg.quick:
        probe = train_speed(base, data_dir / "probe", 2, 8, env=thread_env(cfg.threads))
        iters = 10 * max(1, round(cfg.payoff_seconds * 1000 / probe["ms_per_iter"] / 10))
    rows, _ = watch_training([*base, "--init_from=scratch", "--wandb_log=False", f"--max_iters={iters}",
                              f"--eval_interval={iters // 10}"], data_dir / "out", env=thread_env(cfg.threads))
    steps, curve = iteration_rows(rows), [r["val_bpb"] for r in rows if "val_bpb" in r and r["iter"] > 0]
    trained = sum(r["ms_per_iter"] for r in steps) / 1000  # log_interval is 1: a row per iteration
    model = model_from_checkpoint(load_checkpoint(data_dir / "out" / "ckpt.pt"))
    return {"params": model.get_num_params(), "vocab_size": model.config.vocab_size, "iters": len(steps),
            "seconds": trained, "tokens_per_s": len(steps) * steps[-1]["tokens_per_iter"] / trained,
            "val_bpb": curve[-1], "best_val_bpb": min(curve), "val_bpb_curve": curve}


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
RECIPE_GOALS = {"time_to_target_over_nanogpt": 0.4, "final_val": 1.60}  # issue 14


def bench_recipe(cfg):
    """The config's recipe and nanoGPT's for the README's run, started together on half the cores
    each: both see the same machine, so the ratio of their times holds on a busy one."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(ROOT, cfg.shakespeare_dir)
        if cfg.quick:
            data = Path(tmp, "data")
            data.mkdir()
            write_random_dataset(data, 65, n_tokens=10_000)
        elif not (data / "meta.json").is_file():
            return {"skipped": f"no {cfg.shakespeare_dir}: run python prepare.py shakespeare_char"}
        flags = RECIPE_RUN + RECIPE_QUICK * cfg.quick + [f"--data_dir={data}", f"--seed={cfg.seed}"]
        threads = max(1, (os.cpu_count() or 2) // 2)
        with ThreadPoolExecutor(2) as pool:
            runs = {name: pool.submit(watch_training, args, Path(tmp, name), env=thread_env(threads))
                    for name, args in (("recipe", flags), ("nanogpt", flags + NANOGPT))}
            rows = {name: run.result()[0] for name, run in runs.items()}
    result = {name: time_to_target(r, "finished", RECIPE_TARGET) for name, r in rows.items()}
    crossed, base_s = result["recipe"]["crossed_s"], result["nanogpt"]["last_time_s"]
    # (none when nanoGPT's whole run ended before the recipe's first evaluation: a toy on a busy machine)
    by_then = [r["val_loss"] for r in rows["recipe"] if "val_loss" in r and r["time_s"] <= base_s]
    return {**result, "target": RECIPE_TARGET, "goals": RECIPE_GOALS, "threads_each": threads,
            "time_to_target_over_nanogpt": None if crossed is None else crossed / base_s,
            "recipe_val_when_nanogpt_ended": by_then[-1] if by_then else None}


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
    if train_args and not {"train", "payoff"} & set(only):
        raise UserError(f"{train_args[0]} is not a bench option; train.py's settings apply to the train "
                        f"and payoff sections")
    return SimpleNamespace(**cfg, train_args=train_args), only


def table(results):
    """The results as aligned rows: section, figure, value."""
    rows = []
    for name, rows_of in (("cpu", _cpu_rows), ("train", _train_rows), ("sample", _sample_rows),
                          ("prepare", _prepare_rows), ("serve", _serve_rows), ("tokenizer", _tokenizer_rows),
                          ("payoff", _payoff_rows), ("gpu", gpu_rows), ("recipe", _recipe_rows)):
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
    names = {"cache_batch1_over_hf": "cached batch 1 / Hugging Face's cached generate",
             "cache_batch1_share_of_bound": "cached batch 1 / memory-bound limit",
             "cache_batch1_share_of_read_bound": "cached batch 1 / the limit for the bytes it reads",
             "past_block_over_within": f"past the context (block {s['past_block_size']}) / within it",
             "batch8_over_batch1": "batch 8 / batch 1 (cached)"}
    rows = []
    for key, ratio in s["ratios"].items():  # ratios first, each against its target if it has one
        target = s["targets"].get(key)
        met = f" (target {target:g}x: {'met' if ratio >= target else 'MISSED'})" if target else ""
        rows += [(names[key], f"{ratio:.2f}x{met}")] if ratio == ratio else []  # NaN: no transformers
    rows += [(f"{key.replace('_', ' ')}, {s['new_tokens']} tokens", f"{s[key]['tokens_per_s']:.1f} tok/s")
             for key in ("cache_batch1", "hf_generate_batch1", "cache_batch1_past_block", "no_cache_batch1",
                         "cache_batch8", "no_cache_batch8", "cache_batch1_float16") if key in s]
    reads = " and ".join(f"{r:.0f}" for r in s["memory_gb_s_before_after"])
    return rows + [("memory-bound limit, batch 1",
                    f"{s['memory_bound_tokens_per_s']:.1f} tok/s (the faster of {reads} GB/s, before and after, "
                    f"over {s['weight_mb']:.0f} MB of weights; decoding reads {s['read_mb']:.0f} MB)")]


def _prepare_rows(p):
    if "skipped" in p:
        return [("skipped", p["skipped"])]
    rows = []
    for key in ("prepare_py", "datasets_map"):
        r = p[key]
        rows += [(f"{key} tokens/s ({p['corpus_mb']:.1f} MB)", f"{r['tokens_per_s']:,.0f}"),
                 (f"{key} peak memory (largest RSS / all PSS)",
                  f"{r['peak_rss_mb']:.0f} / {r['peak_pss_total_mb']:.0f} MB")]
    one = [p["one_document"][k]["peak_rss_mb"] for k in ("1x", "4x")]
    return rows + [("prepare.py speed-up", f"{p['speedup']:.1f}x"),
                   ("peak memory, one document of 4x / 1x the size",
                    f"{p['one_document_4x_over_1x_peak']:.2f}x ({one[0]:.0f} -> {one[1]:.0f} MB largest RSS)"),
                   ("peak memory, one document / as many documents",
                    f"{p['one_document_over_documents_peak']:.2f}x")]


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
    rows = [(f"{name}, {r['vocab_size']:,} tokens, {r['params'] / 1e6:.2f}M params, {r['seconds']:.0f} s",
             f"{r['tokens_per_s']:,.0f} tok/s, val {r['val_bpb']:.3f} bits/byte (best {r['best_val_bpb']:.3f})")
            for name, r in (("BPE", p["bpe"]), ("GPT-2", p["gpt2"]))]
    rows.insert(0, ("text", p["corpus"]))
    return rows + [("training tokens/s, BPE / GPT-2", f"{p['tokens_per_s_ratio']:.1f}x")]


def _recipe_rows(r):
    if "skipped" in r:
        return [("skipped", r["skipped"])]
    rows = [(f"{name}: val at {r[name]['last_iter']} iterations, time to {r['target']}",
             f"{r[name]['last_val']:.3f} in {r[name]['last_time_s']:.0f} s, "
             + ("not reached" if r[name]["crossed_s"] is None else f"{r[name]['crossed_s']:.0f} s"))
            for name in ("recipe", "nanogpt")]
    ratio, goal = r["time_to_target_over_nanogpt"], r["goals"]["time_to_target_over_nanogpt"]
    then = r["recipe_val_when_nanogpt_ended"]
    return rows + [(f"time to {r['target']} / nanogpt's whole run (goal <= {goal})",
                    "-" if ratio is None else f"{ratio:.2f}x"),
                   ("recipe's val when nanogpt ended", "-" if then is None else f"{then:.3f}")]


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
               "serve": lambda: bench_serve(cfg), "tokenizer": lambda: bench_tokenizer(cfg),
               "payoff": lambda: bench_payoff(cfg, device),
               "gpu": lambda: run_gpu_check(cfg, device, lambda part: save(gpu=part)),
               "recipe": lambda: bench_recipe(cfg)}
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
