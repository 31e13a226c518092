"""Tests for chat.py: the template and loss mask, chat data in prepare.py, fine-tuning on replies only,
the terminal REPL, the web server (JSON, streaming, limits, concurrency, stop) and a real browser."""
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import chat
import prepare
from model import GPT, GPTConfig, save_checkpoint

REPO = Path(__file__).resolve().parent
SHARED = REPO.parent / "shared"
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
needs_bpe = pytest.mark.skipif(not os.environ.get("TIKTOKEN_CACHE_DIR"),
                               reason="GPT-2 BPE files absent: set TIKTOKEN_CACHE_DIR")

CONVERSATIONS = [  # hand-written: a system prompt, several turns, non-ASCII text
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello! Über 🐍"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": " 6 "}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Green."}],
]
MALFORMED = [  # each skipped for the reason given
    ('{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "unknown role 'tool'"),
    ('{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}', "missing role"),
    ('{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}',
     "empty content"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ('{"text": "not a conversation"}', "no messages list"),
    ("this line is not JSON", "no messages list"),
]
# A character vocabulary that can write the template: printable ASCII, then end-of-text.
ASCII = [chr(i) for i in range(32, 127)] + ["\n"]


def write_jsonl(path, conversations, extra_lines=()):
    lines = [json.dumps({"messages": c}, ensure_ascii=False) for c in conversations] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(script, *args, stdin=None, timeout=120):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, *needles):
    err = result.stderr.strip()
    assert result.returncode == 1, f"exit code {result.returncode}, stderr: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"not one line: {err!r}"
    for needle in needles:
        assert needle in err, f"{needle!r} missing from {err!r}"


def conversation_counts(meta):
    return meta["train_conversations"], meta["val_conversations"], meta["skipped_conversations"]


def char_tokenizer():
    return prepare.load_tokenizer({"tokenizer": "char", "chars": ASCII, "eot_token": len(ASCII)})


def tiny_engine(seed=0, block_size=64, tok=None, **settings):
    tok = tok or char_tokenizer()
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32))
    defaults = dict(temperature=0.0, top_k=None, top_p=None, max_new_tokens=40) | settings
    return chat.Engine(model, tok, defaults, name="tiny")


# ----------------------------------------------------------------------------- template and data

