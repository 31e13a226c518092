"""How bench.py measures, so that its sections say only what to measure: train.py runs followed
through their log.jsonl (speed, time to a val loss) on a dataset of random tokens; another program's
wall time and peak memory, corpora of any size, and the programs bench.py times in a fresh interpreter
(the usual datasets.map recipe, learning a BPE two ways); decoding speed, memory bandwidth, and the
environment every figure depends on.

    rows, how = watch_training(args, out_dir, stop=..., timeout_s=...)  # python train.py *args, followed
    train_speed(args, out_dir, warmup_rows, timed_rows)  # its ms/iter, tokens/s, MFU, peak memory
    measure_process(command)    run it from the repository root; seconds, and the peak memory polled
                                from /proc: the largest process's RSS, and the whole tree's PSS
    python_call(function, ...)  the command that runs a function's own source in a fresh interpreter
    build_corpus(path, size)    the sample corpora of ../shared/data, repeated to about `size` bytes
                                (or as one document on one line)
    time_decodings(runs, n, ...)  tokens/s of several decoders taking turns (time_decoding: one)

Scripts are measured as users run them, as subprocesses: this library imports none of them. Hugging
Face's cached generate (hugging_face_copy, decode_with_hf) is the reference decoding is measured against.
"""
import importlib.util
import inspect
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from configurator import UserError
from model import sample_logits

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"  # sample corpora (and GPT-2's BPE files, for an offline machine)
SHARED_DATA = SHARED / "data"
# the model bench.py decodes with (and serves): 6 layers, 384 wide, GPT-2's vocabulary; --quick's
SAMPLE_MODEL = dict(block_size=1024, vocab_size=50257, n_layer=6, n_head=6, n_embd=384)
QUICK_SAMPLE_MODEL = dict(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)


# -----------------------------------------------------------------------------
# Training runs


def watch_training(args, out_dir, stop=None, timeout_s=None, env=None):
    """Run `python train.py *args --out_dir=out_dir` and follow out_dir/log.jsonl as it grows. The
    run is stopped (SIGTERM, which train.py handles as Ctrl-C) as soon as stop(rows) is true or
    timeout_s has passed. Returns (rows, how): every log row, and 'finished', 'stopped' or 'timed out'.
    A run that fails on its own is a UserError quoting the last line train.py wrote to stderr."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "log.jsonl"
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    how = "finished"
    with open(out_dir / "stderr.txt", "w+") as err:  # a file, not a pipe: a pipe left unread fills up
        # a session of its own: stopping it reaches torch.compile's worker processes too
        proc = subprocess.Popen([sys.executable, "train.py", *map(str, args), f"--out_dir={out_dir}"],
                                cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        try:
            while proc.poll() is None:
                if stop is not None and stop(read_rows(log)):
                    how = "stopped"
                elif deadline is not None and time.monotonic() > deadline:
                    how = "timed out"
                else:
                    time.sleep(0.2)
                    continue
                break
        finally:  # also when bench itself is interrupted
            end_session(proc)
        err.seek(0)
        last = (err.read().strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    if how == "finished" and proc.returncode != 0:
        raise UserError(f"train.py failed: {last.removeprefix('error: ')}")
    return read_rows(log), how


def end_session(proc, grace_s=10):
    """Stop a process started with start_new_session=True and all it started: SIGTERM (train.py
    cleans up as on Ctrl-C), then SIGKILL for whatever is left after grace_s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind, or a leader that did not stop
    except ProcessLookupError:  # the whole session has ended
        pass
    proc.wait()


def thread_env(threads):
    """The environment that runs a subprocess on `threads` threads (0: its own default)."""
    return {"OMP_NUM_THREADS": str(threads)} if threads > 0 else {}


