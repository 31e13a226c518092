"""Serve a model over HTTP: a web page for stories and chat, and a JSON API.

    python serve.py --out_dir=out-chat                 # http://127.0.0.1:8000
    python serve.py --init_from=gpt2 --port=8080

GET / is the page (serve.html, beside this file), GET /info describes the model and the defaults,
POST /generate generates (JSON, optionally streamed as server-sent events). The model runs through
engine.Engine, one request at a time.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import torch

import configurator
from checkpoint import load_model
from configurator import UserError, pick_device, pick_dtype
from engine import MAX_NEW_TOKENS, SAMPLING, SETTINGS, Engine, check_settings, ready_for_decoding
from tokenizer import ROLES, load_tokenizer, message_problem

DEFAULTS = dict(
    init_from="resume",  # 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl', or a local Hugging Face dir
    out_dir="out",  # where train.py wrote ckpt.pt
    host="127.0.0.1",  # 0.0.0.0 opens the server to the network, without authentication
    port=8000,  # 0 picks a free one
    **SAMPLING,  # temperature, top_k, top_p, max_new_tokens: the defaults a request may override
    seed=1337,
    device="auto",
    dtype="auto",
    compile=False,
)
PAGE = Path(__file__).with_name("serve.html")
MAX_BODY = 64 * 1024  # bytes: a long chat history is a few KiB; a bigger body is a mistake or abuse
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
DRAIN_LIMIT = 1 << 20  # an oversized body up to this is read and dropped, so the client sees the 413


def parse_request(engine, request):
    """A /generate request (a dict from JSON) -> a job for reply(); ValueError names a mistake."""
    if not isinstance(request, dict):
        raise ValueError("the body must be a JSON object")
    if unknown := sorted(set(request) - {"prompt", "messages", "stream", *SETTINGS}):
        raise ValueError(f"unknown field {unknown[0]!r}; fields: prompt or messages, stream, "
                         f"{', '.join(SETTINGS)}")
    if ("prompt" in request) == ("messages" in request):
        raise ValueError("send either a prompt (story mode) or messages (chat mode)")
    if not isinstance(request.get("stream", False), bool):
        raise ValueError(f"stream must be true or false, got {request['stream']!r}")
    settings = check_settings(engine.defaults | {k: request[k] for k in SETTINGS if k in request})
    job = {"settings": settings, "stream": request.get("stream", False), "chat": "messages" in request}
    try:
        if job["chat"]:
            job["ids"], kept = engine.chat_prompt(_messages(engine, request["messages"]),
                                                settings["max_new_tokens"])
            job["trimmed"] = len(request["messages"]) - len(kept)
        elif not isinstance(request["prompt"], str):
            raise ValueError(f"prompt must be a string, got {type(request['prompt']).__name__}")
        else:
            job["ids"], job["trimmed"] = engine.story_prompt(request["prompt"])
    except UserError as e:  # a character the char vocabulary lacks
        raise ValueError(str(e)) from None
    return job


def _messages(engine, messages):
    if engine.chat_error:
        raise ValueError(engine.chat_error)
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content}")
    for i, message in enumerate(messages):
        if problem := message_problem(message):
            raise ValueError(f"messages[{i}]: {problem} (roles: {', '.join(ROLES)})")
    return list(messages)


def info(engine):
    """What the web page needs to set up its controls."""
    return {"name": engine.name, "block_size": engine.block_size, "vocab_size": engine.tok.vocab_size,
            "tokenizer": engine.tok.name, "chat": engine.chat_error is None, "chat_error": engine.chat_error,
            "defaults": engine.defaults, "max_new_tokens_limit": MAX_NEW_TOKENS, "max_body": MAX_BODY}


class RequestError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), GET /info (model and limits), POST /generate (JSON, optionally streamed as
    server-sent events). One thread per connection; the Engine's lock serialises the model."""
    engine = None  # set by make_server on a subclass
    timeout = 60  # seconds a stalled client may hold its thread
    server_version = "sprout"

    def do_GET(self):
        path = self.path.split("?")[0]
        if not self._host_allowed():
            self._send_json(403, {"error": "this server answers to localhost and 127.0.0.1 only"})
        elif path in ("/", "/index.html"):
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/info":
            self._send_json(200, info(self.engine))
        else:
            self._send_json(404, {"error": f"nothing at {path}: the page is at /, the API at POST /generate"})

    def do_POST(self):
        if not self._host_allowed():
            return self._send_json(403, {"error": "this server answers to localhost and 127.0.0.1 only"})
        if self.path.split("?")[0] != "/generate":
            return self._send_json(404, {"error": "the API is POST /generate"})
        try:
            job = parse_request(self.engine, self._read_json())
        except RequestError as e:
            return self._send_json(e.status, {"error": str(e)})
        except ValueError as e:
            return self._send_json(400, {"error": str(e)})
        if job["stream"]:
            self._stream(job)
        else:
            self._complete(job)

    def _host_allowed(self):
        """On a loopback address, only requests that name it: a web page whose DNS name was made to
        point at 127.0.0.1 (DNS rebinding) still sends its own name, and is refused."""
        if self.server.server_address[0] not in LOCAL_NAMES:
            return True  # --host opened the server up on purpose
        return urlsplit("//" + self.headers.get("Host", "")).hostname in LOCAL_NAMES

    def _read_json(self):
        if "json" not in self.headers.get("Content-Type", ""):
            raise RequestError(415, "send the body as JSON with the header Content-Type: application/json")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise RequestError(411, "the request needs a Content-Length header")
        if int(length) > MAX_BODY:
            self.close_connection = True
            self.rfile.read(min(int(length), DRAIN_LIMIT))
            raise RequestError(413, f"the request body is {int(length):,} bytes; the limit is {MAX_BODY:,}")
        try:
            return json.loads(self.rfile.read(int(length)))
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise RequestError(400, f"the body is not valid JSON ({e})"[:200]) from None

    def _complete(self, job):
        stats = {}
        pieces = self.engine.reply(job, stats)
        try:
            text = "".join(pieces)
        except Exception as e:  # a failure inside the model: report it, keep serving
            return self._send_json(500, {"error": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            pieces.close()
        self._send_json(200, {"text": text, **stats, **self._prompt_facts(job)})

    def _stream(self, job):
        """Server-sent events: {"text"} per piece, then {"done", "tokens", "stop", ...}. A client that
        goes away (the page's stop button) breaks the pipe: generation stops and the lock is freed."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        stats = {}
        pieces = self.engine.reply(job, stats)
        try:
            for piece in pieces:
                self._event({"text": piece})
            self._event({"done": True, **stats, **self._prompt_facts(job)})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.log_message("client went away: stopped after %d tokens", stats.get("tokens", 0))
        except Exception as e:  # a failure inside the model: tell the client if it still listens
            self.log_message("generation failed: %s: %s", type(e).__name__, e)
            try:
                self._event({"error": f"generation failed: {type(e).__name__}: {e}"})
            except OSError:
                pass
        finally:
            pieces.close()

    @staticmethod
    def _prompt_facts(job):
        return {"prompt_tokens": len(job["ids"]), "trimmed": job["trimmed"]}

    def _event(self, data):
        self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
        self.wfile.flush()

    def _send_json(self, status, data):
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def make_server(engine, host="127.0.0.1", port=8000):
    """A ThreadingHTTPServer for the engine, listening but not yet serving (port 0: a free one)."""
    handler = type("EngineHandler", (Handler,), {"engine": engine})
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or "
                        "--host") from None


def serve(engine, host="127.0.0.1", port=8000):
    """Serve the page and the API until Ctrl-C."""
    server = make_server(engine, host, port)
    host, port = server.server_address[:2]
    print(f"serving {engine.name} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    if host not in LOCAL_NAMES:
        print(f"note: listening on {host}: anyone who can reach this machine can use the model")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    finally:
        server.server_close()


def main():
    cfg = SimpleNamespace(**configurator.configure(DEFAULTS, sys.argv[1:]))
    if not 0 <= cfg.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {cfg.port}")
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    hint = ": train one with train.py, point --out_dir at a training run, or serve GPT-2 with --init_from=gpt2"
    model, meta, _ = load_model(cfg.init_from, cfg.out_dir, hint)
    model = ready_for_decoding(model, device, dtype, cfg.compile)
    torch.manual_seed(cfg.seed)
    settings = {k: getattr(cfg, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens")}
    name = Path(cfg.out_dir).name if cfg.init_from == "resume" else cfg.init_from
    try:
        engine = Engine(model, load_tokenizer(meta), settings, name)
    except ValueError as e:  # settings the page and the API would refuse
        raise UserError(str(e)) from None
    serve(engine, cfg.host, cfg.port)


if __name__ == "__main__":
    configurator.run(main)
