"""Chat with a GPT: the chat template, conversation data for fine-tuning, a terminal REPL, a web page.

    python prepare.py --input=conversations.jsonl --format=chat --name=chat   # tokens + loss mask
    python train.py config/finetune_chat.py                                   # learn the replies only
    python sample.py --out_dir=out-chat --chat                                # talk in the terminal
    python sample.py --out_dir=out-chat --serve                               # or at 127.0.0.1:8000

A conversation file holds one JSON object per line with a list of messages:
    {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]}
torch is imported only where a model runs, so that `prepare.py --format=chat` starts quickly.
"""
import json
import sys
import threading
from collections import Counter
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from types import SimpleNamespace

import numpy as np

from configurator import UserError
from prepare import (SPLITS, check_outputs, dataset_meta, load_tokenizer, staged_outputs, token_dtype,
                     write_json)

# ----------------------------------------------------------------------------- the chat template
# Role markers are plain text that GPT-2's BPE already has ("User:" and "Assistant:" are two tokens
# each), not new special ids beyond 50256. So any GPT-2-vocabulary checkpoint (GPT-2 itself, a
# TinyStories model) can learn to chat by fine-tuning alone: no embedding rows to add and train from
# nothing, and the words arrive with their meaning. Every message ends with <|endoftext|> (50256), which
# such a model already predicts where a text is finished: generation stops there.
#
#     User: How are you?<|endoftext|>Assistant: Fine, thanks.<|endoftext|>
#
# The header and the content of a message are encoded apart (content with one leading space), so the
# point where a prompt ends and a reply begins tokenizes alike in training and in generation.
ROLES = {"system": "System:", "user": "User:", "assistant": "Assistant:"}
TEMPLATE = "sprout chat v1: 'System: ', 'User: ', 'Assistant: ' + content, <|endoftext|> after each message"
MESSAGE_FIELDS = ("messages", "conversation")  # UltraChat / OpenAI style; LMSYS-Chat-1M


def check_tokenizer(tok):
    """Raise UserError unless the tokenizer can write the template: GPT-2 BPE always can; a character
    vocabulary only with an end-of-text id and every character of the role markers."""
    if tok.eot_token is None:
        raise UserError("this model's vocabulary has no end-of-text token to end a chat turn with; chat "
                        "needs a GPT-2 BPE model, e.g. one fine-tuned with config/finetune_chat.py")
    try:
        for header in ROLES.values():
            tok.encode(header + " ")
    except UserError as e:
        raise UserError(f"this model cannot write the chat template ({e}); chat needs a GPT-2 BPE "
                        "model, e.g. one fine-tuned with config/finetune_chat.py") from None


def encode_message(tok, role, content):
    """One message's token ids and loss mask: 1 on an assistant's content and end-of-turn, else 0."""
    header = tok.encode(ROLES[role])
    body = tok.encode(" " + content.strip()) + [tok.eot_token]
    learn = int(role == "assistant")
    return header + body, [0] * len(header) + [learn] * len(body)


def encode_conversation(tok, messages):
    """A whole conversation: (ids, mask), lists of equal length."""
    ids, mask = [], []
    for message in messages:
        message_ids, message_mask = encode_message(tok, message["role"], message["content"])
        ids += message_ids
        mask += message_mask
    return ids, mask


