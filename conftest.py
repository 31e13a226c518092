"""What every test file shares: paths, skip markers, tiny models, datasets and checkpoints, the one
reference decode (with the context window generation follows), and the helpers that run the
project's scripts. `python -m pytest -q` runs them all on a CPU in about a minute; each
test_<file>.py proves the claims of <file>.py.

Only tests of GPT-2's own tokenizer need GPT-2's BPE files (needs_gpt2_files); the rest build a
tokenizer of their own, and for them the files are made unreachable, as on a newcomer's offline
machine, so that a test which needs them without saying so fails here too. Tests that need those
files or the sample corpora in ../shared skip with a reason when they are absent (a user's clone has
no ../shared); tests that need transformers, the openai client, selenium or CUDA skip when those are
missing. SPROUT_NO_SHARED=1 hides ../shared, to run the suite as a newcomer's clone does (CI does so
once).
"""
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent
SHARED = REPO.parent / "shared"  # beside a development checkout only: sample corpora, GPT-2's BPE files
if os.environ.get("SPROUT_NO_SHARED") == "1":
    SHARED = REPO.parent / "shared (hidden: SPROUT_NO_SHARED=1)"  # a path that does not exist
# tiktoken finds GPT-2's BPE files offline in ../shared/tiktoken, unless the environment names a cache
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")

# the project's modules, imported once that is set
import prepare  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
from checkpoint import save_checkpoint  # noqa: E402
from configurator import configure  # noqa: E402
from engine import Engine  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from tokenizer import CharTokenizer, tokenizer_fields, train_bpe  # noqa: E402

# tiny models gain nothing from a second thread, and lose a lot when the cores are busy
torch.set_num_threads(1)


def _gpt2_files_cached():
    """Whether tiktoken's cache holds files, looking where tiktoken itself looks."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get(
        "DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")))
    return bool(cache) and any(Path(cache).glob("*"))  # '' turns tiktoken's cache off


needs_shared = pytest.mark.skipif(not (SHARED / "data").is_dir(),
                                  reason="../shared/data is absent (it sits beside a development checkout)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPT2_FILES = _gpt2_files_cached()
needs_gpt2_files = pytest.mark.skipif(not GPT2_FILES,
                                      reason="GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
may_use_gpt2_files = pytest.mark.gpt2_files  # a test that reads them when they are there, e.g. bench's
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed (pip install transformers)")
needs_openai = pytest.mark.skipif(importlib.util.find_spec("openai") is None,
                                  reason="the openai client is not installed (pip install openai)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpt2_files: the test may read GPT-2's BPE files when present")


@pytest.fixture(scope="session")
def _no_gpt2_files(tmp_path_factory):
    return tmp_path_factory.mktemp("empty_tiktoken_cache")


@pytest.fixture(autouse=True)
def _gpt2_files_only_where_declared(request, monkeypatch, _no_gpt2_files):
    """Every test not marked needs_gpt2_files (or may_use_gpt2_files) runs as if offline without
    GPT-2's BPE files: tiktoken finds nothing, in this process and in the scripts it runs."""
    node = request.node
    if node.get_closest_marker("gpt2_files") or needs_gpt2_files.mark in node.iter_markers("skipif"):
        return
    import tiktoken

    def offline(name):
        raise ConnectionError(f"{name}: GPT-2's BPE files are unreachable for tests not marked needs_gpt2_files")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(_no_gpt2_files))


# -----------------------------------------------------------------------------
# Running the project's scripts as a user would


def run_script(*args, env=None, input=None, timeout=120, cwd=REPO):
    """`python *args` from the repository root, or cwd (a script and its flags, or -c / -m); returns
    the CompletedProcess, text. One OpenMP thread: the models are tiny, and a second thread only adds
    synchronisation, which is slow on a busy 2-core machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, input=input,
                          capture_output=True, text=True, timeout=timeout)


class Result:
    """What a script's main() printed when called in this process (run_main), shaped like
    run_script's CompletedProcess."""

    def __init__(self, stdout, stderr):
        self.stdout, self.stderr, self.returncode = stdout, stderr, 0


@pytest.fixture
def run_main(capsys, monkeypatch):
    """Call a script's main() in this process (no interpreter start-up), as `python script.py *args`
    would: returns a Result with its stdout and stderr. A UserError propagates."""
    def run(script, *args):
        monkeypatch.setattr(sys, "argv", [f"{script.__name__}.py", *map(str, args)])
        capsys.readouterr()
        script.main()
        return Result(*capsys.readouterr())
    return run


@pytest.fixture
def run_sample(run_main):
    """sample.py's main() in this process: returns its stdout and stderr."""
    return lambda *args: run_main(sample, *args)


def assert_one_line_error(result, *needles):
    """Exit code 1, no traceback, and one line on stderr that says what was wrong."""
    err = result.stderr.strip()
    assert result.returncode == 1, f"exit code {result.returncode}, stderr: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"not one line: {err!r}"
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} missing from {err!r}"


