"""Where text comes from: the named datasets, local files and the Hugging Face hub.

Everything here streams: documents (and conversations) are yielded one at a time, and a long
document in segments, so prepare.py's memory grows neither with the corpus nor with its largest
document. prepare.py tokenizes what these functions yield.

    local_splits(paths, ...)      (split, text, more) segments of .txt / .jsonl / .parquet documents
    hub_splits(spec, ...)         (split, text, more) segments streamed from a Hugging Face dataset
    local_conversations(paths)    conversations ({"messages": [...]}) from .jsonl files
    hub_conversations(spec)       conversations from a Hugging Face chat dataset
"""
import codecs
import json
import random
import re
from pathlib import Path

from configurator import UserError
from data import SPLITS
from fileio import atomic_write
from tokenizer import EOT_TEXT

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
DOC_SEPS = ("blank", "eot", "none")  # .txt documents: blank-line blocks, <|endoftext|>, whole file
READ_CHARS = 1 << 20  # how much of a .txt file is read at a time, and a long document's segment size
MESSAGE_FIELDS = ("messages", "conversation")  # UltraChat / OpenAI style; LMSYS-Chat-1M
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
    # Conversations (a "messages" list of {role, content}) for chat fine-tuning, tokenized with a loss
    # mask on the replies; local .jsonl conversations take --format=chat.
    "ultrachat": dict(load=dict(path="HuggingFaceH4/ultrachat_200k"), splits=("train_sft", "test_sft"),
                      format="chat"),
}


# ----------------------------------------------------------------------------- local files

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
    """Yield one file's non-empty documents as (text, more) segments, streaming: a document comes in
    segments of about READ_CHARS characters, the last with more=False, so that even a document of
    many megabytes (a .txt file on one line) is never held whole. (A .jsonl line or a parquet cell
    is read whole: those formats hold each text in one piece.)"""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".jsonl":
            yield from ((text, False) for text in _jsonl_documents(path, text_field, errors))
        elif suffix == ".parquet":
            yield from ((text, False) for text in _parquet_documents(path, text_field))
        else:
            with open(path, encoding="utf-8", errors=errors) as f:
                yield from {"blank": _blank_separated, "eot": _eot_separated, "none": _whole}[doc_sep](f)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (first bad byte at offset {_first_bad_byte(path)}); "
                        "convert it, or pass --errors=replace to substitute U+FFFD") from None


class _Document:
    """The text of the document being read that is not yet handed on. add() and end() return the
    segments to yield: (text, True) whenever READ_CHARS characters have gathered, and (rest, False)
    at the document's end. Empty text opens no document."""

    def __init__(self):
        self.parts, self.size, self.open = [], 0, False

    def add(self, text):
        if not text:
            return []
        self.parts.append(text)
        self.size, self.open = self.size + len(text), True
        return [(self._take(), True)] if self.size >= READ_CHARS else []

    def end(self):
        segments = [(self._take(), False)] if self.open else []
        self.open = False
        return segments

    def _take(self):
        text, self.parts, self.size = "".join(self.parts), [], 0
        return text


# A document boundary: a line's end, then one or more lines of whitespace, each with its newline.
# (\s is what str.strip() strips; in text mode every line break has become "\n".)
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_LEADING_BLANK_LINES = re.compile(r"(?:[^\S\n]*\n)+")


def _blank_separated(f):
    """Documents separated by blank lines (empty or whitespace only): a run of non-blank lines,
    without its final newline. Read in blocks of READ_CHARS characters and cut with one regular
    expression, not line by line (the line loop was most of a pass over a corpus). A block's trailing
    whitespace waits for the next: whether it ends the document depends on what follows."""
    doc, rest = _Document(), ""
    while block := f.read(READ_CHARS):
        text = rest + block
        end = len(text.rstrip()) if text[-1].isspace() else len(text)  # (rstrip copies the block)
        text, rest = text[:end], text[end:]
        pieces = _BLANK_LINES.split(text)  # what goes on, whole documents, the start of the next
        first = pieces[0]
        if not doc.open:  # blank lines before a document (only at the file's start) are dropped
            if blank := _LEADING_BLANK_LINES.match(first):
                first = first[blank.end():]
            if first.isspace():  # only at the file's start too: whitespace, then a boundary
                first = ""
        yield from doc.add(first)
        if len(pieces) > 1:  # each piece after a boundary begins with a non-blank line
            yield from doc.end()
            yield from ((piece, False) for piece in pieces[1:-1])
            yield from doc.add(pieces[-1])
        if len(rest) > READ_CHARS and "\n" in rest:  # a long run of whitespace: settle what it decides
            first_nl, last_nl = rest.find("\n"), rest.rfind("\n")
            if doc.open:
                yield from doc.add(rest[:first_nl])  # the spaces that end the document's last line
                if last_nl > first_nl:  # and a blank line after it
                    yield from doc.end()
            rest = ("\n" if doc.open else "") + rest[last_nl + 1:]
    if doc.open:  # the spaces that end the file's last line
        yield from doc.add(rest.partition("\n")[0])
    yield from doc.end()


