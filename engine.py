"""Inference: text generated from a trained model (laid out for decoding by decoding.py).

sample.py (the terminal) and serve.py (HTTP) both run models through here:

    stream_text(model, tok, ids, settings)     one continuation as text pieces, as tokens arrive
    generate_texts(...)                        several continuations, decoded as one batch
    check_settings, ReplyText                  a request's settings; its tokens as the text to show
    Engine                                     a model serving many requests at once: continuous
                                               batching on a worker thread (BatchCache, Request)
"""
import collections
import queue
import sys
import threading

import torch

from configurator import UserError
from model import KVCache, sample_logits
from tokenizer import TextStream, chat_prompt, check_chat_tokenizer

# -----------------------------------------------------------------------------
# Text out


def _device_of(model):
    return next(model.parameters()).device


def _sampling(settings):
    return dict(temperature=settings["temperature"], top_k=settings["top_k"] or None,
                top_p=settings["top_p"])


def stream_text(model, tok, ids, settings, stats=None, stop_at_eot=True):
    """Yield one continuation of the prompt ids as text, piece by piece, as the tokens are made.
    settings: temperature, top_k (0: off), top_p, max_new_tokens. A `stats` dict, if given, receives
    "tokens" (how many were made) and "stop" ("end_of_text" or "max_new_tokens")."""
    eot = tok.eot_token if stop_at_eot else None
    idx = torch.tensor([ids], device=_device_of(model))  # (1, T)
    stats = {} if stats is None else stats
    stats.update(tokens=0, stop="max_new_tokens")
    text = TextStream(tok)
    for token in model.generate_stream(idx, settings["max_new_tokens"], **_sampling(settings), eos_token=eot):
        token = token.item()
        stats["tokens"] += 1
        if token == eot:
            stats["stop"] = "end_of_text"
            break
        if piece := text.push(token):
            yield piece
    if rest := text.flush():
        yield rest


def generate_texts(model, tok, ids, num_samples, settings, stop_at_eot=True):
    """num_samples continuations of the prompt ids, generated together as one batch."""
    eot = tok.eot_token if stop_at_eot else None
    idx = torch.tensor([ids] * num_samples, device=_device_of(model))  # (B, T)
    rows = [[] for _ in range(num_samples)]
    for tokens in model.generate_stream(idx, settings["max_new_tokens"], **_sampling(settings), eos_token=eot):
        for row, token in zip(rows, tokens.tolist()):  # (B,)
            row.append(token)
    if eot is not None:  # a finished row kept yielding eot while the others went on
        rows = [row[:row.index(eot)] if eot in row else row for row in rows]
    return [tok.decode(row) for row in rows]


# -----------------------------------------------------------------------------
# Settings a generation takes

# How sample.py and serve.py sample unless told otherwise (bench.py times decoding with these too)
SAMPLING = dict(temperature=0.8, top_k=200, top_p=1.0, max_new_tokens=500)
# serve.py's default cap on max_new_tokens (its --max_tokens_limit); the web page's control stops there
MAX_NEW_TOKENS = 2048
# top_k has no upper limit: from the vocabulary's size on, it keeps every token, as 0 does.
SETTINGS = {"temperature": (float, 0.0, 2.0), "top_k": (int, 0, None), "top_p": (float, 0.0, 1.0),
            "max_new_tokens": (int, 1, None), "seed": (int, 0, 2**63 - 1)}
OPTIONAL = {"top_k": 0, "top_p": 1.0, "seed": None}  # what null means: no top-k, no top-p, no seed


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


