"""Tests of serve.py, in its order: parsing /generate requests, then the HTTP server (the page from
disk, /info, JSON and server-sent events, refusals, concurrency, clients that go away), the script
itself, and the page in a real browser.
"""
import http.client
import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import serve
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import REPO, greedy_ids, tiny_engine

# -----------------------------------------------------------------------------
# Requests


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
            serve.parse_request(engine, {"prompt": "hi", **fields})
    with pytest.raises(ValueError, match="either a prompt"):
        serve.parse_request(engine, {"prompt": "hi", "messages": []})
    with pytest.raises(ValueError, match=r"messages\[1\]: unknown role 'robot'"):
        serve.parse_request(engine, {"messages": [{"role": "user", "content": "a"},
                                                  {"role": "robot", "content": "b"}]})
    job = serve.parse_request(engine, {"prompt": "hi", "top_k": None, "top_p": 1, "max_new_tokens": 5.0})
    assert job["settings"] == dict(temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=5, seed=None), job


# -----------------------------------------------------------------------------
# The server


@pytest.fixture
def server():
    """The server on a free port in a thread, for a tiny random char model; yields (host, port), engine."""
    engine = tiny_engine(seed=3, block_size=64, max_new_tokens=40)
    httpd = serve.make_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.server_address[:2], engine
    httpd.shutdown()
    httpd.server_close()


def get(address, path):
    """GET path; returns (status, body text)."""
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


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
    status, html = get(address, "/")
    assert status == 200 and "<textarea" in html and "/generate" in html, status
    assert html == serve.PAGE.read_text(encoding="utf-8"), "the page is serve.html, read from disk"
    assert "http://" not in html and "https://" not in html, "the page must not load anything from outside"
    status, info = get(address, "/info")
    info = json.loads(info)
    assert status == 200 and (info["name"], info["block_size"], info["chat"]) == ("tiny", 64, True), info
    status, reply = post(address, {"prompt": "Hello", "max_new_tokens": 10, "temperature": 0})
    expected = engine.tok.decode(engine.model.generate(
        torch.tensor([engine.tok.encode("Hello")]), 10, temperature=0)[0, 5:].tolist())
    assert status == 200 and reply["text"] == expected.split("<|endoftext|>")[0], (reply, expected)
    assert reply["prompt_tokens"] == 5 and reply["stop"] in ("end_of_text", "max_new_tokens"), reply
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
    status, reply = post(address, {"prompt": "x" * (serve.MAX_BODY + 1)})
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


# -----------------------------------------------------------------------------
# The script


def test_serve_listens_on_localhost_by_default_and_stops_on_ctrl_c(bpe_run):
    out, tok = bpe_run  # a BPE model whose dataset (and tokenizer.json) is gone: ckpt.pt carries it
    proc = subprocess.Popen([sys.executable, "serve.py", f"--out_dir={out}", "--port=0", "--device=cpu",
                             "--max_new_tokens=5"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        status, reply = post(("127.0.0.1", port), {"prompt": "Hi 🐍", "temperature": 0})
        model = model_from_checkpoint(load_checkpoint(out / "ckpt.pt")).eval()
        expected = tok.decode(greedy_ids(model, tok.encode("Hi 🐍"), 5)).split("<|endoftext|>")[0]
        assert status == 200 and reply["tokens"] <= 5 and reply["text"] == expected, (reply, expected)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.stdout.close()


# -----------------------------------------------------------------------------
# The page in a real browser


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
    driver = browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    (host, port), _ = server
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
