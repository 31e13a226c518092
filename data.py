"""The prepared dataset on disk, as prepare.py writes it and train.py reads it.

    data/<name>/train.bin, val.bin      every document's token ids, end to end, separated by the
                                        end-of-text id (uint16, or uint32 past 65,536 tokens)
    data/<name>/train_mask.bin, ...     chat data only: uint8 per token, 1 = a reply token to learn
    data/<name>/meta.json               the tokenizer, the counts, the command that made it
    data/<name>/tokenizer.json          a learned BPE only (prepare.py --tokenizer=bpe): its vocabulary

train.py reads random windows of block_size + 1 tokens (Split.batch); nothing is loaded whole, so
memory does not grow with the dataset.
"""
import json
from pathlib import Path

import numpy as np

from configurator import UserError

SPLITS = ("train", "val")


def token_dtype(vocab_size):
    # Ids run from 0 to vocab_size - 1: uint16 holds them up to a 65,536-token vocabulary.
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def read_meta(data_dir):
    """A prepared dataset's meta.json as a dict; for a BPE dataset with its tokenizer.json's text
    added as "tokenizer_json", so that the dict (which train.py stores in each checkpoint) describes
    the tokenizer completely."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise UserError(f"{path} not found: run `python prepare.py {Path(data_dir).name}` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run prepare.py with --force") from None
    if meta.get("tokenizer") == "bpe":
        vocab = path.with_name("tokenizer.json")
        if not vocab.is_file():
            raise UserError(f"{vocab} is missing: the dataset's tokens mean nothing without it; re-run "
                            "prepare.py with --force")
        meta["tokenizer_json"] = vocab.read_text(encoding="utf-8")
    return meta


class Split:
    """One split of a prepared dataset (train.bin or val.bin), read in random windows of tokens."""

    def __init__(self, data_dir, name, meta, block_size, device):
        self.path = Path(data_dir) / f"{name}.bin"
        if not self.path.is_file():
            raise UserError(f"{self.path} is missing; run `python prepare.py {Path(data_dir).name}` again")
        self.dtype = np.dtype(meta["dtype"])
        n = self.path.stat().st_size // self.dtype.itemsize
        if n <= block_size:
            raise UserError(f"{self.path} holds {n} tokens, too few for block_size={block_size}; "
                            f"use a smaller --block_size or more text")
        self.high = n - block_size  # windows start at 0 .. n - block_size - 1
        self.window = np.arange(block_size + 1)  # inputs and, shifted by one, targets
        self.device = device
        # chat data (prepare.py --format=chat) has a loss mask: 1 on the tokens to learn, the replies
        self.mask = self.path.with_name(f"{name}_mask.bin") if meta.get("loss_mask") else None
        if self.mask is not None and not self.mask.is_file():
            raise UserError(f"{self.mask} is missing; run `python prepare.py ... --format=chat` again")

    def starts(self, generator, shape):
        """Random window starts, an int64 array of `shape`."""
        import torch  # here, not at the top: prepare.py imports this module and starts faster without

        return torch.randint(self.high, shape, generator=generator).numpy()

    def batch(self, starts):
        """Inputs x and next-token targets y, (B, T) int64 each, for windows at `starts` (B,)."""
        import torch

        # Re-opened per batch: a memmap kept open grows the process's memory as pages are touched.
        rows = np.memmap(self.path, dtype=self.dtype, mode="r")[starts[:, None] + self.window]  # (B, T+1)
        x = torch.from_numpy(rows[:, :-1].astype(np.int64))  # (B, T)
        y = torch.from_numpy(rows[:, 1:].astype(np.int64))  # (B, T)
        if self.mask is not None:  # targets the mask leaves out are ignored by the loss
            learn = np.memmap(self.mask, dtype=np.uint8, mode="r")[starts[:, None] + self.window[1:]]
            y[torch.from_numpy(learn == 0)] = -1  # (B, T)
        if self.device.startswith("cuda"):  # pinned memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)