def message_problem(message):
    """Why a message cannot be used, or None."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        return "missing role"
    if message["role"] not in ROLES:
        return f"unknown role {message['role']!r}"
    if not isinstance(message.get("content"), str) or not message["content"].strip():
        return "empty content"
    return None


def conversation_problem(messages):
    """Why a conversation cannot be trained on, or None."""
    if not isinstance(messages, list) or not messages:
        return "no messages list"
    for message in messages:
        if problem := message_problem(message):
            return problem
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message"
    return None


# ----------------------------------------------------------------------------- conversations to disk

def local_conversations(paths):
    """(None, messages) for each non-blank line of local .jsonl files; None where a line is no
    conversation at all (bad JSON, no messages field), for the caller to count."""
    for path in paths:
        if Path(path).suffix.lower() != ".jsonl":
            raise UserError(f"{path}: --format=chat reads .jsonl files, one conversation per line "
                            '({"messages": [{"role": "user", "content": "..."}, ...]})')
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield None, _messages_of(line)
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; convert it to UTF-8") from None


def _messages_of(line):
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    return next((record[f] for f in MESSAGE_FIELDS if f in record), None)


def hub_conversations(spec):
    """(split, messages) from a Hugging Face chat set; spec: a prepare.DATASETS entry with its splits."""
    import datasets  # slow to import: only when a hub set is asked for
    for ours, theirs in zip(SPLITS, spec["splits"]):
        try:
            ds = datasets.load_dataset(**spec["load"], split=theirs)
        except OSError as e:  # offline (ConnectionError), an unknown set, HTTP errors
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"could not load {spec['load']['path']} from the Hugging Face hub ({reason}); "
                            "offline, use --input=FILE.jsonl, or HF_HUB_OFFLINE=1 with a filled cache"
                            ) from None
        field = next((f for f in MESSAGE_FIELDS if f in (ds.column_names or [])), None)
        if field is None:
            raise UserError(f"{spec['load']['path']} has no {' or '.join(MESSAGE_FIELDS)} column "
                            f"(columns: {ds.column_names})")
        for batch in ds.select_columns([field]).iter(batch_size=1000):
            yield from ((ours, messages) for messages in batch[field])


def survey(conversations, want_chars=False):
    """One pass to count: usable conversations per split, skipped ones by reason, characters used."""
    usable, skipped, chars = Counter(), Counter(), set()
    for split, messages in conversations:
        if problem := conversation_problem(messages):
            skipped[problem] += 1
            continue
        usable[split] += 1
        if want_chars:
            chars.update(c for m in messages for c in m["content"].strip())
    return usable, skipped, chars


def skipped_summary(usable, skipped):
    """'skipped 3 of 40 conversations (2 empty content, 1 unknown role 'tool')'."""
    reasons = ", ".join(f"{n:,} {reason}" for reason, n in skipped.most_common(5))
    more = f", {len(skipped) - 5} more reasons" if len(skipped) > 5 else ""
    total = sum(usable.values()) + sum(skipped.values())
    return f"skipped {sum(skipped.values()):,} of {total:,} conversations" + (
        f" ({reasons}{more})" if skipped else "")


def assign_splits(conversations, n_usable, val_fraction):
    """Usable conversations with their split: the hub's own, or the last val_fraction of a local file."""
    n_val = max(1, round(n_usable * val_fraction))
    i = 0
    for split, messages in conversations:
        if conversation_problem(messages):
            continue
        if split is None:
            split = "train" if i < n_usable - n_val else "val"
            i += 1
        yield split, messages


def prepare_chat(data_dir, *, paths=None, hub=None, tokenizer="gpt2", val_fraction=0.1, force=False,
                 name=None, command=""):
    """Tokenize conversations (local .jsonl paths, or a hub set: a prepare.DATASETS entry) into
    data_dir: train.bin/val.bin, train_mask.bin/val_mask.bin (uint8, 1 = train on this token) and
    meta.json. One process: chat sets are small next to pretraining corpora. Returns the meta."""
    check_outputs(data_dir, force)

    def conversations():  # a fresh stream each call: the first pass only counts
        return hub_conversations(hub) if hub else local_conversations(paths)

    usable, skipped, chars = survey(conversations(), want_chars=tokenizer == "char")
    print(f"{sum(usable.values()):,} usable conversations; {skipped_summary(usable, skipped)}")
    if not usable:
        raise UserError(f"no usable conversations ({skipped_summary(usable, skipped)}); each needs a "
                        "messages list of {role: system|user|assistant, content} with an assistant reply")
    if not hub and usable[None] < 2:
        raise UserError("only one usable conversation: at least two are needed (one goes to val)")
    tok_meta = {"tokenizer": tokenizer}
    if tokenizer == "char":  # the markers' characters join the data's, and end-of-text comes last
        chars = sorted(chars | set("".join(ROLES.values()) + " "))
        tok_meta.update(chars=chars, eot_token=len(chars))
    tok = load_tokenizer(tok_meta)
    source = "hf:" + hub["load"]["path"] if hub else ", ".join(str(Path(p).resolve()) for p in paths)
    meta = dataset_meta(tok, name or Path(data_dir).name, source, command) | {
        "chat_template": TEMPLATE,
        "loss_mask": "train_mask.bin, val_mask.bin: uint8 per token, 1 = an assistant token to learn",
        "skipped_conversations": sum(skipped.values())}
    pairs = assign_splits(conversations(), usable[None], val_fraction)
    return write_chat_files(pairs, tok, Path(data_dir), meta, total=sum(usable.values()))


