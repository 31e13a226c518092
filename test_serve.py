"""Tests of serve.py: the API through the real `openai` client (models, completions, chat, streaming,
errors), greedy replies equal to sample.py's, clients that go away, the bounded queue, every refusal
of the guard (each a defect once found in review), the script, and the page in a real browser.
"""
import contextlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import uvicorn

import serve
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import ASCII_META, CHAR_META, REPO, greedy_ids, needs_openai, tiny_engine, write_checkpoint
from configurator import UserError, configure
from tokenizer import EOT_TEXT, CharTokenizer

# -----------------------------------------------------------------------------
# A server in a thread, and clients


@contextlib.contextmanager
def running(*engines, **options):
    """serve.make_app for the engines, served by uvicorn on a free port in a thread; yields its URL."""
    app = serve.make_app(list(engines), **options)
    sock, _ = serve.bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        for engine in engines:
            engine.close()


def story_engine():
    """A model that cannot chat: a character vocabulary without end-of-text."""
    return tiny_engine(seed=4, tok=CharTokenizer(CHAR_META["chars"]), name="story")


@pytest.fixture(scope="module")
def url():
    """A server with two tiny random models: "tiny" (chats) and "story" (cannot)."""
    with running(tiny_engine(seed=3, block_size=64, max_new_tokens=40), story_engine()) as url:
        yield url


def client(url, **options):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=options.pop("api_key", "unused"), max_retries=0,
                         timeout=30, **options)


def raw(url, head, body=b""):
    """Send the request bytes as they are (a closing connection); the status line and the rest."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{head}\nConnection: close\n\n".replace("\n", "\r\n").encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.decode(errors="replace").partition("\r\n")
    return status, rest


def post(url, path, body, headers=None):
    """POST JSON with http.client; (status, parsed JSON reply)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    reply = json.loads(response.read())
    conn.close()
    return response.status, reply


# -----------------------------------------------------------------------------
# The API, through the openai client


@needs_openai
def test_openai_client_lists_models_completes_and_chats_streamed_and_whole(url):
    api = client(url)
    models = {m.id: m for m in api.models.list()}
    assert set(models) == {"tiny", "story"}, models
    assert models["tiny"].model_extra["sprout"]["context"] == 64
    assert models["story"].model_extra["sprout"]["chat"] is False

    whole = api.completions.create(model="tiny", prompt="Once", max_tokens=12, temperature=1.0, seed=5)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason in ("stop", "length"), whole
    assert whole.usage.prompt_tokens == 4 and 1 <= whole.usage.completion_tokens <= 12, whole.usage
    chunks = list(api.completions.create(model="tiny", prompt="Once", max_tokens=12, temperature=1.0, seed=5,
                                         stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text, "streamed and whole differ"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    chat = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=8, temperature=0)
    message = chat.choices[0].message
    assert chat.object == "chat.completion" and message.role == "assistant", chat
    assert chat.usage.completion_tokens <= 8 and chat.choices[0].finish_reason in ("stop", "length")
    stream = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=8, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == message.content and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


@needs_openai
def test_bad_values_are_bad_request_errors_naming_the_field(url):
    import openai

    api = client(url)
    for kwargs, needle in [(dict(temperature=5), "temperature must be from 0.0 to 2.0"),
                           (dict(top_p=0), "top_p must be above 0.0"),
                           (dict(max_tokens=0), "max_tokens must be from 1"),
                           (dict(extra_body={"top_k": 1.5}), "top_k"), (dict(stop=["a"] * 5), "at most 4"),
                           (dict(extra_body={"colour": 1}), "colour")]:
        with pytest.raises(openai.BadRequestError, match=needle):
            api.completions.create(model="tiny", prompt="a", **kwargs)
    with pytest.raises(openai.BadRequestError, match="story cannot chat"):
        api.chat.completions.create(model="story", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]: unknown role 'robot'"):
        api.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "Hi"}])
    with pytest.raises(openai.NotFoundError, match="no model 'nope' here"):
        api.completions.create(model="nope", prompt="a")


@needs_openai
def test_greedy_completion_equals_sample_py_greedy_output(tmp_path, run_sample):
    out = tmp_path / "run"
    write_checkpoint(out, ASCII_META, block_size=64, n_embd=32, seed=7)
    cfg = SimpleNamespace(**serve.DEFAULTS | dict(out_dir=str(out), device="cpu"))
    prompt = "The old ship"
    expected = run_sample(f"--out_dir={out}", f"--start={prompt}", "--temperature=0", "--max_new_tokens=30",
                          "--device=cpu").stdout
    with running(*serve.load_engines(cfg)) as url:  # as the script loads them: named by the folder
        reply = client(url).completions.create(model="run", prompt=prompt, max_tokens=30, temperature=0)
    assert expected == prompt + reply.choices[0].text + "\n", (expected, reply.choices[0].text)


