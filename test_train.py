"""Tests for configurator.py, train.py and config/: tiny models on tiny data, on the CPU, in seconds."""
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import configurator
import train
from configurator import UserError, configure

REPO = Path(__file__).resolve().parent
# These models are tiny: a second thread only adds synchronisation, which is slow on a busy 2-core machine.
torch.set_num_threads(1)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

# A 2-layer, 32-wide model on 16-character windows: a whole run of 30 iterations takes about a second.
TINY = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
        "--batch_size=8", "--gradient_accumulation_steps=1", "--eval_iters=4", "--eval_interval=10",
        "--log_interval=1", "--learning_rate=1e-2", "--warmup_iters=2", "--lr_decay_iters=30",
        "--min_lr=1e-3", "--dropout=0.0", "--max_iters=30"]


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


def run_train(data_dir, out_dir, *flags):
    """train.train() in this process, with TINY settings and `flags` on top."""
    argv = [*TINY, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *flags]
    return train.train(configure(train.DEFAULTS, argv))


def run_cli(*args, timeout=120):
    """Run a command from the repo root; return the CompletedProcess (text)."""
    return subprocess.run(args, cwd=REPO, env=ONE_THREAD, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *expected):
    """Exit 1, no traceback, and one stderr line saying what was wrong."""
    err = proc.stderr.strip()
    assert proc.returncode == 1, f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"stderr not one line:\n{err}"
    assert err.startswith("error: "), err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


# -----------------------------------------------------------------------------
# configurator.py

DEFAULTS = dict(batch_size=12, learning_rate=6e-4, compile=None, device="auto", bias=False, out_dir="out",
                betas=(0.9, 0.95))


def test_configure_parses_typed_literals():
    c = configure(DEFAULTS, ["--batch_size=1e3", "--learning_rate=1", "--compile=false", "--bias=TRUE",
                             "--device=cuda:1", "--out_dir=123", "--betas=(0.9, 0.99)"])
    assert c == dict(batch_size=1000, learning_rate=1.0, compile=False, bias=True, device="cuda:1",
                     out_dir="123", betas=(0.9, 0.99)), c
    assert type(c["batch_size"]) is int and type(c["learning_rate"]) is float
    assert configure(DEFAULTS, ["--device='cpu'", "--bias=False"])["device"] == "cpu"
    assert configure(DEFAULTS, []) == DEFAULTS


@pytest.mark.parametrize("flag, expected", [
    ("--batchsize=3", ["unknown option --batchsize", "did you mean --batch_size?"]),
    ("--learnin_rate=3", ["--learning_rate"]),
    ("--zzz=1", ["unknown option --zzz", "--help"]),
    ("--batch_size=1.5", ["batch_size", "1.5", "must be an int"]),
    ("--batch_size=abc", ["batch_size", "'abc'", "must be an int"]),
    ("--bias=1", ["bias", "must be a bool", "got 1"]),
    ("--learning_rate=fast", ["learning_rate", "'fast'", "must be a float"]),
    ("--betas=0.9", ["betas", "must be a tuple"]),
    ("--batch_size", ["--key=value"]),
    ("-b=3", ["--key=value"]),
    ("missing_config.py", ["config file not found: missing_config.py"]),
    ("batch_size=3", ["config file not found", "--key=value"]),
])
def test_configure_errors_name_the_problem(flag, expected):
    with pytest.raises(UserError) as e:
        configure(DEFAULTS, [flag])
    for text in expected:
        assert text in str(e.value), f"{text!r} not in {str(e.value)!r}"


