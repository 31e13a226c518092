"""Turn text or conversations into token ids on disk: data/<name>/ (see data.py for the format).

    python prepare.py shakespeare_char                  # tiny Shakespeare, one token per character
    python prepare.py tinystories                       # or shakespeare, openwebtext, fineweb-edu
    python prepare.py --input=my_texts/ --name=mine     # local .txt / .jsonl / .parquet, file or folder
    python prepare.py --input=chats.jsonl --format=chat --name=chat     # conversations + a loss mask
    python prepare.py tinystories --tokenizer=bpe --vocab_size=8192     # learn a BPE of one's own
    python prepare.py ultrachat --tokenizer=data/tinystories            # reuse that dataset's ids

Where the text comes from is sources.py; the tokenizers are tokenizer.py. Documents are tokenized in
worker processes and streamed to disk chunk by chunk, so memory stays flat however large the corpus;
files appear under their final names only once complete (fileio.staged_outputs). A BPE is learned
from the train split alone, streamed to the trainer (its memory holds word counts, not the text).
"""
import argparse
import errno
import itertools
import json
import os
import shlex
import signal
import sys
import time
from collections import Counter, deque
from contextlib import ExitStack
from multiprocessing import Pool
from pathlib import Path

import numpy as np

import configurator
from configurator import UserError
from data import SPLITS, read_meta, token_dtype
from fileio import check_folder, disk_full_error, staged_outputs
from sources import (DATASETS, DOC_SEPS, download, hub_conversations, hub_splits, input_files,
                     local_conversations, local_splits)
from tokenizer import (CHAT_TEMPLATE, ROLES, BPETokenizer, check_chat_tokenizer, conversation_problem,
                       encode_conversation, load_tokenizer, tokenizer_fields, train_bpe)

CHUNK_CHARS = 1 << 20  # text per worker task: big enough to amortise IPC, small enough to stay flat

# ----------------------------------------------------------------------------- tokenize and write

_tokenizer = None  # the tokenizer of this (worker) process


def _init_worker(tok_meta):
    global _tokenizer
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() ends workers with SIGTERM
    _tokenizer = load_tokenizer(tok_meta)


def _encode_chunk(chunk):
    """(split, [(text, starts a document), ...]) -> (split, ids with end-of-text before each document
    but the first, documents begun, whether the first piece begins one, characters)."""
    split, pieces = chunk
    flat = []
    for i, ids in enumerate(_tokenizer.encode_batch([text for text, _ in pieces])):
        if i and pieces[i][1]:
            flat.append(_tokenizer.eot_token)
        flat.extend(ids)
    ids = np.array(flat, dtype=token_dtype(_tokenizer.vocab_size))
    return split, ids, sum(starts for _, starts in pieces), pieces[0][1], sum(len(t) for t, _ in pieces)


def _pieces(segments, tok):
    """(split, text, more) segments -> (split, piece, starts a document) pieces of at most about
    CHUNK_CHARS characters: a long document is tokenized in pieces, so that no worker holds the ids
    of a whole one in a Python list. Pieces are cut only where tok.safe_cut says the ids stay those
    of the whole text (text with no such place, rare, stays in one piece)."""
    carry, starts = "", True  # carry: the document's text after its last safe cut so far
    for split, text, more in segments:
        text, carry, pos = carry + text, "", 0
        while more or len(text) - pos > CHUNK_CHARS:
            cut = tok.safe_cut(text, pos, min(len(text), pos + CHUNK_CHARS))
            if cut == pos:
                break
            yield split, text[pos:cut], starts
            pos, starts = cut, False
        if more:
            carry = text[pos:]
        else:
            if pos < len(text) or starts:  # the document's last piece (an empty document is one too)
                yield split, text[pos:], starts
            starts = True


def _chunks(pieces):
    """Group consecutive pieces of one split into tasks of about CHUNK_CHARS characters."""
    split, group, size = None, [], 0
    for piece_split, text, starts in pieces:
        if group and (piece_split != split or size >= CHUNK_CHARS):
            yield split, group
            group, size = [], 0
        split = piece_split
        group.append((text, starts))
        size += len(text)
    if group:
        yield split, group