@needs_openai
def test_max_tokens_is_capped_by_the_server_and_stop_strings_end_the_text(url):
    with running(tiny_engine(seed=3), max_tokens_limit=7) as capped:
        reply = client(capped).completions.create(model="tiny", prompt="a", max_tokens=1000, temperature=0)
    assert reply.usage.completion_tokens == 7 and reply.choices[0].finish_reason == "length", reply
    full = client(url).completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0)
    text = full.choices[0].text
    cut = client(url).completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0,
                                         stop=[text[5:7], "never"])
    assert cut.choices[0].text == text[:text.index(text[5:7])] and cut.choices[0].finish_reason == "stop"


@needs_openai
def test_an_api_key_is_required_when_set_and_compared_in_constant_time(monkeypatch):
    import openai

    compared = []
    real = serve.hmac.compare_digest
    monkeypatch.setattr(serve.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    with running(tiny_engine(), api_key="s3cret", loopback=False) as url:  # as with --host=0.0.0.0
        with pytest.raises(openai.AuthenticationError, match="API key"):
            client(url, api_key="wrong").models.list()
        assert [m.id for m in client(url, api_key="s3cret").models.list()] == ["tiny"]
        status, reply = post(url, "/v1/completions", {"prompt": "a"}, {"Host": "my-server.example"})
        assert status == 401 and reply["error"]["code"] == "invalid_api_key", reply
        status, reply = post(url, "/v1/completions", {"prompt": "a", "max_tokens": 2},
                             {"Host": "my-server.example", "Authorization": "Bearer s3cret"})
        assert status == 200, reply  # beyond loopback any host name may be used: the key guards it
    assert len(compared) == 4


def get(url, path):
    """(status, headers, body text) of a GET."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, response.headers, body


def test_the_page_health_and_interactive_docs_are_served(url):
    status, headers, html = get(url, "/")
    assert status == 200 and html == serve.PAGE.read_text(encoding="utf-8"), "the page is serve.html, from disk"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and "https://" not in html
    status, _, health = get(url, "/health")
    assert status == 200 and json.loads(health)["models"]["tiny"] == {"active": 0, "waiting": 0}, health
    status, _, docs = get(url, "/docs")
    assert status == 200 and "swagger" in docs.lower(), docs[:200]
    spec = json.loads(get(url, "/openapi.json")[2])
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions"} <= set(spec["paths"]), spec["paths"]
    status, _, reply = get(url, "/v2/nothing")
    assert status == 404 and "the API is under /v1" in json.loads(reply)["error"]["message"], reply


# -----------------------------------------------------------------------------
# Under load: clients that go away, a bounded queue


def slow_engine(**options):
    """A tiny model slowed to ~100 tokens/s, one request at a time: an abandoned 2048-token request
    would hold it for 20 s."""
    engine = tiny_engine(seed=3, block_size=64, max_new_tokens=2048, max_batch=1, **options)
    engine.model.transformer.h[0].register_forward_pre_hook(lambda module, args: time.sleep(0.01))
    return engine


def send(url, body):
    """An HTTP connection that has sent a POST to /v1/completions and not yet read the reply."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn


def drop(conn):
    """Go away without reading the reply, as a closed tab, a stop button or a killed script does."""
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def first_token_seconds(url):
    """Seconds until the first streamed chunk of a short request arrives."""
    t0 = time.perf_counter()
    response = send(url, {"prompt": "a", "max_tokens": 3, "stream": True}).getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    return time.perf_counter() - t0


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_frees_the_model_for_the_next_request_within_a_second(stream):
    engine = slow_engine()
    with running(engine) as url:
        conn = send(url, {"prompt": "a", "max_tokens": 2048, "stream": stream})
        while not engine.active or engine.active[0].made < 5:  # the model is working on it
            time.sleep(0.01)
        gone = engine.active[0]
        drop(conn)
        assert first_token_seconds(url) < 1.0
    assert gone.finish == "cancelled" and gone.made < 200, (gone.finish, gone.made)


def test_abandoned_queued_requests_do_not_delay_the_next_and_a_full_queue_answers_503():
    engine = slow_engine(max_queue=2)
    with running(engine) as url:
        conns = [send(url, {"prompt": "a", "max_tokens": 2048})]
        while not engine.active:
            time.sleep(0.01)
        conns += [send(url, {"prompt": "a", "max_tokens": 2048}) for _ in range(2)]
        while len(engine.waiting) < 2:  # one generating, two waiting: the queue is full
            time.sleep(0.01)
        full = send(url, {"prompt": "a"}).getresponse()
        reply = json.loads(full.read())
        assert full.status == 503 and full.getheader("Retry-After") == "1", (full.status, reply)
        assert reply["error"]["code"] == "queue_full", reply
        for conn in conns:
            drop(conn)
        assert first_token_seconds(url) < 1.0


# -----------------------------------------------------------------------------
# The guard: each test is a defect a review found in the server this one replaced


def test_cross_site_requests_are_refused_and_the_page_own_origin_is_not(url):
    port = url.rsplit(":", 1)[1]
    body = {"model": "tiny", "prompt": "a", "max_tokens": 2}
    # types a page on another site may POST without a CORS preflight (and one that merely mentions json)
    for media_type in ("text/plain; x=json", "text/plain", "application/x-www-form-urlencoded",
                       "multipart/form-data; boundary=x", "application/jsonp"):
        status, reply = post(url, "/v1/completions", body, {"Content-Type": media_type})
        assert status == 415 and "application/json" in reply["error"]["message"], (media_type, reply)
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{int(port) + 1}"):
        status, reply = post(url, "/v1/completions", body, {"Origin": origin})
        assert status == 403 and "other sites" in reply["error"]["message"], (origin, reply)
    status, reply = post(url, "/v1/completions", body, {"Host": f"rebound.example:{port}"})  # DNS rebinding
    assert status == 403 and "answers to localhost" in reply["error"]["message"], reply
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):  # the page's own requests
        status, reply = post(url, "/v1/completions", body, {"Origin": f"http://{host}", "Host": host})
        assert status == 200 and reply["object"] == "text_completion", reply


