"""Checkpoints, and the one function that loads a model from wherever it lives.

A checkpoint (out_dir/ckpt.pt, written by train.py) is a dict of tensors and plain values, read back
with torch.load(weights_only=True), so loading one cannot run code:

    model_args   GPTConfig's fields          model       the state_dict
    meta         the dataset's meta.json: which tokenizer the ids belong to
    optimizer, scaler, iter_num, best_val_loss, config, rng: what an exact resume needs

load_model() is what sample.py, serve.py, export.py and train.py's init_from use: a checkpoint
folder, or GPT-2's weights / a Hugging Face folder (hf.py: GPT-2, Llama or Mixtral layout, whose
tokenizer becomes the meta).
"""
import os
from dataclasses import fields

import torch

from configurator import UserError
from fileio import atomic_write
from model import GPT, GPTConfig
from tokenizer import GPT2_META  # the meta of GPT-2's own weights


def save_checkpoint(path, ckpt):
    """Write durably (fileio.atomic_write): a crash, Ctrl-C or a full disk mid-write keeps the
    previous checkpoint intact."""
    with atomic_write(path) as f:
        torch.save(ckpt, f)


def load_checkpoint(path):
    """Load a checkpoint saved by save_checkpoint, safely (tensors and plain values only)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})"[:300]) from None
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a sprout checkpoint (it has no model_args and model)")
    return ckpt


def model_from_checkpoint(ckpt, **overrides):
    """Rebuild the model a checkpoint dict holds; overrides change config fields that the weights do
    not depend on (dropout, grad_checkpoint)."""
    unknown = sorted(set(ckpt["model_args"]) - {f.name for f in fields(GPTConfig)})
    if unknown:  # e.g. an option added to GPTConfig after this copy of model.py
        raise ValueError(f"its model_args name options this version lacks: {', '.join(unknown)} (was it "
                         "saved by a newer or a modified sprout?)")
    config = GPTConfig(**{**ckpt["model_args"], **overrides})
    model = GPT(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing keys or shapes that differ from model_args
        raise ValueError(f"its weights do not fit its model_args ({_one_line(e)[:300]})") from None
    return model


def is_checkpoint_dir(path):
    return os.path.isfile(os.path.join(path, "ckpt.pt"))


def load_model(init_from, out_dir, hint="", **overrides):
    """(model on the CPU in float32, meta dict naming its tokenizer, the checkpoint dict or None).
    init_from: 'resume' (out_dir/ckpt.pt), another run's out_dir, a GPT-2 name or a Hugging Face
    folder. `hint` ends the no-checkpoint error with what the calling script suggests."""
    import hf  # Hugging Face interop: imported when a checkpoint is not the source

    if init_from == "resume" or is_checkpoint_dir(init_from):
        path = os.path.join(out_dir if init_from == "resume" else init_from, "ckpt.pt")
        try:
            ckpt = load_checkpoint(path)
        except FileNotFoundError:
            raise UserError(f"no checkpoint at {path}{hint}") from None
        except ValueError as e:
            raise UserError(_one_line(e)) from None
        try:
            model = model_from_checkpoint(ckpt, **overrides)
        except ValueError as e:
            raise UserError(f"{path} does not match this model.py: {_one_line(e)}") from None
        return model, checkpoint_meta(ckpt, path), ckpt
    if init_from in hf.HF_GPT2_NAMES or os.path.isdir(init_from):
        try:  # the folder's tokenizer becomes the meta
            model = hf.from_pretrained(init_from, **overrides)
            meta = hf.tokenizer_meta(init_from) if os.path.isdir(init_from) else dict(GPT2_META)
        except (UserError, RuntimeError, ValueError, OSError) as e:
            raise UserError(f"init_from={init_from!r}: {_one_line(e)}") from None
        return model, meta, None
    raise UserError(f"init_from={init_from!r} is not 'resume', a training run's out_dir, a GPT-2 name "
                    f"({', '.join(hf.HF_GPT2_NAMES)}) or a Hugging Face folder")


def checkpoint_meta(ckpt, path):
    """The tokenizer description a checkpoint carries (its dataset's meta.json)."""
    meta = ckpt.get("meta")
    if meta:
        return meta
    vocab_size = ckpt["model_args"].get("vocab_size")
    if not vocab_size or vocab_size < GPT2_META["vocab_size"]:  # only GPT-2's vocabulary can be guessed
        raise UserError(f"{path} records no tokenizer (no 'meta'), and its {vocab_size}-token "
                        f"vocabulary is not GPT-2's; re-save it with the dataset's meta.json")
    return dict(GPT2_META)


def _one_line(error):
    return " ".join(str(error).split())[:400]
