"""Tests of checkpoint.py: saving durably, loading safely, rebuilding the model a checkpoint holds,
and load_model's one-line errors for whatever a user points it at.
"""
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from checkpoint import load_checkpoint, load_model, model_from_checkpoint, save_checkpoint
from conftest import assert_one_line_error, run_script, tiny_model
from configurator import UserError


def test_weight_tying_survives_a_state_dict_round_trip(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / "ckpt.pt", {"model_args": asdict(model.config), "model": model.state_dict()})
    loaded = model_from_checkpoint(load_checkpoint(tmp_path / "ckpt.pt"))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    with torch.no_grad():
        loaded.transformer.wte.weight[0, 0] += 1.0
    assert loaded.lm_head.weight[0, 0] == loaded.transformer.wte.weight[0, 0]


def test_checkpoint_write_interrupted_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model_args": {}, "model": {}, "iter_num": 1})

    def half_write_then_ctrl_c(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_write_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model_args": {}, "model": {}, "iter_num": 2})
    assert load_checkpoint(path)["iter_num"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "the temporary file is removed"


def test_load_checkpoint_explains_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a sprout checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_model_from_checkpoint_says_in_a_sentence_what_does_not_fit_and_keeps_overrides():
    model = tiny_model()
    ckpt = {"model_args": asdict(model.config), "model": model.state_dict()}
    assert model_from_checkpoint(ckpt, dropout=0.1).config.dropout == 0.1
    with pytest.raises(ValueError, match=r"its model_args name options this version lacks: n_wings"):
        model_from_checkpoint({**ckpt, "model_args": {**ckpt["model_args"], "n_wings": 2}})
    with pytest.raises(ValueError, match="its weights do not fit its model_args"):
        model_from_checkpoint({**ckpt, "model_args": {**ckpt["model_args"], "n_embd": 64}})


def test_load_model_turns_a_mismatched_or_tokenizerless_checkpoint_into_one_line(tmp_path):
    model = tiny_model()
    args = asdict(model.config)
    Path(tmp_path / "deeper").mkdir()
    save_checkpoint(tmp_path / "deeper" / "ckpt.pt", {"model_args": {**args, "n_layer": 3},
                                                      "model": model.state_dict()})
    with pytest.raises(UserError, match="ckpt.pt does not match this model.py: its weights do not fit"):
        load_model("resume", tmp_path / "deeper")
    save_checkpoint(tmp_path / "ckpt.pt", {"model_args": args, "model": model.state_dict()})
    with pytest.raises(UserError, match="records no tokenizer .* its 64-token vocabulary is not GPT-2's"):
        load_model(str(tmp_path), "unused")  # another run's out_dir, as train.py's init_from takes it
    with pytest.raises(UserError, match="init_from='gpt7' is not 'resume', a training run's out_dir"):
        load_model("gpt7", tmp_path)


def test_unreadable_and_foreign_checkpoints_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ckpt.pt").write_bytes(b"not a checkpoint at all")
    assert_one_line_error(run_script("sample.py", f"--out_dir={tmp_path / 'a'}"), "not a readable checkpoint")
    (tmp_path / "b").mkdir()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "b" / "ckpt.pt")
    assert_one_line_error(run_script("sample.py", f"--out_dir={tmp_path / 'b'}"), "not a sprout checkpoint")