def read_rows(log):
    """The rows of a log.jsonl written so far (none if it is not there yet); a last line still being
    written is left for the next read."""
    try:
        lines = Path(log).read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def write_random_dataset(data_dir, vocab_size, n_tokens):
    """train.bin, val.bin and meta.json as prepare.py writes them, holding random tokens. The
    vocabulary is one of characters whatever its size, so that train.py needs no tokenizer files
    (GPT-2's would have to be downloaded on a machine without them)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(0, vocab_size, n_tokens, dtype=np.uint16).tofile(os.path.join(data_dir, f"{split}.bin"))
    meta = {"name": "bench", "tokenizer": "char", "chars": [chr(32 + i) for i in range(vocab_size)],
            "eot_token": None, "vocab_size": vocab_size, "dtype": "uint16", "train_tokens": n_tokens,
            "val_tokens": n_tokens, "source": "random", "command": "bench.py"}
    Path(data_dir, "meta.json").write_text(json.dumps(meta))


def train_speed(args, out_dir, warmup_rows, timed_rows, log_interval=1, timeout_s=None, env=None):
    """Run train.py with `args` (and one short evaluation, at iteration 0) until it has logged
    warmup_rows + timed_rows rows of iterations, one every log_interval iterations; the medians of
    the timed rows' ms/iter, tokens/s and MFU (a row averages the iterations since the one before),
    and the peak memory logged last."""
    n = warmup_rows + timed_rows
    iters = n * log_interval + 1  # the run is stopped before it gets there
    args = [*args, "--init_from=scratch", "--wandb_log=False", f"--log_interval={log_interval}", "--eval_iters=1",
            f"--eval_interval={iters}", f"--max_iters={iters}"]
    rows, how = watch_training(args, out_dir, stop=lambda rows: len(iteration_rows(rows)) >= n,
                               timeout_s=timeout_s, env=env)
    timed = iteration_rows(rows)[warmup_rows:n]
    if not timed:
        raise UserError(f"train.py logged {len(iteration_rows(rows))} rows of iterations before it {how}; "
                        f"{n} were needed (warm-up {warmup_rows} + timed {timed_rows})")
    return {**{key: statistics.median(r[key] for r in timed) for key in ("ms_per_iter", "tokens_per_s", "mfu")},
            "peak_memory_mb": timed[-1]["peak_memory_mb"], "tokens_per_iter": timed[-1]["tokens_per_iter"],
            "timed_iters": len(timed) * log_interval, "warmup_iters": (warmup_rows - 1) * log_interval + 1}


def iteration_rows(rows):
    """The rows train.py logs for training iterations (not evaluations)."""
    return [r for r in rows if "ms_per_iter" in r]


def time_to_target(rows, how, target):
    """A run's outcome from its log rows: the iteration and time_s of its first evaluation at val
    <= target (None and None if none was), and crossed_s, the time the val loss crossed the target,
    interpolated linearly from the evaluation before; its best val and that iteration; its last
    evaluation's val and time_s; how it ended."""
    evals = [r for r in rows if "val_loss" in r]
    if not evals:
        raise UserError(f"train.py {how} before its first evaluation")
    hit, best = first_at_target(rows, target), min(evals, key=lambda r: r["val_loss"])
    crossed = None
    for before, r in zip([None] + evals, evals):  # the first evaluation at the target, and the one before
        if r["val_loss"] <= target:
            share = 1.0 if before is None else (before["val_loss"] - target) / (before["val_loss"] - r["val_loss"])
            crossed = r["time_s"] if before is None else before["time_s"] + share * (r["time_s"] - before["time_s"])
            break
    steps = iteration_rows(rows)
    return {"iter": hit["iter"] if hit else None, "time_s": hit["time_s"] if hit else None, "crossed_s": crossed,
            "best_val": best["val_loss"], "best_iter": best["iter"], "last_iter": max(r["iter"] for r in rows),
            "last_val": evals[-1]["val_loss"], "last_time_s": evals[-1]["time_s"],
            "how": how, "ms_per_iter": statistics.median(r["ms_per_iter"] for r in steps) if steps else None}


def first_at_target(rows, target):
    """The first evaluation row with val loss <= target, or None."""
    return next((r for r in rows if r.get("val_loss", float("inf")) <= target), None)


# -----------------------------------------------------------------------------
# Any command: wall time and peak memory; corpora