@needs_bpe
def test_chat_template_round_trips_and_mask_covers_exactly_assistant_tokens_and_end_of_turn(tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", CONVERSATIONS)
    result = run_cli("prepare.py", f"--input={src}", "--format=chat", f"--out_dir={tmp_path}", "--name=c",
                     "--val_fraction=0.34")
    assert result.returncode == 0, result.stderr
    meta = prepare.read_meta(tmp_path / "c")
    tok = prepare.load_tokenizer(meta)
    assert meta["chat_template"] == chat.TEMPLATE, meta
    assert conversation_counts(meta) == (2, 1, 0), meta
    ids = {s: np.fromfile(tmp_path / "c" / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")}
    mask = {s: np.fromfile(tmp_path / "c" / f"{s}_mask.bin", dtype=np.uint8) for s in ("train", "val")}
    eot = "<|endoftext|>"
    assert tok.decode(ids["train"].tolist()) == (
        f"System: Be brief.{eot}User: Hi there{eot}Assistant: Hello! Über 🐍{eot}"
        f"User: 2+2?{eot}Assistant: 4{eot}User: and 3+3?{eot}Assistant: 6{eot}")
    assert tok.decode(ids["val"].tolist()) == f"User: Name a colour.{eot}Assistant: Green.{eot}"
    # the mask picks out exactly each reply's tokens (with its leading space) and its end-of-turn
    assert tok.decode(ids["train"][mask["train"] == 1].tolist()) == f" Hello! Über 🐍{eot} 4{eot} 6{eot}"
    assert tok.decode(ids["val"][mask["val"] == 1].tolist()) == f" Green.{eot}"
    for s in ("train", "val"):
        assert len(mask[s]) == len(ids[s]) == meta[f"{s}_tokens"], (s, len(mask[s]), len(ids[s]))
        assert meta[f"{s}_reply_tokens"] == int(mask[s].sum()), meta
    # and the template used in generation is the same one: a prompt is the history plus a header
    engine = chat.Engine(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=64)), tok,
                         dict(temperature=0.0, max_new_tokens=8))
    prompt, kept = engine.chat_prompt(CONVERSATIONS[2][:1], 8)
    assert tok.decode(prompt) == f"{eot}User: Name a colour.{eot}Assistant:" and kept == CONVERSATIONS[2][:1]
    assert prompt[1:] + tok.encode(" Green.") + [tok.eot_token] == ids["val"].tolist()


def test_prepare_chat_skips_and_counts_malformed_conversations(tmp_path):
    src = write_jsonl(tmp_path / "mixed.jsonl", CONVERSATIONS, [line for line, _ in MALFORMED])
    result = run_cli("prepare.py", f"--input={src}", "--format=chat", "--tokenizer=char",
                     f"--out_dir={tmp_path}", "--name=m")
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stdout.splitlines() if "skipped" in line)
    assert "3 usable conversations; skipped 6 of 9" in summary, summary
    for _, reason in MALFORMED:
        assert reason in summary, (reason, summary)
    meta = prepare.read_meta(tmp_path / "m")
    assert meta["skipped_conversations"] == 6 and meta["tokenizer"] == "char", meta
    tok = prepare.load_tokenizer(meta)
    val = np.fromfile(tmp_path / "m" / "val.bin", dtype=meta["dtype"]).tolist()
    assert tok.decode(val) == "User: Name a colour.<|endoftext|>Assistant: Green.<|endoftext|>"