def _encode_stream(chunks, tok_meta, num_proc):
    """Encoded chunks, in order. At most 2 * num_proc chunks are in flight: Pool.imap would read the
    whole input ahead, and memory would grow with the corpus."""
    global _tokenizer
    if num_proc <= 1:
        _tokenizer = load_tokenizer(tok_meta)
        yield from map(_encode_chunk, chunks)
        return
    # Workers are born ignoring SIGINT: Ctrl-C is the parent's to handle (clean up, exit 130), and a
    # worker should not print a traceback of its own, even when the signal lands as it starts.
    default_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Each worker is one process: a BPE encodes on one thread there. Set before the fork, or a
    # `tokenizers` that learned a BPE here (on all cores) warns in every worker that it was forked.
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = Pool(num_proc, _init_worker, (tok_meta,))
    finally:
        signal.signal(signal.SIGINT, default_handler)
        if parallelism is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    with pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _stream_to_files(segments, tok, tok_meta, files, num_proc, progress):
    """Append each split's tokens to its open file as they arrive; returns tokens written per split.
    progress: {"chars": the input's size or None}; "done" (characters tokenized) and "bytes" (their
    tokens' size) are kept up to date in it, for the disk-full message."""
    eot = np.array([tok.eot_token or 0], dtype=token_dtype(tok.vocab_size)).tobytes()
    tokens, docs, start = dict.fromkeys(files, 0), dict.fromkeys(files, 0), time.time()
    from tqdm import tqdm
    segments = iter(segments)
    first = next(segments, None)  # open the source (a hub download may fail) before drawing a bar
    segments = itertools.chain([first] if first else [], segments)
    chunks = _chunks(_pieces(segments, tok))
    with tqdm(total=progress["chars"], unit="char", unit_scale=True, desc="tokenizing",
              mininterval=0.5) as bar:
        for split, ids, n_docs, starts, n_chars in _encode_stream(chunks, tok_meta, num_proc):
            if docs[split] and starts:  # a new document after earlier ones: separate them
                if tok.eot_token is None:  # only a reused character vocabulary can lack one
                    raise UserError("this vocabulary has no end-of-text token to separate documents "
                                    "with; give one document (--doc_sep=none) or another --tokenizer")
                ids = np.concatenate([np.frombuffer(eot, dtype=ids.dtype), ids])
            progress["bytes"] += ids.nbytes  # counted before the write, which may find the disk full
            progress["done"] += n_chars
            files[split].write(ids.tobytes())
            tokens[split] += len(ids)
            docs[split] += n_docs
            bar.update(n_chars)
            rate = sum(tokens.values()) / max(time.time() - start, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} tok/s, {sum(docs.values()):,} docs", refresh=False)
    return tokens


def disk_full(data_dir, progress):
    """The one-line error for a disk that filled up mid-write: how much space the dataset needs,
    estimated from the share of the input written (at least what was written, for a hub stream)."""
    kept = (data_dir / "meta.json").exists()  # a dataset prepared before, being replaced (--force)
    if progress["chars"] and progress["done"]:
        return disk_full_error(data_dir, progress["bytes"] * progress["chars"] / progress["done"], kept=kept)
    return disk_full_error(data_dir, progress["bytes"], at_least=True, kept=kept)


def check_outputs(data_dir, force=False):
    """Refuse to overwrite a prepared dataset unless asked to."""
    existing = [p.name for p in (Path(data_dir) / n for n in ("train.bin", "val.bin", "meta.json"))
                if p.exists()]
    if existing and not force:
        raise UserError(f"{data_dir} already holds {', '.join(existing)}; pass --force to overwrite")