def test_config_file_runs_with_defaults_in_scope_and_flags_win(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("import math\n_local = 2\nbatch_size = 64 * _local\n"
                   "learning_rate = batch_size * 1e-5\ncompile = True\n")
    c = configure(DEFAULTS, ["--batch_size=4", str(cfg)])  # files first, then flags, whatever the order
    assert (c["batch_size"], c["learning_rate"], c["compile"]) == (4, 128e-5, True), c


@pytest.mark.parametrize("body, expected", [
    ("batch_sise = 64\n", ["sets unknown key 'batch_sise'", "did you mean batch_size?"]),
    ("bias = 'yes'\n", ["bias must be a bool", "'yes'"]),
    ("x = (\n", ["line 1"]),
    ("a = 1\nb = undefined\n", ["line 2", "NameError"]),
])
def test_config_file_errors_name_file_and_key(tmp_path, body, expected):
    cfg = tmp_path / "bad.py"
    cfg.write_text(body)
    with pytest.raises(UserError) as e:
        configure(DEFAULTS, [str(cfg)])
    assert str(cfg) in str(e.value), str(e.value)
    for text in expected:
        assert text in str(e.value), f"{text!r} not in {str(e.value)!r}"


def test_format_config_marks_changes_and_shows_derived_values():
    text = configurator.format_config(configure(DEFAULTS, ["--batch_size=4"]), DEFAULTS,
                                      {"tokens_per_iter": "4 x 64 = 256"})
    assert "*batch_size" in text and " learning_rate" in text and "*learning_rate" not in text, text
    assert "tokens_per_iter" in text and "256" in text, text


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        configure(train.DEFAULTS, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    missing = [k for k in train.DEFAULTS if k not in out]
    assert not missing, f"--help does not list {missing}"


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_sets_only_known_keys(path):
    c = configure(train.DEFAULTS, [str(path)])
    assert c["gradient_accumulation_steps"] >= 1 and c["batch_size"] >= 1, c


def test_gpt2_config_is_half_a_million_tokens_over_8_gpus():
    c = configure(train.DEFAULTS, [str(REPO / "config/train_gpt2.py")])
    tokens = c["batch_size"] * c["block_size"] * c["gradient_accumulation_steps"]
    assert tokens == 491520 and c["gradient_accumulation_steps"] % 8 == 0, tokens


def test_cli_errors_are_one_line():
    """The configurator's errors reach the user of train.py as one line and exit code 1."""
    proc = run_cli(sys.executable, "train.py", "config/train_shakespeare_char.py", "--batchsize=3")
    assert_one_line_error(proc, "unknown option --batchsize", "--batch_size")


# -----------------------------------------------------------------------------
# train.py: schedule and vocabulary


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    c = train.SimpleNamespace(**configure(train.DEFAULTS, ["--learning_rate=1.0", "--min_lr=0.1",
                                                           "--warmup_iters=10", "--lr_decay_iters=110"]))
    lrs = [train.lr_at(it, c) for it in range(130)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11), lrs[:10]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])), "warmup must rise"
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55), (lrs[10], lrs[60])
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111])), "decay must not rise"
    assert lrs[110] == lrs[129] == 0.1, (lrs[110], lrs[129])
    c.decay_lr = False
    assert train.lr_at(5, c) == train.lr_at(500, c) == 1.0


def test_loss_falls_over_30_iterations(data_dir, tmp_path):
    s = run_train(data_dir, tmp_path / "out")
    first, last = s["losses"][0], np.mean([s["losses"][i] for i in range(25, 30)])
    assert first == pytest.approx(math.log(VOCAB), abs=0.3), f"initial loss {first} should be ~ln(vocab)"
    assert last < first - 1.0, f"loss {first:.3f} -> {last:.3f} over 30 iterations"
    assert s["evals"][-1]["val"] < s["evals"][0]["val"] - 1.0, s["evals"]
    rows = read_log(tmp_path / "out")
    assert [r["iter"] for r in rows if "loss" in r] == list(range(30))
    assert [r["iter"] for r in rows if "val_loss" in r] == [0, 10, 20, 30]
    assert all(r["tokens_per_s"] > 0 and 0 <= r["mfu"] for r in rows if "loss" in r)