def test_prepare_chat_with_no_usable_conversation_is_a_one_line_error(tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", [], [line for line, _ in MALFORMED])
    result = run_cli("prepare.py", f"--input={src}", "--format=chat", "--tokenizer=char",
                     f"--out_dir={tmp_path}", "--name=bad")
    assert_one_line_error(result, "no usable conversations", "skipped 6 of 6", "unknown role 'tool'")
    assert not (tmp_path / "bad").exists(), list(tmp_path.iterdir())
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert_one_line_error(run_cli("prepare.py", f"--input={text}", "--format=chat", "--tokenizer=char",
                                  f"--out_dir={tmp_path}"), ".jsonl")


def test_hub_chat_set_keeps_its_own_splits_and_skips_bad_rows(tmp_path, monkeypatch):
    class FakeSet:  # what datasets.load_dataset returns, as far as chat.py uses it
        column_names = ["prompt", "messages"]

        def __init__(self, rows):
            self.rows = rows

        def select_columns(self, columns):
            return self

        def iter(self, batch_size):
            yield {"messages": self.rows}

    loaded = []

    def load_dataset(path, split):
        loaded.append((path, split))
        return FakeSet(CONVERSATIONS[:2] + [[{"role": "user"}]] if split == "train_sft"
                       else CONVERSATIONS[2:])

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", load_dataset, raising=False)
    meta = chat.prepare_chat(tmp_path / "u", hub=prepare.DATASETS["ultrachat"], tokenizer="char")
    assert sorted(set(loaded)) == [("HuggingFaceH4/ultrachat_200k", "test_sft"),
                                   ("HuggingFaceH4/ultrachat_200k", "train_sft")], loaded
    assert conversation_counts(meta) == (2, 1, 1), meta
    assert meta["source"] == "hf:HuggingFaceH4/ultrachat_200k", meta


def test_char_vocabulary_without_the_markers_cannot_chat_and_says_so():
    tok = prepare.load_tokenizer({"tokenizer": "char", "chars": list("abc "), "eot_token": 4})
    with pytest.raises(chat.UserError, match="chat template.*GPT-2 BPE"):
        chat.check_tokenizer(tok)
    engine = tiny_engine(tok=tok)
    with pytest.raises(chat.UserError, match="chat template.*GPT-2 BPE"):  # sample.py --chat: one line
        chat.chat_in_terminal(engine)
    assert engine.info()["chat"] is False
    with pytest.raises(ValueError, match="GPT-2 BPE"):
        engine.parse_request({"messages": [{"role": "user", "content": "abc"}]})
    assert engine.parse_request({"prompt": "abc"})["ids"] == [0, 1, 2]  # story mode still works


# ----------------------------------------------------------------------------- fine-tuning

def test_fine_tuning_on_a_tiny_chat_set_lowers_the_assistant_token_loss(tmp_path):
    import train
    rng = np.random.default_rng(0)
    animals = ["cat", "dog", "cow", "hen", "fox", "owl"]
    convs = [[{"role": "user", "content": f"What does the {a} say?"},
              {"role": "assistant", "content": f"The {a} says {a[::-1]}."}] for a in rng.choice(animals, 300)]
    src = write_jsonl(tmp_path / "animals.jsonl", convs)
    chat.prepare_chat(tmp_path / "chat", paths=[src], tokenizer="char")
    # the batch function sets targets to -1 exactly where the mask is 0
    meta = prepare.read_meta(tmp_path / "chat")
    x, y = train.Split(tmp_path / "chat", "val", meta, 32, "cpu").batch(np.array([0, 5, 40]))
    mask = np.fromfile(tmp_path / "chat" / "val_mask.bin", dtype=np.uint8)
    expected = np.stack([mask[s + 1:s + 33] for s in (0, 5, 40)])  # (3, 32)
    assert ((y.numpy() != -1) == (expected == 1)).all(), (y, expected)
    # a base model, trained on every token of the same text (a copy without the mask) ...
    shutil.copytree(tmp_path / "chat", tmp_path / "text")
    del meta["loss_mask"]
    (tmp_path / "text" / "meta.json").write_text(json.dumps(meta))
    tiny = dict(train.DEFAULTS, device="cpu", compile=False, n_layer=2, n_head=2, n_embd=32, block_size=32,
                batch_size=16, gradient_accumulation_steps=1, eval_iters=4, log_interval=10,
                learning_rate=1e-2, warmup_iters=5, min_lr=1e-3)
    train.train(dict(tiny, out_dir=str(tmp_path / "base"), data_dir=str(tmp_path / "text"), max_iters=10,
                     eval_interval=10, lr_decay_iters=10))
    # ... then fine-tuned from its out_dir on the replies only: their val loss is what evals report
    evals = train.train(dict(tiny, out_dir=str(tmp_path / "chat-out"), data_dir=str(tmp_path / "chat"),
                             init_from=str(tmp_path / "base"), max_iters=20, eval_interval=20,
                             lr_decay_iters=20))["evals"]
    before, after = evals[0]["val"], evals[-1]["val"]
    assert evals[0]["iter"] == 0, evals
    assert after < 0.6 * before, f"assistant-token val loss {before:.3f} -> {after:.3f}"


# ----------------------------------------------------------------------------- generation and REPL

def test_chat_prompt_drops_oldest_turns_but_keeps_the_system_message():
    engine = tiny_engine(block_size=64)
    system = {"role": "system", "content": "Be kind."}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"}
             for i in range(8)]
    ids, kept = engine.chat_prompt([system] + turns, max_new_tokens=16)
    assert len(ids) <= 64 - 16, len(ids)
    assert kept[0] == system and kept[-1] == turns[-1] and len(kept) < 9, kept
    assert engine.tok.decode(ids).endswith("Assistant:")
    ids, kept = engine.chat_prompt(turns[:1], max_new_tokens=16)
    assert kept == turns[:1] and len(ids) == 1 + len("User: message number 0") + 1 + len("Assistant:")
    job = engine.parse_request({"prompt": "0123456789" * 10})  # a story prompt keeps its last 64 tokens
    assert job["trimmed"] == 36 and engine.tok.decode(job["ids"]) == ("0123456789" * 10)[36:], job