def dataset_meta(tok, name, source, command):
    """The meta.json fields every prepared dataset has (the token counts are added by the writer)."""
    return {"name": name, **tokenizer_fields(tok), "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
            "source": str(source), "command": command}


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def meta_files(meta):
    """The files that describe a dataset: a BPE's tokenizer.json, then meta.json (written last: it
    marks the dataset as complete)."""
    return (["tokenizer.json"] if "tokenizer_json" in meta else []) + ["meta.json"]


def write_meta(tmp, meta):
    """Write meta_files(meta) to their temporary paths: the BPE's vocabulary goes to tokenizer.json
    (data.read_meta puts it back into the dict), the rest to meta.json."""
    if "tokenizer_json" in meta:
        tmp["tokenizer.json"].write_text(meta["tokenizer_json"], encoding="utf-8")
    write_json(tmp["meta.json"], {k: v for k, v in meta.items() if k != "tokenizer_json"})


def remove_stale_vocab(data_dir, meta):
    """Once a dataset without a BPE is in place, the tokenizer.json of the one it replaced goes."""
    if "tokenizer_json" not in meta:
        (Path(data_dir) / "tokenizer.json").unlink(missing_ok=True)


def write_dataset(segments, tok_meta, data_dir, *, num_proc=1, chars=None, name=None, source="",
                  command=""):
    """Tokenize (split, text, more) segments into data_dir/train.bin, val.bin and meta.json; returns
    the meta. chars: the input's size in characters, if known (for progress and the disk-full error)."""
    tok = load_tokenizer(tok_meta)  # a missing BPE file fails here, before anything is written
    data_dir, progress = Path(data_dir), {"chars": chars, "done": 0, "bytes": 0}
    meta = dataset_meta(tok, name or data_dir.name, source, command)
    with staged_outputs(data_dir, [f"{s}.bin" for s in SPLITS] + meta_files(meta)) as tmp:
        try:
            with open(tmp["train.bin"], "wb") as train, open(tmp["val.bin"], "wb") as val:
                files = {"train": train, "val": val}
                tokens = _stream_to_files(segments, tok, tok_meta, files, num_proc, progress)
        except OSError as e:  # on a write, or on the flush as the files close
            if e.errno == errno.ENOSPC:
                raise disk_full(data_dir, progress) from None
            raise
        empty = [s for s in SPLITS if tokens[s] == 0]
        if empty:
            raise UserError(f"the {empty[0]} split came out empty ({tokens}); give more text or "
                            "change --val_fraction")
        meta |= {"train_tokens": tokens["train"], "val_tokens": tokens["val"]}
        write_meta(tmp, meta)
    remove_stale_vocab(data_dir, meta)
    return meta


def tokenizer_meta(tokenizer, make_pairs, vocab_size=None, sample=None, n_train=None):
    """What load_tokenizer needs: GPT-2's BPE, a BPE learned from the train split's texts (n_train of
    them, if known), one reused from elsewhere (reused_tokenizer), or characters. The char vocabulary
    comes from a pass over the data; it gets an end-of-text id only when some split holds more than
    one document (tiny Shakespeare stays 65)."""
    if tokenizer == "gpt2":
        return {"tokenizer": "gpt2"}
    if tokenizer == "bpe":
        return learn_bpe((text for split, text, _ in make_pairs() if split == "train"), vocab_size, sample,
                         n_train)
    if tokenizer != "char":
        return reused_tokenizer(tokenizer)
    chars, docs = set(), dict.fromkeys(SPLITS, 0)
    for split, text, more in make_pairs():
        chars.update(text)
        docs[split] += not more
    chars = sorted(chars)
    return {"tokenizer": "char", "chars": chars, "eot_token": len(chars) if max(docs.values()) > 1 else None}


