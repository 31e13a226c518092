"""Tests of data.py (a prepared dataset on disk, read in random windows) and fileio.py (writes that
leave the previous file, or none, when anything goes wrong).
"""
import errno
import re

import numpy as np
import pytest

import fileio
from conftest import make_chat_dataset
from configurator import UserError
from data import Split, read_meta

# -----------------------------------------------------------------------------
# data.py


def test_read_meta_says_which_prepare_command_to_run(tmp_path):
    with pytest.raises(UserError, match=r"run `python prepare.py nowhere`"):
        read_meta(tmp_path / "nowhere")


def test_split_batch_ignores_the_targets_the_loss_mask_leaves_out(tmp_path):
    data_dir = make_chat_dataset(tmp_path)
    meta = read_meta(data_dir)
    x, y = Split(data_dir, "val", meta, 32, "cpu").batch(np.array([0, 5, 40]))
    ids = np.fromfile(data_dir / "val.bin", dtype=meta["dtype"])
    mask = np.fromfile(data_dir / "val_mask.bin", dtype=np.uint8)
    assert (x.numpy() == np.stack([ids[s:s + 32] for s in (0, 5, 40)])).all(), x
    # the targets are the next tokens, set to -1 exactly where the mask is 0
    expected = np.stack([mask[s + 1:s + 33] for s in (0, 5, 40)])  # (3, 32)
    assert ((y.numpy() != -1) == (expected == 1)).all(), (y, expected)
    kept = y.numpy() != -1
    assert (y.numpy()[kept] == np.stack([ids[s + 1:s + 33] for s in (0, 5, 40)])[kept]).all(), y


# -----------------------------------------------------------------------------
# fileio.py


def test_atomic_write_failing_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "picture.svg"
    fileio.write_text(path, "old")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_write(path, "w") as f:
            f.write("half of the new one")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["picture.svg"]


def test_a_full_disk_is_one_line_that_names_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(UserError, match=re.escape(f"the disk is full: could not write {path}")):
        with fileio.atomic_write(path):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not list(tmp_path.iterdir())


def test_staged_outputs_appear_together_only_when_the_block_finishes(tmp_path):
    folder = tmp_path / "set"
    with fileio.staged_outputs(folder, ["a.bin", "meta.json"]) as tmp:
        for name, path in tmp.items():
            path.write_text(f"first {name}")
        assert not (folder / "a.bin").exists(), "nothing under its final name before the block ends"
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "meta.json"]
    with pytest.raises(KeyboardInterrupt):
        with fileio.staged_outputs(folder, ["a.bin", "meta.json"]) as tmp:
            tmp["a.bin"].write_text("second")
            raise KeyboardInterrupt
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"a.bin": "first a.bin",
                                                                 "meta.json": "first meta.json"}
    with pytest.raises(KeyboardInterrupt):  # a failed first run leaves no empty folder behind
        with fileio.staged_outputs(tmp_path / "fresh", ["a.bin"]) as tmp:
            tmp["a.bin"].write_text("x")
            raise KeyboardInterrupt
    assert not (tmp_path / "fresh").exists()


def test_staged_folder_takes_its_name_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "hf"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while filling it: nothing under either name
        with fileio.staged_folder(folder) as tmp:
            (tmp / "config.json").write_text("half")
            raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())
    with fileio.staged_folder(folder) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("first")
        assert not folder.exists(), "nothing under its final name before the block ends"
    assert (folder / "sub" / "a.txt").read_text() == "first"
    with pytest.raises(UserError, match="hf already exists"):
        with fileio.staged_folder(folder):
            pass
    with pytest.raises(KeyboardInterrupt):  # a failed replacement keeps the old folder
        with fileio.staged_folder(folder, replace=True) as tmp:
            raise KeyboardInterrupt
    assert (folder / "sub" / "a.txt").read_text() == "first" and len(list(tmp_path.iterdir())) == 1
    with fileio.staged_folder(folder, replace=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert [p.name for p in tmp_path.iterdir()] == ["hf"] and [p.name for p in folder.iterdir()] == ["b.txt"]