def test_settings_out_of_range_or_of_the_wrong_type_are_refused_with_the_field_named():
    engine = tiny_engine()
    bad = [({"temperature": 2.5}, "temperature must be from 0.0 to 2.0"),
           ({"temperature": "hot"}, "temperature must be a number"),
           ({"top_k": 1.5}, "top_k must be an integer"), ({"top_k": True}, "top_k must be an integer"),
           ({"top_k": -1}, "top_k must be from 0"), ({"top_p": 0}, "top_p must be above 0.0"),
           ({"top_p": float("nan")}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens must be from 1"),
           ({"max_new_tokens": 10**9}, "max_new_tokens"), ({"stream": "yes"}, "stream must be"),
           ({"colour": 1}, "unknown field 'colour'")]
    for fields, message in bad:
        with pytest.raises(ValueError, match=message):
            engine.parse_request({"prompt": "hi", **fields})
    with pytest.raises(ValueError, match="either a prompt"):
        engine.parse_request({"prompt": "hi", "messages": []})
    with pytest.raises(ValueError, match=r"messages\[1\]: unknown role 'robot'"):
        engine.parse_request({"messages": [{"role": "user", "content": "a"},
                                           {"role": "robot", "content": "b"}]})
    job = engine.parse_request({"prompt": "hi", "top_k": None, "top_p": 1, "max_new_tokens": 5.0})
    assert job["settings"] == dict(temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=5, seed=None), job


def test_repl_streams_replies_keeps_history_resets_and_quits(monkeypatch, capsys):
    engine = tiny_engine(block_size=64, max_new_tokens=12)
    seen = []
    real_prompt = chat.Engine.chat_prompt

    def spy(self, messages, max_new_tokens):
        seen.append([m["content"] for m in messages])
        return real_prompt(self, messages, max_new_tokens)

    monkeypatch.setattr(chat.Engine, "chat_prompt", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you\n/reset\nagain\n/quit\nnever read\n"))
    chat.chat_in_terminal(engine)
    out = capsys.readouterr().out
    assert out.count("bot> ") == 3 and "(a new conversation)" in out, out
    assert seen[0] == ["hello"] and seen[1][0] == "hello" and seen[1][-1] == "how are you", seen
    assert seen[2] == ["again"] and len(seen) == 3, seen  # /reset emptied the history; /quit stopped


def test_repl_says_once_when_the_oldest_turns_no_longer_fit(monkeypatch, capsys):
    engine = tiny_engine(block_size=32, max_new_tokens=8)
    lines = "".join(f"question {i} is rather long\n" for i in range(4))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))  # then Ctrl-D (end of input) quits
    chat.chat_in_terminal(engine)
    out = capsys.readouterr().out
    assert out.count("the oldest turns are left out") == 1 and out.count("bot> ") == 4, out


def save_char_checkpoint(out_dir, chars=ASCII, seed=0):
    """out_dir/ckpt.pt as train.py writes it: a tiny random model on a character vocabulary."""
    meta = {"name": "tiny", "tokenizer": "char", "chars": chars, "eot_token": len(chars),
            "vocab_size": len(chars) + 1, "dtype": "uint16"}
    torch.manual_seed(seed)
    config = GPTConfig(block_size=64, vocab_size=len(chars) + 1, n_layer=2, n_head=2, n_embd=32)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "ckpt.pt", {"model_args": asdict(config), "model": GPT(config).state_dict(),
                                          "meta": meta, "iter_num": 0})
    return out_dir