class ReplyText:
    """A generation's tokens as the text to show: whole characters only (TextStream), a chat reply
    without the space the template puts before every message, and nothing from the first stop
    string on. Text that may be the start of a stop string is held back until it cannot be."""

    def __init__(self, tok, chat=False, stop=()):
        self.stream, self.stop = TextStream(tok), [s for s in stop if s]
        self.held, self.started, self.stopped = "", not chat, False

    def push(self, token):
        """The text that can be shown now that token has come."""
        return self._release(self.stream.push(token))

    def flush(self):
        """The rest, once generation has ended."""
        return self._release(self.stream.flush(), end=True)

    def _release(self, text, end=False):
        if self.stopped:
            return ""
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        self.held += text
        cuts = [i for i in (self.held.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.stopped = True
            shown, self.held = self.held[:min(cuts)], ""
            return shown
        # the longest end of the held text that begins a stop string waits for the next piece
        keep = 0 if end else max((n for s in self.stop for n in range(1, len(s))
                                  if self.held.endswith(s[:n])), default=0)
        shown, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return shown


# -----------------------------------------------------------------------------
# Continuous batching: the active requests of a model decoded together, one forward per step


class BatchCache:
    """The KV cache of up to `rows` sequences decoded together, each at a position of its own. Rows
    0..n-1 hold the n active sequences: a new one becomes row n, and a finished one's row takes the
    last row's contents, so the rows stay one contiguous block. For a step, GPT.hidden_states reads
    .pos (the rows' positions) and attention reads .mask (which cached keys each row may see: its
    own, not the longer rows' tails)."""

    def __init__(self, n_layer, rows):
        self.rows = rows
        self.buffers = [None] * n_layer  # (2, rows so far, nh, block_size, hs) each
        self.lengths = []  # positions filled, per row
        self.pos = self.mask = self.end = self.index = self.read = None  # set by begin_step

    def add(self, cache, row=None):
        """Copy a one-sequence KVCache (a prefill) into a new last row, or over `row`."""
        row = len(self.lengths) if row is None else row
        self._reserve(row + 1, cache.buffers)
        for mine, theirs in zip(self.buffers, cache.buffers):
            mine[:, row, :, :cache.pos] = theirs[:, 0, :, :cache.pos]
        if row == len(self.lengths):
            self.lengths.append(cache.pos)
        else:
            self.lengths[row] = cache.pos

    def _reserve(self, n, like):
        """Room for n rows: the buffers grow as the batch does, doubling. They start zeroed: a row's
        masked keys are still read, and a mask cannot hide a NaN that uninitialised memory may hold
        (its weight is 0, and 0 * NaN is NaN)."""
        have = 0 if self.buffers[0] is None else self.buffers[0].size(1)
        if n <= have:
            return
        grown = [b.new_zeros(2, min(self.rows, max(n, 2 * have)), *b.shape[2:]) for b in like]
        if have:
            for new, old in zip(grown, self.buffers):
                new[:, :have] = old
        self.buffers = grown

    def remove(self, row):
        """Free a row: the last row moves into it."""
        last = len(self.lengths) - 1
        if row != last:
            length = self.lengths[last]
            for buf in self.buffers:
                buf[:, row, :, :length] = buf[:, last, :, :length]
            self.lengths[row] = length
        self.lengths.pop()

    def begin_step(self, rows):
        """Set up a one-token step of the given rows (ascending)."""
        device = self.buffers[0].device
        self.pos = torch.tensor([self.lengths[i] for i in rows], device=device)[:, None]  # (n, 1)
        self.end = max(self.lengths[i] for i in rows) + 1  # keys the longest row will have
        self.mask = (torch.arange(self.end, device=device) <= self.pos)[:, None, None, :]  # (n, 1, 1, S)
        self.index = torch.tensor(rows, device=device)
        # every row stepping: a view of the first n rows; otherwise a copy of the rows asked for
        self.read = slice(0, len(rows)) if len(rows) == len(self.lengths) else self.index
        for i in rows:
            self.lengths[i] += 1

    def update(self, layer, k, v):
        """Store each row's new key and value, k, v (n, nh, 1, hs), at its own position; return the
        keys and values the rows attend to, (n, nh, S, hs) each."""
        buf = self.buffers[layer]
        buf[0, self.index, :, self.pos[:, 0]] = k[:, :, 0]  # (n, nh, hs)
        buf[1, self.index, :, self.pos[:, 0]] = v[:, :, 0]
        return buf[0, self.read, :, :self.end], buf[1, self.read, :, :self.end]


class QueueFull(Exception):
    """An Engine has max_queue requests waiting already: try again later."""


class Request:
    """One generation an Engine runs. The engine's worker hands each new token id to `deliver`,
    then None at the end, when .finish says why: "stop" (end of text), "length" (max_new_tokens),
    "cancelled" or "error" (.error says what). cancel() may be called from any thread at any time."""

    def __init__(self, ids, settings, deliver, generator):
        self.ids = list(ids)  # the prompt, then every token made
        self.prompt_tokens = len(self.ids)
        self.settings, self.deliver, self.generator = settings, deliver, generator
        self.made = 0  # tokens made, an end-of-text included
        self.finish = self.error = None
        self.cancelled = False

    def cancel(self):
        """Stop generating: the worker frees the request's row before its next step."""
        self.cancelled = True


class Engine:
    """A model and its tokenizer serving many requests at once. A worker thread keeps up to
    max_batch requests active and decodes them together, one token each per forward; each step
    it retires the finished or cancelled ones and admits waiting ones into the free rows
    (continuous batching). Every request gets what it would get alone: its prompt is prefilled on
    its own, its tokens are drawn with its own random generator, and attention sees its own keys
    only. At most max_queue requests wait; submit() raises QueueFull beyond that."""

    def __init__(self, model, tok, settings, name="model", max_batch=8, max_queue=16):
        model.eval()
        self.model, self.tok, self.name = model, tok, name
        self.block_size = model.config.block_size
        self.device = _device_of(model)
        self.defaults = check_settings(OPTIONAL | settings)  # each request may override them
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache = BatchCache(model.config.n_layer, max_batch)
        self.active, self.waiting = [], collections.deque()  # active[i] owns the cache's row i
        self.wakeup = threading.Condition()
        self.worker, self.closed = None, False
        self.busiest = 0  # the most rows one step has decoded together (tests and bench.py read it)
        try:
            check_chat_tokenizer(tok)
            self.chat_error = None
        except UserError as e:
            self.chat_error = str(e)  # story mode still works

    def chat_prompt(self, messages, max_new_tokens):
        """(prompt ids for the next assistant reply, the messages kept): the prompt leaves room for
        the reply, up to half the context (tokenizer.chat_prompt trims the oldest messages)."""
        return chat_prompt(self.tok, messages, self.block_size - min(max_new_tokens, self.block_size // 2))

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

    def submit(self, ids, settings, deliver):
        """Queue a generation from the prompt ids (at most block_size of them); returns its Request.
        settings: check_settings' keys, the defaults filling in those missing. deliver(token id or
        None) is called on the worker thread and must not block."""
        settings = check_settings(self.defaults | settings)
        seed = settings["seed"]
        if seed is None:  # from torch's global generator: a server seeded at start replays alike
            seed = int(torch.randint(2**62, ()))
        generator = torch.Generator(self.device).manual_seed(seed)
        request = Request(ids[-self.block_size:], settings, deliver, generator)
        with self.wakeup:
            if self.closed:
                raise RuntimeError(f"the engine for {self.name} is closed")
            if sum(not r.cancelled for r in self.waiting) >= self.max_queue:
                raise QueueFull(f"{self.name} is busy: {len(self.waiting)} requests are waiting")
            self.waiting.append(request)
            if self.worker is None:
                self.worker = threading.Thread(target=self._work, name=f"engine {self.name}", daemon=True)
                self.worker.start()
            self.wakeup.notify()
        return request

    def reply(self, ids, settings=None, chat=False, stats=None):
        """Generate from the prompt ids, yielding text as it comes (ReplyText). Closing the
        generator, or Ctrl-C while it waits, cancels the request. A `stats` dict receives "tokens"
        and "finish"."""
        events = queue.SimpleQueue()
        request = self.submit(ids, settings or {}, events.put)
        text = ReplyText(self.tok, chat)
        try:
            while (token := events.get()) is not None:
                if piece := text.push(token):
                    yield piece
            if request.error:
                raise RuntimeError(f"generation failed: {request.error}")
            if rest := text.flush():
                yield rest
        finally:
            request.cancel()
            if stats is not None:
                stats.update(tokens=request.made, finish=request.finish)

    def close(self):
        """Stop the worker; requests still waiting or active end as cancelled."""
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
        if self.worker is not None:
            self.worker.join()

    # The worker thread: admit, restart full windows, step, retire, until closed.

    def _work(self):
        with torch.inference_mode():
            while self._admit():
                try:
                    self._restart_full_windows()
                    self._retire()
                    self._step()
                except Exception as e:  # a failure inside the model: end every request, keep serving
                    self._fail(e)
                self._retire()
        for request in self.active + list(self.waiting):
            request.cancel()
            self._end(request)

    def _admit(self):
        """Wait for work, then move waiting requests into the free rows, prefilling each; drop the
        cancelled ones. False once the engine is closed."""
        with self.wakeup:
            while not self.active and not self.waiting and not self.closed:
                self.wakeup.wait()
            if self.closed:
                return False
            fresh = []
            while self.waiting and (len(self.active) + len(fresh) < self.max_batch
                                    or self.waiting[0].cancelled):
                fresh.append(self.waiting.popleft())
        for request in fresh:
            if request.cancelled:
                self._end(request)
                continue
            try:
                self._prefill(request)
            except Exception as e:  # this request only: say why, serve the others
                request.finish, request.error = "error", f"{type(e).__name__}: {e}"
                self._end(request)
        return True

    def _prefill(self, request, row=None, keep=None):
        """Run a request's last `keep` tokens (block_size unless told) through the model on their own
        into its cache row (a new last row, or `row` when its window restarts) and pick its next token."""
        cache = KVCache(self.model.config.n_layer, self.block_size)
        idx = torch.tensor([request.ids[-(keep or self.block_size):]], device=self.device)  # (1, T)
        x = self.model.hidden_states(idx, cache)[:, -1]  # (1, C)
        self.cache.add(cache, row)
        if row is None:
            self.active.append(request)
        self._take(request, *self.model.top_logits(x, request.settings["top_k"] or None))  # (1, V or k)

    def _restart_full_windows(self):
        """A row whose cache is full restarts its window at its last tokens, as GPT.generate_stream
        does (see there: the context window)."""
        for row, request in enumerate(self.active):
            if self.cache.lengths[row] == self.block_size and not request.finish:
                self._prefill(request, row, keep=self.model.window_restart())

    def _step(self):
        """The next token of every row with room in its cache, from one forward of them all."""
        rows = [i for i, r in enumerate(self.active) if self.cache.lengths[i] < self.block_size]
        if not rows:
            return
        self.busiest = max(self.busiest, len(rows))
        tokens = torch.tensor([[self.active[i].ids[-1]] for i in rows], device=self.device)  # (n, 1)
        self.cache.begin_step(rows)
        x = self.model.hidden_states(tokens, self.cache)[:, -1]  # (n, C)
        top_ks = {self.active[i].settings["top_k"] or None for i in rows}
        # every row's logits in one read of the weights; with one top_k for all, perhaps just those
        # k (GPT.top_logits), else all of them
        logits, ids = self.model.top_logits(x, top_ks.pop() if len(top_ks) == 1 else None)  # (n, k or V)
        for j, i in enumerate(rows):
            self._take(self.active[i], logits[j:j + 1], None if ids is None else ids[j:j + 1])

    def _take(self, request, logits, ids=None):
        """Draw a request's next token from its logits (1, V), or from the logits of just the tokens
        ids (1, k), with its own settings and generator."""
        s = request.settings
        token = sample_logits(logits, s["temperature"], s["top_k"] or None, s["top_p"], request.generator,
                              ids).item()
        request.ids.append(token)
        request.made += 1
        if token == self.tok.eot_token:
            request.finish = "stop"
            return
        self._deliver(request, token)
        if request.made >= s["max_new_tokens"]:
            request.finish = "length"

    def _retire(self):
        """End the finished and the cancelled requests; their rows go to the next ones."""
        for row in reversed(range(len(self.active))):
            request = self.active[row]
            if request.finish or request.cancelled:
                self._end(request)
                self.cache.remove(row)
                self.active[row] = self.active[-1]
                self.active.pop()

    def _fail(self, error):
        print(f"{self.name}: generation failed: {type(error).__name__}: {error}", file=sys.stderr)
        for request in self.active:
            request.finish, request.error = "error", f"{type(error).__name__}: {error}"
        self._retire()
        self.cache = BatchCache(self.model.config.n_layer, self.max_batch)

    def _end(self, request):
        request.finish = request.finish or "cancelled"
        self._deliver(request, None)

    @staticmethod
    def _deliver(request, event):
        try:
            request.deliver(event)
        except Exception:  # the listener is gone (a closed event loop): nobody wants the rest
            request.cancel()