def build_corpus(path, size, one_line=False):
    """Copies of the shared sample corpora, concatenated to about `size` bytes: documents separated
    by blank lines, or (one_line) a single document on a single line."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(SHARED_DATA.glob("*.txt"))]
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        for text in itertools.cycle(texts):
            if written >= size:
                return path
            text = text[:size - written] + "\n\n"
            text = " ".join(text.split("\n")) if one_line else text
            f.write(text)
            written += len(text.encode("utf-8"))


def find_gpt2_files(env):
    """env (a dict, or os.environ) with TIKTOKEN_CACHE_DIR at ../shared/tiktoken unless it names one:
    GPT-2's BPE files on a machine that cannot download them."""
    if "TIKTOKEN_CACHE_DIR" not in env and (SHARED / "tiktoken").is_dir():
        env["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
    return env


def python_call(function, *args):
    """A command running function(*args) from its own source in a fresh interpreter, which imports
    only what the function does (not torch, as bench.py has); args are plain values."""
    return [sys.executable, "-c", f"{inspect.getsource(function)}\n{function.__name__}(*{args!r})"]


def measure_process(command, env=None):
    """Run a command in the repo; its wall time and peak memory, polled from /proc: the largest
    single process's RSS, and the whole tree's PSS (shared pages counted once) for worker pools."""
    env = find_gpt2_files({**os.environ, **(env or {})})
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


def measure_processes(commands, rounds):
    """measure_process for each of {name: command}, taking turns round by round (a machine's drift
    then moves them alike): each one's median seconds, its peak memory over the rounds, runs_s."""
    runs = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            runs[name].append(measure_process(command))
    return {name: {"seconds": statistics.median(r["seconds"] for r in rs),
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                   "peak_pss_total_mb": max(r["peak_pss_total_mb"] for r in rs),
                   "runs_s": [r["seconds"] for r in rs]} for name, rs in runs.items()}


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
# Programs bench.py times in a fresh interpreter (python_call): each imports what it needs


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


def learn_through_prepare(corpus, vocab_size, out):
    """The command that learns a BPE through prepare.py's own code, as its main does: its reader, its
    split (val: one document, so that both ways learn from the same text), its call of the trainer;
    then writes the tokenizer.json to `out`. A program text, run like `python prepare.py`: this
    library does not import the script."""
    program = ("import sys\nfrom pathlib import Path\nimport prepare, sources\n"
               "make_pairs, n_docs, _ = sources.local_splits([Path(sys.argv[1])], 1e-9)\n"
               "meta = prepare.tokenizer_meta('bpe', make_pairs, int(sys.argv[2]), n_train=n_docs - 1)\n"
               "Path(sys.argv[3]).write_text(meta['tokenizer_json'], encoding='utf-8')\n")
    return [sys.executable, "-c", program, str(corpus), str(vocab_size), str(out)]


def learn_directly(corpus, vocab_size):
    """The `tokenizers` trainer reading the file itself, set up as tokenizer.train_bpe sets it up."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE(ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.train([corpus], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))


# -----------------------------------------------------------------------------
# Decoding and the device


def time_decoding(model, idx, n, cache, settings, seed, repeats):
    """Tokens/s (all rows together) of n new tokens; the median of `repeats` runs, each seeded alike.
    cache: True (GPT.generate_stream), False (a full forward per token) or "hf" (transformers)."""
    return time_decodings({"run": (model, idx, cache)}, n, settings, seed, repeats)["run"]


def time_decodings(runs, n, settings, seed, repeats):
    """time_decoding for several runs, {name: (model, idx, cache)}, taking turns round by round: a
    machine whose speed changes within a process (this VM's batch-1 decoding moves between two
    rates, BENCH.md) then moves every run alike, and their ratios hold. Returns {name: result}."""
    decoders = {True: decode_with_cache, False: decode_without_cache, "hf": decode_with_hf}
    seconds = {name: [] for name in runs}
    for model, idx, cache in runs.values():
        decoders[cache](model, idx, 2, **settings)  # warm-up: first-call allocations
    for _ in range(repeats):
        for name, (model, idx, cache) in runs.items():
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            decoders[cache](model, idx, n, **settings)
            if idx.is_cuda:
                torch.cuda.synchronize()  # the last tokens may still be in flight
            seconds[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    return {name: {"tokens_per_s": idx.size(0) * n / medians[name], "seconds": medians[name],
                   "batch": idx.size(0), "runs_s": seconds[name]}
            for name, (model, idx, cache) in runs.items()}


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


def timed(fn, device):
    """Seconds one call of fn takes, waiting for the GPU before and after."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def memory_bandwidth(device, quick=False):
    """Bytes per second read by a sum over a tensor larger than the caches, best of several: the
    speed at which weights can stream in (decoding reads them, and writes next to nothing). Random
    values, not a constant: a VM that merges identical memory pages would fold a tensor of ones into
    one page, read from cache at several times the memory's speed. Read afresh on every call: the
    speed drifts within minutes (BENCH.md)."""
    data = torch.rand((8 if quick else 64) * 2**20, device=device)  # 32 or 256 MB of float32
    best = float("inf")
    for _ in range(3 if quick else 10):
        t0 = time.perf_counter()
        data.sum()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return data.numel() * data.element_size() / best


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


def hugging_face_copy(model):
    """transformers' GPT2LMHeadModel with the model's weights, saved and loaded as a user would; None
    without transformers."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import hf
    from transformers import GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(model, tmp)
        return GPT2LMHeadModel.from_pretrained(tmp).eval()


def decode_with_hf(model, idx, n, temperature, top_k, top_p):
    """n new tokens through Hugging Face's generate with its KV cache, sampling alike (no early stop)."""
    import torch

    with torch.inference_mode():
        model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                       do_sample=True, temperature=temperature, top_k=top_k or None, top_p=top_p,
                       use_cache=True, pad_token_id=0)
