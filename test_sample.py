"""Tests of sample.py, in its order: loading a model, prompts, the samples it writes, interactive
mode, the chat REPL, and its settings. Most call main() in this process; those that need a terminal's
stdin or Ctrl-C run it as a user would.
"""
import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import engine
import hf
import sample
from checkpoint import GPT2_META, load_checkpoint, model_from_checkpoint
from conftest import (ASCII_META, CHAR_META, REPO, assert_one_line_error, greedy_ids, needs_gpt2_files,
                      needs_transformers, run_script, tiny_engine, write_checkpoint)
from configurator import UserError
from model import GPT, GPTConfig
from tokenizer import load_tokenizer


def assert_ok(result):
    assert result.returncode == 0, f"exit code {result.returncode}, stderr: {result.stderr}"


def greedy_text(model, tok, prompt, n):
    """The n tokens greedy_without_cache continues the prompt text with, decoded."""
    return tok.decode(greedy_ids(model, tok.encode(prompt), n))


# -----------------------------------------------------------------------------
# The model


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    assert_one_line_error(run_script("sample.py", f"--out_dir={tmp_path}"), "no checkpoint at", "python train.py",
                          "--init_from=gpt2")


@needs_gpt2_files
@needs_transformers
def test_local_hugging_face_directory_samples_with_gpt2_tokens(tmp_path, run_sample):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)).eval()
    hf.save_pretrained(model, tmp_path / "hf")
    result = run_sample(f"--init_from={tmp_path / 'hf'}", "--start=The", "--max_new_tokens=8",
                        "--temperature=0", "--stop_at_eot=False")
    assert_ok(result)
    tok = load_tokenizer(GPT2_META)
    assert result.stdout == "The" + greedy_text(model, tok, "The", 8) + "\n"


# -----------------------------------------------------------------------------
# Prompts


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


def test_missing_prompt_file_is_named(char_run, tmp_path):
    out_dir, _ = char_run
    missing = tmp_path / "nope.txt"
    assert_one_line_error(run_script("sample.py", f"--out_dir={out_dir}", f"--start=FILE:{missing}"),
                          f"prompt file {missing} does not exist")


def test_long_prompt_is_cut_to_the_context_with_a_notice(char_run, run_sample):
    out_dir, model = char_run
    prompt = "the quick brown fox jumps over the lazy dog"  # 43 characters, block_size 16
    result = run_sample(f"--out_dir={out_dir}", f"--start={prompt}", "--max_new_tokens=10", "--temperature=0")
    assert_ok(result)
    assert "longer than the model's context; keeping its last 16" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    tok = load_tokenizer(CHAR_META)
    expected = prompt[-16:] + greedy_text(model, tok, prompt[-16:], 10) + "\n"
    assert result.stdout == expected, f"{result.stdout!r} != {expected!r}"


def test_character_outside_the_vocabulary_is_named(char_run):
    out_dir, _ = char_run
    assert_one_line_error(run_script("sample.py", f"--out_dir={out_dir}", "--start=caf\u00e9"), "character '\u00e9'")


# -----------------------------------------------------------------------------
# The samples


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
    # 40 new tokens after a 5-token prompt run well past block_size 16: the window restarts
    result = run_sample(f"--out_dir={out_dir}", "--start=hello", "--max_new_tokens=40", "--temperature=0")
    assert_ok(result)
    expected = "hello" + greedy_text(model, load_tokenizer(CHAR_META), "hello", 40) + "\n"
    assert result.stdout == expected, f"\n{result.stdout!r}\n{expected!r}"


def test_several_samples_are_one_batch_each_followed_by_a_separator(char_run, run_sample):
    out_dir, model = char_run
    result = run_sample(f"--out_dir={out_dir}", "--start=ab", "--max_new_tokens=25", "--temperature=0",
                        "--num_samples=3")
    assert_ok(result)
    one = "ab" + greedy_text(model, load_tokenizer(CHAR_META), "ab", 25)
    assert result.stdout == f"{one}\n{sample.SEPARATOR}\n" * 3, repr(result.stdout)


@needs_gpt2_files
def test_gpt2_checkpoint_decodes_with_tiktoken(tmp_path, run_sample):
    model = write_checkpoint(tmp_path, GPT2_META, block_size=32)
    result = run_sample(f"--out_dir={tmp_path}", "--start=Hello, world", "--max_new_tokens=12",
                        "--temperature=0", "--stop_at_eot=False")
    assert_ok(result)
    tok = load_tokenizer(GPT2_META)
    new = greedy_ids(model, tok.encode("Hello, world"), 12)
    assert result.stdout == "Hello, world" + tok.decode(new) + "\n", f"{result.stdout!r} vs ids {new}"


def test_a_bpe_checkpoint_samples_with_its_own_tokenizer_after_its_dataset_is_deleted(bpe_run, run_sample):
    out_dir, tok = bpe_run  # the dataset folder and its tokenizer.json are gone: ckpt.pt is all there is
    ckpt = load_checkpoint(out_dir / "ckpt.pt")
    assert ckpt["meta"]["tokenizer_json"] == tok.json
    prompt = "the lazy fox 🐍 über"
    result = run_sample(f"--out_dir={out_dir}", f"--start={prompt}", "--max_new_tokens=20", "--temperature=0",
                        "--stop_at_eot=False")
    assert_ok(result)
    expected = prompt + greedy_text(model_from_checkpoint(ckpt).eval(), tok, prompt, 20) + "\n"
    assert result.stdout == expected, (result.stdout, expected)


