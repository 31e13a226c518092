"""Inference: a trained model made ready for fast decoding, and text generated from it.

sample.py (the terminal) and serve.py (HTTP) both run models through here:

    ready_for_decoding(model, device, dtype)   eval mode, cast once, the CPU decoding layout
    stream_text(model, tok, ids, settings)     one continuation as text pieces, as tokens arrive
    generate_texts(...)                        several continuations, decoded as one batch
    Engine                                     a model, its tokenizer and default settings, one
                                               generation at a time; chat prompts that fit
"""
import threading

import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import UserError
from tokenizer import TextStream, chat_prompt, check_chat_tokenizer

# -----------------------------------------------------------------------------
# The CPU decoding layout


class DecodingLinear(nn.Module):
    """nn.Linear's x W^T + b for decoding on a CPU, where one row per sequence meets every weight
    matrix and speed is set by how fast the weights stream from memory. W^T is stored cut into n
    column blocks, (n, in, out/n), so that each of the n CPU threads streams a block of its own.
    - One row (decoding a single sequence): x W^T = sum_k x[k] W^T[k], a weighted sum of the rows
      of W^T, which is what F.embedding_bag computes (bag j: block j's rows, weighted by x), with a
      kernel that streams rows at close to the read bandwidth (F.linear runs a one-row product on
      one core, in a layout that streams far slower; BENCH.md has the figures).
    - Several rows (a batch, a prompt): one bmm, which reads each block once for all the rows.
    out is zero-padded to a multiple of n; the extra outputs are cut off."""

    def __init__(self, linear, n):
        super().__init__()
        out, inp = linear.weight.shape
        self.out_features = out
        weight = F.pad(linear.weight.detach(), (0, 0, 0, -out % n))  # (n * out/n, in): zero rows last
        self.register_buffer("blocks", weight.view(n, -1, inp).transpose(1, 2).contiguous())  # (n, in, out/n)
        bias = linear.bias
        if bias is not None:
            bias = F.pad(bias.detach(), (0, -out % n)).view(n, 1, -1)  # (n, 1, out/n)
        self.register_buffer("bias", bias)
        # embedding_bag's view of the blocks: rows 0..n*in of (n*in, out/n), bag j starting at j*in
        self.register_buffer("row_ids", torch.arange(n * inp), persistent=False)
        self.register_buffer("bag_starts", torch.arange(0, n * inp, inp), persistent=False)

    def forward(self, x):
        n, inp, width = self.blocks.shape
        if x.numel() == inp:  # one row
            weights = x.reshape(1, inp).expand(n, inp).reshape(-1)  # (n * in,): x once for every bag
            y = F.embedding_bag(self.row_ids, self.blocks.view(n * inp, width), self.bag_starts,
                                mode="sum", per_sample_weights=weights)  # (n, out/n)
            y = y if self.bias is None else y + self.bias.view(n, width)  # (n, out/n)
        else:
            rows = x.reshape(-1, inp).expand(n, -1, -1)  # (n, M, in): a view, no copy
            if self.bias is None:
                y = torch.bmm(rows, self.blocks)  # (n, M, out/n)
            else:
                y = torch.baddbmm(self.bias, rows, self.blocks)  # (n, M, out/n)
            y = y.transpose(0, 1)  # (M, n, out/n)
        y = y.reshape(*x.shape[:-1], n * width)  # (..., n * out/n): blocks side by side
        return y[..., :self.out_features] if n * width != self.out_features else y  # (..., out)


def prepare_for_decoding(model):
    """Swap every nn.Linear of the model, the output layer included, for a DecodingLinear with the
    same weights. The output layer becomes a copy of the token embedding rather than the tied
    parameter, so the model is for inference only after this. Returns the model."""
    threads = torch.get_num_threads()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, DecodingLinear(child, threads))
    return model


def ready_for_decoding(model, device="cpu", dtype="float32", compile=False):
    """The model as sample.py and serve.py run it: eval mode, on device, in dtype, laid out for
    decoding."""
    # inference only: casting the weights once halves the bytes each token reads in 16-bit, where
    # autocast would convert every weight again on every call
    model.eval().to(device=device, dtype=getattr(torch, dtype))
    # float32 weights get the blocked layout; 16-bit ones keep F.linear, since DecodingLinear's bmm
    # has no fast 16-bit path on a CPU (prompts would read many times slower)
    if device == "cpu" and dtype == "float32":
        prepare_for_decoding(model)
    if compile:  # slow to start; on a CPU it did not decode faster (the matmuls already dominate)
        # a graph per block and kind of call (prefill, one token): the blocks differ in layer_idx
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(model.transformer.h))
        for block in model.transformer.h:
            block.compile(dynamic=True)  # dynamic: one graph serves every cache length
    return model


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
# The engine: a model serving requests one at a time

# How sample.py and serve.py sample unless told otherwise (bench.py times decoding with these too)
SAMPLING = dict(temperature=0.8, top_k=200, top_p=1.0, max_new_tokens=500)
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

    def reply(self, job, stats):
        """Generate for a job ({"ids", "settings", "chat"}), yielding text as it comes; fills stats
        with "tokens" and "stop". Closing the generator stops early and frees the lock."""
        s = job["settings"]
        with self.lock:
            if s["seed"] is not None:
                torch.manual_seed(s["seed"])
            pieces = stream_text(self.model, self.tok, job["ids"], s, stats)
            yield from _without_leading_space(pieces) if job["chat"] else pieces


def _without_leading_space(pieces):
    """A reply without the space the template puts before every message's content."""
    for piece in pieces:
        if piece := piece.lstrip():
            yield piece
            break
    yield from pieces