def test_resume_reproduces_the_uninterrupted_run_exactly(data_dir, tmp_path):
    """Same batches, same dropout masks, same optimizer state: bit-identical losses after resuming."""
    flags = ["--dropout=0.1", "--max_iters=12", "--eval_interval=6", "--gradient_accumulation_steps=2"]
    whole = run_train(data_dir, tmp_path / "a", *flags)
    run_train(data_dir, tmp_path / "b", *flags, "--max_iters=6")
    resumed = run_train(data_dir, tmp_path / "b", *flags, "--init_from=resume")
    expected = {it: whole["losses"][it] for it in range(6, 12)}
    assert resumed["losses"] == expected, f"resumed {resumed['losses']}\nuninterrupted {expected}"
    assert resumed["evals"][-1] == whole["evals"][-1], (resumed["evals"], whole["evals"])
    assert resumed["iter_num"] == 12


def test_checkpoint_holds_plain_values_and_unprefixed_weights(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    ckpt = torch.load(tmp_path / "out/ckpt.pt", weights_only=True)  # plain values and tensors only
    assert {"model_args", "model", "optimizer", "scaler", "iter_num", "best_val_loss", "config",
            "meta", "rng"} <= set(ckpt), sorted(ckpt)
    assert ckpt["iter_num"] == 10 and ckpt["scaler"] is None and ckpt["meta"]["vocab_size"] == VOCAB
    assert ckpt["model_args"]["n_layer"] == 2 and ckpt["model_args"]["vocab_size"] == VOCAB
    assert not [k for k in ckpt["model"] if k.startswith(("_orig_mod.", "module."))]
    assert ckpt["config"]["max_iters"] == 10 and math.isfinite(ckpt["best_val_loss"])
    assert set(ckpt["rng"]) == {"batches", "dropout"} and len(ckpt["rng"]["dropout"]) == 1


def test_without_always_save_only_improvements_are_saved(data_dir, tmp_path, monkeypatch):
    val = iter([3.0, 2.0, 2.5, 1.5, 1.8])  # at iters 0, 10, 20, 30, 40

    def fake_evaluate(model, splits, cfg, rt):
        return {"train": 1.0, "val": next(val)}
    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    saved = []
    monkeypatch.setattr(train, "save_checkpoint", lambda path, ckpt: saved.append(ckpt["iter_num"]))
    s = run_train(data_dir, tmp_path / "out", "--max_iters=40", "--always_save_checkpoint=False")
    assert saved == [10, 30] and s["best_val_loss"] == 1.5, (saved, s["best_val_loss"])


def test_nan_loss_stops_and_leaves_the_last_checkpoint_intact(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    path = tmp_path / "out/ckpt.pt"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UserError) as e:
        run_train(data_dir, tmp_path / "out", "--init_from=resume", "--max_iters=30",
                  "--learning_rate=1e30", "--decay_lr=False")
    msg = str(e.value)
    assert "diverged" in msg and "nan" in msg.lower() and f"{path} still holds iter 10" in msg, msg
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "the checkpoint was overwritten"


def test_eval_only_prints_val_loss_and_perplexity(data_dir, tmp_path, capsys):
    s = run_train(data_dir, tmp_path / "o", "--eval_only=True", "--eval_iters=8")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    loss, ppl = float(line.split()[2].rstrip(",")), float(line.split()[4])
    assert line.startswith("val loss ") and ppl == pytest.approx(math.exp(loss), rel=1e-3), line
    assert loss == pytest.approx(math.log(VOCAB), abs=0.3), f"untrained, it should score ~ln(vocab): {line}"
    assert s == {"val_loss": pytest.approx(loss, abs=1e-4)}, s
    assert not (tmp_path / "o/ckpt.pt").exists() and not (tmp_path / "o/log.jsonl").exists()


def test_eval_only_needs_no_train_split(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    os.remove(data_dir / "train.bin")
    s = run_train(data_dir, tmp_path / "out", "--init_from=resume", "--eval_only=True")
    assert s["val_loss"] < math.log(VOCAB) - 0.5, s


# -----------------------------------------------------------------------------
# train.py: errors a user can make


def test_resume_without_checkpoint_is_one_line_error(data_dir, tmp_path):
    proc = run_cli(sys.executable, "train.py", *TINY, f"--data_dir={data_dir}",
                   f"--out_dir={tmp_path}/none", "--init_from=resume")
    assert_one_line_error(proc, f"no checkpoint at {tmp_path}/none/ckpt.pt", "--init_from=scratch")


def test_missing_dataset_says_which_prepare_command_to_run(tmp_path):
    proc = run_cli(sys.executable, "train.py", *TINY, "--dataset=no_such_set", f"--out_dir={tmp_path}/o")
    assert_one_line_error(proc, "data/no_such_set", "python prepare.py no_such_set")


def test_missing_split_and_too_short_data_are_user_errors(data_dir, tmp_path):
    with pytest.raises(UserError, match="too few for block_size=5000"):
        run_train(data_dir, tmp_path / "o", "--block_size=5000")
    os.remove(data_dir / "val.bin")
    with pytest.raises(UserError, match="val.bin is missing; run `python prepare.py tiny"):
        run_train(data_dir, tmp_path / "o")


def test_batch_that_does_not_divide_across_processes_is_a_user_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun would set it; refused before any process group
    with pytest.raises(UserError, match="gradient_accumulation_steps=3 does not divide across 2 processes"):
        run_train(data_dir, tmp_path / "o", "--gradient_accumulation_steps=3")


def test_checkpoint_that_does_not_fit_the_data_is_a_user_error(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    with pytest.raises(UserError, match="block_size=32 is longer than the 16 tokens"):
        run_train(data_dir, tmp_path / "out", "--init_from=resume", "--block_size=32")
    make_dataset(tmp_path / "wide", text="".join(chr(65 + i % 40) for i in range(5000)))
    with pytest.raises(UserError, match="vocabulary of 16 tokens but the dataset 'wide' uses 40"):
        run_train(tmp_path / "wide", tmp_path / "out", "--init_from=resume")


def test_nonpositive_intervals_are_user_errors(data_dir, tmp_path):
    with pytest.raises(UserError, match="eval_interval must be at least 1"):
        run_train(data_dir, tmp_path / "o", "--eval_interval=0")


# -----------------------------------------------------------------------------
# train.py under torchrun


def test_torchrun_two_processes_match_one_process(data_dir, tmp_path):
    """DDP on gloo splits the global batch across 2 processes: the losses are those of 1 process."""
    flags = [*TINY, f"--data_dir={data_dir}", "--max_iters=8", "--eval_interval=100",
             "--gradient_accumulation_steps=4", "--batch_size=4"]
    one = run_train(data_dir, tmp_path / "one", *flags[len(TINY):])
    proc = run_cli(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "train.py", *flags, f"--out_dir={tmp_path}/two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = {r["iter"]: r["loss"] for r in read_log(tmp_path / "two") if "loss" in r}
    assert sorted(two) == list(range(8)), two
    diffs = [abs(one["losses"][it] - two[it]) for it in range(8)]
    assert max(diffs) < 1e-5, f"1 process {one['losses']}\n2 processes {two}"
    assert "processes 2" in proc.stdout and proc.stdout.count("model:") == 1, "rank 0 alone should print"


def test_init_from_a_local_hugging_face_dir_crops_and_fine_tunes(data_dir, tmp_path):
    pytest.importorskip("transformers")
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    hf_model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
    hf_model.save_pretrained(tmp_path / "hf")
    s = run_train(data_dir, tmp_path / "out", f"--init_from={tmp_path / 'hf'}", "--dropout=0.1",
                  "--max_iters=10")
    ckpt = torch.load(tmp_path / "out/ckpt.pt", weights_only=True)
    args = ckpt["model_args"]
    assert args["block_size"] == 16 and args["vocab_size"] == 64, args
    assert args["dropout"] == 0.1 and args["bias"] is True, args
    assert s["evals"][-1]["val"] < s["evals"][0]["val"], s["evals"]