# -----------------------------------------------------------------------------
# Tiny models


def tiny_config(**overrides):
    cfg = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    return GPTConfig(**{**cfg, **overrides})


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


VARIANTS = {  # model.py's alternatives to GPT-2's block, alone and all together
    "rope": dict(pos_emb="rope"),
    "swiglu": dict(mlp="swiglu"),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "moe": dict(n_expert=4, n_expert_active=2),
    "all": dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", qk_norm=True, n_expert=4, n_expert_active=2),
}


def tiny_variant(variant=None, seed=0, **overrides):
    return tiny_model(seed, **{**VARIANTS.get(variant, {}), **overrides})


def window_starts(prompt_len, n, block_size):
    """Where the context window of each of n decoding steps starts, as GPT.generate_stream's
    contract says: at the prompt's last block_size tokens, then, whenever a full window would have
    to grow, at the sequence's last block_size // 2 tokens. Step i predicts from tokens start..T+i."""
    start = max(0, prompt_len - block_size)
    for length in range(prompt_len, prompt_len + n):
        if length - start > block_size:
            start = length - max(1, block_size // 2)
        yield start


@torch.no_grad()
def greedy_without_cache(model, idx, n):
    """The reference decode, (B, T) -> (B, T + n): for every new token a full forward over its
    context window (window_starts), no KV cache, the most likely token each time. Within block_size
    tokens the window is the whole sequence."""
    for start in window_starts(idx.size(1), n, model.config.block_size):
        logits, _ = model(idx[:, start:])  # (B, 1, V)
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def greedy_ids(model, ids, n):
    """greedy_without_cache for one prompt given as a list of ids: the n new ids, as a list."""
    return greedy_without_cache(model, torch.tensor([ids]), n)[0, len(ids):].tolist()


# -----------------------------------------------------------------------------
# Tokenizers, checkpoints and engines


# A character vocabulary without end-of-text (sample.py's tests).
CHARS = sorted(set("\n !',.:;?-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
CHAR_META = {"tokenizer": "char", "chars": CHARS, "vocab_size": len(CHARS), "eot_token": None}
# A character vocabulary that can write the chat template: printable ASCII, then end-of-text.
ASCII = [chr(i) for i in range(32, 127)] + ["\n"]
ASCII_META = {"tokenizer": "char", "chars": ASCII, "vocab_size": len(ASCII) + 1, "eot_token": len(ASCII)}


def char_tokenizer():
    return CharTokenizer(ASCII, eot_token=len(ASCII))


# Sentences for a tiny BPE to learn from: English words, accents, CJK and emoji (no ../shared needed).
BPE_WORDS = ("the a cat dog fox owl sat ran jumped slept on over under to and then big small red blue "
             "green quick brown lazy house tree river Once upon time story über café naïve 東京 世界 "
             "🐍 🎉 it was day night, said . ! ?").split()


def bpe_text(n_sentences=300, seed=0):
    """Seeded sentences of BPE_WORDS, one per line (about 40 characters each)."""
    rng = np.random.default_rng(seed)
    return "\n".join(" ".join(rng.choice(BPE_WORDS, size=8)) for _ in range(n_sentences))


@functools.lru_cache(maxsize=None)
def _tiny_bpe():
    return train_bpe(bpe_text().splitlines(), 400, show_progress=False)


@pytest.fixture(scope="session")
def tiny_bpe():
    """A 400-token byte-level BPE (tokenizer.BPETokenizer) learned from bpe_text(), in a few tens of
    milliseconds: tests of BPE datasets, checkpoints and decoding need no GPT-2 files. Its meta:
    bpe_meta(tiny_bpe)."""
    return _tiny_bpe()


def bpe_meta(tok=None):
    """The meta of a BPE tokenizer (tiny_bpe's by default) as prepare.py --tokenizer=bpe records it
    and data.read_meta returns it: the tokenizer.json's text inside."""
    return tokenizer_fields(tok or _tiny_bpe())


def write_checkpoint(out_dir, meta=CHAR_META, model=None, seed=0, **config):
    """out_dir/ckpt.pt as train.py saves it, holding `model` or else a tiny random one for meta's
    vocabulary (2 layers, 16 wide, block 16 unless `config` says otherwise); returns the model, in
    eval mode."""
    if model is None:
        torch.manual_seed(seed)
        shape = dict(block_size=16, n_layer=2, n_head=2, n_embd=16) | config
        model = GPT(GPTConfig(**shape, vocab_size=meta["vocab_size"]))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(out_dir) / "ckpt.pt", {"model_args": asdict(model.config), "model": model.state_dict(),
                                                "meta": meta, "config": {}, "iter_num": 0})
    return model.eval()


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """(out_dir, model): a tiny random model on CHAR_META, saved as a training run."""
    out_dir = tmp_path_factory.mktemp("char")
    return out_dir, write_checkpoint(out_dir)


def tiny_engine(seed=0, block_size=64, tok=None, name="tiny", max_batch=8, max_queue=16, **settings):
    """An Engine on a tiny random model (greedy, 40 new tokens unless told otherwise)."""
    tok = tok or char_tokenizer()
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32))
    defaults = dict(temperature=0.0, top_k=None, top_p=None, max_new_tokens=40) | settings
    return Engine(model, tok, defaults, name, max_batch, max_queue)


