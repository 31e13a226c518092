"""Serve models over HTTP: an OpenAI-compatible API, its interactive docs, and a web page.

    python serve.py --out_dir=out-chat                    # http://127.0.0.1:8000
    python serve.py --out_dir=out-story,out-chat          # several models, each named by its folder
    python serve.py --init_from=gpt2,hf-folder            # GPT-2's weights, a Hugging Face folder

    GET  /v1/models              the models served (sprout's details under "sprout": context, defaults)
    POST /v1/completions         continue a prompt: prompt, max_tokens, temperature, top_p, top_k, stop,
                                 seed, stream (server-sent events, ending with `data: [DONE]`)
    POST /v1/chat/completions    the assistant's next message, in sprout's chat template (tokenizer.py)
    GET  /health, /docs (the interactive API docs), / (the page: serve.html, beside this file)

The shapes are OpenAI's, so the `openai` client and the tools built on it work unchanged. Each model
has an engine.Engine that decodes all its active requests together, one forward per step; a client
that goes away frees its row before the next step; a full queue answers 503 with Retry-After.

Safe by default: it listens on 127.0.0.1 only, and refuses what a web page elsewhere could send (a
body that is not exactly application/json, an Origin other than its own, a Host other than its own
loopback names: DNS rebinding). Beyond loopback it needs --api_key (or --insecure_no_auth).
"""
import asyncio
import hmac
import ipaddress
import json
import re
import secrets
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

import configurator
from checkpoint import load_model
from configurator import UserError, pick_device, pick_dtype
from decoding import ready_for_decoding
from engine import MAX_NEW_TOKENS, SAMPLING, Engine, QueueFull, ReplyText, check_settings
from tokenizer import ROLES, load_tokenizer, message_problem

DEFAULTS = dict(
    init_from="resume",  # 'resume' (each --out_dir's ckpt.pt), or GPT-2 names / Hugging Face folders / runs
    out_dir="out",  # where train.py wrote ckpt.pt; several, comma-separated, serve several models
    host="127.0.0.1",  # loopback only; any other address needs --api_key (or --insecure_no_auth)
    port=8000,  # 0 picks a free one
    api_key="",  # when set, /v1 needs "Authorization: Bearer <key>"
    insecure_no_auth=False,  # serve beyond loopback without a key: anyone who reaches it may use it
    **SAMPLING,  # temperature, top_k, top_p, max_new_tokens: what a request gets unless it says otherwise
    max_tokens_limit=MAX_NEW_TOKENS,  # a request's max_tokens is capped at this
    max_batch=8,  # requests of one model decoded together, one forward per step
    max_queue=16,  # requests of one model that may wait beyond those; more are answered 503
    seed=1337,
    device="auto",
    dtype="auto",
    compile=False,
)
PAGE = Path(__file__).with_name("serve.html")
MAX_BODY = 64 * 1024  # bytes: a context's worth of chat is a few KiB; a bigger body is a mistake or abuse
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
HOST_HEADER = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
# the page may run its own inline script and style, load nothing from elsewhere, and not be framed
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; frame-ancestors 'none'", "X-Frame-Options": "DENY"}


# -----------------------------------------------------------------------------
# Errors, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}


class APIError(Exception):
    def __init__(self, status, message, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers


def error_response(status, message, param=None, code=None, headers=None):
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status, headers)


async def on_api_error(request, e):
    return error_response(e.status, str(e), e.param, e.code, e.headers)


async def on_http_error(request, e):  # FastAPI's own: an unknown path, a wrong method, an unreadable body
    message = str(e.detail)
    if e.status_code == 404:
        message = f"nothing at {request.url.path[:80]}: the API is under /v1 (GET /v1/models), the page at /"
    return error_response(e.status_code, message, headers=getattr(e, "headers", None))


async def on_invalid(request, e):
    """FastAPI's validation of a request body, as one sentence naming the field."""
    error = e.errors()[0]
    if error["type"] == "json_invalid":
        return error_response(400, f"the body is not valid JSON ({error['ctx']['error']})")
    if len(error["loc"]) < 2:
        return error_response(400, "the body must be a JSON object")
    param = str(error["loc"][1])  # the field, after "body"
    return error_response(400, f"{param}: {error['msg']}", param)


