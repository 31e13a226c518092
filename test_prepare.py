"""Tests of prepare.py and sources.py: text (local files, the hub, a download) and conversations
into token memmaps. First where the text comes from (sources.py), then how prepare.py tokenizes and
writes it, conversations with their loss mask, and the command line's errors.
"""
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import prepare
import sources
from conftest import (CONVERSATIONS, MALFORMED, REPO, SHARED, assert_one_line_error, bpe_meta, bpe_text,
                      needs_gpt2_files, needs_shared, run_script, write_checkpoint, write_jsonl)
from configurator import UserError
from data import SPLITS, read_meta
from tokenizer import EOT_TEXT as EOT
from tokenizer import CharTokenizer, load_tokenizer, train_bpe

DOCS = [
    "Once upon a time there was a tiny model.\nIt learned to speak.",
    "Ünïcödé, emoji 🐍 and CJK 字 survive the trip.",
    "  leading spaces and a tab\tinside",
    "short",
    "The end, with <|endoftext|> written as plain text.",
]


def load_split(data_dir, split):
    meta = read_meta(data_dir)
    return np.fromfile(Path(data_dir) / f"{split}.bin", dtype=meta["dtype"]).tolist()


def decoded(data_dir):
    """train and val decoded, in order, as one text; the two splits are joined by end-of-text."""
    tok = load_tokenizer(read_meta(data_dir))
    return tok.decode(load_split(data_dir, "train")), tok.decode(load_split(data_dir, "val"))


def write_txt(path, docs):
    # Blank lines between documents, one of them holding only whitespace.
    path.write_text("\n\n".join(docs[:2]) + "\n  \n" + "\n\n\n".join(docs[2:]) + "\n", encoding="utf-8")
    return path


def conversation_counts(meta):
    return meta["train_conversations"], meta["val_conversations"], meta["skipped_conversations"]


# -----------------------------------------------------------------------------
# sources.py: local files