# -----------------------------------------------------------------------------
# Datasets and training runs


# Short sentences from a handful of words: easy to learn, not trivial.
WORDS = ["the cat", "a dog", "sat on", "ran to", "the mat", "a log", "and then", "slept."]
VOCAB = len(set(" ".join(WORDS)))  # 16 characters


def make_dataset(data_dir, text=None, seed=0):
    """A char-level dataset as prepare.py writes it: train.bin, val.bin (uint16) and meta.json."""
    if text is None:
        text = " ".join(np.random.default_rng(seed).choice(WORDS, size=6000))
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    os.makedirs(data_dir, exist_ok=True)
    ids[:n].tofile(Path(data_dir) / "train.bin")
    ids[n:].tofile(Path(data_dir) / "val.bin")
    meta = {"name": Path(data_dir).name, "tokenizer": "char", "vocab_size": len(chars), "eot_token": None,
            "dtype": "uint16", "train_tokens": n, "val_tokens": len(ids) - n, "source": "test",
            "command": "test", "chars": chars}
    (Path(data_dir) / "meta.json").write_text(json.dumps(meta))
    return meta


@pytest.fixture
def data_dir(tmp_path):
    make_dataset(tmp_path / "tiny")
    return tmp_path / "tiny"


def make_bpe_dataset(folder, tok, text=None, name="bpe", tokenizer=None, **options):
    """A dataset prepared by prepare.py's own code with the BPE `tok` (reused from its tokenizer.json,
    written beside, or from `tokenizer`: what prepare.py --tokenizer takes) from `text` (default:
    bpe_text(), one document per line); returns its folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = folder / f"{name}.tokenizer.json"
        tokenizer.write_text(tok.json, encoding="utf-8")
    src = folder / f"{name}.txt"
    src.write_text(bpe_text().replace("\n", "\n\n") if text is None else text, encoding="utf-8")
    prepare.prepare_files([src], folder / name, str(tokenizer), num_proc=1, **options)
    return folder / name


CONVERSATIONS = [  # hand-written: a system prompt, several turns, non-ASCII text
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello! Über 🐍"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": " 6 "}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Green."}],
]
MALFORMED = [  # .jsonl lines, each skipped for the reason given
    ('{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "unknown role 'tool'"),
    ('{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}', "missing role"),
    ('{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}',
     "empty content"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ('{"text": "not a conversation"}', "no messages list"),
    ("this line is not JSON", "no messages list"),
]


def write_jsonl(path, conversations, extra_lines=()):
    """Conversations as prepare.py --format=chat reads them: one {"messages": [...]} per line."""
    lines = [json.dumps({"messages": c}, ensure_ascii=False) for c in conversations] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_chat_dataset(folder, n=300, seed=0):
    """A chat dataset (with its loss mask) of n one-turn conversations about animals, prepared with a
    character vocabulary in folder/chat; returns that folder."""
    animals = np.random.default_rng(seed).choice(["cat", "dog", "cow", "hen", "fox", "owl"], n)
    convs = [[{"role": "user", "content": f"What does the {a} say?"},
              {"role": "assistant", "content": f"The {a} says {a[::-1]}."}] for a in animals]
    src = write_jsonl(Path(folder) / "animals.jsonl", convs)
    prepare.prepare_chat(Path(folder) / "chat", paths=[src], tokenizer="char")
    return Path(folder) / "chat"


# A 2-layer, 32-wide model on 16-character windows: a whole run of 30 iterations takes about a second.
TINY = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
        "--batch_size=8", "--gradient_accumulation_steps=1", "--eval_iters=4", "--eval_interval=10",
        "--log_interval=1", "--learning_rate=1e-2", "--warmup_iters=2", "--lr_decay_iters=30",
        "--min_lr=1e-3", "--dropout=0.0", "--max_iters=30"]


def run_train(data_dir, out_dir, *flags):
    """train.train() in this process, with the TINY settings and `flags` on top (later flags win)."""
    argv = [*TINY, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *flags]
    return train.train(configure(train.DEFAULTS, argv))


@pytest.fixture(scope="session")
def bpe_run(tmp_path_factory, tiny_bpe):
    """(out_dir, tiny_bpe): a tiny model trained for 10 iterations on a BPE dataset, which is then
    deleted with its tokenizer.json: the run's ckpt.pt alone has to carry the tokenizer."""
    root = tmp_path_factory.mktemp("bpe_run")
    run_train(make_bpe_dataset(root / "data", tiny_bpe), root / "out", "--max_iters=10", "--block_size=32")
    shutil.rmtree(root / "data")
    return root / "out", tiny_bpe


def read_log(out_dir):
    """The rows of a training run's log.jsonl."""
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
