"""Tests for sample.py (on tiny checkpoints made here) and for bench.py's --quick mode."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").exists():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")

import sample  # noqa: E402  (after TIKTOKEN_CACHE_DIR is set)
from model import GPT, GPTConfig, save_checkpoint  # noqa: E402
from prepare import load_tokenizer  # noqa: E402

CHARS = sorted(set("\n !',.:;?-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
CHAR_META = {"tokenizer": "char", "chars": CHARS, "vocab_size": len(CHARS), "eot_token": None}
GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}
HAVE_BPE = any(Path(os.environ.get("TIKTOKEN_CACHE_DIR", "/nonexistent")).glob("*"))


def make_checkpoint(out_dir, meta=CHAR_META, block_size=16, seed=0):
    """A tiny random model saved as train.py saves it; returns the model (eval mode)."""
    torch.manual_seed(seed)
    config = GPTConfig(block_size=block_size, vocab_size=meta["vocab_size"], n_layer=2, n_head=2, n_embd=16)
    model = GPT(config).eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(out_dir) / "ckpt.pt", {"model_args": asdict(config), "model": model.state_dict(),
                                                "meta": meta, "config": {}, "iter_num": 0})
    return model


@torch.no_grad()
def greedy_without_cache(model, ids, n):
    """The reference decode: a full forward over the (cropped) context for every new token."""
    idx = torch.tensor([ids])
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx[0, len(ids):].tolist()


class Result:
    def __init__(self, stdout, stderr):
        self.stdout, self.stderr, self.returncode = stdout, stderr, 0


@pytest.fixture
def run_sample(capsys, monkeypatch):
    """Call sample.py's main in this process (no interpreter start-up): returns its stdout and stderr."""
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["sample.py", *map(str, args)])
        capsys.readouterr()
        sample.main()
        return Result(*capsys.readouterr())
    return run


def sample_cli(*args, input=None):
    """Run sample.py as a user would."""
    return subprocess.run([sys.executable, "sample.py", *map(str, args)], cwd=ROOT, input=input,
                          capture_output=True, text=True, timeout=120)


def assert_ok(result):
    assert result.returncode == 0, f"exit code {result.returncode}, stderr: {result.stderr}"


def assert_one_line_error(result, *needles):
    err = result.stderr.strip()
    assert result.returncode == 1, f"exit code {result.returncode}, stderr: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"not one line: {err!r}"
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} missing from {err!r}"


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("char")
    return out_dir, make_checkpoint(out_dir)


# -----------------------------------------------------------------------------
# Output


def test_same_seed_gives_identical_output_and_another_seed_differs(char_run, run_sample):
    out_dir, _ = char_run
    args = [f"--out_dir={out_dir}", "--start=to be", "--max_new_tokens=60", "--temperature=1.0"]
    first, second = run_sample(*args, "--seed=7"), run_sample(*args, "--seed=7")
    other = run_sample(*args, "--seed=8")
    for r in (first, second, other):
        assert_ok(r)
    assert first.stdout == second.stdout, f"{first.stdout!r} != {second.stdout!r}"
    assert first.stdout != other.stdout, f"seeds 7 and 8 both gave {first.stdout!r}"
    assert first.stdout.startswith("to be") and len(first.stdout) == len("to be") + 60 + 1, repr(first.stdout)


def test_greedy_output_equals_no_cache_greedy_decode_past_the_context(char_run, run_sample):
    out_dir, model = char_run
    # 40 new tokens after a 5-token prompt run well past block_size 16: the window slides
    result = run_sample(f"--out_dir={out_dir}", "--start=hello", "--max_new_tokens=40", "--temperature=0")
    assert_ok(result)
    tok = load_tokenizer(CHAR_META)
    expected = "hello" + tok.decode(greedy_without_cache(model, tok.encode("hello"), 40)) + "\n"
    assert result.stdout == expected, f"\n{result.stdout!r}\n{expected!r}"


def test_file_prompt_gives_the_same_output_as_the_text(char_run, tmp_path, run_sample):
    out_dir, _ = char_run
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon\na time", encoding="utf-8")
    args = [f"--out_dir={out_dir}", "--max_new_tokens=20", "--temperature=0"]
    from_file = run_sample(*args, f"--start=FILE:{prompt}")
    from_text = run_sample(*args, "--start=Once upon\na time")
    assert_ok(from_file)
    assert from_file.stdout == from_text.stdout and from_file.stdout.startswith("Once upon\na time"), (
        f"{from_file.stdout!r} vs {from_text.stdout!r}")