def test_generation_stops_at_end_of_text(tmp_path, run_sample):
    torch.manual_seed(0)
    eot = ASCII_META["eot_token"]
    model = GPT(GPTConfig(block_size=32, vocab_size=ASCII_META["vocab_size"], n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():  # the final norm always outputs eot's (big) embedding
        model.transformer.wte.weight[eot] = 1.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
    write_checkpoint(tmp_path, ASCII_META, model=model)
    args = [f"--out_dir={tmp_path}", "--start=Hi", "--max_new_tokens=3", "--temperature=0"]
    stopped, unstopped = run_sample(*args), run_sample(*args, "--stop_at_eot=False")
    assert_ok(stopped)
    assert stopped.stdout == "Hi\n", repr(stopped.stdout)
    assert unstopped.stdout == "Hi" + "<|endoftext|>" * 3 + "\n", repr(unstopped.stdout)


# -----------------------------------------------------------------------------
# Interactive mode


def test_interactive_mode_answers_each_prompt_until_an_empty_line(char_run):
    out_dir, model = char_run
    result = run_script("sample.py", f"--out_dir={out_dir}", "--interactive=True", "--max_new_tokens=10",
                        "--temperature=0", input="hello\nwhy é\nab\n\nnever read\n")
    assert_ok(result)
    tok = load_tokenizer(CHAR_META)
    answers = [greedy_text(model, tok, p, 10) for p in ("hello", "ab")]
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
                             "--max_new_tokens=1000000"], cwd=REPO, stdin=subprocess.PIPE,
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
# The chat REPL


def test_repl_streams_replies_keeps_history_resets_and_quits(monkeypatch, capsys):
    tiny = tiny_engine(block_size=64, max_new_tokens=12)
    seen = []
    real_prompt = engine.Engine.chat_prompt

    def spy(self, messages, max_new_tokens):
        seen.append([m["content"] for m in messages])
        return real_prompt(self, messages, max_new_tokens)

    monkeypatch.setattr(engine.Engine, "chat_prompt", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you\n/reset\nagain\n/quit\nnever read\n"))
    sample.chat_in_terminal(tiny)
    out = capsys.readouterr().out
    assert out.count("bot> ") == 3 and "(a new conversation)" in out, out
    assert seen[0] == ["hello"] and seen[1][0] == "hello" and seen[1][-1] == "how are you", seen
    assert seen[2] == ["again"] and len(seen) == 3, seen  # /reset emptied the history; /quit stopped


def test_repl_says_once_when_the_oldest_turns_no_longer_fit(monkeypatch, capsys):
    tiny = tiny_engine(block_size=32, max_new_tokens=8)
    lines = "".join(f"question {i} is rather long\n" for i in range(4))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))  # then Ctrl-D (end of input) quits
    sample.chat_in_terminal(tiny)
    out = capsys.readouterr().out
    assert out.count("the oldest turns are left out") == 1 and out.count("bot> ") == 4, out


def test_sample_chat_runs_the_repl_through_stdin_from_a_bpe_checkpoint_alone(bpe_run):
    out_dir, _ = bpe_run  # its dataset deleted
    result = run_script("sample.py", f"--out_dir={out_dir}", "--chat", "--device=cpu", "--temperature=0",
                        "--max_new_tokens=10", input="hello 🐍\n/reset\nhi there\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("bot> ") == 2 and "(a new conversation)" in result.stdout, result.stdout


# -----------------------------------------------------------------------------
# Settings


def test_bad_settings_are_one_line_errors(char_run):
    out_dir, _ = char_run
    assert_one_line_error(run_script("sample.py", f"--out_dir={out_dir}", "--top_p=0"), "top_p")
    assert_one_line_error(run_script("sample.py", "--init_from=gpt3"), "init_from='gpt3'", "gpt2-medium")


def test_an_unknown_device_is_refused_before_the_model_loads(tmp_path, run_sample):
    # no checkpoint at out_dir: the device error must come first
    with pytest.raises(UserError, match=r"unknown device 'gpu': use auto, cpu, cuda, cuda:N \(the Nth GPU\) or mps"):
        run_sample(f"--out_dir={tmp_path / 'nothing'}", "--device=gpu")


def test_temperatures_too_small_to_divide_by_decode_greedily(char_run, run_sample):
    out_dir, _ = char_run  # 1e-45 would overflow the logits to inf, and the probabilities to NaN
    args = [f"--out_dir={out_dir}", "--start=to be", "--max_new_tokens=30", "--top_k=0"]
    greedy = run_sample(*args, "--temperature=0").stdout
    assert run_sample(*args, "--temperature=1e-45").stdout == greedy
    assert run_sample(*args, "--temperature=5e-5").stdout == greedy


def test_a_reader_that_stops_early_ends_sample_py_quietly(char_run):
    out_dir, _ = char_run  # `python sample.py | head -c 10`: head exits after 10 bytes
    proc = subprocess.Popen([sys.executable, "sample.py", f"--out_dir={out_dir}", "--max_new_tokens=100000"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    head = proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert len(head) == 10 and err == "" and proc.returncode == 141, (head, err, proc.returncode)
