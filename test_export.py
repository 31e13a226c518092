"""Tests of export.py, the command that turns a training run into a Hugging Face folder: what it
writes from a checkpoint (the model card's facts included), that it never leaves a half-written or
clobbered folder, and its one-line refusals. The layouts themselves are test_hf.py's.
"""
import pytest
import torch

import export
import hf
from checkpoint import load_checkpoint, load_model, save_checkpoint
from configurator import UserError
from conftest import (CHAR_META, assert_one_line_error, bpe_meta, needs_transformers, run_script, tiny_variant,
                      write_checkpoint)

@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """A training run's folder: a tiny Llama-layout model on a trained BPE, after 250 iterations."""
    out_dir = tmp_path_factory.mktemp("run")
    meta = bpe_meta() | {"name": "stories", "source": "tinystories_sample.txt", "train_tokens": 12345}
    model = tiny_variant("all", vocab_size=meta["vocab_size"], n_expert=0, qk_norm=False)  # Llama has no QK-norm
    write_checkpoint(out_dir, meta, model=model)
    ckpt = load_checkpoint(out_dir / "ckpt.pt")
    facts = {"iter_num": 250, "best_val_loss": 1.2345, "eval": {"val_loss": 1.2345, "val_bpb": 0.9876}}
    save_checkpoint(out_dir / "ckpt.pt", ckpt | facts)
    return out_dir


@needs_transformers
def test_export_writes_a_folder_with_a_model_card_that_loads_back(llama_run, tmp_path, run_main):
    out = run_main(export, f"--out_dir={llama_run}", f"--to={tmp_path / 'hf'}").stdout
    assert out.startswith(f"wrote {tmp_path / 'hf'} (LlamaForCausalLM)"), out
    card = (tmp_path / "hf" / "README.md").read_text()
    for fact in ("2 layers, 2 heads, 32 wide, 16-token context; RoPE, SwiGLU, RMSNorm",
                 "- data: stories (tinystories_sample.txt), 12,345 training tokens",
                 "trained for 250 iterations",
                 "validation loss: 1.2345", "validation bits per byte: 0.9876", "AutoModelForCausalLM"):
        assert fact in card, (fact, card)
    assert "chat template" not in card  # not trained on chat data
    model, meta, _ = load_model(str(tmp_path / "hf"), "unused")
    trained = load_model("resume", str(llama_run))[0]
    idx = torch.randint(0, meta["vocab_size"], (1, 16))
    assert torch.equal(model.eval()(idx, idx)[0], trained.eval()(idx, idx)[0])


@needs_transformers
def test_export_refuses_an_existing_folder_unless_forced(llama_run, tmp_path, run_main):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="hf already exists; pass --force to replace it"):
        run_main(export, f"--out_dir={llama_run}", f"--to={tmp_path / 'hf'}")
    assert (tmp_path / "hf" / "notes.txt").exists()
    run_main(export, f"--out_dir={llama_run}", f"--to={tmp_path / 'hf'}", "--force")
    assert (tmp_path / "hf" / "config.json").exists() and not (tmp_path / "hf" / "notes.txt").exists()


@needs_transformers
def test_a_failed_export_leaves_no_folder_and_the_old_one_intact(llama_run, tmp_path, run_main, monkeypatch):
    def broken(*args):
        raise UserError("transformers computes other logits")
    monkeypatch.setattr(hf, "check_folder", broken)  # fails after every file is written
    with pytest.raises(UserError, match="other logits"):
        run_main(export, f"--out_dir={llama_run}", f"--to={tmp_path / 'hf'}")
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())  # no folder, no temporary one
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="other logits"):
        run_main(export, f"--out_dir={llama_run}", f"--to={tmp_path / 'hf'}", "--force")
    assert [p.name for p in tmp_path.iterdir()] == ["hf"] and (tmp_path / "hf" / "notes.txt").exists()


@needs_transformers
def test_push_to_hub_offline_says_in_one_line_that_the_folder_is_complete(llama_run, tmp_path, run_main,
                                                                          monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as info:
        run_main(export, f"--out_dir={llama_run}", f"--to={tmp_path / 'hf'}", "--push_to_hub=me/tiny")
    message = str(info.value)
    assert message.startswith("could not upload to the Hugging Face hub (OfflineModeIsEnabled"), message
    assert "\n" not in message
    assert message.endswith(f"{tmp_path / 'hf'} is complete: upload it later with `hf upload me/tiny "
                            f"{tmp_path / 'hf'}` (after `hf auth login`)"), message
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert 'from_pretrained("me/tiny")' in (tmp_path / "hf" / "README.md").read_text()  # the card names the repo


def test_export_refuses_a_character_level_model_in_one_line(tmp_path):
    write_checkpoint(tmp_path / "run", CHAR_META)
    result = run_script("export.py", f"--out_dir={tmp_path / 'run'}", f"--to={tmp_path / 'hf'}")
    assert_one_line_error(result, "a model with a 'char' tokenizer cannot be exported", "BPE")
    assert not (tmp_path / "hf").exists()