def test_sample_chat_runs_the_repl_through_stdin(tmp_path):
    out = save_char_checkpoint(tmp_path / "out")
    result = run_cli("sample.py", f"--out_dir={out}", "--chat", "--device=cpu", "--temperature=0",
                     "--max_new_tokens=10", stdin="hello\n/reset\nhi there\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("bot> ") == 2 and "(a new conversation)" in result.stdout, result.stdout


def test_sample_serve_listens_on_localhost_by_default_and_stops_on_ctrl_c(tmp_path):
    import signal
    out = save_char_checkpoint(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "sample.py", f"--out_dir={out}", "--serve", "--port=0",
                             "--device=cpu", "--max_new_tokens=5"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        status, reply = post(("127.0.0.1", port), {"prompt": "Hi", "temperature": 0})
        assert status == 200 and reply["tokens"] <= 5, reply
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.stdout.close()


# ----------------------------------------------------------------------------- the web server

@pytest.fixture
def server():
    """The server on a free port in a thread, for a tiny random char model; yields (host, port, engine)."""
    engine = tiny_engine(seed=3, block_size=64, max_new_tokens=40)
    httpd = chat.make_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.server_address[:2], engine
    httpd.shutdown()
    httpd.server_close()


def post(address, body, headers=None, raw=None):
    """POST /generate; returns (status, parsed JSON or a list of server-sent events)."""
    conn = http.client.HTTPConnection(*address, timeout=60)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", "/generate", data, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read().decode()
    conn.close()
    if response.getheader("Content-Type") == "text/event-stream":
        return response.status, [json.loads(e[len("data: "):]) for e in payload.split("\n\n") if e]
    return response.status, json.loads(payload)


def test_server_page_info_and_json_endpoint_generate(server):
    address, engine = server
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", "/")
    page = conn.getresponse()
    html = page.read().decode()
    assert page.status == 200 and "<textarea" in html and "/generate" in html, page.status
    assert "http://" not in html and "https://" not in html, "the page must not load anything from outside"
    status, info = post(address, {"prompt": "Hello", "max_new_tokens": 10, "temperature": 0})
    expected = engine.tok.decode(engine.model.generate(
        torch.tensor([engine.tok.encode("Hello")]), 10, temperature=0)[0, 5:].tolist())
    assert status == 200 and info["text"] == expected.split("<|endoftext|>")[0], (info, expected)
    assert info["prompt_tokens"] == 5 and info["stop"] in ("end_of_text", "max_new_tokens"), info
    status, reply = post(address, {"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 5})
    assert status == 200 and isinstance(reply["text"], str) and reply["tokens"] <= 5, reply


def test_server_streams_several_chunks_then_a_done_event(server):
    address, _ = server
    status, events = post(address, {"prompt": "Once", "max_new_tokens": 30, "temperature": 1.0,
                                    "seed": 7, "stream": True})
    texts = [e["text"] for e in events if "text" in e]
    assert status == 200 and len(texts) >= 3, events
    assert events[-1]["done"] and events[-1]["tokens"] >= len(texts), events[-1]
    status, whole = post(address, {"prompt": "Once", "max_new_tokens": 30, "temperature": 1.0, "seed": 7})
    assert whole["text"] == "".join(texts), (whole["text"], texts)


def test_server_refuses_bad_parameters_with_400_and_a_message(server):
    address, _ = server
    for body, message in [({"prompt": "a", "temperature": 3}, "temperature must be from 0.0 to 2.0"),
                          ({"prompt": "a", "top_k": "ten"}, "top_k must be an integer"),
                          ({"prompt": 5}, "prompt must be a string"), ([1, 2], "JSON object"),
                          ({"messages": [{"role": "user"}]}, "empty content")]:
        status, reply = post(address, body)
        assert status == 400 and message in reply["error"], (body, status, reply)
    status, reply = post(address, None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"], reply
    status, reply = post(address, {"prompt": "a"}, headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in reply["error"], reply
    status, reply = post(address, {"prompt": "a"}, headers={"Host": f"rebound.example:{address[1]}"})
    assert status == 403 and "localhost" in reply["error"], reply
    status, reply = post(address, {"prompt": "a", "max_new_tokens": 3})
    assert status == 200, "the server must keep serving after bad requests"


def test_server_refuses_an_oversized_request_with_413(server):
    address, _ = server
    status, reply = post(address, {"prompt": "x" * (chat.MAX_BODY + 1)})
    assert status == 413 and "limit is 65,536" in reply["error"], (status, reply)


def test_two_concurrent_requests_match_the_same_requests_made_one_at_a_time(server):
    address, engine = server
    requests = [{"prompt": "The cat", "temperature": 1.0, "seed": 1, "max_new_tokens": 120, "stream": True},
                {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.0,
                 "max_new_tokens": 120, "stream": True}]
    alone = [post(address, r) for r in requests]
    together = [None, None]

    def call(i):
        together[i] = post(address, requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    with engine.lock:  # both requests arrive and wait while the model is busy, then race for it
        for t in threads:
            t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(60)
    assert together == alone, (together, alone)
    assert all(events[-1].get("done") for _, events in alone), alone


def test_a_client_that_goes_away_stops_generation_and_frees_the_model(server, capsys):
    address, _ = server
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("POST", "/generate", json.dumps({"prompt": "a", "max_new_tokens": 2048, "stream": True,
                                                 "temperature": 1.0}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.fp.readline().startswith(b"data: "), "no first event"
    response.close()
    conn.close()  # as the page's stop button does: the connection goes away mid-stream
    log, deadline = "", time.time() + 20
    while "client went away" not in log and time.time() < deadline:
        time.sleep(0.05)
        log += capsys.readouterr().err
    stopped = int(log.split("stopped after ")[1].split()[0])
    assert stopped < 2048, f"generation ran on to {stopped} tokens"
    status, reply = post(address, {"prompt": "a", "max_new_tokens": 4})
    assert status == 200, reply


# ----------------------------------------------------------------------------- a real browser

def browser():
    """A headless Chromium driven by selenium, or skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver_path))


def test_browser_page_streams_text_stops_on_request_and_chats(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    (host, port), _ = server
    driver = browser()
    js = driver.execute_script
    try:
        driver.get(f"http://{host}:{port}/")
        WebDriverWait(driver, 20).until(lambda d: "tiny" in d.find_element(By.ID, "model").text)
        js("document.getElementById('max_new_tokens').value = 1000")  # greedy: runs until stopped
        driver.find_element(By.ID, "prompt").send_keys("Once upon a time")
        driver.find_element(By.ID, "generate").click()
        # text appears while the reply is still streaming (the stop button is live) ...
        WebDriverWait(driver, 30, poll_frequency=0.02).until(lambda d: js(
            "return document.querySelector('#story-out .gen').textContent.length > 0"
            " && !document.querySelector('.stop').disabled"))
        partial = js("return document.querySelector('#story-out .gen').textContent")
        driver.find_element(By.CSS_SELECTOR, "#story .stop").click()
        # ... and stop ends it early: the status says so and Generate is back
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "status").text == "stopped")
        final = js("return document.querySelector('#story-out .gen').textContent")
        assert final.startswith(partial) and len(final) < 1000, (partial, len(final))
        assert driver.find_element(By.ID, "generate").is_enabled()
        # chat mode: a message and its streamed reply as bubbles; the status reports the finished turn
        js("document.getElementById('max_new_tokens').value = 20")
        driver.find_element(By.ID, "tab-chat").click()
        driver.find_element(By.ID, "message").send_keys("Hello there", Keys.ENTER)
        WebDriverWait(driver, 30).until(lambda d: "tokens in" in d.find_element(By.ID, "status").text)
        bubbles = [(e.get_attribute("class"), e.text) for e in driver.find_elements(By.CSS_SELECTOR, ".msg")]
        assert bubbles[0] == ("msg user", "Hello there") and bubbles[1][0] == "msg assistant", bubbles
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