def test_several_samples_are_one_batch_each_followed_by_a_separator(char_run, run_sample):
    out_dir, model = char_run
    result = run_sample(f"--out_dir={out_dir}", "--start=ab", "--max_new_tokens=25", "--temperature=0",
                        "--num_samples=3")
    assert_ok(result)
    tok = load_tokenizer(CHAR_META)
    one = "ab" + tok.decode(greedy_without_cache(model, tok.encode("ab"), 25))
    assert result.stdout == f"{one}\n{sample.SEPARATOR}\n" * 3, repr(result.stdout)


def test_long_prompt_is_cut_to_the_context_with_a_notice(char_run, run_sample):
    out_dir, model = char_run
    prompt = "the quick brown fox jumps over the lazy dog"  # 43 characters, block_size 16
    result = run_sample(f"--out_dir={out_dir}", f"--start={prompt}", "--max_new_tokens=10", "--temperature=0")
    assert_ok(result)
    assert "longer than the model's context; keeping its last 16" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    tok = load_tokenizer(CHAR_META)
    expected = prompt[-16:] + tok.decode(greedy_without_cache(model, tok.encode(prompt[-16:]), 10)) + "\n"
    assert result.stdout == expected, f"{result.stdout!r} != {expected!r}"


@pytest.mark.skipif(not HAVE_BPE, reason="GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
def test_gpt2_checkpoint_decodes_with_tiktoken(tmp_path, run_sample):
    model = make_checkpoint(tmp_path, GPT2_META, block_size=32)
    result = run_sample(f"--out_dir={tmp_path}", "--start=Hello, world", "--max_new_tokens=12",
                        "--temperature=0", "--stop_at_eot=False")
    assert_ok(result)
    tok = load_tokenizer(GPT2_META)
    new = greedy_without_cache(model, tok.encode("Hello, world"), 12)
    assert result.stdout == "Hello, world" + tok.decode(new) + "\n", f"{result.stdout!r} vs ids {new}"


@pytest.mark.skipif(not HAVE_BPE, reason="GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
def test_generation_stops_at_end_of_text(tmp_path, run_sample):
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    with torch.no_grad():  # the final norm always outputs eot's (big) embedding
        model.transformer.wte.weight[50256] = 1.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
    save_checkpoint(tmp_path / "ckpt.pt", {"model_args": asdict(config), "model": model.state_dict(),
                                           "meta": GPT2_META, "config": {}, "iter_num": 0})
    args = [f"--out_dir={tmp_path}", "--start=Hi", "--max_new_tokens=3", "--temperature=0"]
    stopped, unstopped = run_sample(*args), run_sample(*args, "--stop_at_eot=False")
    assert_ok(stopped)
    assert stopped.stdout == "Hi\n", repr(stopped.stdout)
    assert unstopped.stdout == "Hi" + "<|endoftext|>" * 3 + "\n", repr(unstopped.stdout)


@pytest.mark.skipif(not HAVE_BPE, reason="GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
def test_streamed_pieces_are_whole_characters_even_when_tokens_split_them():
    tok = load_tokenizer(GPT2_META)
    text = "naïve café 🐍🐍 字字 ok"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids), "the text should have tokens that split a character"

    class Replay:  # stands in for a model: "generates" the given ids
        config = GPTConfig(block_size=64)

        def parameters(self):
            yield torch.zeros(1)

        def generate_stream(self, idx, max_new_tokens, **kwargs):
            yield from (torch.tensor([i]) for i in ids[:max_new_tokens])

    cfg = sample.SimpleNamespace(**sample.DEFAULTS)
    pieces = list(sample.stream_text(Replay(), tok, [0], cfg))
    assert "".join(pieces) == text, pieces
    assert not any("\ufffd" in p for p in pieces), pieces
    assert len(pieces) > 5, f"expected the text in many pieces, got {pieces}"


def test_local_hugging_face_directory_samples_with_gpt2_tokens(tmp_path, run_sample):
    pytest.importorskip("transformers")
    if not HAVE_BPE:
        pytest.skip("GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)).eval()
    model.save_pretrained(tmp_path / "hf")
    result = run_sample(f"--init_from={tmp_path / 'hf'}", "--start=The", "--max_new_tokens=8",
                        "--temperature=0", "--stop_at_eot=False")
    assert_ok(result)
    tok = load_tokenizer(GPT2_META)
    assert result.stdout == "The" + tok.decode(greedy_without_cache(model, tok.encode("The"), 8)) + "\n"


# -----------------------------------------------------------------------------
# Interactive mode


def test_interactive_mode_answers_each_prompt_until_an_empty_line(char_run):
    out_dir, model = char_run
    result = sample_cli(f"--out_dir={out_dir}", "--interactive=True", "--max_new_tokens=10", "--temperature=0",
                        input="hello\nwhy é\nab\n\nnever read\n")
    assert_ok(result)
    tok = load_tokenizer(CHAR_META)
    answers = [tok.decode(greedy_without_cache(model, tok.encode(p), 10)) for p in ("hello", "ab")]
    # a character the vocabulary lacks is reported and the loop goes on
    expected = f"> {answers[0]}\n" + "> " + f"> {answers[1]}\n" + "> "  # the middle prompt got no answer
    assert result.stdout == expected, f"{result.stdout!r} != {expected!r}"
    assert "error: the prompt cannot be encoded: character 'é'" in result.stderr, result.stderr


def test_interactive_mode_quits_at_end_of_input(char_run, run_sample, monkeypatch):
    out_dir, _ = char_run
    monkeypatch.setattr(sys, "stdin", io.StringIO("ab\n"))  # no empty line: Ctrl-D ends it
    result = run_sample(f"--out_dir={out_dir}", "--interactive=True", "--max_new_tokens=5")
    assert result.stdout.count("> ") == 2 and result.stdout.endswith("> \n"), repr(result.stdout)


def test_interactive_ctrl_c_stops_the_generation_and_asks_again(char_run):
    out_dir, _ = char_run
    proc = subprocess.Popen([sys.executable, "sample.py", f"--out_dir={out_dir}", "--interactive=True",
                             "--max_new_tokens=1000000"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"ab\n")
        proc.stdin.flush()
        seen = b""
        deadline = time.time() + 60
        while len(seen) < 20 and time.time() < deadline:  # the answer is streaming
            seen += os.read(proc.stdout.fileno(), 100)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        out, err = proc.communicate(b"\n", timeout=60)  # then an empty line quits
    finally:
        proc.kill()
    text = (seen + out).decode()
    assert proc.returncode == 0, f"exit code {proc.returncode}: {err.decode()}"
    assert "[stopped]\n> " in text, repr(text[-200:])


# -----------------------------------------------------------------------------
# Errors


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    assert_one_line_error(sample_cli(f"--out_dir={tmp_path}"), "no checkpoint at", "python train.py",
                          "--init_from=gpt2")


def test_unreadable_and_foreign_checkpoints_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ckpt.pt").write_bytes(b"not a checkpoint at all")
    assert_one_line_error(sample_cli(f"--out_dir={tmp_path / 'a'}"), "not a readable checkpoint")
    (tmp_path / "b").mkdir()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "b" / "ckpt.pt")
    assert_one_line_error(sample_cli(f"--out_dir={tmp_path / 'b'}"), "not a sprout checkpoint")


def test_missing_prompt_file_is_named(char_run, tmp_path):
    out_dir, _ = char_run
    missing = tmp_path / "nope.txt"
    assert_one_line_error(sample_cli(f"--out_dir={out_dir}", f"--start=FILE:{missing}"),
                          f"prompt file {missing} does not exist")


def test_character_outside_the_vocabulary_is_named(char_run):
    out_dir, _ = char_run
    assert_one_line_error(sample_cli(f"--out_dir={out_dir}", "--start=caf\u00e9"), "character '\u00e9'")


def test_bad_settings_are_one_line_errors(char_run):
    out_dir, _ = char_run
    assert_one_line_error(sample_cli(f"--out_dir={out_dir}", "--top_p=0"), "top_p")
    assert_one_line_error(sample_cli("--init_from=gpt3"), "init_from='gpt3'", "gpt2-medium")


# -----------------------------------------------------------------------------
# bench.py


def test_bench_quick_runs_and_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "bench.py", "--quick", f"--out={out}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
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
    for needle in ("ms/iter", "cache batch1", "tok/s", "GFLOP/s"):
        assert needle in result.stdout, result.stdout