def _eot_separated(f):
    """Documents separated by <|endoftext|>, each stripped of the whitespace around it."""
    doc, rest = _Document(), ""
    while block := f.read(READ_CHARS):
        *texts, rest = (rest + block).split(EOT_TEXT)
        for text in texts:  # the end of a document
            yield from doc.add(text.rstrip() if doc.open else text.strip())
            yield from doc.end()
        if len(rest) > READ_CHARS:  # a long document: hand on all but what may be a marker's start,
            keep = len(EOT_TEXT) - 1  # or whitespace that ends the document
            head = rest[:-keep].rstrip()
            rest = rest[len(head):]
            yield from doc.add(head if doc.open else head.lstrip())
    yield from doc.add(rest.rstrip() if doc.open else rest.strip())
    yield from doc.end()


def _whole(f):
    """The whole file as one document, kept as read (the classic character split depends on it),
    unless it is only whitespace."""
    doc, ws = _Document(), ""
    while block := f.read(READ_CHARS):
        if ws is not None:  # only whitespace so far: nothing to hand on yet
            ws += block
            block, ws = (ws, None) if ws.strip() else ("", ws)
        yield from doc.add(block)
    yield from doc.end()


def _jsonl_documents(path, text_field, errors):
    with open(path, encoding="utf-8", errors=errors) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                fields = list(record) if isinstance(record, dict) else []
                raise UserError(f"{path}:{lineno} has no text field {text_field!r} (fields: {fields}); "
                                "choose one with --text_field=NAME")
            text = record[text_field]
            if not isinstance(text, str):
                raise UserError(f"{path}:{lineno}: field {text_field!r} holds {_json_kind(text)}, not a "
                                "string; fix that line, or choose another field with --text_field=NAME")
            if text.strip():
                yield text


def _json_kind(value):
    """What a JSON value is, in JSON's words: 'a number', 'null', ..."""
    if value is None:
        return "null"
    kinds = ((bool, "true/false"), ((int, float), "a number"), (list, "a list"), (dict, "an object"))
    return next(kind for types, kind in kinds if isinstance(value, types))


def _parquet_documents(path, text_field):
    import pyarrow as pa  # comes with `datasets`
    import pyarrow.parquet as pq
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid for a file that is not parquet
        raise UserError(f"{path} is not a readable parquet file ({e})") from None
    if text_field not in table.schema_arrow.names:
        raise UserError(f"{path} has no column {text_field!r} (columns: {table.schema_arrow.names}); "
                        "choose one with --text_field=NAME")
    kind = table.schema_arrow.field(text_field).type
    if kind not in (pa.string(), pa.large_string()):
        raise UserError(f"{path}: column {text_field!r} holds {kind}, not text; choose another with "
                        "--text_field=NAME")
    for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
        yield from (t for t in batch.column(0).to_pylist() if t and t.strip())


def _first_bad_byte(path):
    """Byte offset of the first invalid UTF-8 sequence, found in blocks so a huge file is never loaded."""
    decoder, pos = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(READ_CHARS)
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
    """(split, text, more) segments of local files' documents (more: the document goes on in the
    next segment): the last val_fraction of the documents go to val; a single document is split by
    characters instead (first 1 - val_fraction train), as the classic recipe does. Returns
    (make_segments, n_docs, n_chars): a first pass counts and checks the encoding up front."""
    def segments():
        for path in paths:
            yield from read_documents(path, doc_sep, text_field, errors)

    n_docs = n_chars = 0
    for text, more in segments():
        n_docs, n_chars = n_docs + (not more), n_chars + len(text)
    if n_docs == 0:
        raise UserError(f"no text found in {', '.join(map(str, paths))}: the input is empty")

    def split_segments():
        if n_docs == 1:  # train ends, and val begins, at the character `cut`
            split, cut, seen = "train", int(n_chars * (1 - val_fraction)), 0
            for text, more in segments():
                if split == "train" and seen + len(text) >= cut:
                    yield "train", text[:cut - seen], False
                    split, text = "val", text[cut - seen:]
                seen += len(text)
                yield split, text, more
            return
        n_val, i = max(1, round(n_docs * val_fraction)), 0
        for text, more in segments():
            yield ("train" if i < n_docs - n_val else "val"), text, more
            i += not more

    return split_segments, n_docs, n_chars


def hub_splits(spec, val_fraction, text_field="text", seed=2357):
    """(split, text, False) segments, one per document, from the Hugging Face hub: the set's own
    splits, or val carved off at random (seeded, one coin per document, so it works on a stream of
    unknown length)."""
    if "splits" in spec:
        for ours, theirs in zip(SPLITS, spec["splits"]):
            yield from ((ours, text, False) for text in _hub_texts(spec["load"], theirs, text_field))
        return
    rng = random.Random(seed)
    for text in _hub_texts(spec["load"], "train", text_field):
        yield ("val" if rng.random() < val_fraction else "train"), text, False


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
        import urllib.request  # http and ssl: imported for a download only

        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                body = response.read()
        except OSError as e:  # URLError, timeouts, DNS failures
            raise UserError(f"could not download {url} ({getattr(e, 'reason', e)}); "
                            "offline, pass --input=PATH to a local copy") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(body)
    return path


# ----------------------------------------------------------------------------- conversations

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
    """(split, messages) from a Hugging Face chat set; spec: a DATASETS entry with its splits."""
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
