"""Generate text in the terminal, from a trained checkpoint or from GPT-2's weights.

    python sample.py --out_dir=out-tinystories --start="Once upon a time"
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --num_samples=3 --max_new_tokens=200
    python sample.py --out_dir=out-shakespeare-char --interactive
    python sample.py --out_dir=out-chat --chat

One sample streams to the terminal token by token; several are generated together as one batch and
printed when done. Decoding uses the model's KV cache (GPT.generate_stream), so each new token costs
one pass over the weights, not a pass over the whole context; decoding.py lays the model out for it.
Settings: the DEFAULTS below, changed with --key=value flags or config files, as in train.py.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import configurator
from checkpoint import load_model
from configurator import UserError, pick_device, pick_dtype
from decoding import ready_for_decoding
from engine import SAMPLING, Engine, generate_texts, stream_text
from tokenizer import load_tokenizer

DEFAULTS = dict(
    init_from="resume",  # 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl', or a local Hugging Face dir
    out_dir="out",  # where train.py wrote ckpt.pt
    start="\n",  # the prompt: text, or FILE:path to read it from a file; '' starts a new document
    num_samples=1,  # more than one: generated together as a batch
    max_new_tokens=SAMPLING["max_new_tokens"],
    temperature=SAMPLING["temperature"],  # 0 (or below 1e-4): always the likeliest token; <1 safer, >1 wilder
    top_k=SAMPLING["top_k"],  # sample only among the k most likely tokens; 0 = no limit
    top_p=SAMPLING["top_p"],  # nucleus: the likeliest tokens holding this much probability; 1.0 = all
    stop_at_eot=True,  # end a sample at the end-of-text token, as a document ends
    interactive=False,  # a prompt loop: type, read the continuation, repeat
    chat=False,  # talk with the model in the terminal, in turns (the chat template: tokenizer.py)
    seed=1337,
    device="auto",  # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",  # 'auto' (bfloat16 or float16 on CUDA, else float32), 'float32', 'bfloat16', 'float16'
    compile=False,  # torch.compile the Transformer blocks: slow to start, and no faster on a CPU
)
SEPARATOR = "-" * 40  # printed after each sample


# -----------------------------------------------------------------------------
# Model and tokenizer


def load(cfg, device="cpu", dtype="float32"):
    """The model, ready for decoding on device in dtype, and its tokenizer."""
    hint = (f": train one (e.g. `python train.py config/train_shakespeare_char.py --out_dir={cfg.out_dir}`), "
            "point --out_dir at a training run, or sample GPT-2's weights with --init_from=gpt2")
    model, meta, _ = load_model(cfg.init_from, cfg.out_dir, hint)
    return ready_for_decoding(model, device, dtype, cfg.compile), load_tokenizer(meta)


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


def _settings(cfg):
    return {k: getattr(cfg, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens")}


def write_samples(model, tokenizer, prompt, cfg, echo=True):
    """Print cfg.num_samples continuations of the prompt text (echoed first when echo is set)."""
    ids = encode_prompt(tokenizer, prompt, model.config.block_size)
    shown = tokenizer.decode([i for i in ids if i != tokenizer.eot_token]) if echo else ""
    if cfg.num_samples == 1:
        _write(shown)
        for piece in stream_text(model, tokenizer, ids, _settings(cfg), stop_at_eot=cfg.stop_at_eot):
            _write(piece)
        _write("\n")
        return
    for text in generate_texts(model, tokenizer, ids, cfg.num_samples, _settings(cfg), cfg.stop_at_eot):
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
# Chat


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
    pieces = []
    reply = engine.reply(ids, chat=True)
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
    model, tokenizer = load(cfg, device, dtype)
    torch.manual_seed(cfg.seed)
    if cfg.chat:
        name = Path(cfg.out_dir).name if cfg.init_from == "resume" else cfg.init_from
        try:
            engine = Engine(model, tokenizer, _settings(cfg), name)
        except ValueError as e:  # settings a chat reply cannot take
            raise UserError(str(e)) from None
        chat_in_terminal(engine)
    elif cfg.interactive:
        interactive(model, tokenizer, cfg)
    else:
        write_samples(model, tokenizer, prompt, cfg)


if __name__ == "__main__":
    configurator.run(main)