def write_chat_files(pairs, tok, data_dir, meta, total):
    """Stream each conversation's ids and mask to the splits' files, add the counts to meta, and
    rename everything into place only when all went well (prepare.staged_outputs). Returns the meta."""
    from tqdm import tqdm
    names = [f"{s}{kind}.bin" for s in SPLITS for kind in ("", "_mask")] + ["meta.json"]
    counts = {s: Counter() for s in SPLITS}
    dtype = token_dtype(tok.vocab_size)
    with staged_outputs(data_dir, names) as tmp, ExitStack() as stack:
        files = {n: stack.enter_context(open(tmp[n], "wb")) for n in names[:-1]}
        for split, messages in tqdm(pairs, total=total, unit="conv", desc="tokenizing", mininterval=0.5):
            ids, mask = encode_conversation(tok, messages)
            files[f"{split}.bin"].write(np.array(ids, dtype=dtype).tobytes())
            files[f"{split}_mask.bin"].write(np.array(mask, dtype=np.uint8).tobytes())
            counts[split].update(tokens=len(ids), trained=sum(mask), conversations=1)
        stack.close()  # flush the .bin files before they are renamed
        if empty := [s for s in SPLITS if not counts[s]["tokens"]]:
            raise UserError(f"the {empty[0]} split has no usable conversations; give more conversations")
        meta |= {f"{s}_tokens": counts[s]["tokens"] for s in SPLITS} | {
            f"{s}_conversations": counts[s]["conversations"] for s in SPLITS} | {
            f"{s}_reply_tokens": counts[s]["trained"] for s in SPLITS}
        write_json(tmp["meta.json"], meta)
    return meta


# ----------------------------------------------------------------------------- generation
# Limits of the settings a request may give: the web page's controls use the same numbers.
MAX_NEW_TOKENS = 2048
# top_k has no upper limit: from the vocabulary's size on, it keeps every token, as 0 does.
SETTINGS = {"temperature": (float, 0.0, 2.0), "top_k": (int, 0, None), "top_p": (float, 0.0, 1.0),
            "max_new_tokens": (int, 1, MAX_NEW_TOKENS), "seed": (int, 0, 2**63 - 1)}
OPTIONAL = {"top_k": 0, "top_p": 1.0, "seed": None}  # what null means: no top-k, no top-p, no reseed


def check_settings(values):
    """`values` checked against SETTINGS; a ValueError names what is wrong."""
    checked = {}
    for key, value in values.items():
        kind, low, high = SETTINGS[key]
        if value is None and key in OPTIONAL:
            checked[key] = OPTIONAL[key]
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{key} must be {'an integer' if kind is int else 'a number'}, "
                             f"got {repr(value)[:40]}")
        # top_p 0 would keep no token at all, so its range is open at the bottom
        if not (low < value if key == "top_p" else low <= value) or not (high is None or value <= high):
            limits = f"{'above' if key == 'top_p' else 'from'} {low}" + (f" to {high}" if high else " up")
            raise ValueError(f"{key} must be {limits}, got {repr(value)[:40]}")
        checked[key] = kind(value)
    return checked