def test_jsonl_input_uses_the_text_field_and_says_when_it_is_missing_or_not_a_string(tmp_path):
    src = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": i, "body": d}) for i, d in enumerate(DOCS)]
    src.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n", encoding="utf-8")
    args = [f"--input={src}", f"--out_dir={tmp_path}", "--tokenizer=char", "--num_proc=1"]
    result = run_script("prepare.py", *args, "--text_field=body")
    assert result.returncode == 0, result.stderr
    train, val = decoded(tmp_path / "docs")
    assert train + EOT + val == EOT.join(DOCS)

    with pytest.raises(UserError, match=r"docs.jsonl:1 has no text field 'text' \(fields: \['id', 'body'\]\)"):
        prepare.main(args + ["--name=other"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    assert_one_line_error(run_script("prepare.py", f"--input={bad}", f"--out_dir={tmp_path}", "--tokenizer=char"),
                          "bad.jsonl:2: field 'text' holds a number, not a string")


def test_folder_reads_txt_jsonl_and_parquet_in_sorted_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    write_txt(folder / "a.txt", DOCS[:2])
    (folder / "b.jsonl").write_text(json.dumps({"text": DOCS[2]}) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": DOCS[3:], "n": [1, 2]}), folder / "sub" / "c.parquet")
    (folder / "notes.csv").write_text("ignored,because,not,text\n")
    (folder / ".hidden.txt").write_text("ignored, hidden\n")
    meta = prepare.prepare_files(sources.input_files(folder), tmp_path / "out", "char", num_proc=1)
    train, val = decoded(tmp_path / "out")
    assert train + EOT + val == EOT.join(DOCS), (train, val)
    assert meta["source"] == str(folder.resolve()), meta["source"]
    pq.write_table(pa.table({"text": [1, 2]}), folder / "sub" / "c.parquet")
    with pytest.raises(UserError, match="c.parquet: column 'text' holds int64, not text"):
        prepare.prepare_files(sources.input_files(folder), tmp_path / "ints", "char", num_proc=1)


def blank_separated_reference(text):
    """Blank-line documents the slow, obvious way: the whole text, line by line."""
    docs, lines = [], []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") + [""]:
        if line.strip():
            lines.append(line)
        elif lines:
            docs.append("\n".join(lines))
            lines = []
    return docs


@pytest.mark.parametrize("read_chars", [1, 3, 7, 64])
def test_blank_separated_documents_match_a_line_by_line_reading_whatever_the_block_size(
        tmp_path, monkeypatch, read_chars):
    monkeypatch.setattr(sources, "READ_CHARS", read_chars)
    rng = random.Random(read_chars)
    alphabet = ["a", "b", " ", " ", "\t", "\n", "\n", "\n", "\r", "\r\n", "\u2028", "\x0c", "\xa0", "é", "字"]
    for trial in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        if trial % 10 == 0:  # long runs of whitespace, longer than a block
            text = text[:20] + " \n" * rng.randrange(30) + "  " * rng.randrange(30) + text[20:]
        path = tmp_path / "doc.txt"
        path.write_text(text, encoding="utf-8", newline="")  # the reader translates line breaks
        docs, parts = [], []
        for segment, more in sources.read_documents(path):
            parts.append(segment)
            if not more:
                docs.append("".join(parts))
                parts = []
        assert docs == blank_separated_reference(text), repr(text)


def test_eot_separated_txt_splits_on_the_marker(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHARS", 16)  # the marker straddles read blocks
    src = tmp_path / "ts.txt"
    src.write_text(f"\n{EOT}\n".join(DOCS[:4]) + f"\n{EOT}\n", encoding="utf-8")
    prepare.prepare_files([src], tmp_path / "ts", "char", doc_sep="eot", val_fraction=0.25, num_proc=1)
    train, val = decoded(tmp_path / "ts")
    assert train + EOT + val == EOT.join(d.strip() for d in DOCS[:4]), (train, val)


def test_bad_utf8_names_the_byte_offset_and_replace_works(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("plain ascii first\n\n".encode() + "caf\xe9".encode("latin-1") + b"\n")
    args = [f"--input={src}", f"--out_dir={tmp_path}", "--tokenizer=char", "--num_proc=1"]
    assert_one_line_error(run_script("prepare.py", *args), str(src), "offset 22", "--errors=replace")
    assert not (tmp_path / "latin1").exists()
    result = run_script("prepare.py", *args, "--errors=replace")
    assert result.returncode == 0, result.stderr
    assert decoded(tmp_path / "latin1")[1] == "caf\ufffd"


@needs_shared
@pytest.mark.parametrize("name,train,val", [pytest.param("shakespeare", 301_966, 36_059, marks=needs_gpt2_files),
                                            ("shakespeare_char", 1_003_854, 111_540)])
def test_shakespeare_has_the_classic_split(tmp_path, name, train, val):
    result = run_script("prepare.py", name, f"--input={SHARED / 'data' / 'tinyshakespeare.txt'}",
                        f"--out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    meta = read_meta(tmp_path / name)
    got = (meta["train_tokens"], meta["val_tokens"])
    assert got == (train, val), f"{name}: got {got}, classic split is {(train, val)}"
    assert len(load_split(tmp_path / name, "val")) == val
    if name == "shakespeare_char":
        assert meta["vocab_size"] == 65, meta["vocab_size"]


# -----------------------------------------------------------------------------
# sources.py: the Hugging Face hub and downloads


def test_hub_pipeline_streams_through_datasets(tmp_path, monkeypatch):
    # The hub code path, fed by `datasets`' json builder so that it runs offline.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    files = {}
    for split, docs in (("train", DOCS[:3]), ("validation", DOCS[3:])):
        files[split] = str(tmp_path / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    spec = dict(load=dict(path="json", data_files=files, streaming=True), splits=("train", "validation"))
    meta = prepare.prepare_hub(spec, tmp_path / "own", "char", num_proc=1)
    train, val = decoded(tmp_path / "own")
    assert train + EOT + val == EOT.join(DOCS) and meta["source"] == "hf:json", meta

    spec = dict(load=dict(path="json", data_files={"train": files["train"]}, streaming=True))
    prepare.prepare_hub(spec, tmp_path / "carved", "char", val_fraction=0.5, num_proc=1)
    train, val = decoded(tmp_path / "carved")
    # Seeded coin flips: the same documents go to val on every run, and every document lands somewhere.
    assert sorted((train + EOT + val).split(EOT)) == sorted(DOCS[:3]) and val, (train, val)


def test_offline_hub_says_use_input_or_a_filled_cache(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    result = run_script("prepare.py", "tinystories", "--tokenizer=char", f"--out_dir={tmp_path / 'out'}", env=env)
    assert_one_line_error(result, "roneneldan/TinyStories", "--input=PATH", "HF_HUB_OFFLINE=1")
    assert not list((tmp_path / "out").rglob("*")), list((tmp_path / "out").rglob("*"))


def test_named_shakespeare_reuses_a_downloaded_input_txt(tmp_path):
    # The download happens once: a later run (or an offline machine given the file) reads it again.
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    (tmp_path / "shakespeare_char").mkdir()
    (tmp_path / "shakespeare_char" / "input.txt").write_text(text)
    result = run_script("prepare.py", "shakespeare_char", f"--out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    meta = read_meta(tmp_path / "shakespeare_char")
    assert meta["source"] == sources.SHAKESPEARE_URL and meta["eot_token"] is None, meta
    cut = int(len(text) * 0.9)
    assert (meta["train_tokens"], meta["val_tokens"]) == (cut, len(text) - cut), meta
    assert "".join(decoded(tmp_path / "shakespeare_char")) == text


# -----------------------------------------------------------------------------
# prepare.py: tokenize and write


def test_txt_round_trip_through_cli_with_worker_processes(tmp_path):
    src = write_txt(tmp_path / "stories.txt", DOCS)
    result = run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path / 'data'}", "--num_proc=2",
                        "--val_fraction=0.4", "--tokenizer=char")
    assert result.returncode == 0, result.stderr
    train, val = decoded(tmp_path / "data" / "stories")
    assert train + EOT + val == EOT.join(DOCS), (train, val)
    assert val == EOT.join(DOCS[3:]), f"val should be the last 2 of 5 documents, got {val!r}"


def test_worker_processes_write_the_same_bytes_as_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 300)  # many chunks, so ordering across workers matters
    docs = [f"document {i}: " + "word " * (i % 37) for i in range(400)]
    src = write_txt(tmp_path / "many.txt", docs)
    for n in (1, 2):
        prepare.prepare_files([src], tmp_path / f"p{n}", "char", num_proc=n)
    for split in SPLITS:
        one, two = [(tmp_path / f"p{n}" / f"{split}.bin").read_bytes() for n in (1, 2)]
        assert one == two, f"{split}: {len(one)} bytes with 1 process, {len(two)} with 2"
    train, val = decoded(tmp_path / "p2")
    assert train + EOT + val == EOT.join(docs)


def test_meta_json_describes_the_bins(tmp_path):
    src = write_txt(tmp_path / "in.txt", DOCS)
    prepare.prepare_files([src], tmp_path / "set", "char", num_proc=1, name="set", command="python prepare.py x")
    meta = json.loads((tmp_path / "set" / "meta.json").read_text())
    assert set(meta) == {"name", "tokenizer", "vocab_size", "eot_token", "dtype", "train_tokens",
                         "val_tokens", "source", "command", "chars"}, sorted(meta)
    chars = sorted(set("".join(DOCS)))
    assert (meta["name"], meta["tokenizer"], meta["chars"], meta["vocab_size"], meta["eot_token"], meta["dtype"]) \
        == ("set", "char", chars, len(chars) + 1, len(chars), "uint16"), meta
    assert meta["source"] == str(src.resolve()) and meta["command"] == "python prepare.py x", meta
    for split in SPLITS:
        size = (tmp_path / "set" / f"{split}.bin").stat().st_size
        assert size == 2 * meta[f"{split}_tokens"], f"{split}: {size} bytes for {meta[f'{split}_tokens']}"


def test_char_tokenizer_round_trips_exactly(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("To be, or not to be:\n\nthat is the question.\n", encoding="utf-8")
    meta = prepare.prepare_files([one], tmp_path / "one", "char", doc_sep="none", num_proc=1)
    train, val = decoded(tmp_path / "one")
    assert train + val == one.read_text(encoding="utf-8"), (train, val)
    assert meta["chars"] == sorted(set(one.read_text())) and meta["eot_token"] is None, meta
    assert meta["vocab_size"] == len(meta["chars"]) and meta["tokenizer"] == "char"

    many = write_txt(tmp_path / "many.txt", DOCS)
    meta = prepare.prepare_files([many], tmp_path / "many", "char", num_proc=1)
    assert meta["eot_token"] == len(meta["chars"]) and meta["vocab_size"] == len(meta["chars"]) + 1, meta
    train, val = decoded(tmp_path / "many")
    assert train + EOT + val == EOT.join(DOCS), (train, val)


def test_interrupted_write_leaves_no_bin_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    src = write_txt(tmp_path / "in.txt", DOCS)
    out = tmp_path / "set"
    prepare.prepare_files([src], out, "char", val_fraction=0.4, num_proc=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def encode_then_crash(chunk):
        calls.append(chunk)
        if len(calls) == 2:  # the train chunk was written to train.bin.tmp; crash on val
            raise KeyboardInterrupt
        return real_encode(chunk)

    real_encode = prepare._encode_chunk
    monkeypatch.setattr(prepare, "_encode_chunk", encode_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_files([src], out, "char", num_proc=1, force=True)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before, f"files changed or left behind: {sorted(after)} vs {sorted(before)}"

    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_files([src], tmp_path / "fresh", "char", num_proc=1)
    assert not (tmp_path / "fresh").exists(), list((tmp_path / "fresh").iterdir())


def test_existing_outputs_need_force(tmp_path):
    src = write_txt(tmp_path / "in.txt", DOCS)
    args = [f"--input={src}", f"--out_dir={tmp_path}", "--num_proc=1", "--tokenizer=char"]
    assert run_script("prepare.py", *args).returncode == 0
    assert_one_line_error(run_script("prepare.py", *args, "--doc_sep=none"), "already holds", "--force")
    assert read_meta(tmp_path / "in")["eot_token"] is not None  # several documents
    result = run_script("prepare.py", *args, "--doc_sep=none", "--force")
    assert result.returncode == 0, result.stderr
    assert read_meta(tmp_path / "in")["eot_token"] is None  # the whole file, one document


# -----------------------------------------------------------------------------
# prepare.py: a BPE of one's own


def test_bpe_is_learned_from_the_train_split_and_tokenizes_both_with_worker_processes(tmp_path):
    stories = bpe_text().splitlines()
    docs = stories[:200] + DOCS + ["zyzzyva " * 50, "val is  zyzzyva zyzzyva\ufffd\ufffd"]
    src = tmp_path / "stories.txt"
    src.write_bytes(b"\n\n".join(d.encode() for d in docs[:-1]) + b"\n\nval is  zyzzyva zyzzyva\xff\xfe\n")
    result = run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path}", "--tokenizer=bpe",
                        "--vocab_size=300", "--num_proc=2", "--val_fraction=0.01", "--errors=replace")
    assert result.returncode == 0, result.stderr
    assert "huggingface/tokenizers" not in result.stderr, "forked workers must not warn: " + result.stderr
    meta = json.loads((tmp_path / "stories" / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"]) == ("bpe", 300, 0), meta
    assert "tokenizer_json" not in meta, "the vocabulary lives in tokenizer.json, beside meta.json"
    vocab = (tmp_path / "stories" / "tokenizer.json").read_text()
    assert read_meta(tmp_path / "stories")["tokenizer_json"] == vocab
    train, val = decoded(tmp_path / "stories")
    assert train + EOT + val == EOT.join(docs), "every document comes back, bytes replaced as asked"
    ids = load_split(tmp_path / "stories", "train")
    assert ids.count(0) == len(docs) - 3 and EOT in train, "documents are separated by id 0 alone"
    # learned from the train split alone: exactly what the trainer makes of those documents
    assert read_meta(tmp_path / "stories")["tokenizer_json"] == train_bpe(docs[:-2], 300).json


def test_same_input_and_settings_give_a_byte_identical_tokenizer_json(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(bpe_text().replace("\n", "\n\n"), encoding="utf-8")
    outputs = []
    for run in ("a", "b"):
        prepare.prepare_files([src], tmp_path / run, "bpe", vocab_size=320, num_proc=1)
        outputs.append([(tmp_path / run / f).read_bytes() for f in ("tokenizer.json", "train.bin")])
    assert outputs[0] == outputs[1]
    assert len(json.loads(outputs[0][0])["model"]["vocab"]) == 320


def test_tokenizer_sample_learns_from_the_first_characters_or_an_even_share_of_documents(tmp_path):
    src = tmp_path / "in.txt"
    docs = bpe_text().splitlines()
    src.write_text("\n\n".join(docs), encoding="utf-8")
    train_docs = docs[:-30]  # the last 10% are val
    cut, first = 3000, []
    for doc in train_docs:
        first.append(doc[:cut - sum(map(len, first))])
        if sum(map(len, first)) >= cut:
            break
    for sample, learned_from in ((cut, first), (0.5, train_docs[1::2])):
        meta = prepare.prepare_files([src], tmp_path / str(sample), "bpe", vocab_size=300,
                                     tokenizer_sample=sample, num_proc=1)
        assert meta["tokenizer_json"] == train_bpe(learned_from, 300).json, sample


def test_a_shared_tokenizer_gives_two_datasets_identical_ids(tmp_path, tiny_bpe):
    """A tokenizer.json, a prepared dataset's folder or a training run's out_dir lend their ids."""
    first = tmp_path / "first.txt"
    first.write_text(bpe_text().replace("\n", "\n\n"), encoding="utf-8")
    learned = prepare.prepare_files([first], tmp_path / "first", "bpe", vocab_size=300, num_proc=1)
    write_checkpoint(tmp_path / "run", bpe_meta(load_tokenizer(learned)))
    second = tmp_path / "second.txt"
    second.write_text("A new story about a lazy fox.\n\nAnother one 🐍.\n", encoding="utf-8")
    ids = {}
    for source in ("first", "first/tokenizer.json", "run"):
        out = tmp_path / source.replace("/", "_") / "out"
        meta = prepare.prepare_files([second], out, str(tmp_path / source), num_proc=1)
        assert meta["tokenizer_json"] == learned["tokenizer_json"], source
        ids[source] = load_split(out, "train")
    assert ids["first"] == ids["first/tokenizer.json"] == ids["run"] == \
        load_tokenizer(learned).encode("A new story about a lazy fox."), ids


def test_a_dataset_that_is_no_longer_bpe_loses_its_stale_tokenizer_json(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(bpe_text().replace("\n", "\n\n"), encoding="utf-8")
    prepare.prepare_files([src], tmp_path / "set", "bpe", vocab_size=300, num_proc=1)
    assert (tmp_path / "set" / "tokenizer.json").exists()
    prepare.prepare_files([src], tmp_path / "set", "char", num_proc=1, force=True)
    assert read_meta(tmp_path / "set")["tokenizer"] == "char"
    assert not (tmp_path / "set" / "tokenizer.json").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--tokenizer=bpe", "--vocab_size=8k"], "--vocab_size: must be a whole number of tokens, at least 257"),
    (["--tokenizer=bpe", "--vocab_size=256"], "at least 257 (256 bytes and <|endoftext|>)"),
    (["--tokenizer=bpe"], "--tokenizer=bpe needs --vocab_size=N"),
    (["--vocab_size=4096"], "--vocab_size is for learning a BPE: use it with --tokenizer=bpe"),
    (["--tokenizer=bpe", "--vocab_size=300", "--tokenizer_sample=1.5"], "a number of characters (e.g. 1e9)"),
    (["--tokenizer=bep"], "unknown tokenizer 'bep': use gpt2, char, bpe"),
    (["--tokenizer={tmp}"], "holds no tokenizer.json, meta.json or ckpt.pt"),
    (["--tokenizer=bpe", "--vocab_size=50000"], "not 50,000: give more text or a smaller --vocab_size"),
])
def test_bpe_option_mistakes_are_one_sentence_errors(tmp_path, flags, needle):
    src = write_txt(tmp_path / "in.txt", DOCS)
    with pytest.raises(UserError) as e:
        prepare.main([f"--input={src}", f"--out_dir={tmp_path / 'out'}", "--num_proc=1",
                      *(f.format(tmp=tmp_path) for f in flags)])
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# prepare.py: conversations, with a loss mask on the replies


def test_prepare_chat_skips_and_counts_malformed_conversations(tmp_path):
    src = write_jsonl(tmp_path / "mixed.jsonl", CONVERSATIONS, [line for line, _ in MALFORMED])
    result = run_script("prepare.py", f"--input={src}", "--format=chat", "--tokenizer=char",
                        f"--out_dir={tmp_path}", "--name=m")
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stdout.splitlines() if "skipped" in line)
    assert "3 usable conversations; skipped 6 of 9" in summary, summary
    for _, reason in MALFORMED:
        assert reason in summary, (reason, summary)
    meta = read_meta(tmp_path / "m")
    assert meta["skipped_conversations"] == 6 and meta["tokenizer"] == "char", meta
    tok = load_tokenizer(meta)
    val = np.fromfile(tmp_path / "m" / "val.bin", dtype=meta["dtype"]).tolist()
    assert tok.decode(val) == "User: Name a colour.<|endoftext|>Assistant: Green.<|endoftext|>"


def test_prepare_chat_with_no_usable_conversation_is_a_one_line_error(tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", [], [line for line, _ in MALFORMED])
    result = run_script("prepare.py", f"--input={src}", "--format=chat", "--tokenizer=char",
                        f"--out_dir={tmp_path}", "--name=bad")
    assert_one_line_error(result, "no usable conversations", "skipped 6 of 6", "unknown role 'tool'")
    assert not (tmp_path / "bad").exists(), list(tmp_path.iterdir())
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert_one_line_error(run_script("prepare.py", f"--input={text}", "--format=chat", "--tokenizer=char",
                                     f"--out_dir={tmp_path}"), ".jsonl")


def test_hub_chat_set_keeps_its_own_splits_and_skips_bad_rows(tmp_path, monkeypatch):
    class FakeSet:  # what datasets.load_dataset returns, as far as sources.py uses it
        column_names = ["prompt", "messages"]

        def __init__(self, rows):
            self.rows = rows

        def select_columns(self, columns):
            return self

        def iter(self, batch_size):
            yield {"messages": self.rows}

    loaded = []

    def load_dataset(path, split):
        loaded.append((path, split))
        return FakeSet(CONVERSATIONS[:2] + [[{"role": "user"}]] if split == "train_sft"
                       else CONVERSATIONS[2:])

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", load_dataset, raising=False)
    meta = prepare.prepare_chat(tmp_path / "u", hub=sources.DATASETS["ultrachat"], tokenizer="char")
    assert sorted(set(loaded)) == [("HuggingFaceH4/ultrachat_200k", "test_sft"),
                                   ("HuggingFaceH4/ultrachat_200k", "train_sft")], loaded
    assert conversation_counts(meta) == (2, 1, 1), meta
    assert meta["source"] == "hf:HuggingFaceH4/ultrachat_200k", meta


# -----------------------------------------------------------------------------
# prepare.py: the command line


@pytest.mark.parametrize("case", ["missing", "empty", "blank", "no_text_files", "unknown_name", "no_args",
                                  "bad_flag", "bad_fraction", "out_dir_is_a_file"])
def test_bad_input_gives_one_clear_line(tmp_path, case):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "image.png").write_bytes(b"\x89PNG")
    args, needles = {
        "missing": (["--input=nope.txt"], ["nope.txt does not exist"]),
        "empty": ([f"--input={tmp_path / 'empty.txt'}"], ["no text found", "empty"]),
        "blank": ([f"--input={tmp_path / 'blank.txt'}"], ["no text found"]),
        "no_text_files": ([f"--input={tmp_path / 'folder'}"], ["has no .txt, .jsonl, .parquet files"]),
        "unknown_name": (["tinystorie"], ["unknown dataset 'tinystorie'", "tinystories, shakespeare"]),
        "no_args": ([], ["name a dataset", "--input=PATH"]),
        "bad_flag": (["shakespeare", "--num_procs=2"], ["unrecognized arguments: --num_procs=2"]),
        "bad_fraction": (["--input=x.txt", "--val_fraction=1.5"], ["between 0 and 1"]),
        "out_dir_is_a_file": ([f"--input={tmp_path / 'empty.txt'}", f"--out_dir={tmp_path / 'blank.txt'}"],
                              ["blank.txt is a file, not a folder", "--out_dir"]),
    }[case]
    assert_one_line_error(run_script("prepare.py", "--tokenizer=char", f"--out_dir={tmp_path / 'out'}", *args),
                          *needles)
    assert not (tmp_path / "out").exists()


def test_offline_without_bpe_files_says_set_tiktoken_cache_dir(tmp_path):
    src = write_txt(tmp_path / "in.txt", DOCS)
    (tmp_path / "empty_cache").mkdir()
    result = run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path / 'out'}",
                        env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache")})
    assert_one_line_error(result, "GPT-2 BPE", "TIKTOKEN_CACHE_DIR")
    assert not (tmp_path / "out").exists()


SLOW_RUN = """
import os, pathlib, time, configurator, prepare
def slow_encode(chunk):  # reached by the forked workers through prepare._encode_chunk
    pathlib.Path(os.environ["ENCODING_STARTED"]).touch()
    time.sleep(60)
prepare._encode_chunk = slow_encode
configurator.run(prepare.main)
"""


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_workers_and_leaves_no_files(tmp_path, how):
    src = write_txt(tmp_path / "in.txt", DOCS)
    started = tmp_path / "encoding_started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, f"--input={src}", f"--out_dir={tmp_path}",
                             "--num_proc=2", "--tokenizer=char"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ENCODING_STARTED": str(started)},
                            start_new_session=True)  # its own process group, like a terminal's job
    deadline = time.time() + 20
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "in" / "train.bin.tmp").exists(), "the run should be mid-write"
    if how == "ctrl_c":  # every process of the job gets SIGINT
        os.killpg(proc.pid, signal.SIGINT)
    else:  # `kill PID`, or a job scheduler's: the main process alone gets SIGTERM
        proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=20)[1]
    code, last = (130, "interrupted") if how == "ctrl_c" else (143, "terminated")
    assert proc.returncode == code and err.strip().splitlines()[-1] == last, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert not (tmp_path / "in").exists(), list((tmp_path / "in").iterdir())
    while time.time() < deadline:  # the workers go too (they ignore SIGINT; the pool ends them)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("worker processes outlived the interrupted run")


# -----------------------------------------------------------------------------
# prepare.py: a full disk, and long documents


def test_a_full_disk_mid_write_says_how_much_space_is_needed_and_leaves_what_was_there(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 2000)  # many writes
    src = write_txt(tmp_path / "in.txt", [f"story {i}: " + "la " * (i % 50) for i in range(2000)])
    prepare.prepare_files([src], tmp_path / "set", "char", num_proc=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "set").iterdir()}
    size = len(before["train.bin"]) + len(before["val.bin"])
    written = []

    class FillsUp:  # a file on a disk that fills up after a third of the dataset
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def write(self, data):
            written.append(len(data))
            if sum(written) > size / 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(prepare, "open", FillsUp, raising=False)
    for out, force, left in ((tmp_path / "fresh", False, "nothing half-written was left behind"),
                             (tmp_path / "set", True, "the previous one is kept")):
        written.clear()
        with pytest.raises(UserError, match=f"the disk is full: could not write {out} .*; {left}") as e:
            prepare.prepare_files([src], out, "char", num_proc=1, force=force)
        needed = re.search(r"about ([\d.]+) kB are needed", str(e.value))
        assert needed and abs(float(needed[1]) * 1e3 / size - 1) < 0.1, (str(e.value), size)
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "set").iterdir()} == before


class CutsBeforeSpaces(CharTokenizer):
    """Characters, but cut only before a space, as GPT-2's tokenizer (mostly) is."""

    def safe_cut(self, text, start, end):
        return max(start, text.rfind(" ", start + 1, end))


def test_long_documents_are_tokenized_in_bounded_pieces_cut_where_the_tokenizer_allows(monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 10)
    doc = "a tale of seven words, and no more"  # 34 characters: pieces of at most 10, cut before a space
    nospace = "x" * 25  # no place to cut: one piece, however long
    segments = [("train", doc[:7], True), ("train", doc[7:19], True), ("train", doc[19:], False),
                ("train", "short", False), ("val", nospace, False)]
    pieces = list(prepare._pieces(segments, CutsBeforeSpaces(sorted(set(doc + nospace)))))
    assert pieces == [("train", "a tale", True), ("train", " of seven", False), ("train", " words,", False),
                      ("train", " and no", False), ("train", " more", False), ("train", "short", True),
                      ("val", nospace, True)], pieces


def test_a_document_on_one_huge_line_streams_in_segments_and_keeps_its_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_CHARS", 1000)
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 1000)
    line = " ".join(f"word{i}" for i in range(20_000))  # ~150k characters, no newline
    src = tmp_path / "line.txt"
    src.write_text(f"{line}\n\n{line[:5000]}\n\n{line}\n", encoding="utf-8")
    segments = list(sources.read_documents(src))
    # about READ_CHARS each: the segment gathered so far (under 1000) and one more block read
    assert max(len(text) for text, _ in segments) <= 2000 and [more for _, more in segments].count(False) == 3
    seen = []
    real_encode = prepare._encode_chunk
    monkeypatch.setattr(prepare, "_encode_chunk", lambda chunk: seen.append(chunk) or real_encode(chunk))
    meta = prepare.prepare_files([src], tmp_path / "set", "char", val_fraction=0.34, num_proc=1)
    assert max(sum(len(text) for text, _ in pieces) for _, pieces in seen) <= 2000, "a piece grew unbounded"
    train, val = decoded(tmp_path / "set")
    assert (train, val) == (line + EOT + line[:5000], line), "pieces must decode to the documents"
    assert meta["train_tokens"] == len(line) + 1 + 5000