def learn_bpe(texts, vocab_size, sample=None, n_texts=None):
    """A BPE of vocab_size tokens learned from texts (n_texts of them, if known), or from the share of
    them that --tokenizer_sample keeps; returns its meta fields."""
    if vocab_size is None:
        raise UserError("--tokenizer=bpe needs --vocab_size=N (e.g. 4096 for a small model, 16384 for "
                        "TinyStories)")
    if sample is not None:
        n_texts = round(n_texts * sample) if n_texts and sample < 1 else None
        texts = sampled(texts, sample)
    print(f"learning a {vocab_size:,}-token BPE from the train split"
          + (f" ({sample:,} characters at most)" if sample and sample >= 1 else "")
          + (f" ({sample:.0%} of its documents)" if sample and sample < 1 else ""))
    started = time.time()
    tok = train_bpe(texts, vocab_size, length=n_texts)
    print(f"learned in {time.time() - started:.1f}s")
    return tokenizer_fields(tok)


def sampled(texts, sample):
    """What a BPE learns from on a huge set: the first `sample` characters (sample >= 1), or an even
    share of the documents, every (1 / sample)-th (0 < sample < 1)."""
    if sample < 1:
        yield from (text for i, text in enumerate(texts) if int((i + 1) * sample) > int(i * sample))
        return
    left = int(sample)
    for text in texts:
        if left <= 0:
            return
        yield text[:left]
        left -= len(text)


