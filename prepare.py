"""Turn text into token ids on disk: data/<name>/train.bin, val.bin (flat uint16) and meta.json.

    python prepare.py shakespeare_char                  # tiny Shakespeare, one token per character
    python prepare.py tinystories                       # or shakespeare, openwebtext, fineweb-edu
    python prepare.py --input=my_texts/ --name=mine     # local .txt / .jsonl / .parquet, file or folder

Documents are tokenized in worker processes and streamed to disk chunk by chunk, so memory stays flat
however large the corpus. Other scripts load the tokenizer with `load_tokenizer(read_meta(data_dir))`.
"""
import argparse
import codecs
import itertools
import json
import os
import random
import shlex
import signal
import sys
import time
import urllib.request
from collections import deque
from contextlib import contextmanager
from multiprocessing import Pool
from pathlib import Path

import numpy as np

import configurator
from configurator import UserError

SPLITS = ("train", "val")
EOT_TEXT = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
DOC_SEPS = ("blank", "eot", "none")  # .txt documents: blank-line blocks, <|endoftext|>, whole file
CHUNK_CHARS = 1 << 20  # text per worker task: big enough to amortise IPC, small enough to stay flat
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

# Named datasets. "load" holds datasets.load_dataset's arguments; "splits" maps ours to the hub's when
# the set has its own validation split, otherwise val is carved off at random with val_fraction.
DATASETS = {
    # doc_sep="eot" fits the official TinyStories*.txt files, for `tinystories --input=...`.
    "tinystories": dict(load=dict(path="roneneldan/TinyStories"), splits=("train", "validation"),
                        doc_sep="eot"),
    # One document split by characters, 90/10, so that losses compare with published numbers.
    "shakespeare": dict(url=SHAKESPEARE_URL, doc_sep="none"),
    "shakespeare_char": dict(url=SHAKESPEARE_URL, doc_sep="none", tokenizer="char"),
    # The hub's copy is a legacy loading script; its parquet export loads with current `datasets`.
    "openwebtext": dict(load=dict(path="Skylion007/openwebtext", revision="refs/convert/parquet",
                                  streaming=True), val_fraction=0.0005),
    "fineweb-edu": dict(load=dict(path="HuggingFaceFW/fineweb-edu", name="sample-10BT", streaming=True),
                        val_fraction=0.0005),
    # Conversations (a "messages" list of {role, content}) for chat fine-tuning, tokenized by chat.py
    # with a loss mask on the replies; local .jsonl conversations take --format=chat.
    "ultrachat": dict(load=dict(path="HuggingFaceH4/ultrachat_200k"), splits=("train_sft", "test_sft"),
                      format="chat"),
}


# ----------------------------------------------------------------------------- tokenizers

class GPT2Tokenizer:
    """GPT-2 BPE via tiktoken. encode() never parses special tokens: "<|endoftext|>" in text is text."""
    name = "gpt2"

    def __init__(self):
        import tiktoken
        try:
            self._enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline: a requests ConnectionError; a bad cache: ValueError
            raise UserError(f"could not load the GPT-2 BPE files ({type(e).__name__}); offline, set "
                            "TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files") from None
        self.vocab_size = self._enc.n_vocab  # 50257
        self.eot_token = self._enc.eot_token  # 50256

    def encode(self, text):
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts):
        # One thread: the parallelism comes from worker processes (threads gain nothing here).
        return self._enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids):
        return self._enc.decode(ids)


class CharTokenizer:
    """One id per character of the data's vocabulary, plus an end-of-text id when documents need one."""
    name = "char"

    def __init__(self, chars, eot_token=None):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot_token = eot_token
        self.vocab_size = len(self.chars) + (eot_token is not None)

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in this dataset's vocabulary of "
                            f"{len(self.chars)} characters") from None

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return "".join(EOT_TEXT if i == self.eot_token else self.chars[i] for i in ids)