# -----------------------------------------------------------------------------
# The guard: what every request must pass before the app reads it


def host_name(host):
    """The name in a Host header ('localhost:8000' -> 'localhost', '[::1]:80' -> '::1'); None if
    malformed."""
    match = HOST_HEADER.fullmatch(host)
    return match[1].strip("[]").lower() if match else None


class Guard:
    """ASGI middleware refusing, before the app reads anything: a malformed Host (400); on loopback,
    a Host that is not a loopback name (403: a page whose DNS name was pointed at 127.0.0.1, DNS
    rebinding, still sends its own); an Origin other than this server's (403: another site's page);
    a POST whose body is not exactly application/json (415: a cross-site form or a "simple" fetch
    cannot send that type without a CORS preflight, which gets no permission here), has no
    Content-Length (411), or is over MAX_BODY (413, unread)."""

    def __init__(self, app, loopback):
        self.app, self.loopback = app, loopback

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (problem := self.problem(scope)):
            await error_response(*problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def problem(self, scope):
        """(status, message) of the first check the request fails, or None."""
        headers = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        host = headers.get("host", "")
        name = host_name(host)
        if name is None:
            return 400, f"the Host header {host[:60]!r} is not a host name or address"
        if self.loopback and name not in LOOPBACK_NAMES:
            return 403, (f"this server answers to {', '.join(LOOPBACK_NAMES)} only, not {name[:60]!r} "
                         "(serve.py --host opens it to other names)")
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
            return 403, f"requests from other sites' pages are refused (Origin {origin[:60]!r})"
        if scope["method"] == "POST":
            return body_problem(headers)
        return None


def body_problem(headers):
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return 415, "send the body as JSON, with the header Content-Type: application/json"
    length = headers.get("content-length")
    if length is None:
        return 411, "send the body with a Content-Length header"
    if not re.fullmatch(r"[0-9]{1,15}", length):
        return 400, f"Content-Length must be a number of bytes, not {length[:20]!r}"
    if int(length) > MAX_BODY:
        return 413, f"the body is {int(length):,} bytes; the limit is {MAX_BODY:,}"
    return None


bearer = HTTPBearer(auto_error=False, description="the key serve.py was started with (--api_key)")


def check_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
    key = request.app.state.served.api_key
    given = credentials.credentials if credentials else ""
    if key and not hmac.compare_digest(given.encode(), key.encode()):  # constant time: no timing leak
        raise APIError(401, "this server needs its API key: send the header Authorization: Bearer <key>",
                       code="invalid_api_key")


# -----------------------------------------------------------------------------
# Requests


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")  # a 1.5 for an integer, a typo'd field: 400


class StreamOptions(Strict):
    include_usage: bool = Field(False, description="one more chunk before [DONE], with the usage")


class Sampling(Strict):
    model: str | None = Field(None, description="a name from GET /v1/models (optional if one is served)")
    max_tokens: int | None = Field(None, description="new tokens at most; the server caps it")
    temperature: float | None = Field(None, description="0 to 2; 0 always picks the likeliest token")
    top_p: float | None = Field(None, description="sample within this much probability (0 to 1]")
    top_k: int | None = Field(None, description="sprout's extension: sample among the k likeliest; 0: all")
    stop: str | list[str] | None = Field(None, description="up to 4 strings; the text ends before one")
    seed: int | None = Field(None, description="the same seed and settings give the same text")
    stream: bool = Field(False, description="server-sent events as the text comes")
    stream_options: StreamOptions | None = None
    n: int = Field(1, description="replies per request: 1 only")
    user: str | None = Field(None, description="accepted and ignored")


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(description="the text to continue ('' starts a new document)")


class TextPart(BaseModel):
    type: str = "text"
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True)  # other fields (a name) are ignored
    role: str = Field(description=f"one of {', '.join(ROLES)}")
    content: str | list[TextPart]


class ChatRequest(Sampling):
    messages: list[Message] = Field(description="the conversation; the oldest turns are left out "
                                    "when it does not fit (see sprout.trimmed in the reply)")
    max_completion_tokens: int | None = Field(None, description="max_tokens' newer name")