def test_malformed_headers_get_a_400_answer_not_a_dropped_connection(url):
    for host in ("[", "a b", "example.com:port"):
        status, rest = raw(url, f"GET /v1/models HTTP/1.1\nHost: {host}")
        assert status == "HTTP/1.1 400 Bad Request" and "is not a host name" in rest, (host, status, rest)
    post_head = "POST /v1/completions HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json"
    status, rest = raw(url, post_head + "\nContent-Length: \u00b2", b"{}")  # isdigit() is true; no number
    assert status == "HTTP/1.1 400 Bad Request" and "Invalid HTTP request" in rest, (status, rest)
    status, rest = raw(url, post_head + "\nTransfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n")
    assert status == "HTTP/1.1 411 Length Required" and "Content-Length" in rest, (status, rest)


def test_a_body_over_the_limit_is_refused_before_it_is_read(url):
    head = "POST /v1/completions HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json"
    status, rest = raw(url, f"{head}\nContent-Length: {10**9}")  # the answer comes with no byte of it sent
    assert status == "HTTP/1.1 413 Request Entity Too Large" and "the limit is 65,536" in rest, (status, rest)


# -----------------------------------------------------------------------------
# The script


def test_serve_script_serves_several_models_on_localhost_and_stops_on_ctrl_c(tmp_path):
    for name in ("story-run", "chat-run"):
        write_checkpoint(tmp_path / name, ASCII_META, block_size=64, n_embd=32)
    runs = f"{tmp_path / 'story-run'},{tmp_path / 'chat-run'}"
    proc = subprocess.Popen([sys.executable, "serve.py", f"--out_dir={runs}", "--port=0", "--device=cpu",
                             "--max_new_tokens=5"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving story-run, chat-run at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split("/ ")[0]
        status, reply = post(url, "/v1/chat/completions", {"model": "chat-run", "messages": [
            {"role": "user", "content": "Hi"}]})
        assert status == 200 and reply["usage"]["completion_tokens"] <= 5, reply
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.stdout.close()


def test_a_bpe_model_is_served_from_its_ckpt_pt_alone(bpe_run):
    out, tok = bpe_run  # its dataset folder and tokenizer.json are gone: ckpt.pt carries the tokenizer
    (engine,) = serve.load_engines(SimpleNamespace(**configure(serve.DEFAULTS, [f"--out_dir={out}",
                                                                                "--device=cpu"])))
    with running(engine) as url:
        status, reply = post(url, "/v1/completions", {"model": engine.name, "prompt": "Hi 🐍", "max_tokens": 5,
                                                      "temperature": 0})
    model = model_from_checkpoint(load_checkpoint(out / "ckpt.pt")).eval()
    expected = tok.decode(greedy_ids(model, tok.encode("Hi 🐍"), 5)).split(EOT_TEXT)[0]
    assert status == 200 and reply["choices"][0]["text"] == expected, (reply, expected)


def test_serving_beyond_loopback_needs_an_api_key(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["serve.py", f"--out_dir={tmp_path}", "--host=0.0.0.0", "--port=0"])
    with pytest.raises(UserError, match="--host=0.0.0.0 opens the server to the network: set --api_key="
                                        ".*or --insecure_no_auth"):
        serve.main()  # before loading anything: there is no checkpoint in tmp_path


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


@pytest.fixture
def page(monkeypatch):
    """(driver, asked): the page of a server whose "tiny" model has defaults outside the sliders'
    usual ranges and decodes slowly enough to stop; `asked` records the fields of every request."""
    driver = browser()
    asked = []
    real = serve.settings_of
    monkeypatch.setattr(serve, "settings_of", lambda body, *args: asked.append(body) or real(body, *args))
    tiny = tiny_engine(seed=3, block_size=64, temperature=0.0, top_k=500, top_p=0.93, max_new_tokens=1500)
    tiny.model.transformer.h[0].register_forward_pre_hook(lambda module, args: time.sleep(0.004))
    try:
        with running(tiny, story_engine()) as url:
            driver.get(url + "/")
            yield driver, asked
    finally:
        driver.quit()


def test_browser_page_picks_models_streams_stops_and_chats_with_history_trimmed(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver, asked = page
    js, wait = driver.execute_script, WebDriverWait(driver, 30, poll_frequency=0.02)
    text = lambda id_: driver.find_element(By.ID, id_).text  # noqa: E731
    wait.until(lambda d: "64-token context" in text("about"))
    # the sliders start from the server's defaults, even outside their usual ranges
    values = js("return ['temperature', 'top_k', 'top_p', 'max_tokens'].map(k => "
                "document.getElementById(k).value)")
    assert values == ["0", "500", "0.93", "1500"] and "(default)" in text("top_k-v"), values
    # story: the prompt shown as text, the reply streams until Stop; untouched sliders send nothing
    driver.find_element(By.ID, "prompt").send_keys("<b>Once</b>")
    driver.find_element(By.ID, "generate").click()
    wait.until(lambda d: js("return document.querySelector('#story-out .gen').textContent.length > 3"
                            " && !document.querySelector('.stop').disabled"))
    driver.find_element(By.CSS_SELECTOR, "#story .stop").click()
    wait.until(lambda d: text("status") == "stopped")
    assert js("return document.querySelector('#story-out span').textContent") == "<b>Once</b>"
    assert not driver.find_elements(By.CSS_SELECTOR, "#story-out b"), "the prompt became HTML"
    assert driver.find_element(By.ID, "generate").is_enabled()
    sent = asked[0].model_fields_set
    assert sent == {"model", "prompt", "stream", "stream_options"}, f"untouched sliders were sent: {sent}"
    # the model picker: "story" cannot chat
    Select(driver.find_element(By.ID, "model")).select_by_value("story")
    assert not driver.find_element(By.ID, "tab-chat").is_enabled() and "char tokens" in text("about")
    Select(driver.find_element(By.ID, "model")).select_by_value("tiny")
    # chat: a touched slider is sent; the oldest messages are left out once the context is full
    js("const s = document.getElementById('max_tokens'); s.value = 8; s.dispatchEvent(new Event('input'))")
    driver.find_element(By.ID, "tab-chat").click()
    for i in range(3):
        driver.find_element(By.ID, "message").send_keys(f"this is message number {i}", Keys.ENTER)
        wait.until(lambda d: "tokens in" in text("status") and len(asked) == 2 + i)
    bubbles = driver.find_elements(By.CSS_SELECTOR, ".msg")
    assert [b.get_attribute("class").split()[1] for b in bubbles] == ["user", "assistant"] * 3, bubbles
    assert asked[-1].max_tokens == 8 and asked[-1].temperature is None
    assert "oldest messages left out" in text("status"), text("status")
    assert driver.find_elements(By.CSS_SELECTOR, ".msg.left-out"), "no bubble is marked as left out"
    assert len(asked[-1].messages) < 5, "the page sent messages the server had already left out"
    driver.save_screenshot(str(tmp_path / "page.png"))
