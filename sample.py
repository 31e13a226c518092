"""Generate text from a trained checkpoint or from GPT-2's weights.

    python sample.py --out_dir=out-tinystories --start="Once upon a time"
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --num_samples=3 --max_new_tokens=200
    python sample.py --out_dir=out-shakespeare-char --interactive

One sample streams to the terminal token by token; several are generated together as one batch and
printed when done. Decoding uses the model's KV cache (GPT.generate_stream), so each new token costs
one pass over the weights, not a pass over the whole context. Settings: the DEFAULTS below, changed
with --key=value flags or config files, as in train.py.
"""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import configurator
from configurator import UserError, pick_device, pick_dtype
from model import GPT, HF_GPT2_NAMES, load_checkpoint
from prepare import load_tokenizer

DEFAULTS = dict(
    init_from="resume",  # 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl', or a local Hugging Face dir
    out_dir="out",  # where train.py wrote ckpt.pt
    start="\n",  # the prompt: text, or FILE:path to read it from a file; '' starts a new document
    num_samples=1,  # more than one: generated together as a batch
    max_new_tokens=500,
    temperature=0.8,  # 0: always the most likely token (greedy); below 1 safer, above 1 wilder
    top_k=200,  # sample only among the k most likely tokens; 0 = no limit
    top_p=1.0,  # nucleus: only the most likely tokens holding this much probability; 1.0 = no limit
    stop_at_eot=True,  # end a sample at the end-of-text token, as a document ends
    interactive=False,  # a prompt loop: type, read the continuation, repeat
    chat=False,  # talk with the model in the terminal, in turns (see chat.py)
    serve=False,  # a web page and a JSON API (POST /generate) for stories and chat (see chat.py)
    host="127.0.0.1",  # where --serve listens; 0.0.0.0 opens it to the network, without authentication
    port=8000,  # --serve's port; 0 picks a free one
    seed=1337,
    device="auto",  # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",  # 'auto' (bfloat16 or float16 on CUDA, else float32), 'float32', 'bfloat16', 'float16'
    compile=False,  # torch.compile the Transformer blocks: slow to start, and no faster on a CPU
)
SEPARATOR = "-" * 40  # printed after each sample
GPT2_META = {"tokenizer": "gpt2"}  # what load_tokenizer needs for GPT-2's own weights


# -----------------------------------------------------------------------------
# Model and tokenizer


def load_model(init_from, out_dir, device="cpu", dtype="float32", compile=False):
    """The model (eval mode, on device, in dtype) and its tokenizer, from a checkpoint or GPT-2."""
    if init_from == "resume":
        model, meta = _model_from_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    elif init_from in HF_GPT2_NAMES or os.path.isdir(init_from):
        try:
            model = GPT.from_pretrained(init_from)
        except (ImportError, RuntimeError, ValueError, OSError) as e:
            raise UserError(f"init_from={init_from!r}: {_one_line(e)}") from None
        meta = GPT2_META
    else:
        raise UserError(f"init_from={init_from!r} is not 'resume', a GPT-2 name "
                        f"({', '.join(HF_GPT2_NAMES)}) or an existing directory")
    return ready_for_decoding(model, device, dtype, compile), load_tokenizer(meta)


def ready_for_decoding(model, device="cpu", dtype="float32", compile=False):
    """The model as sample.py runs it: eval mode, on device, in dtype, laid out for decoding."""
    # inference only: casting the weights once halves the bytes each token reads in 16-bit, where
    # autocast would convert every weight again on every call
    model.eval().to(device=device, dtype=getattr(torch, dtype))
    # float32 weights laid out for one-row products (see model.DecodingLinear); float16 ones keep
    # F.linear, since DecodingLinear's bmm has no fast float16 path on a CPU (bench.py's model took
    # 1.6 s instead of 0.2 to read a 256-token prompt)
    if device == "cpu" and dtype == "float32":
        model.prepare_for_decoding()
    if compile:  # slow to start; on a CPU it did not decode faster (the matmuls already dominate)
        # a graph per block and kind of call (prefill, one token): the blocks differ in layer_idx
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(model.transformer.h))
        for block in model.transformer.h:
            block.compile(dynamic=True)  # dynamic: one graph serves every cache length
    return model


def _model_from_checkpoint(path):
    """A model and its dataset's meta dict from a train.py checkpoint."""
    try:
        ckpt = load_checkpoint(path)
    except FileNotFoundError:
        out_dir = os.path.dirname(path)
        raise UserError(f"no checkpoint at {path}: train one (e.g. `python train.py "
                        f"config/train_shakespeare_char.py --out_dir={out_dir}`), point --out_dir at a "
                        f"training run, or sample GPT-2's weights with --init_from=gpt2") from None
    except ValueError as e:
        raise UserError(_one_line(e)) from None
    try:
        model = GPT.from_checkpoint(ckpt)
    except (ValueError, RuntimeError, KeyError) as e:  # RuntimeError: the weights do not fit model_args
        raise UserError(f"{path} does not match this model.py: {_one_line(e)}") from None
    meta = ckpt.get("meta")
    if not meta:  # an older or hand-made checkpoint: only a GPT-2-sized vocabulary can be guessed
        if model.config.vocab_size < 50257:
            raise UserError(f"{path} records no tokenizer (no 'meta'), and its "
                            f"{model.config.vocab_size}-token vocabulary is not GPT-2's; re-save it "
                            f"with the dataset's meta.json")
        meta = GPT2_META
    return model, meta


def _one_line(error):
    return " ".join(str(error).split())[:400]


# -----------------------------------------------------------------------------
# Prompts


def read_prompt(start):
    """The prompt text: `start` itself, or the contents of the file it names as FILE:path."""
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:"):])
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt file {path} does not exist (--start=FILE:path reads a prompt "
                        f"file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompt file {path}: {_one_line(e)}") from None