def load_tokenizer(meta):
    """The tokenizer a dataset's meta.json names: the one place in the project that builds one."""
    kind = meta.get("tokenizer")
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer(meta["chars"], meta.get("eot_token"))
    raise UserError(f"unknown tokenizer {kind!r} in meta.json (expected 'gpt2' or 'char')")


def read_meta(data_dir):
    """A prepared dataset's meta.json as a dict."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise UserError(f"{path} not found: run `python prepare.py {Path(data_dir).name}` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run prepare.py with --force") from None


def token_dtype(vocab_size):
    # Ids run from 0 to vocab_size - 1: uint16 holds them up to a 65,536-token vocabulary.
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


# ----------------------------------------------------------------------------- reading documents

def input_files(path):
    """The files behind --input: the file itself, or a folder's .txt/.jsonl/.parquet files, sorted."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input {path} does not exist")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise UserError(f"folder {path} has no {', '.join(TEXT_SUFFIXES)} files")
    return files


def read_documents(path, doc_sep="blank", text_field="text", errors="strict"):
    """Yield one file's non-empty documents as strings, streaming (one document in memory at a time)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field, errors)
        elif suffix == ".parquet":
            yield from _parquet_documents(path, text_field)
        else:
            yield from _txt_documents(path, doc_sep, errors)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (first bad byte at offset {_first_bad_byte(path)}); "
                        "convert it, or pass --errors=replace to substitute U+FFFD") from None


def _txt_documents(path, doc_sep, errors):
    with open(path, encoding="utf-8", errors=errors) as f:
        if doc_sep == "none":
            text = f.read()
            if text.strip():
                yield text  # kept whole, as read: the classic character split depends on it
        elif doc_sep == "eot":
            rest = ""
            while block := f.read(CHUNK_CHARS):
                *docs, rest = (rest + block).split(EOT_TEXT)
                yield from (d.strip() for d in docs if d.strip())
            if rest.strip():
                yield rest.strip()
        else:  # a document is a run of non-blank lines, without its final newline
            lines = []
            for line in f:
                if line.strip():
                    lines.append(line)
                elif lines:
                    yield "".join(lines).removesuffix("\n")
                    lines = []
            if lines:
                yield "".join(lines).removesuffix("\n")


def _jsonl_documents(path, text_field, errors):
    with open(path, encoding="utf-8", errors=errors) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                fields = list(record) if isinstance(record, dict) else []
                raise UserError(f"{path}:{lineno} has no text field {text_field!r} (fields: {fields}); "
                                "choose one with --text_field=NAME")
            if text.strip():
                yield text


def _parquet_documents(path, text_field):
    import pyarrow.parquet as pq  # comes with `datasets`
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid for a file that is not parquet
        raise UserError(f"{path} is not a readable parquet file ({e})") from None
    if text_field not in table.schema_arrow.names:
        raise UserError(f"{path} has no column {text_field!r} (columns: {table.schema_arrow.names}); "
                        "choose one with --text_field=NAME")
    for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
        yield from (t for t in batch.column(0).to_pylist() if t and t.strip())


def _first_bad_byte(path):
    """Byte offset of the first invalid UTF-8 sequence, found in blocks so a huge file is never loaded."""
    decoder, pos = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_CHARS)
            pending = len(decoder.getstate()[0])  # bytes of a character split across blocks
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                return pos - pending + e.start
            if not block:
                return None
            pos += len(block)


# ----------------------------------------------------------------------------- splitting

def local_splits(paths, val_fraction, doc_sep="blank", text_field="text", errors="strict"):
    """(split, text) pairs for local files: the last val_fraction of the documents go to val; a single
    document is split by characters instead (first 1 - val_fraction train), as the classic recipe does.
    Returns (make_pairs, n_docs): a first pass counts documents and checks the encoding up front."""
    def documents():
        for path in paths:
            yield from read_documents(path, doc_sep, text_field, errors)

    n_docs = sum(1 for _ in documents())
    if n_docs == 0:
        raise UserError(f"no text found in {', '.join(map(str, paths))}: the input is empty")

    def pairs():
        if n_docs == 1:
            (text,) = documents()
            cut = int(len(text) * (1 - val_fraction))
            yield "train", text[:cut]
            yield "val", text[cut:]
            return
        n_val = max(1, round(n_docs * val_fraction))
        for i, text in enumerate(documents()):
            yield ("train" if i < n_docs - n_val else "val"), text

    return pairs, n_docs


def hub_splits(spec, val_fraction, text_field="text", seed=2357):
    """(split, text) pairs from the Hugging Face hub: the set's own splits, or val carved off at random
    (seeded, one coin per document, so it works on a stream of unknown length)."""
    if "splits" in spec:
        for ours, theirs in zip(SPLITS, spec["splits"]):
            yield from ((ours, text) for text in _hub_texts(spec["load"], theirs, text_field))
        return
    rng = random.Random(seed)
    for text in _hub_texts(spec["load"], "train", text_field):
        yield ("val" if rng.random() < val_fraction else "train"), text


def _hub_texts(load_args, split, text_field):
    import datasets  # slow to import: only when a hub set is asked for
    try:
        ds = datasets.load_dataset(**load_args, split=split)
        if ds.column_names is not None and text_field not in ds.column_names:  # None: unknown yet
            raise UserError(f"{load_args['path']} has no column {text_field!r} (columns: "
                            f"{ds.column_names}); choose one with --text_field=NAME")
        for batch in ds.select_columns([text_field]).iter(batch_size=1000):
            yield from (t for t in batch[text_field] if t and t.strip())
    except OSError as e:  # ConnectionError when offline, DatasetNotFoundError, HTTP errors
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"could not load {load_args['path']} from the Hugging Face hub ({reason}); "
                        "offline, use --input=PATH with local files, or HF_HUB_OFFLINE=1 with a "
                        "filled cache") from None


def download(url, path):
    """Fetch url to path once; later runs reuse the file."""
    if not path.exists():
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                body = response.read()
        except OSError as e:  # URLError, timeouts, DNS failures
            raise UserError(f"could not download {url} ({getattr(e, 'reason', e)}); "
                            "offline, pass --input=PATH to a local copy") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(path.name + ".tmp").write_bytes(body)
        os.replace(path.with_name(path.name + ".tmp"), path)
    return path


# ----------------------------------------------------------------------------- tokenize and write

_tokenizer = None  # the tokenizer of this (worker) process


def _init_worker(tok_meta):
    global _tokenizer
    _tokenizer = load_tokenizer(tok_meta)


def _encode_chunk(chunk):
    """(split, texts) -> (split, ids with end-of-text between documents, number of documents)."""
    split, texts = chunk
    flat = []
    for i, ids in enumerate(_tokenizer.encode_batch(texts)):
        if i:
            flat.append(_tokenizer.eot_token)
        flat.extend(ids)
    return split, np.array(flat, dtype=token_dtype(_tokenizer.vocab_size)), len(texts)


def _chunks(pairs):
    """Group consecutive documents of one split into tasks of about CHUNK_CHARS characters."""
    split, texts, size = None, [], 0
    for doc_split, text in pairs:
        if texts and (doc_split != split or size >= CHUNK_CHARS):
            yield split, texts
            texts, size = [], 0
        split = doc_split
        texts.append(text)
        size += len(text)
    if texts:
        yield split, texts


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
    try:
        pool = Pool(num_proc, _init_worker, (tok_meta,))
    finally:
        signal.signal(signal.SIGINT, default_handler)
    with pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _stream_to_files(pairs, tok, tok_meta, files, num_proc, total):
    """Append each split's tokens to its open file as they arrive; returns tokens written per split."""
    eot = np.array([tok.eot_token or 0], dtype=token_dtype(tok.vocab_size)).tobytes()
    tokens, docs, start = dict.fromkeys(files, 0), dict.fromkeys(files, 0), time.time()
    from tqdm import tqdm
    pairs = iter(pairs)
    first = next(pairs, None)  # open the source (a hub download may fail) before drawing a bar
    pairs = itertools.chain([first] if first else [], pairs)
    with tqdm(total=total, unit="doc", unit_scale=True, desc="tokenizing", mininterval=0.5) as bar:
        for split, ids, n in _encode_stream(_chunks(pairs), tok_meta, num_proc):
            if docs[split]:  # this chunk continues a split: separate it from the previous document
                assert tok.eot_token is not None, "several documents need an end-of-text token"
                files[split].write(eot)
                tokens[split] += 1
            files[split].write(ids.tobytes())
            tokens[split] += len(ids)
            docs[split] += n
            bar.update(n)
            rate = sum(tokens.values()) / max(time.time() - start, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
    return tokens


def check_outputs(data_dir, force=False):
    """Refuse to overwrite a prepared dataset unless asked to."""
    existing = [p.name for p in (Path(data_dir) / n for n in ("train.bin", "val.bin", "meta.json"))
                if p.exists()]
    if existing and not force:
        raise UserError(f"{data_dir} already holds {', '.join(existing)}; pass --force to overwrite")


@contextmanager
def staged_outputs(data_dir, names):
    """Yield {name: temp path} for each file in names; rename them all into place, in that order,
    only if the block finishes. An interrupted run leaves the previous dataset (or nothing) in
    place, never a .bin that looks complete: so meta.json goes last."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = {n: data_dir / f"{n}.tmp" for n in names}
    try:
        yield tmp
        for n in names:
            os.replace(tmp[n], data_dir / n)
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        if not any(data_dir.iterdir()):  # a failed first run leaves no empty folder behind
            data_dir.rmdir()


def dataset_meta(tok, name, source, command):
    """The meta.json fields every prepared dataset has (the token counts are added by the writer)."""
    return {"name": name, "tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot_token": tok.eot_token,
            "dtype": np.dtype(token_dtype(tok.vocab_size)).name, "source": str(source), "command": command,
            **({"chars": tok.chars} if tok.name == "char" else {})}


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_dataset(pairs, tok_meta, data_dir, *, num_proc=1, total=None, name=None, source="",
                  command=""):
    """Tokenize (split, text) pairs into data_dir/train.bin, val.bin and meta.json; returns the meta."""
    tok = load_tokenizer(tok_meta)  # a missing BPE file fails here, before anything is written
    data_dir = Path(data_dir)
    with staged_outputs(data_dir, [f"{s}.bin" for s in SPLITS] + ["meta.json"]) as tmp:
        with open(tmp["train.bin"], "wb") as train, open(tmp["val.bin"], "wb") as val:
            tokens = _stream_to_files(pairs, tok, tok_meta, {"train": train, "val": val}, num_proc, total)
        empty = [s for s in SPLITS if tokens[s] == 0]
        if empty:
            raise UserError(f"the {empty[0]} split came out empty ({tokens}); give more text or "
                            "change --val_fraction")
        meta = dataset_meta(tok, name or data_dir.name, source, command)
        meta |= {"train_tokens": tokens["train"], "val_tokens": tokens["val"]}
        write_json(tmp["meta.json"], meta)
    return meta


def tokenizer_meta(tokenizer, make_pairs):
    """What load_tokenizer needs. The char vocabulary comes from a pass over the data; it gets an
    end-of-text id only when some split holds more than one document (tiny Shakespeare stays 65)."""
    if tokenizer == "gpt2":
        return {"tokenizer": "gpt2"}
    if tokenizer != "char":
        raise UserError(f"unknown tokenizer {tokenizer!r}: use --tokenizer=gpt2 or --tokenizer=char")
    chars, docs = set(), dict.fromkeys(SPLITS, 0)
    for split, text in make_pairs():
        chars.update(text)
        docs[split] += 1
    chars = sorted(chars)
    return {"tokenizer": "char", "chars": chars, "eot_token": len(chars) if max(docs.values()) > 1 else None}


def prepare_files(paths, data_dir, tokenizer="gpt2", *, val_fraction=0.1, doc_sep="blank",
                  text_field="text", num_proc=None, errors="strict", force=False, name=None,
                  source=None, command=""):
    """Tokenize local files (.txt, .jsonl, .parquet) into data_dir; returns the meta.json dict."""
    paths = [Path(p) for p in paths]
    check_outputs(data_dir, force)
    if tokenizer == "gpt2":
        load_tokenizer({"tokenizer": "gpt2"})  # offline without BPE files: say so before reading
    make_pairs, n_docs = local_splits(paths, val_fraction, doc_sep, text_field, errors)
    tok_meta = tokenizer_meta(tokenizer, make_pairs)
    source = source or os.path.commonpath([p.resolve() for p in paths])  # the file, or their folder
    return write_dataset(make_pairs(), tok_meta, data_dir, num_proc=num_proc or cpu_count(),
                         total=max(n_docs, 2),  # one document comes as two halves
                         name=name, source=source, command=command)


def prepare_hub(spec, data_dir, tokenizer="gpt2", *, val_fraction=0.0005, text_field="text",
                num_proc=None, force=False, name=None, command=""):
    """Tokenize a Hugging Face dataset (DATASETS entry: load arguments, optional splits) into data_dir."""
    check_outputs(data_dir, force)

    def make_pairs():  # a fresh stream each call: the char vocabulary needs a pass of its own
        return hub_splits(spec, val_fraction, text_field)

    tok_meta = tokenizer_meta(tokenizer, make_pairs)
    source = "hf:" + "/".join(str(spec["load"][k]) for k in ("path", "name") if spec["load"].get(k))
    return write_dataset(make_pairs(), tok_meta, data_dir, num_proc=num_proc or cpu_count(),
                         name=name, source=source, command=command)


# ----------------------------------------------------------------------------- command line

def cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 1, like every other user mistake
        raise UserError(f"{message} (see python prepare.py --help)")


def parse_args(argv):
    def boolean(s):
        if s.lower() not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
        return s.lower() == "true"

    p = _Parser(prog="prepare.py", allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("dataset", nargs="?", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--input", help="a local .txt/.jsonl/.parquet file, or a folder of them")
    p.add_argument("--name", help="dataset folder name under --out_dir (default: NAME or the input's)")
    p.add_argument("--tokenizer", choices=("gpt2", "char"), help="default: gpt2 (char for *_char)")
    p.add_argument("--val_fraction", type=float, help="share of documents for val (local: 0.1)")
    p.add_argument("--doc_sep", choices=DOC_SEPS, help=".txt documents: blank lines (default), "
                   "<|endoftext|>, or none (whole file)")
    p.add_argument("--text_field", default="text", help="field/column holding the text")
    p.add_argument("--format", choices=("text", "chat"), help="chat: .jsonl conversations (a messages list "
                   "of {role, content} per line), tokenized with a loss mask on the replies; see chat.py")
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
    common = dict(tokenizer=args.tokenizer or spec.get("tokenizer", "gpt2"), val_fraction=val_fraction,
                  text_field=args.text_field, num_proc=args.num_proc, force=args.force, name=name,
                  command=shlex.join(["python", "prepare.py", *argv]))
    started = time.time()
    if (args.format or spec.get("format")) == "chat":  # conversations: chat.py adds the loss mask
        import chat
        if args.input is None and spec.get("format") != "chat":
            raise UserError("--format=chat reads --input=FILE.jsonl or a chat dataset (ultrachat)")
        hub = spec if args.input is None else None
        meta = chat.prepare_chat(data_dir, paths=None if hub else input_files(args.input), hub=hub,
                                 tokenizer=common["tokenizer"], val_fraction=val_fraction, force=args.force,
                                 name=name, command=common["command"])
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