def settings_of(body, engine, limit):
    """The engine settings a request asks for, checked one by one so the error names its field."""
    max_tokens = body.max_tokens if getattr(body, "max_completion_tokens", None) is None else \
        body.max_completion_tokens
    given = {"temperature": body.temperature, "top_k": body.top_k, "top_p": body.top_p, "seed": body.seed,
             "max_new_tokens": max_tokens}
    settings = {}
    for key, value in given.items():
        name = "max_tokens" if key == "max_new_tokens" else key
        try:
            settings |= check_settings({key: value}) if value is not None else {}
        except ValueError as e:
            raise APIError(400, str(e).replace(key, name, 1), name) from None
    settings["max_new_tokens"] = min(settings.get("max_new_tokens", engine.defaults["max_new_tokens"]), limit)
    if body.n != 1:
        raise APIError(400, f"n must be 1 (one reply per request), got {body.n}", "n")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stop) > 4:
        raise APIError(400, f"stop takes at most 4 strings, got {len(stop)}", "stop")
    return settings, stop


def completion_prompt(engine, body):
    """(prompt ids, prompt tokens cut to fit the context)."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise APIError(400, "prompt must be a string (or a list of one string)", "prompt")
        prompt = prompt[0]
    try:
        return engine.story_prompt(prompt)
    except (ValueError, UserError) as e:  # empty, with no end-of-text token; a character the vocabulary lacks
        raise APIError(400, str(e), "prompt") from None


def chat_prompt(engine, body, max_new_tokens):
    """(prompt ids, messages left out to fit the context)."""
    if engine.chat_error:
        raise APIError(400, f"{engine.name} cannot chat: {engine.chat_error}", "model")
    messages = [{"role": m.role, "content": m.content if isinstance(m.content, str) else
                 "".join(part.text for part in m.content)} for m in body.messages]
    if not messages:
        raise APIError(400, "messages must hold at least one message", "messages")
    for i, message in enumerate(messages):
        if problem := message_problem(message):
            raise APIError(400, f"messages[{i}]: {problem} (roles: {', '.join(ROLES)})", "messages")
    try:
        ids, kept = engine.chat_prompt(messages, max_new_tokens)
    except UserError as e:  # a character a character vocabulary lacks
        raise APIError(400, str(e), "messages") from None
    return ids, len(messages) - len(kept)


# -----------------------------------------------------------------------------
# Generation: the engine's tokens as OpenAI's objects, whole or as server-sent events


class Reply:
    """One request's generation and the objects that report it: chat.completion(.chunk), or
    text_completion. `trimmed` (sprout's extension): messages, or prompt tokens, left out."""

    def __init__(self, engine, ids, settings, stop, chat, trimmed):
        loop, self.events = asyncio.get_running_loop(), asyncio.Queue()

        def deliver(event):  # on the engine's worker thread: hand the token to this event loop
            loop.call_soon_threadsafe(self.events.put_nowait, event)

        try:
            self.request = engine.submit(ids, settings, deliver)
        except QueueFull as e:
            raise APIError(503, f"{e}; try again shortly", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        self.text = ReplyText(engine.tok, chat, stop)
        self.chat, self.model, self.trimmed = chat, engine.name, trimmed
        self.id, self.created = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12), int(time.time())

    async def pieces(self):
        """The reply's text as it comes, to its end or to a stop string."""
        while (token := await self.events.get()) is not None:
            if piece := self.text.push(token):
                yield piece
            if self.text.stopped:  # a stop string: nothing more is wanted
                self.request.cancel()
                return
        if self.request.error:
            raise APIError(500, f"generation failed: {self.request.error}")
        if rest := self.text.flush():
            yield rest

    def finish_reason(self):
        return "length" if self.request.finish == "length" and not self.text.stopped else "stop"

    def usage(self):
        prompt, made = self.request.prompt_tokens, self.request.made
        return {"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made}

    def choice(self, text, finish=None, whole=False):
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        message = {"role": "assistant", "content": text} if whole else {"content": text} if text else {}
        return {"index": 0, "message" if whole else "delta": message, "logprobs": None,
                "finish_reason": finish}

    def object(self, choices, whole=False, **extra):
        kind = ("chat.completion" if whole else "chat.completion.chunk") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def whole(self, text):
        return self.object([self.choice(text, self.finish_reason(), whole=True)], whole=True,
                           usage=self.usage(), sprout={"trimmed": self.trimmed})

    async def events_text(self, include_usage):
        """Server-sent events: the chunks, the last one with finish_reason; [DONE] at the end."""
        def event(data):
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        try:
            if self.chat:
                yield event(self.object([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]))
            async for piece in self.pieces():
                yield event(self.object([self.choice(piece)]))
            last = self.choice(None, self.finish_reason())
            yield event(self.object([last], sprout={"trimmed": self.trimmed}))
            if include_usage:
                yield event(self.object([], usage=self.usage()))
        except APIError as e:  # the headers are gone: the error travels as an event
            yield event({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        yield "data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """Server-sent events that cancel the generation however they end: finished, or cut short by a
    client that went away (Starlette then cancels the stream as soon as the disconnect arrives)."""

    def __init__(self, reply, include_usage):
        super().__init__(reply.events_text(include_usage), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.reply = reply

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.reply.request.cancel()


async def disconnected(http):
    """Returns once the client has gone (the body has been read, so nothing else arrives)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def respond(http, reply, body):
    """The reply streamed, or whole; a client that goes away before the end cancels it."""
    if body.stream:
        return EventStream(reply, bool(body.stream_options and body.stream_options.include_usage))

    async def whole_text():
        return "".join([piece async for piece in reply.pieces()])

    text, gone = asyncio.ensure_future(whole_text()), asyncio.ensure_future(disconnected(http))
    try:
        done, _ = await asyncio.wait({text, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (text, gone):  # a finished one stays as it is
            task.cancel()
        reply.request.cancel()  # the worker frees the row before its next step
    if text not in done:
        return Response(status_code=499)  # nobody is left to read it
    return JSONResponse(reply.whole(text.result()))


# -----------------------------------------------------------------------------
# Routes


router = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])


def served_engine(http, name):
    served = http.app.state.served
    if name is None and len(served.engines) == 1:
        return next(iter(served.engines.values()))
    if name not in served.engines:
        raise APIError(404, f"no model {name!r} here; GET /v1/models lists {', '.join(served.engines)}",
                       "model", "model_not_found")
    return served.engines[name]


def model_card(engine, served):
    defaults = {("max_tokens" if k == "max_new_tokens" else k): v for k, v in engine.defaults.items()}
    return {"id": engine.name, "object": "model", "created": served.started, "owned_by": "sprout",
            "sprout": {"context": engine.block_size, "tokenizer": engine.tok.name, "defaults": defaults,
                       "chat": engine.chat_error is None, "chat_error": engine.chat_error,
                       "max_tokens_limit": served.max_tokens_limit, "max_body": MAX_BODY}}


@router.get("/models", summary="The models served")
async def list_models(http: Request):
    served = http.app.state.served
    return {"object": "list", "data": [model_card(e, served) for e in served.engines.values()]}


@router.get("/models/{name}", summary="One model")
async def get_model(name: str, http: Request):
    return model_card(served_engine(http, name), http.app.state.served)


@router.post("/completions", summary="Continue a prompt")
async def completions(body: CompletionRequest, http: Request):
    engine = served_engine(http, body.model)
    settings, stop = settings_of(body, engine, http.app.state.served.max_tokens_limit)
    ids, cut = completion_prompt(engine, body)
    return await respond(http, Reply(engine, ids, settings, stop, False, cut), body)


@router.post("/chat/completions", summary="The assistant's next message")
async def chat_completions(body: ChatRequest, http: Request):
    engine = served_engine(http, body.model)
    settings, stop = settings_of(body, engine, http.app.state.served.max_tokens_limit)
    ids, trimmed = chat_prompt(engine, body, settings["max_new_tokens"])
    return await respond(http, Reply(engine, ids, settings, stop, True, trimmed), body)


async def page():
    return HTMLResponse(PAGE.read_bytes(), headers=PAGE_HEADERS)


async def health(http: Request):
    engines = http.app.state.served.engines.values()
    busy = {e.name: {"active": len(e.active), "waiting": len(e.waiting)} for e in engines}
    return {"status": "ok", "models": busy}


def make_app(engines, loopback=True, api_key="", max_tokens_limit=MAX_NEW_TOKENS):
    """The FastAPI app serving the engines (named by engine.name). loopback: bound to a loopback
    address, so the Host header must name it."""
    app = FastAPI(title="sprout", summary="OpenAI-compatible text generation from sprout's models",
                  version="1")
    app.state.served = SimpleNamespace(engines={e.name: e for e in engines}, api_key=api_key,
                                       max_tokens_limit=max_tokens_limit, started=int(time.time()))
    app.include_router(router)
    app.add_api_route("/", page, include_in_schema=False)
    app.add_api_route("/health", health, summary="Whether the server is up, and how busy")
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_middleware(Guard, loopback=loopback)
    return app


# -----------------------------------------------------------------------------
# The script


def bind(host, port):
    """A listening socket (port 0: a free one); whether its address is a loopback one."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or "
                        "--host") from None
    return sock, ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def model_sources(cfg):
    """(name, init_from, out_dir) of each model to serve: each --out_dir, or each --init_from."""
    if cfg.init_from == "resume":
        sources = [("resume", d) for d in cfg.out_dir.split(",") if d]
    else:
        sources = [(src, cfg.out_dir) for src in cfg.init_from.split(",") if src]
    named = [(Path(src if src != "resume" else out).resolve().name, src, out) for src, out in sources]
    names = [name for name, _, _ in named]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise UserError(f"two models would both be called {dupes[0]!r}: serve folders with different names")
    if not named:
        raise UserError("no model to serve: give --out_dir=run1[,run2] or --init_from=gpt2")
    return named


def load_engines(cfg):
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    hint = (": train one with train.py, point --out_dir at a training run, or serve GPT-2 with "
            "--init_from=gpt2")
    settings = {k: getattr(cfg, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens")}
    engines = []
    for name, init_from, out_dir in model_sources(cfg):
        model, meta, _ = load_model(init_from, out_dir, hint)
        model = ready_for_decoding(model, device, dtype, cfg.compile)
        try:
            engines.append(Engine(model, load_tokenizer(meta), settings, name, cfg.max_batch, cfg.max_queue))
        except ValueError as e:  # default settings a request would be refused
            raise UserError(str(e)) from None
    return engines


def check_flags(cfg):
    if not 0 <= cfg.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {cfg.port}")
    if cfg.max_batch < 1 or cfg.max_queue < 0 or cfg.max_tokens_limit < 1:
        raise UserError("--max_batch and --max_tokens_limit must be at least 1, --max_queue at least 0")
    if cfg.max_new_tokens > cfg.max_tokens_limit:
        raise UserError(f"--max_new_tokens={cfg.max_new_tokens} (the default reply length) is over "
                        f"--max_tokens_limit={cfg.max_tokens_limit}")


def main():
    cfg = SimpleNamespace(**configurator.configure(DEFAULTS, sys.argv[1:]))
    check_flags(cfg)
    sock, loopback = bind(cfg.host, cfg.port)
    if not loopback and not cfg.api_key and not cfg.insecure_no_auth:
        raise UserError(f"--host={cfg.host} opens the server to the network: set --api_key=SECRET (clients "
                        "send it as a Bearer token), or --insecure_no_auth to let anyone who reaches it in")
    engines = load_engines(cfg)
    torch.manual_seed(cfg.seed)  # requests without a seed draw theirs from here
    app = make_app(engines, loopback, cfg.api_key, cfg.max_tokens_limit)
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    print(f"serving {', '.join(e.name for e in engines)} at http://{host}:{port}/ (API docs at /docs; "
          "Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, proxy_headers=False, timeout_graceful_shutdown=3))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly, then passes the signal on
        print("stopped", file=sys.stderr)


if __name__ == "__main__":
    configurator.run(main)
