"""How bench.py measures: another program's wall time and peak memory, and corpora of any size.

    measure_process(command)    run it from the repository root; seconds, and the peak memory polled
                                from /proc: the largest process's RSS, and the whole tree's PSS
    python_call(function, ...)  the command that runs a function's own source in a fresh interpreter
    build_corpus(path, size)    the sample corpora of ../shared/data, repeated to about `size` bytes
    write_random_dataset(...)   a prepared dataset of random tokens
    train_side_by_side(runs)    several train.py runs at once; time_to_reach: when one got to a val loss

and the programs bench.py times in a fresh interpreter: the usual datasets.map recipe (against
prepare.py), and learning a BPE through prepare.py's code or with the `tokenizers` trainer alone. A
library for bench.py (which imports train.py's step to time it); it runs nothing itself.
"""
import inspect
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from configurator import UserError

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"  # sample corpora (and GPT-2's BPE files, for an offline machine)
SHARED_DATA = SHARED / "data"


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
               "make_pairs, n_docs = sources.local_splits([Path(sys.argv[1])], 1e-9)\n"
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
# Training runs side by side


def train_side_by_side(runs, out_dir, threads):
    """`python train.py *args --out_dir=out_dir/name` for every name: args in runs, all started at
    once with `threads` OpenMP threads each: they share whatever the machine gives, so their times
    compare even on a busy machine. Returns {name: the rows of its log.jsonl}."""
    procs = {}
    for name, args in runs.items():
        err = open(Path(out_dir, f"{name}.stderr"), "w+")  # a file: a pipe left unread can fill up
        procs[name] = err, subprocess.Popen(
            [sys.executable, "train.py", *args, f"--out_dir={Path(out_dir, name)}"], cwd=ROOT, stderr=err,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL)
    for err, proc in procs.values():
        proc.wait()
        err.close()
    for name, (err, proc) in procs.items():
        if proc.returncode:
            last = (Path(err.name).read_text().strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise UserError(f"train.py ({name}) failed: {last.removeprefix('error: ')}")
    return {name: [json.loads(line) for line in Path(out_dir, name, "log.jsonl").read_text().splitlines()]
            for name in runs}


def time_to_reach(evals, target):
    """Seconds until the val loss first reached target, interpolated linearly between the two
    evaluations around the crossing; None if it never did. evals: [(iter, seconds, val loss)]."""
    for i, (_, t1, v1) in enumerate(evals):
        if v1 <= target:
            _, t0, v0 = evals[i - 1] if i else evals[0]
            return t1 if i == 0 else t0 + (t1 - t0) * (v0 - target) / (v0 - v1)
    return None
