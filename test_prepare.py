"""Tests for prepare.py: round trips, exact classic splits, inputs, meta.json, safety, and error messages."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import prepare

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").exists():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
EOT = prepare.EOT_TEXT

DOCS = [
    "Once upon a time there was a tiny model.\nIt learned to speak.",
    "Ünïcödé, emoji 🐍 and CJK 字 survive the trip.",
    "  leading spaces and a tab\tinside",
    "short",
    "The end, with <|endoftext|> written as plain text.",
]


def prepare_cli(*args, env=None):
    """Run prepare.py as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "prepare.py", *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def load_split(data_dir, split):
    meta = prepare.read_meta(data_dir)
    return np.fromfile(Path(data_dir) / f"{split}.bin", dtype=meta["dtype"]).tolist()


def decoded(data_dir):
    """train and val decoded, in order, as one text; the two splits are joined by end-of-text."""
    tok = prepare.load_tokenizer(prepare.read_meta(data_dir))
    return tok.decode(load_split(data_dir, "train")), tok.decode(load_split(data_dir, "val"))


def write_txt(path, docs):
    # Blank lines between documents, one of them holding only whitespace.
    path.write_text("\n\n".join(docs[:2]) + "\n  \n" + "\n\n\n".join(docs[2:]) + "\n", encoding="utf-8")
    return path


def assert_one_line_error(result, *needles):
    err = result.stderr.strip()
    assert result.returncode == 1, f"exit code {result.returncode}, stderr: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"not one line: {err!r}"
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} missing from {err!r}"


def test_txt_round_trip_through_cli_with_worker_processes(tmp_path):
    src = write_txt(tmp_path / "stories.txt", DOCS)
    result = prepare_cli(f"--input={src}", f"--out_dir={tmp_path / 'data'}", "--num_proc=2",
                         "--val_fraction=0.4")
    assert result.returncode == 0, result.stderr
    train, val = decoded(tmp_path / "data" / "stories")
    assert train + EOT + val == EOT.join(DOCS), (train, val)
    assert val == EOT.join(DOCS[3:]), f"val should be the last 2 of 5 documents, got {val!r}"


def test_worker_processes_write_the_same_bytes_as_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 300)  # many chunks, so ordering across workers matters
    docs = [f"document {i}: " + "word " * (i % 37) for i in range(400)]
    src = write_txt(tmp_path / "many.txt", docs)
    for n in (1, 2):
        prepare.prepare_files([src], tmp_path / f"p{n}", num_proc=n)
    for split in prepare.SPLITS:
        one, two = [(tmp_path / f"p{n}" / f"{split}.bin").read_bytes() for n in (1, 2)]
        assert one == two, f"{split}: {len(one)} bytes with 1 process, {len(two)} with 2"
    train, val = decoded(tmp_path / "p2")
    assert train + EOT + val == EOT.join(docs)


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


@pytest.mark.skipif(not (SHARED / "data" / "tinyshakespeare.txt").exists(),
                    reason="../shared/data/tinyshakespeare.txt not found (only beside the dev checkout)")
@pytest.mark.parametrize("name,train,val", [("shakespeare", 301_966, 36_059),
                                            ("shakespeare_char", 1_003_854, 111_540)])
