"""Measure the numbers sprout's speed claims rest on; print a table and write bench.json.

    python bench.py                                   # every section, a few minutes on 2 CPU cores
    python bench.py --only=sample,cpu                 # any of: train, sample, prepare, cpu, recipe
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
  cpu      the matmul peak that MFU on a CPU is measured against, and the memory bandwidth that
           bounds decoding (each new token reads every weight once).
  recipe   time to quality, not run by default (minutes): the README's CPU shakespeare_char run with
           its config's recipe and with nanoGPT's, side by side, 2000 iterations each; the wall time
           to val 1.88 as a share of nanoGPT's 2000 iterations, and the val loss at 2000.
Every figure comes with the device, torch version and thread count (bench.json's "env").
"""
import inspect
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import redirect_stdout
from functools import lru_cache
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import configurator
from configurator import UserError, measured_matmul_flops, pick_device, pick_dtype
from model import GPT, GPTConfig, sample_logits

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"  # sample corpora (and GPT-2's BPE files, for an offline machine)
SHARED_DATA = SHARED / "data"
SECTIONS = ("cpu", "train", "sample", "prepare", "recipe")  # in this order: cpu's bandwidth bounds sampling

BENCH_DEFAULTS = dict(
    only="train,sample,prepare,cpu",  # comma-separated sections to run
    quick=False,  # tiny sizes everywhere: checks that the script runs, not how fast anything is
    out="bench.json",  # where the results go
    threads=0,  # torch threads; 0 = torch's default (one per core)
    warmup_iters=5,  # training steps run before timing
    timed_iters=20,  # training steps timed; the median is reported
    vocab_size=65,  # the synthetic training set's vocabulary: 65 like shakespeare_char, 50257 GPT-2
    new_tokens=500,  # tokens each decoding run generates
    corpus_mb=10.0,  # size of the prepare corpus
    num_proc=0,  # tokenizer processes for both ways of preparing it; 0 = one per core
)
# The CPU shakespeare_char recipe from the README, on top of train.py's defaults.
TRAIN_RECIPE = dict(device="auto", dtype="auto", compile=False, block_size=64, batch_size=12, n_layer=4,
                    n_head=4, n_embd=128, dropout=0.0, gradient_accumulation_steps=1)
SAMPLE_MODEL = dict(block_size=1024, vocab_size=50257, n_layer=6, n_head=6, n_embd=384)
# --quick: one thread and one process, since with other work on the machine OpenMP threads and worker
# pools can take many times longer to start than the tiny work they do
QUICK = dict(warmup_iters=1, timed_iters=3, new_tokens=8, corpus_mb=0.2, threads=1, num_proc=1)
QUICK_SAMPLE_MODEL = dict(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)


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
    keys = ("pos_emb", "mlp", "norm", "qk_norm", "n_expert", "n_expert_active", "grad_checkpoint")
    return {k: getattr(config, k) for k in keys if getattr(config, k) != getattr(default, k)}


def write_random_dataset(data_dir, vocab_size, n_tokens):
    """train.bin, val.bin and meta.json as prepare.py writes them, holding random tokens."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, vocab_size, n_tokens, dtype=np.uint16).tofile(os.path.join(data_dir, f"{split}.bin"))
    if vocab_size <= 256:  # a character vocabulary like shakespeare_char's
        meta = {"tokenizer": "char", "chars": [chr(32 + i) for i in range(vocab_size)], "eot_token": None}
    else:
        meta = {"tokenizer": "gpt2", "eot_token": 50256}
    meta |= {"name": "bench", "vocab_size": vocab_size, "dtype": "uint16", "train_tokens": n_tokens,
             "val_tokens": n_tokens, "source": "random", "command": "bench.py"}
    Path(data_dir, "meta.json").write_text(json.dumps(meta))


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


def measure_process(command, env=None):
    """Run a command in the repo; its wall time and peak memory, polled from /proc: the largest
    single process's RSS, and the whole tree's PSS (shared pages counted once) for worker pools."""
    env = {**os.environ, **(env or {})}
    if "TIKTOKEN_CACHE_DIR" not in env and (SHARED / "tiktoken").is_dir():
        env["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
    proc = subprocess.Popen(command, cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {"rss": 0, "pss": 0}
    poller = threading.Thread(target=_poll_memory, args=(proc, peaks), daemon=True)
    t0 = time.perf_counter()
    poller.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    poller.join()
    if proc.returncode != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
        raise UserError(f"{' '.join(command[:3])} failed: {last}")
    return {"seconds": seconds, "peak_rss_mb": peaks["rss"] / 1e6, "peak_pss_total_mb": peaks["pss"] / 1e6}


def _poll_memory(proc, peaks, interval=0.01):
    while proc.poll() is None:
        rss, pss = 0, 0
        for pid in _process_tree(proc.pid):
            rss = max(rss, _proc_kb(f"/proc/{pid}/status", "VmRSS:") * 1024)
            pss += _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:") * 1024
        peaks["rss"], peaks["pss"] = max(peaks["rss"], rss), max(peaks["pss"], pss)
        time.sleep(interval)


def _process_tree(pid):
    """pid and all its descendants (Linux /proc)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += map(int, Path(f"/proc/{p}/task/{task}/children").read_text().split())
        except OSError:  # exited meanwhile
            pass
    return tree


def _proc_kb(path, field):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -----------------------------------------------------------------------------
# Time to quality: the shakespeare_char recipe against nanoGPT's