def reused_tokenizer(source):
    """The tokenizer of a tokenizer.json file, a prepared dataset's folder or a training run's out_dir
    (its checkpoint carries the tokenizer), so that a new dataset shares its ids; as meta fields."""
    path = Path(source)
    if path.is_file():
        try:
            return tokenizer_fields(BPETokenizer(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
    if (path / "meta.json").is_file():
        meta = read_meta(path)
    elif (path / "ckpt.pt").is_file():
        from checkpoint import checkpoint_meta, load_checkpoint  # torch: imported for this case only
        try:
            meta = checkpoint_meta(load_checkpoint(path / "ckpt.pt"), path / "ckpt.pt")
        except ValueError as e:
            raise UserError(str(e)) from None
    elif (path / "tokenizer.json").is_file():
        return reused_tokenizer(path / "tokenizer.json")
    elif path.is_dir():
        raise UserError(f"{path} holds no tokenizer.json, meta.json or ckpt.pt to take a tokenizer from")
    else:
        raise UserError(f"unknown tokenizer {source!r}: use gpt2, char, bpe (with --vocab_size), or the "
                        "path of a tokenizer.json, a prepared dataset or a training run's out_dir")
    return {"tokenizer": "gpt2"} if meta["tokenizer"] == "gpt2" else tokenizer_fields(load_tokenizer(meta))


def prepare_files(paths, data_dir, tokenizer="gpt2", *, val_fraction=0.1, doc_sep="blank",
                  text_field="text", num_proc=None, errors="strict", force=False, name=None,
                  source=None, command="", vocab_size=None, tokenizer_sample=None):
    """Tokenize local files (.txt, .jsonl, .parquet) into data_dir; returns the meta dict (with
    tokenizer_json for a BPE, as data.read_meta gives it)."""
    paths = [Path(p) for p in paths]
    check_outputs(data_dir, force)
    if tokenizer == "gpt2":
        load_tokenizer({"tokenizer": "gpt2"})  # offline without BPE files: say so before reading
    make_pairs, n_docs, n_chars = local_splits(paths, val_fraction, doc_sep, text_field, errors)
    n_train = n_docs - max(1, round(n_docs * val_fraction)) if n_docs > 1 else 1
    tok_meta = tokenizer_meta(tokenizer, make_pairs, vocab_size, tokenizer_sample, n_train)
    source = source or os.path.commonpath([p.resolve() for p in paths])  # the file, or their folder
    return write_dataset(make_pairs(), tok_meta, data_dir, num_proc=num_proc or cpu_count(),
                         chars=n_chars, name=name, source=source, command=command)


def prepare_hub(spec, data_dir, tokenizer="gpt2", *, val_fraction=0.0005, text_field="text",
                num_proc=None, force=False, name=None, command="", vocab_size=None, tokenizer_sample=None):
    """Tokenize a Hugging Face dataset (DATASETS entry: load arguments, optional splits) into data_dir."""
    check_outputs(data_dir, force)

    def make_pairs():  # a fresh stream each call: a char vocabulary or a BPE needs a pass of its own
        return hub_splits(spec, val_fraction, text_field)

    tok_meta = tokenizer_meta(tokenizer, make_pairs, vocab_size, tokenizer_sample)
    source = "hf:" + "/".join(str(spec["load"][k]) for k in ("path", "name") if spec["load"].get(k))
    return write_dataset(make_pairs(), tok_meta, data_dir, num_proc=num_proc or cpu_count(),
                         name=name, source=source, command=command)


# ----------------------------------------------------------------------------- conversations

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
                 name=None, command="", vocab_size=None, tokenizer_sample=None):
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
    if tokenizer == "char":  # the markers' characters join the data's, and end-of-text comes last
        chars = sorted(chars | set("".join(ROLES.values()) + " "))
        tok_meta = {"tokenizer": "char", "chars": chars, "eot_token": len(chars)}
    else:
        def make_pairs():  # each message as the template writes it: what a BPE learns from
            for split, messages in assign_splits(conversations(), usable[None], val_fraction):
                yield from ((split, f"{ROLES[m['role']]} {m['content'].strip()}", False) for m in messages)

        tok_meta = tokenizer_meta(tokenizer, make_pairs, vocab_size, tokenizer_sample)
    tok = load_tokenizer(tok_meta)
    check_chat_tokenizer(tok)  # a reused character vocabulary may lack what the template needs
    source = "hf:" + hub["load"]["path"] if hub else ", ".join(str(Path(p).resolve()) for p in paths)
    meta = dataset_meta(tok, name or Path(data_dir).name, source, command) | {
        "chat_template": CHAT_TEMPLATE,
        "loss_mask": "train_mask.bin, val_mask.bin: uint8 per token, 1 = an assistant token to learn",
        "skipped_conversations": sum(skipped.values())}
    pairs = assign_splits(conversations(), usable[None], val_fraction)
    return write_chat_files(pairs, tok, Path(data_dir), meta, total=sum(usable.values()))


def write_chat_files(pairs, tok, data_dir, meta, total):
    """Stream each conversation's ids and mask to the splits' files, add the counts to meta, and
    rename everything into place only when all went well (fileio.staged_outputs). Returns the meta."""
    from tqdm import tqdm
    names = [f"{s}{kind}.bin" for s in SPLITS for kind in ("", "_mask")] + meta_files(meta)
    counts = {s: Counter() for s in SPLITS}
    dtype = token_dtype(tok.vocab_size)
    with staged_outputs(data_dir, names) as tmp, ExitStack() as stack:
        files = {n: stack.enter_context(open(tmp[n], "wb")) for n in names if n.endswith(".bin")}
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
        write_meta(tmp, meta)
    remove_stale_vocab(data_dir, meta)
    return meta


# ----------------------------------------------------------------------------- command line

def cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 1, like every other user mistake
        raise UserError(f"{message} (see python prepare.py --help)")


def vocab_size_arg(s):
    if not s.isdigit() or int(s) < 257:
        raise argparse.ArgumentTypeError(f"must be a whole number of tokens, at least 257 (256 bytes and "
                                         f"<|endoftext|>), e.g. 4096; got {s!r}")
    return int(s)


def tokenizer_sample_arg(s):
    try:
        value = float(s)
    except ValueError:
        value = -1.0
    if not (0 < value < 1 or (value >= 1 and value.is_integer())):
        raise argparse.ArgumentTypeError(f"must be a number of characters (e.g. 1e9) or a fraction of "
                                         f"the documents between 0 and 1 (e.g. 0.1); got {s!r}")
    return value if value < 1 else int(value)


def parse_args(argv):
    def boolean(s):
        if s.lower() not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
        return s.lower() == "true"

    p = _Parser(prog="prepare.py", allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("dataset", nargs="?", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--input", help="a local .txt/.jsonl/.parquet file, or a folder of them")
    p.add_argument("--name", help="dataset folder name under --out_dir (default: NAME or the input's)")
    p.add_argument("--tokenizer", help="gpt2 (default; char for *_char), char, bpe (learn one, of "
                   "--vocab_size tokens), or reuse one: a tokenizer.json, a dataset, a run's out_dir")
    p.add_argument("--vocab_size", type=vocab_size_arg, help="--tokenizer=bpe: its size, in tokens")
    p.add_argument("--tokenizer_sample", type=tokenizer_sample_arg, help="--tokenizer=bpe: learn from "
                   "at most this many characters of the train split, or this fraction of its documents")
    p.add_argument("--val_fraction", type=float, help="share of documents for val (local: 0.1)")
    p.add_argument("--doc_sep", choices=DOC_SEPS, help=".txt documents: blank lines (default), "
                   "<|endoftext|>, or none (whole file)")
    p.add_argument("--text_field", default="text", help="field/column holding the text")
    p.add_argument("--format", choices=("text", "chat"), help="chat: .jsonl conversations (a messages list "
                   "of {role, content} per line), tokenized with a loss mask on the replies")
    p.add_argument("--num_proc", type=int, default=cpu_count(), help="tokenizer processes")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="what to do with bytes that are not UTF-8")
    p.add_argument("--force", type=boolean, nargs="?", const=True, default=False,
                   help="overwrite an existing prepared dataset")
    p.add_argument("--out_dir", default="data", help="parent folder of the dataset folders")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.dataset is None and args.input is None:
        raise UserError(f"name a dataset ({', '.join(DATASETS)}) or pass --input=PATH")
    if args.dataset is not None and args.dataset not in DATASETS:
        raise UserError(f"unknown dataset {args.dataset!r}; known: {', '.join(DATASETS)} "
                        "(or --input=PATH for local files)")
    spec = DATASETS.get(args.dataset, {})
    val_fraction = args.val_fraction if args.val_fraction is not None else spec.get("val_fraction", 0.1)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
    name = args.name or args.dataset or Path(args.input).resolve().stem
    data_dir = Path(args.out_dir) / name
    check_folder(data_dir, "--out_dir" if args.name is None else "--out_dir or --name")
    tokenizer = args.tokenizer or spec.get("tokenizer", "gpt2")
    if (args.vocab_size or args.tokenizer_sample) and tokenizer != "bpe":
        option = "--vocab_size" if args.vocab_size else "--tokenizer_sample"
        raise UserError(f"{option} is for learning a BPE: use it with --tokenizer=bpe")
    common = dict(tokenizer=tokenizer, val_fraction=val_fraction,
                  text_field=args.text_field, num_proc=args.num_proc, force=args.force, name=name,
                  command=shlex.join(["python", "prepare.py", *argv]), vocab_size=args.vocab_size,
                  tokenizer_sample=args.tokenizer_sample)
    started = time.time()
    if (args.format or spec.get("format")) == "chat":  # conversations, with a loss mask on the replies
        if args.input is None and spec.get("format") != "chat":
            raise UserError("--format=chat reads --input=FILE.jsonl or a chat dataset (ultrachat)")
        hub = spec if args.input is None else None
        chat = {k: common[k] for k in ("tokenizer", "val_fraction", "force", "name", "command", "vocab_size",
                                       "tokenizer_sample")}
        meta = prepare_chat(data_dir, paths=None if hub else input_files(args.input), hub=hub, **chat)
    elif args.input is None and "load" in spec:
        meta = prepare_hub(spec, data_dir, **common)
    else:
        source = None
        if args.input is None:  # shakespeare: the canonical file, fetched once
            check_outputs(data_dir, args.force)
            source, paths = spec["url"], [download(spec["url"], data_dir / "input.txt")]
        else:
            paths = input_files(args.input)
        meta = prepare_files(paths, data_dir, doc_sep=args.doc_sep or spec.get("doc_sep", "blank"),
                             errors=args.errors, source=source, **common)
    print(f"{data_dir}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']:,}) in {time.time() - started:.1f}s")


if __name__ == "__main__":
    configurator.run(main)