def test_shakespeare_has_the_classic_split(tmp_path, name, train, val):
    result = prepare_cli(name, f"--input={SHARED / 'data' / 'tinyshakespeare.txt'}", f"--out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    meta = prepare.read_meta(tmp_path / name)
    got = (meta["train_tokens"], meta["val_tokens"])
    assert got == (train, val), f"{name}: got {got}, classic split is {(train, val)}"
    assert len(load_split(tmp_path / name, "val")) == val
    if name == "shakespeare_char":
        assert meta["vocab_size"] == 65, meta["vocab_size"]


def test_meta_json_describes_the_bins(tmp_path):
    src = write_txt(tmp_path / "in.txt", DOCS)
    prepare.prepare_files([src], tmp_path / "set", num_proc=1, name="set", command="python prepare.py x")
    meta = json.loads((tmp_path / "set" / "meta.json").read_text())
    assert set(meta) == {"name", "tokenizer", "vocab_size", "eot_token", "dtype", "train_tokens",
                         "val_tokens", "source", "command"}, sorted(meta)
    assert (meta["name"], meta["tokenizer"], meta["vocab_size"], meta["eot_token"], meta["dtype"]) == \
        ("set", "gpt2", 50257, 50256, "uint16"), meta
    assert meta["source"] == str(src.resolve()) and meta["command"] == "python prepare.py x", meta
    for split in prepare.SPLITS:
        size = (tmp_path / "set" / f"{split}.bin").stat().st_size
        assert size == 2 * meta[f"{split}_tokens"], f"{split}: {size} bytes for {meta[f'{split}_tokens']}"


def test_jsonl_input_uses_the_text_field(tmp_path):
    src = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": i, "body": d}) for i, d in enumerate(DOCS)]
    src.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n", encoding="utf-8")
    result = prepare_cli(f"--input={src}", f"--out_dir={tmp_path}", "--text_field=body", "--num_proc=1")
    assert result.returncode == 0, result.stderr
    train, val = decoded(tmp_path / "docs")
    assert train + EOT + val == EOT.join(DOCS)

    result = prepare_cli(f"--input={src}", f"--out_dir={tmp_path}", "--name=other")
    assert_one_line_error(result, "no text field 'text'", "--text_field")


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
    meta = prepare.prepare_files(prepare.input_files(folder), tmp_path / "out", num_proc=1)
    train, val = decoded(tmp_path / "out")
    assert train + EOT + val == EOT.join(DOCS), (train, val)
    assert meta["source"] == str(folder.resolve()), meta["source"]


def test_eot_separated_txt_splits_on_the_marker(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 16)  # the marker straddles read blocks
    src = tmp_path / "ts.txt"
    src.write_text(f"\n{EOT}\n".join(DOCS[:4]) + f"\n{EOT}\n", encoding="utf-8")
    prepare.prepare_files([src], tmp_path / "ts", doc_sep="eot", val_fraction=0.25, num_proc=1)
    train, val = decoded(tmp_path / "ts")
    assert train + EOT + val == EOT.join(d.strip() for d in DOCS[:4]), (train, val)


def test_hub_pipeline_streams_through_datasets(tmp_path, monkeypatch):
    # The hub code path, fed by `datasets`' json builder so that it runs offline.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    files = {}
    for split, docs in (("train", DOCS[:3]), ("validation", DOCS[3:])):
        files[split] = str(tmp_path / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    spec = dict(load=dict(path="json", data_files=files, streaming=True), splits=("train", "validation"))
    meta = prepare.prepare_hub(spec, tmp_path / "own", num_proc=1)
    train, val = decoded(tmp_path / "own")
    assert train + EOT + val == EOT.join(DOCS) and meta["source"] == "hf:json", meta

    spec = dict(load=dict(path="json", data_files={"train": files["train"]}, streaming=True))
    prepare.prepare_hub(spec, tmp_path / "carved", val_fraction=0.5, num_proc=1)
    train, val = decoded(tmp_path / "carved")
    # Seeded coin flips: the same documents go to val on every run, and every document lands somewhere.
    assert sorted((train + EOT + val).split(EOT)) == sorted(DOCS[:3]) and val, (train, val)


def test_interrupted_write_leaves_no_bin_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    src = write_txt(tmp_path / "in.txt", DOCS)
    out = tmp_path / "set"
    prepare.prepare_files([src], out, num_proc=1)
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
        prepare.prepare_files([src], tmp_path / "fresh", num_proc=1)
    assert not (tmp_path / "fresh").exists(), list((tmp_path / "fresh").iterdir())


def test_existing_outputs_need_force(tmp_path):
    src = write_txt(tmp_path / "in.txt", DOCS)
    args = [f"--input={src}", f"--out_dir={tmp_path}", "--num_proc=1"]
    assert prepare_cli(*args).returncode == 0
    assert_one_line_error(prepare_cli(*args, "--tokenizer=char"), "already holds", "--force")
    assert prepare.read_meta(tmp_path / "in")["tokenizer"] == "gpt2"
    result = prepare_cli(*args, "--tokenizer=char", "--force")
    assert result.returncode == 0, result.stderr
    assert prepare.read_meta(tmp_path / "in")["tokenizer"] == "char"


def test_bad_utf8_names_the_byte_offset_and_replace_works(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("plain ascii first\n\n".encode() + "caf\xe9".encode("latin-1") + b"\n")
    assert_one_line_error(prepare_cli(f"--input={src}", f"--out_dir={tmp_path}"),
                          str(src), "offset 22", "--errors=replace")
    assert not (tmp_path / "latin1").exists()
    result = prepare_cli(f"--input={src}", f"--out_dir={tmp_path}", "--errors=replace", "--num_proc=1")
    assert result.returncode == 0, result.stderr
    assert decoded(tmp_path / "latin1")[1] == "caf\ufffd"


@pytest.mark.parametrize("case", ["missing", "empty", "blank", "no_text_files", "unknown_name",
                                  "no_args", "bad_flag", "bad_fraction"])
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
    }[case]
    assert_one_line_error(prepare_cli(*args, f"--out_dir={tmp_path / 'out'}"), *needles)
    assert not (tmp_path / "out").exists()


def test_offline_without_bpe_files_says_set_tiktoken_cache_dir(tmp_path):
    src = write_txt(tmp_path / "in.txt", DOCS)
    (tmp_path / "empty_cache").mkdir()
    result = prepare_cli(f"--input={src}", f"--out_dir={tmp_path / 'out'}",
                         env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache")})
    assert_one_line_error(result, "GPT-2 BPE", "TIKTOKEN_CACHE_DIR")
    assert not (tmp_path / "out").exists()


def test_offline_hub_says_use_input_or_a_filled_cache(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    result = prepare_cli("tinystories", f"--out_dir={tmp_path / 'out'}", env=env)
    assert_one_line_error(result, "roneneldan/TinyStories", "--input=PATH", "HF_HUB_OFFLINE=1")
    assert not list((tmp_path / "out").rglob("*")), list((tmp_path / "out").rglob("*"))


def test_read_meta_and_load_tokenizer(tmp_path):
    with pytest.raises(prepare.UserError, match=r"run `python prepare.py nowhere`"):
        prepare.read_meta(tmp_path / "nowhere")
    tok = prepare.load_tokenizer({"tokenizer": "gpt2"})
    ids = tok.encode("Hello world" + EOT)
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256) and tok.eot_token not in ids, ids
    assert tok.decode(ids + [tok.eot_token]) == "Hello world" + EOT + EOT
    chars = prepare.load_tokenizer({"tokenizer": "char", "chars": list("ab"), "eot_token": None})
    with pytest.raises(prepare.UserError, match="'z' is not in this dataset's vocabulary of 2"):
        chars.encode("abz")


SLOW_RUN = """
import os, pathlib, time, configurator, prepare
def slow_encode(chunk):  # reached by the forked workers through prepare._encode_chunk
    pathlib.Path(os.environ["ENCODING_STARTED"]).touch()
    time.sleep(60)
prepare._encode_chunk = slow_encode
configurator.run(prepare.main)
"""


def test_ctrl_c_stops_workers_and_leaves_no_files(tmp_path):
    src = write_txt(tmp_path / "in.txt", DOCS)
    started = tmp_path / "encoding_started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, f"--input={src}", f"--out_dir={tmp_path}",
                             "--num_proc=2"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ENCODING_STARTED": str(started)},
                            start_new_session=True)  # its own process group, like a terminal's job
    deadline = time.time() + 20
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "in" / "train.bin.tmp").exists(), "the run should be mid-write"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the job gets SIGINT
    err = proc.communicate(timeout=20)[1]
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
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


def test_named_shakespeare_reuses_a_downloaded_input_txt(tmp_path):
    # The download happens once: a later run (or an offline machine given the file) reads it again.
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    (tmp_path / "shakespeare_char").mkdir()
    (tmp_path / "shakespeare_char" / "input.txt").write_text(text)
    result = prepare_cli("shakespeare_char", f"--out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    meta = prepare.read_meta(tmp_path / "shakespeare_char")
    assert meta["source"] == prepare.SHAKESPEARE_URL and meta["eot_token"] is None, meta
    cut = int(len(text) * 0.9)
    assert (meta["train_tokens"], meta["val_tokens"]) == (cut, len(text) - cut), meta
    assert "".join(decoded(tmp_path / "shakespeare_char")) == text