def encode_prompt(tokenizer, text, block_size):
    """Token ids of the prompt, at most block_size of them (the model's context)."""
    try:
        ids = tokenizer.encode(text)
    except UserError as e:  # the char tokenizer names a character its vocabulary lacks
        raise UserError(f"the prompt cannot be encoded: {e}") from None
    if not ids:  # an empty prompt: begin a new document, as the training data did after end-of-text
        if tokenizer.eot_token is None:
            raise UserError("the prompt is empty and this vocabulary has no end-of-text token to start "
                            "from; give a prompt with --start=TEXT")
        ids = [tokenizer.eot_token]
    if len(ids) > block_size:
        print(f"note: the prompt is {len(ids)} tokens, longer than the model's context; keeping its "
              f"last {block_size}", file=sys.stderr)
        ids = ids[-block_size:]
    return ids


# -----------------------------------------------------------------------------
# Generation


def stream_text(model, tokenizer, ids, cfg, stats=None):
    """Yield one continuation of the prompt ids as text, piece by piece, as the tokens are made.
    A `stats` dict, if given, receives "tokens" (how many were made) and "stop" ("end_of_text" or
    "max_new_tokens")."""
    eot = tokenizer.eot_token if cfg.stop_at_eot else None
    idx = torch.tensor([ids], device=_device_of(model))  # (1, T)
    stats = {} if stats is None else stats
    stats.update(tokens=0, stop="max_new_tokens")
    pending = []  # tokens not yet printed: a character's UTF-8 bytes may span several BPE tokens
    for token in model.generate_stream(idx, cfg.max_new_tokens, **_sampling(cfg), eos_token=eot):
        token = token.item()
        stats["tokens"] += 1
        if token == eot:
            stats["stop"] = "end_of_text"
            break
        pending.append(token)
        text = tokenizer.decode(pending)
        # an incomplete character decodes to U+FFFD; wait for its remaining bytes (at most 4 in all)
        if not text.endswith("\ufffd") or len(pending) >= 4:
            yield text
            pending = []
    if pending:
        yield tokenizer.decode(pending)


def generate_texts(model, tokenizer, ids, num_samples, cfg):
    """num_samples continuations of the prompt ids, generated together as one batch."""
    eot = tokenizer.eot_token if cfg.stop_at_eot else None
    idx = torch.tensor([ids] * num_samples, device=_device_of(model))  # (B, T)
    rows = [[] for _ in range(num_samples)]
    for tokens in model.generate_stream(idx, cfg.max_new_tokens, **_sampling(cfg), eos_token=eot):
        for row, token in zip(rows, tokens.tolist()):  # (B,)
            row.append(token)
    if eot is not None:  # a finished row kept yielding eot while the others went on
        rows = [row[:row.index(eot)] if eot in row else row for row in rows]
    return [tokenizer.decode(row) for row in rows]


def _sampling(cfg):
    return dict(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p)


def _device_of(model):
    return next(model.parameters()).device


def write_samples(model, tokenizer, prompt, cfg, echo=True):
    """Print cfg.num_samples continuations of the prompt text (echoed first when echo is set)."""
    ids = encode_prompt(tokenizer, prompt, model.config.block_size)
    shown = tokenizer.decode([i for i in ids if i != tokenizer.eot_token]) if echo else ""
    if cfg.num_samples == 1:
        _write(shown)
        for piece in stream_text(model, tokenizer, ids, cfg):
            _write(piece)
        _write("\n")
        return
    for text in generate_texts(model, tokenizer, ids, cfg.num_samples, cfg):
        _write(f"{shown}{text}\n{SEPARATOR}\n")


def _write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def interactive(model, tokenizer, cfg):
    """Read a prompt, print its continuation, repeat. An empty line or Ctrl-D quits; Ctrl-C stops
    the generation under way and asks for the next prompt."""
    print("type a prompt and press Enter; an empty line or Ctrl-D quits, Ctrl-C stops a generation",
          file=sys.stderr)
    while True:
        try:
            prompt = input("> ")
        except (EOFError, KeyboardInterrupt):
            _write("\n")
            return
        if not prompt:
            return
        try:
            write_samples(model, tokenizer, prompt, cfg, echo=False)
        except KeyboardInterrupt:
            _write("\n[stopped]\n")
        except UserError as e:  # e.g. a character the vocabulary lacks: say so and ask again
            print(f"error: {e}", file=sys.stderr)


# -----------------------------------------------------------------------------


def check_settings(cfg):
    if cfg.num_samples < 1 or cfg.max_new_tokens < 0:
        raise UserError(f"need num_samples >= 1 and max_new_tokens >= 0, got {cfg.num_samples} and "
                        f"{cfg.max_new_tokens}")
    if cfg.temperature < 0 or cfg.top_k < 0 or not 0 < cfg.top_p <= 1:
        raise UserError(f"need temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got {cfg.temperature}, "
                        f"{cfg.top_k} and {cfg.top_p}")


def main():
    cfg = SimpleNamespace(**configurator.configure(DEFAULTS, sys.argv[1:]))
    check_settings(cfg)
    sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets a '?'
    prompt = None if cfg.interactive else read_prompt(cfg.start)  # a bad path fails before the load
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, device, dtype, cfg.compile)
    torch.manual_seed(cfg.seed)
    if cfg.chat or cfg.serve:  # chat.py holds the chat template, the terminal chat and the web server
        import chat
        chat.main(model, tokenizer, cfg)
    elif cfg.interactive:
        interactive(model, tokenizer, cfg)
    else:
        write_samples(model, tokenizer, prompt, cfg)


if __name__ == "__main__":
    configurator.run(main)