# The README's CPU first run. Evaluations every 50 iterations (the README's run: 250) place the time
# to the target finely; both runs pay for them alike.
RECIPE_RUN = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--block_size=64",
              "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
              "--lr_decay_iters=2000", "--dropout=0.0", "--eval_iters=20", "--eval_interval=50"]
# The same run with nanoGPT's settings: AdamW on GPT-2's block without biases
NANOGPT = ["config/gpt2_block.py", "--bias=False", "--beta2=0.99", "--weight_decay=0.1", "--grad_clip=1.0",
           "--learning_rate=1e-3", "--min_lr=1e-4", "--warmup_iters=100"]
RECIPE_QUICK = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--max_iters=20",
                "--lr_decay_iters=20", "--eval_interval=10", "--eval_iters=2"]
RECIPE_TARGET = 1.88  # issue 14's goals: reach it in <= 0.4x nanoGPT's 2000 iterations, and <= 1.60 at 2000
RECIPE_GOALS = {"time_to_target_over_nanogpt": 0.4, "final_val_loss": 1.60}


def bench_recipe(cfg):
    """Both recipes as train.py subprocesses at once, each with half the cores: the same machine
    state for both, so the ratio holds on a busy machine. Returns each run's curve and the ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "data")
        if cfg.quick:  # a toy: random tokens, a tiny model, seconds
            data.mkdir()
            write_random_dataset(data, 65, n_tokens=10_000)
        elif Path(ROOT, "data", "shakespeare_char", "meta.json").is_file():
            data = Path(ROOT, "data", "shakespeare_char")
        elif (SHARED_DATA / "tinyshakespeare.txt").is_file():
            measure_process([sys.executable, "prepare.py", "shakespeare_char", f"--out_dir={tmp}",
                             f"--input={SHARED_DATA / 'tinyshakespeare.txt'}", "--name=data"])
        else:
            return {"skipped": "no data/shakespeare_char: run python prepare.py shakespeare_char"}
        flags = RECIPE_RUN + (RECIPE_QUICK if cfg.quick else []) + [f"--data_dir={data}", f"--seed={cfg.seed}"]
        threads = str(max(1, (os.cpu_count() or 2) // 2))
        procs = {name: subprocess.Popen(
            [sys.executable, "train.py", *flags, *extra, f"--out_dir={tmp}/{name}"], cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": threads}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True) for name, extra in (("recipe", []), ("nanogpt", NANOGPT))}
        runs = {}
        for name, proc in procs.items():
            _, err = proc.communicate()
            if proc.returncode:
                raise UserError(f"bench recipe: train.py ({name}) failed: {err.strip().splitlines()[-1:]}")
            rows = [json.loads(line) for line in Path(tmp, name, "log.jsonl").read_text().splitlines()]
            evals = [(r["iter"], r["time_s"], r["val_loss"]) for r in rows if "val_loss" in r]
            runs[name] = {"evals": evals, "final_val_loss": evals[-1][2], "seconds": evals[-1][1],
                          "time_to_target_s": time_to_reach(evals, RECIPE_TARGET)}
    ours, base = runs["recipe"], runs["nanogpt"]
    at_equal_time = [v for _, t, v in ours["evals"] if t <= base["seconds"]][-1]
    reached = ours["time_to_target_s"]
    return {**runs, "target": RECIPE_TARGET, "goals": RECIPE_GOALS, "threads_each": int(threads),
            "time_to_target_over_nanogpt": reached / base["seconds"] if reached else None,
            "recipe_val_at_nanogpt_seconds": at_equal_time}


def time_to_reach(evals, target):
    """Seconds until the val loss first reaches target, interpolated linearly between the two
    evaluations around the crossing; None if it never does. evals: [(iter, seconds, val loss)]."""
    for (_, t0, v0), (_, t1, v1) in zip(evals, evals[1:]):
        if v1 <= target:
            return t0 + (t1 - t0) * (v0 - target) / (v0 - v1) if v0 > target else t0
    return None


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
                          ("prepare", _prepare_rows), ("recipe", _recipe_rows)):
        if name in results:
            rows += [(name, figure, value) for figure, value in rows_of(results[name])]
    width = max(len(figure) for _, figure, _ in rows)
    return "\n".join(f"{name:<8} {figure:<{width}}  {value}" for name, figure, value in rows)


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


def _recipe_rows(r):
    if "skipped" in r:
        return [("skipped", r["skipped"])]
    rows = []
    for name in ("recipe", "nanogpt"):
        reach = r[name]["time_to_target_s"]
        rows += [(f"{name}: val after {r[name]['evals'][-1][0]} iterations", f"{r[name]['final_val_loss']:.3f} "
                  f"in {r[name]['seconds']:.0f} s"), (f"{name}: time to val {r['target']}",
                  f"{reach:.0f} s" if reach is not None else "not reached")]
    ratio = r["time_to_target_over_nanogpt"]
    return rows + [(f"time to {r['target']} / nanogpt's {r['nanogpt']['evals'][-1][0]} iterations",
                    f"{ratio:.2f}x (goal <= {r['goals']['time_to_target_over_nanogpt']})" if ratio else "-"),
                   ("recipe's val when nanogpt finished", f"{r['recipe_val_at_nanogpt_seconds']:.3f}")]


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
               "recipe": lambda: bench_recipe(cfg)}
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