class Engine:
    """A model and its tokenizer serving one generation at a time: a lock serialises callers, so two
    requests never interleave in one KV cache (each generation has its own, and runs alone)."""

    def __init__(self, model, tok, settings, name="model"):
        model.eval()
        self.model, self.tok, self.name = model, tok, name
        self.block_size = model.config.block_size
        self.defaults = check_settings(OPTIONAL | settings)  # each request may override them
        self.lock = threading.Lock()
        try:
            check_tokenizer(tok)
            self.chat_error = None
        except UserError as e:
            self.chat_error = str(e)  # story mode still works

    def chat_prompt(self, messages, max_new_tokens):
        """(prompt ids for the next assistant reply, the messages kept). The oldest messages (after a
        leading system message) are left out until the prompt leaves room for the reply, up to half
        the context; a last message longer than that loses its beginning."""
        budget = self.block_size - min(max_new_tokens, self.block_size // 2)
        parts = [encode_message(self.tok, m["role"], m["content"])[0] for m in messages]
        first = int(messages[0]["role"] == "system" and len(messages) > 1)
        # every training conversation followed an end-of-turn, so a fresh chat starts after one too
        start, header = [self.tok.eot_token], self.tok.encode(ROLES["assistant"])
        while len(parts) - first > 1 and len(start) + sum(map(len, parts)) + len(header) > budget:
            del parts[first]
            messages = messages[:first] + messages[first + 1:]
        ids = start + [t for part in parts for t in part] + header
        return ids[-budget:], messages

    def story_prompt(self, text):
        """(prompt ids, tokens cut): the text's last block_size tokens; end-of-text when empty."""
        ids = self.tok.encode(text)
        if not ids:
            if self.tok.eot_token is None:
                raise ValueError("the prompt is empty and this model has no end-of-text token to start "
                                 "from; type a prompt")
            ids = [self.tok.eot_token]
        cut = max(0, len(ids) - self.block_size)
        return ids[cut:], cut

    def parse_request(self, request):
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
        settings = check_settings(self.defaults | {k: request[k] for k in SETTINGS if k in request})
        job = {"settings": settings, "stream": request.get("stream", False), "chat": "messages" in request}
        try:
            if job["chat"]:
                job["ids"], kept = self.chat_prompt(self._messages(request["messages"]),
                                                    settings["max_new_tokens"])
                job["trimmed"] = len(request["messages"]) - len(kept)
            elif not isinstance(request["prompt"], str):
                raise ValueError(f"prompt must be a string, got {type(request['prompt']).__name__}")
            else:
                job["ids"], job["trimmed"] = self.story_prompt(request["prompt"])
        except UserError as e:  # a character the char vocabulary lacks
            raise ValueError(str(e)) from None
        return job

    def _messages(self, messages):
        if self.chat_error:
            raise ValueError(self.chat_error)
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {role, content}")
        for i, message in enumerate(messages):
            if problem := message_problem(message):
                raise ValueError(f"messages[{i}]: {problem} (roles: {', '.join(ROLES)})")
        return list(messages)

    def reply(self, job, stats):
        """Generate for a job, yielding text as it comes (sample.py's stream_text decodes it); fills
        stats with "tokens" and "stop" ("end_of_text" or "max_new_tokens"). Closing the generator
        stops early and frees the lock."""
        import torch
        from sample import stream_text
        s = job["settings"]
        cfg = SimpleNamespace(stop_at_eot=True, max_new_tokens=s["max_new_tokens"],
                              temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"])
        with self.lock:
            if s["seed"] is not None:
                torch.manual_seed(s["seed"])
            pieces = stream_text(self.model, self.tok, job["ids"], cfg, stats)
            yield from _without_leading_space(pieces) if job["chat"] else pieces

    def info(self):
        """What the web page needs to set up its controls."""
        return {"name": self.name, "block_size": self.block_size, "vocab_size": self.tok.vocab_size,
                "tokenizer": self.tok.name, "chat": self.chat_error is None, "chat_error": self.chat_error,
                "defaults": self.defaults, "max_new_tokens_limit": MAX_NEW_TOKENS, "max_body": MAX_BODY}


def _without_leading_space(pieces):
    """A reply without the space the template puts before every message's content."""
    for piece in pieces:
        if piece := piece.lstrip():
            yield piece
            break
    yield from pieces


# ----------------------------------------------------------------------------- the terminal

def chat_in_terminal(engine):
    """A REPL: keeps the history, streams each reply, /reset and /quit; Ctrl-D quits, Ctrl-C stops a
    reply."""
    if engine.chat_error:
        raise UserError(engine.chat_error)
    print(f"chatting with {engine.name} ({engine.block_size}-token context). /reset starts over, /quit or "
          "Ctrl-D leaves, Ctrl-C stops a reply.")
    history, warned = [], False
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print("\n(/quit or Ctrl-D leaves)")
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history = []
            print("(a new conversation)")
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}: /reset starts over, /quit leaves")
            continue
        if not line:
            continue
        asked = history + [{"role": "user", "content": line}]
        try:
            ids, history = engine.chat_prompt(asked, engine.defaults["max_new_tokens"])
        except UserError as e:  # a character a char vocabulary lacks: say so, ask again
            print(f"error: {e}")
            continue
        if len(history) < len(asked) and not warned:
            print(f"(the conversation no longer fits the {engine.block_size}-token context: "
                  "the oldest turns are left out from now on)")
            warned = True
        history = _answer(engine, ids, history)


def _answer(engine, ids, history):
    """Stream one reply to stdout; returns the history with it (or without the question if the
    reply came out empty, so that turns keep alternating)."""
    print("bot> ", end="", flush=True)
    pieces, stats = [], {}
    reply = engine.reply({"ids": ids, "settings": engine.defaults, "chat": True}, stats)
    try:
        for piece in reply:
            print(piece, end="", flush=True)
            pieces.append(piece)
        print()
    except KeyboardInterrupt:
        print(" [stopped]")
    finally:
        reply.close()  # Ctrl-C may land outside the generator: closing it frees the model's lock
    text = "".join(pieces).strip()
    if not text:
        print("(no reply)")
        return history[:-1]
    return history + [{"role": "assistant", "content": text}]


# ----------------------------------------------------------------------------- the web server
MAX_BODY = 64 * 1024  # bytes: a long chat history is a few KiB; a bigger body is a mistake or abuse
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
DRAIN_LIMIT = 1 << 20  # an oversized body up to this is read and dropped, so the client sees the 413


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
            self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/info":
            self._send_json(200, self.engine.info())
        else:
            self._send_json(404, {"error": f"nothing at {path}: the page is at /, the API at POST /generate"})

    def do_POST(self):
        if not self._host_allowed():
            return self._send_json(403, {"error": "this server answers to localhost and 127.0.0.1 only"})
        if self.path.split("?")[0] != "/generate":
            return self._send_json(404, {"error": "the API is POST /generate"})
        try:
            job = self.engine.parse_request(self._read_json())
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


def main(model, tok, cfg):
    """`sample.py --chat` or `--serve` lands here with the model it loaded and its settings."""
    settings = {k: getattr(cfg, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens")}
    name = Path(cfg.out_dir).name if cfg.init_from == "resume" else cfg.init_from
    if cfg.chat and cfg.serve:
        raise UserError("--chat talks in the terminal and --serve in a web page: choose one")
    if not 0 <= cfg.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {cfg.port}")
    try:
        engine = Engine(model, tok, settings, name)
    except ValueError as e:  # settings the page and the API would refuse
        raise UserError(str(e)) from None
    if cfg.serve:
        serve(engine, cfg.host, cfg.port)
    else:
        chat_in_terminal(engine)


# One self-contained page: no CDN, no build step. Text from the model is set with textContent, never
# as HTML. The stop button aborts the fetch; the server notices the closed connection and stops.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>sprout</title>
<style>
:root{--bg:#f4f6f2;--card:#fff;--ink:#1c2420;--muted:#68736c;--accent:#2e7a4c;--soft:#e9efe8;--line:#dce2da}
*{box-sizing:border-box}
body{margin:0;font:15px/1.55 system-ui,-apple-system,"Segoe UI",sans-serif;background:var(--bg);
 color:var(--ink)}
header{display:flex;align-items:center;gap:1rem;padding:.7rem 1.5rem;background:var(--card);
 border-bottom:1px solid var(--line)}
h1{font-size:1.25rem;margin:0;color:var(--accent)}
#model{color:var(--muted);font-size:.9rem}
nav{margin-left:auto;display:flex;gap:.25rem;background:var(--soft);padding:.2rem;border-radius:9px}
nav button{background:none;border:0;color:var(--ink);padding:.35rem .9rem}
nav button.active{background:var(--card);box-shadow:0 1px 2px #0002;color:var(--accent)}
main{display:grid;grid-template-columns:1fr 270px;gap:1.2rem;padding:1.2rem 1.5rem;max-width:1150px;
 margin:auto}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:1rem 1.1rem}
.hidden{display:none}
textarea{width:100%;font:inherit;padding:.6rem .7rem;border:1px solid var(--line);border-radius:8px;
 resize:vertical}
textarea:focus{outline:2px solid #2e7a4c55}
.row{display:flex;gap:.5rem;margin:.6rem 0}
button{font:inherit;padding:.42rem 1.05rem;border-radius:8px;border:1px solid var(--accent);
 background:var(--accent);color:#fff;cursor:pointer}
button.plain{background:var(--card);color:var(--accent)}
button:disabled{opacity:.4;cursor:default}
#story-out{white-space:pre-wrap;min-height:14rem;padding:.8rem;border-radius:8px;background:var(--soft)}
#story-out .gen{color:var(--accent)}
#chat-log{display:flex;flex-direction:column;gap:.55rem;min-height:16rem;max-height:58vh;overflow-y:auto;
 padding:.3rem}
.msg{max-width:80%;padding:.5rem .85rem;border-radius:14px;white-space:pre-wrap}
.msg.user{align-self:flex-end;background:var(--accent);color:#fff;border-bottom-right-radius:4px}
.msg.assistant{align-self:flex-start;background:var(--soft);border-bottom-left-radius:4px}
.empty{color:var(--muted);margin:auto}
aside label{display:block;margin-bottom:1rem;font-size:.9rem}
aside label span{float:right;color:var(--accent);font-variant-numeric:tabular-nums}
aside small{display:block;color:var(--muted)}
input[type=range]{width:100%;accent-color:var(--accent)}
#status{color:var(--muted);font-size:.85rem;min-height:1.3em;border-top:1px solid var(--line);
 padding-top:.6rem}
#status.error{color:#b3261e}
@media (max-width:780px){main{grid-template-columns:1fr}}
</style></head><body>
<header><h1>sprout</h1><span id="model">connecting&hellip;</span>
<nav><button id="tab-story" class="active">Story</button><button id="tab-chat">Chat</button></nav></header>
<main>
<section id="story" class="card">
 <textarea id="prompt" rows="4" placeholder="Once upon a time"></textarea>
 <div class="row"><button id="generate" class="go">Generate</button>
 <button class="stop plain" disabled>Stop</button></div>
 <div id="story-out"></div>
</section>
<section id="chat" class="card hidden">
 <div id="chat-log"><p class="empty">Say hello. Enter sends, Shift+Enter starts a new line.</p></div>
 <textarea id="message" rows="2" placeholder="Your message"></textarea>
 <div class="row"><button id="send" class="go">Send</button><button class="stop plain" disabled>Stop</button>
 <button id="clear" class="plain">Clear</button></div>
</section>
<aside class="card">
 <label>Temperature <span id="temperature-v"></span>
  <input type="range" id="temperature" min="0" max="2" step="0.05">
  <small>0 always picks the likeliest token</small></label>
 <label>Top-k <span id="top_k-v"></span><input type="range" id="top_k" min="0" max="200" step="1">
  <small>sample among the k likeliest (0: all)</small></label>
 <label>Top-p <span id="top_p-v"></span><input type="range" id="top_p" min="0.05" max="1" step="0.05">
  <small>sample within this much probability</small></label>
 <label>Max new tokens <span id="max_new_tokens-v"></span>
  <input type="range" id="max_new_tokens" min="1" max="1000" step="1"></label>
 <div id="status"></div>
</aside>
</main>
<script>
const $ = id => document.getElementById(id);
const KNOBS = ["temperature", "top_k", "top_p", "max_new_tokens"];
let controller = null, history = [];

function show(k) { $(k + "-v").textContent = k === "top_k" && $(k).value === "0" ? "off" : $(k).value; }
function status(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function busy(on) {
  document.querySelectorAll(".go").forEach(b => b.disabled = on);
  document.querySelectorAll(".stop").forEach(b => b.disabled = !on);
}
function settings() { const s = {}; KNOBS.forEach(k => s[k] = Number($(k).value)); return s; }

async function init() {
  KNOBS.forEach(k => $(k).addEventListener("input", () => show(k)));
  try {
    const info = await (await fetch("/info")).json();
    $("model").textContent =
      `${info.name} \\u00b7 ${info.tokenizer} tokens \\u00b7 ${info.block_size}-token context`;
    $("max_new_tokens").max = Math.min(info.max_new_tokens_limit, 1000);
    KNOBS.forEach(k => $(k).value = info.defaults[k]);
    if (!info.chat) { $("tab-chat").disabled = true; $("tab-chat").title = info.chat_error; }
  } catch (e) { status("cannot reach the server: " + e.message, true); }
  KNOBS.forEach(show);
}

function mode(name) {
  ["story", "chat"].forEach(m => {
    $(m).classList.toggle("hidden", m !== name); $("tab-" + m).classList.toggle("active", m === name);
  });
}

// POST /generate with stream: true; the reply is server-sent events, read as they arrive.
async function generate(body, onText) {
  controller = new AbortController(); busy(true); status("generating\\u2026");
  const t0 = performance.now(); let done = null;
  try {
    const res = await fetch("/generate", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({...body, ...settings(), stream: true}), signal: controller.signal});
    if (!res.ok) { status((await res.json()).error || res.statusText, true); return null; }
    const reader = res.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done: end} = await reader.read();
      if (end) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const line = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const event = JSON.parse(line.slice(6));
        if (event.text) onText(event.text);
        if (event.error) status(event.error, true);
        if (event.done) done = event;
      }
    }
    if (done) {
      const seconds = (performance.now() - t0) / 1000;
      status(`${done.tokens} tokens in ${seconds.toFixed(1)} s, ` +
        (done.stop === "end_of_text" ? "finished" : "stopped at max new tokens") +
        (done.trimmed ? ` (${done.trimmed} ${body.messages ? "oldest messages" : "prompt tokens"} ` +
                        "left out to fit the context)" : ""));
    }
  } catch (e) {
    status(e.name === "AbortError" ? "stopped" : "error: " + e.message, e.name !== "AbortError");
  } finally { controller = null; busy(false); }
  return done;
}

async function story() {
  const out = $("story-out"), prompt = document.createElement("span"), gen = document.createElement("span");
  prompt.textContent = $("prompt").value; gen.className = "gen"; out.replaceChildren(prompt, gen);
  await generate({prompt: $("prompt").value}, t => gen.textContent += t);
}

function bubble(role, text) {
  const log = $("chat-log"), div = document.createElement("div");
  log.querySelector(".empty")?.remove();
  div.className = "msg " + role; div.textContent = text; log.append(div); log.scrollTop = log.scrollHeight;
  return div;
}

async function send() {
  const text = $("message").value.trim();
  if (!text || controller) return;
  $("message").value = "";
  history.push({role: "user", content: text});
  const asked = bubble("user", text), answer = bubble("assistant", "");
  await generate({messages: history}, t => {
    answer.textContent += t; $("chat-log").scrollTop = $("chat-log").scrollHeight; });
  const reply = answer.textContent.trim();
  if (reply) { history.push({role: "assistant", content: reply}); return; }
  history.pop(); asked.remove(); answer.remove(); $("message").value = text;  // nothing came back: try again
}

$("tab-story").onclick = () => mode("story");
$("tab-chat").onclick = () => mode("chat");
$("generate").onclick = story;
$("send").onclick = send;
document.querySelectorAll(".stop").forEach(b => b.onclick = () => controller && controller.abort());
$("clear").onclick = () => { history = []; $("chat-log").replaceChildren(); status(""); };
$("message").addEventListener("keydown", e => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
$("prompt").addEventListener("keydown", e => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) story(); });
init();
</script></body></html>
"""
