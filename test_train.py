"""Tests of train.py (and the config files it reads), in its order: settings, setup, data, the model
to train, the learning-rate schedule, evaluation, checkpoints and exact resume, the training loop,
chat fine-tuning, and DDP under torchrun. Each run is a tiny model on a tiny dataset, in this process.
"""
import errno
import hashlib
import json
import math
import os
import re
import shutil
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import hf
import prepare
import train
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import (REPO, TINY, VOCAB, assert_one_line_error, make_chat_dataset, make_dataset,
                      needs_transformers, read_log, run_script, run_train, write_checkpoint)
from configurator import UserError, configure, device_peak_flops
from data import Split, read_meta
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# Settings: the config files


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_sets_only_known_keys_to_values_train_py_accepts(path):
    c = configure(train.DEFAULTS, [str(path)])
    assert c["gradient_accumulation_steps"] >= 1 and c["batch_size"] >= 1, c
    train.check_settings(SimpleNamespace(**c))  # raises a UserError for a shape or value that cannot work


# What the presets set before the recipe (commit 9490aa2), where the recipe changed it
PRE_RECIPE = {"train_shakespeare_char.py": dict(learning_rate=1e-3, warmup_iters=100),
              "train_tinystories.py": dict(learning_rate=1e-3, warmup_iters=1000)}
GPT2_BLOCK = dict(optimizer="adamw", pos_emb="learned", mlp="gelu", norm="layernorm", qk_norm=False,
                  bias=True)


@pytest.mark.parametrize("preset", list(PRE_RECIPE))
def test_gpt2_block_after_a_preset_gives_back_exactly_the_preset_before_the_recipe(preset):
    recipe = configure(train.DEFAULTS, [str(REPO / "config" / preset)])
    gpt2 = configure(train.DEFAULTS, [str(REPO / "config" / preset), str(REPO / "config/gpt2_block.py")])
    assert (recipe["optimizer"], recipe["pos_emb"], recipe["qk_norm"]) == ("muon", "rope", True)
    # every setting as before, but muon_lr, which stays the preset's: AdamW does not read it
    assert gpt2 == recipe | GPT2_BLOCK | PRE_RECIPE[preset], {k: v for k, v in gpt2.items() if v != recipe[k]}


@pytest.mark.parametrize("variant, base, changes", [
    ("train_tinystories_rope_swiglu.py", "train_tinystories.py",
     dict(out_dir="out-tinystories-rope-swiglu", n_head=6, n_embd=384)),
    ("train_tinystories_bpe.py", "train_tinystories_rope_swiglu.py",
     dict(out_dir="out-tinystories-bpe", dataset="tinystories_bpe")),
    ("train_tinystories_moe.py", "train_tinystories.py",
     dict(out_dir="out-tinystories-moe", n_expert=4, n_expert_active=2, qk_norm=False)),
])
def test_each_tinystories_variant_is_its_base_preset_changed_only_where_it_says(variant, base, changes):
    # the variants include() their base: the recipe and the batch arithmetic live in one file
    settings = configure(train.DEFAULTS, [str(REPO / "config" / variant)])
    base_settings = configure(train.DEFAULTS, [str(REPO / "config" / base)])
    assert settings == base_settings | changes, {k: v for k, v in settings.items() if v != base_settings[k]}


def test_gpt2_config_is_half_a_million_tokens_over_8_gpus():
    c = configure(train.DEFAULTS, [str(REPO / "config/train_gpt2.py")])
    tokens = c["batch_size"] * c["block_size"] * c["gradient_accumulation_steps"]
    assert tokens == 491520 and c["gradient_accumulation_steps"] % 8 == 0, tokens


# -----------------------------------------------------------------------------
# Setup


def test_mfu_on_cpu_is_measured_against_the_cpus_own_matmul_peak(data_dir, tmp_path):
    peak = device_peak_flops("cpu", "float32")
    assert 1e8 < peak < 1e14, f"measured CPU peak {peak:.3g} FLOP/s is implausible"
    rt = train.setup(SimpleNamespace(**configure(train.DEFAULTS, ["--device=cpu"])))
    assert rt.dtype == "float32" and rt.peak_flops == peak, (rt.dtype, rt.peak_flops, peak)
    # every logged MFU is the model's FLOPs at the logged tokens/s over that peak: a step that
    # achieved exactly half the peak reports 0.5
    run_train(data_dir, tmp_path / "out", "--max_iters=3")
    flops = model_from_checkpoint(load_checkpoint(tmp_path / "out" / "ckpt.pt")).flops_per_token()
    rows = [r for r in read_log(tmp_path / "out") if "mfu" in r]
    assert len(rows) == 3, rows
    for r in rows:
        assert r["mfu"] == pytest.approx(flops * r["tokens_per_s"] / peak, rel=1e-9), r


def test_batch_that_does_not_divide_across_processes_is_a_user_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun would set it; refused before any process group
    with pytest.raises(UserError, match="gradient_accumulation_steps=3 does not divide across 2 processes"):
        run_train(data_dir, tmp_path / "o", "--gradient_accumulation_steps=3")


def test_nonpositive_intervals_are_user_errors(data_dir, tmp_path):
    with pytest.raises(UserError, match="eval_interval must be at least 1"):
        run_train(data_dir, tmp_path / "o", "--eval_interval=0")


@pytest.mark.parametrize("flags,needle", [
    (["--n_head=3", "--n_embd=16"], "n_embd=16 does not split into n_head=3 equal heads; use n_head=2 or n_embd=18"),
    (["--n_head=0"], "n_head must be a whole number of at least 1, not 0"),
    (["--n_embd=0"], "n_embd must be a whole number of at least 1, not 0"),
    (["--dropout=1.5"], "dropout is the probability of zeroing an activation: from 0 to below 1, not 1.5"),
    (["--learning_rate=-1"], "learning_rate must be at least 0.0, got -1.0"),
    (["--beta2=1.0"], "beta2 is a moving average's decay: from 0 to below 1, got 1.0"),
    (["--device=gpu"], "unknown device 'gpu': use auto, cpu, cuda, cuda:N (the Nth GPU) or mps"),
    (["--out_dir=FILE"], "FILE is a file, not a folder; choose another --out_dir"),
    # a resumed run keeps the checkpoint's shape but takes its dropout from the settings
    (["--init_from=resume", "--dropout=1.5"], "dropout is the probability of zeroing an activation: from 0 "
                                              "to below 1, not 1.5"),
])
def test_impossible_settings_are_refused_before_anything_loads(tmp_path, flags, needle):
    (tmp_path / "file").write_text("not a folder")
    flags = [f.replace("FILE", str(tmp_path / "file")) for f in flags]
    # no dataset and no checkpoint: a settings error must come before either is looked for
    argv = [*TINY, f"--data_dir={tmp_path / 'none'}", f"--out_dir={tmp_path / 'out'}", *flags]
    with pytest.raises(UserError) as e:
        train.train(configure(train.DEFAULTS, argv))
    assert str(e.value) == needle.replace("FILE", str(tmp_path / "file")), str(e.value)


# -----------------------------------------------------------------------------
# Data


def test_missing_dataset_says_which_prepare_command_to_run(tmp_path):
    proc = run_script("train.py", *TINY, "--dataset=no_such_set", f"--out_dir={tmp_path}/o")
    assert_one_line_error(proc, "data/no_such_set", "python prepare.py no_such_set")


def test_missing_split_and_too_short_data_are_user_errors(data_dir, tmp_path):
    with pytest.raises(UserError, match="too few for block_size=5000"):
        run_train(data_dir, tmp_path / "o", "--block_size=5000")
    os.remove(data_dir / "val.bin")
    with pytest.raises(UserError, match="val.bin is missing; run `python prepare.py tiny"):
        run_train(data_dir, tmp_path / "o")


# -----------------------------------------------------------------------------
# The model to train


def test_train_py_explains_an_unknown_variant_in_one_line(tmp_path):
    make_dataset(tmp_path / "data")
    proc = run_script("train.py", "--device=cpu", f"--data_dir={tmp_path / 'data'}", f"--out_dir={tmp_path / 'out'}",
                      "--pos_emb=rotary")
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "Traceback" not in err, proc.stderr
    assert err == "error: pos_emb must be one of ('learned', 'rope'), not 'rotary'", err


def test_resume_without_checkpoint_is_one_line_error(data_dir, tmp_path):
    proc = run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}/none", "--init_from=resume")
    assert_one_line_error(proc, f"no checkpoint at {tmp_path}/none/ckpt.pt", "--init_from=scratch")


def test_checkpoint_that_does_not_fit_the_data_is_a_user_error(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    with pytest.raises(UserError, match="block_size=32 is longer than the 16 tokens"):
        run_train(data_dir, tmp_path / "out", "--init_from=resume", "--block_size=32")
    make_dataset(tmp_path / "wide", text="".join(chr(65 + i % 40) for i in range(5000)))
    with pytest.raises(UserError, match="uses a 16-character vocabulary .* but the dataset 'wide' is "
                                        "tokenized with a 40-character vocabulary"):
        run_train(tmp_path / "wide", tmp_path / "out", "--init_from=resume")


def test_checkpoints_that_cannot_be_resumed_or_fine_tuned_from_say_why_in_one_line(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "run", "--max_iters=10")
    edits = {  # a checkpoint from a newer model.py, one whose weights do not fit, one saved without state
        "unknown": lambda c: c["model_args"].update(n_wings=2),
        "shapes": lambda c: c["model"].update({"transformer.wte.weight": torch.zeros(3, 32)}),
        "no_optimizer": lambda c: c.pop("optimizer"),
    }
    for name, edit in edits.items():
        ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
        edit(ckpt)
        (tmp_path / name).mkdir()
        torch.save(ckpt, tmp_path / name / "ckpt.pt")
    for name, needle in (("unknown", "its model_args name options this version lacks: n_wings"),
                         ("shapes", "its weights do not fit its model_args (Error(s) in loading")):
        for init_from in ("resume", tmp_path / name):  # resume it, or fine-tune from its weights
            with pytest.raises(UserError, match=re.escape(f"{tmp_path / name}/ckpt.pt does not match this "
                                                          f"model.py: {needle}")):
                run_train(data_dir, tmp_path / name, f"--init_from={init_from}", "--max_iters=12")
    with pytest.raises(UserError, match=re.escape("ckpt.pt holds a model but not the training state an exact "
                                                  "resume needs (no optimizer); fine-tune from its weights")):
        run_train(data_dir, tmp_path / "no_optimizer", "--init_from=resume", "--max_iters=12")
    run_train(data_dir, tmp_path / "tuned", f"--init_from={tmp_path / 'no_optimizer'}", "--max_iters=2")


def make_gpt2_dataset(data_dir, n_tokens=5000, seed=0):
    """A dataset of GPT-2 ids (random, from its first 1000) as prepare.py writes one."""
    ids = np.random.default_rng(seed).integers(0, 1000, n_tokens).astype(np.uint16)
    os.makedirs(data_dir, exist_ok=True)
    ids[:4000].tofile(data_dir / "train.bin")
    ids[4000:].tofile(data_dir / "val.bin")
    meta = {"name": data_dir.name, "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}
    (data_dir / "meta.json").write_text(json.dumps(meta | {"dtype": "uint16"}))
    return data_dir


@needs_transformers
def test_init_from_a_local_hugging_face_dir_crops_and_fine_tunes_on_gpt2_tokens_only(data_dir, tmp_path):
    torch.manual_seed(0)
    hf_model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=2, n_head=2, n_embd=32))
    hf.save_pretrained(hf_model, tmp_path / "hf")
    s = run_train(make_gpt2_dataset(tmp_path / "gpt2"), tmp_path / "out", f"--init_from={tmp_path / 'hf'}",
                  "--dropout=0.1", "--max_iters=10")
    ckpt = torch.load(tmp_path / "out/ckpt.pt", weights_only=True)
    args = ckpt["model_args"]
    assert args["block_size"] == 16 and args["vocab_size"] == 50257, args
    assert args["dropout"] == 0.1 and args["bias"] is True, args
    assert s["evals"][-1]["val"] < s["evals"][0]["val"], s["evals"]
    # GPT-2's weights on a character dataset: the ids would mean other text to the model
    with pytest.raises(UserError, match="uses GPT-2's BPE .* tokenized with a 16-character vocabulary .* "
                                        "--tokenizer=gpt2"):
        run_train(data_dir, tmp_path / "out2", f"--init_from={tmp_path / 'hf'}")


def test_fine_tuning_on_a_dataset_with_another_tokenizer_is_a_one_line_error(bpe_run, data_dir, tmp_path):
    out_dir, _ = bpe_run
    proc = run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}/ft",
                      f"--init_from={out_dir}")
    assert_one_line_error(proc, f"{out_dir} uses a 400-token BPE (bpe:", "but the dataset 'tiny' is tokenized "
                          "with a 16-character vocabulary", f"--tokenizer={out_dir}")


def test_a_run_fine_tunes_on_a_dataset_prepared_with_its_own_tokenizer(bpe_run, tmp_path):
    """The chat fine-tune's path: a new dataset takes the run's tokenizer (from its ckpt.pt alone)."""
    out_dir, tok = bpe_run
    src = tmp_path / "more.txt"
    src.write_text("A lazy dog slept under the tree.\n\nThe fox said: 🎉!\n\n" * 30, encoding="utf-8")
    prepare.prepare_files([src], tmp_path / "more", str(out_dir), num_proc=1)
    s = run_train(tmp_path / "more", tmp_path / "ft", f"--init_from={out_dir}", "--max_iters=4",
                  "--eval_interval=4")
    assert load_checkpoint(tmp_path / "ft/ckpt.pt")["meta"]["tokenizer_json"] == tok.json
    assert s["evals"][-1]["val"] < s["evals"][0]["val"], s["evals"]


# -----------------------------------------------------------------------------
# The learning-rate schedule


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    c = SimpleNamespace(**configure(train.DEFAULTS, ["--learning_rate=1.0", "--min_lr=0.1",
                                                     "--warmup_iters=10", "--lr_decay_iters=110"]))
    lrs = [train.lr_at(it, c) for it in range(130)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11), lrs[:10]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])), "warmup must rise"
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55), (lrs[10], lrs[60])
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111])), "decay must not rise"
    assert lrs[110] == lrs[129] == 0.1, (lrs[110], lrs[129])
    c.decay_lr = False
    assert train.lr_at(5, c) == train.lr_at(500, c) == 1.0


# -----------------------------------------------------------------------------
# Evaluation


def test_eval_only_prints_val_loss_perplexity_and_bits_per_byte(data_dir, tmp_path, capsys):
    s = run_train(data_dir, tmp_path / "o", "--eval_only=True", "--eval_iters=8")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    words = line.replace(",", "").split()  # val loss L perplexity P B bits per byte
    loss, ppl, bpb = float(words[2]), float(words[4]), float(words[5])
    assert line.startswith("val loss ") and line.endswith(" bits per byte"), line
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3), line
    assert loss == pytest.approx(math.log(VOCAB), abs=0.3), f"untrained, it should score ~ln(vocab): {line}"
    # one ASCII character per token, and no mask: bits per byte is the loss in bits
    assert bpb == pytest.approx(loss / math.log(2), abs=1e-3), line
    assert s == {"val_loss": pytest.approx(loss, abs=1e-4), "val_perplexity": pytest.approx(ppl, rel=1e-3),
                 "val_bpb": pytest.approx(bpb, abs=1e-4)}, s
    assert not (tmp_path / "o/ckpt.pt").exists() and not (tmp_path / "o/log.jsonl").exists()


def test_bits_per_byte_of_a_uniform_model_over_256_one_byte_tokens_is_8(tmp_path):
    src = tmp_path / "bytes.txt"  # one document (no end-of-text to score), many kinds of bytes
    src.write_text("".join(chr(i) for i in range(32, 1200)) * 3, encoding="utf-8")
    meta = prepare.prepare_files([src], tmp_path / "bytes", "bpe", vocab_size=257, doc_sep="none", num_proc=1)
    model = GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=1, n_head=1, n_embd=8, bias=True))
    with torch.no_grad():  # every logit 0 (the final norm outputs e0), but end-of-text's: -100
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[meta["eot_token"], 0] = -100.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.eye(8)[0])
    write_checkpoint(tmp_path / "uniform", meta, model=model)
    s = run_train(tmp_path / "bytes", tmp_path / "uniform", "--init_from=resume", "--eval_only=True")
    assert s["val_bpb"] == pytest.approx(8.0, abs=1e-5), s
    assert s["val_perplexity"] == pytest.approx(256, rel=1e-5), s


def test_bits_per_byte_counts_only_the_scored_reply_tokens(tmp_path):
    """train.evaluate against a slow explicit sum over the same batches: the per-token losses of the
    targets the mask keeps, over their UTF-8 bytes (end-of-turn: none)."""
    chat_dir = make_chat_dataset(tmp_path)
    meta = read_meta(chat_dir)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=meta["vocab_size"], n_layer=1, n_head=2, n_embd=16))
    model.eval()
    cfg = SimpleNamespace(seed=3, eval_iters=3, batch_size=4)
    rt = SimpleNamespace(device="cpu", autocast=nullcontext())
    split = Split(chat_dir, "val", meta, 16, "cpu")
    losses, bpb = train.evaluate(model, {"val": split}, cfg, rt, train.token_bytes(meta, "cpu"))
    nats, n_bytes = 0.0, 0
    for starts in split.starts(torch.Generator().manual_seed(cfg.seed + 1), (cfg.eval_iters, cfg.batch_size)):
        x, y = split.batch(starts)
        with torch.no_grad():
            logits = model(x, y)[0]
        for logit, target in zip(logits.view(-1, logits.size(-1)), y.view(-1).tolist()):
            if target != -1:
                nats -= torch.log_softmax(logit, -1)[target].item()
                n_bytes += 0 if target == meta["eot_token"] else len(meta["chars"][target].encode())
    assert 0 < n_bytes < cfg.eval_iters * cfg.batch_size * 16, "the mask must leave some targets out"
    assert bpb["val"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5), (bpb, nats, n_bytes)


def test_eval_only_needs_no_train_split(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    os.remove(data_dir / "train.bin")
    s = run_train(data_dir, tmp_path / "out", "--init_from=resume", "--eval_only=True")
    assert s["val_loss"] < math.log(VOCAB) - 0.5, s


# -----------------------------------------------------------------------------
# Checkpoints and exact resume


def test_checkpoint_holds_plain_values_and_unprefixed_weights(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    ckpt = torch.load(tmp_path / "out/ckpt.pt", weights_only=True)  # plain values and tensors only
    assert {"model_args", "model", "optimizer", "scaler", "iter_num", "best_val_loss", "config",
            "meta", "rng"} <= set(ckpt), sorted(ckpt)
    assert ckpt["iter_num"] == 10 and ckpt["scaler"] is None and ckpt["meta"]["vocab_size"] == VOCAB
    assert ckpt["model_args"]["n_layer"] == 2 and ckpt["model_args"]["vocab_size"] == VOCAB
    assert not [k for k in ckpt["model"] if k.startswith(("_orig_mod.", "module."))]
    assert ckpt["config"]["max_iters"] == 10 and math.isfinite(ckpt["best_val_loss"])
    assert set(ckpt["rng"]) == {"batches", "dropout"} and len(ckpt["rng"]["dropout"]) == 1
    scores = {"train_loss", "val_loss", "val_perplexity", "train_bpb", "val_bpb"}
    assert set(ckpt["eval"]) == scores, ckpt["eval"]
    assert ckpt["eval"]["val_loss"] == ckpt["best_val_loss"] and ckpt["eval"]["val_bpb"] > 0, ckpt["eval"]
    assert isinstance(ckpt["optimizer"], list) and len(ckpt["optimizer"]) == 1, "one state per optimizer"


def test_resume_reproduces_the_uninterrupted_run_exactly(data_dir, tmp_path):
    """Same batches, same dropout masks, same optimizer state: bit-identical losses after resuming."""
    flags = ["--dropout=0.1", "--max_iters=12", "--eval_interval=6", "--gradient_accumulation_steps=2"]
    whole = run_train(data_dir, tmp_path / "a", *flags)
    run_train(data_dir, tmp_path / "b", *flags, "--max_iters=6")
    resumed = run_train(data_dir, tmp_path / "b", *flags, "--init_from=resume")
    expected = {it: whole["losses"][it] for it in range(6, 12)}
    assert resumed["losses"] == expected, f"resumed {resumed['losses']}\nuninterrupted {expected}"
    assert resumed["evals"][-1] == whole["evals"][-1], (resumed["evals"], whole["evals"])
    assert resumed["iter_num"] == 12


@pytest.fixture
def no_cpu_float16_peak(monkeypatch):
    """MFU's peak as a constant: measuring a CPU's float16 matmuls, which it emulates, takes ~45 s."""
    monkeypatch.setattr(train, "device_peak_flops", lambda device, dtype: 1e11)


@pytest.mark.parametrize("dtype", ["float32", "float16"])  # float16: through the GradScaler
def test_resume_with_muon_reproduces_the_uninterrupted_run_exactly(data_dir, tmp_path, dtype, no_cpu_float16_peak):
    """Muon's momentum buffers, AdamW's moments and the scaler travel in the checkpoint."""
    flags = ["--optimizer=muon", f"--dtype={dtype}", "--dropout=0.1", "--max_iters=12", "--eval_interval=6",
             "--gradient_accumulation_steps=2"]
    whole = run_train(data_dir, tmp_path / "a", *flags)
    run_train(data_dir, tmp_path / "b", *flags, "--max_iters=6")
    ckpt = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert ckpt["config"]["optimizer"] == "muon" and len(ckpt["optimizer"]) == 2, "Muon's state and AdamW's"
    assert (ckpt["scaler"] is not None) == (dtype == "float16"), ckpt["scaler"]
    resumed = run_train(data_dir, tmp_path / "b", *flags, "--init_from=resume")
    expected = {it: whole["losses"][it] for it in range(6, 12)}
    assert resumed["losses"] == expected, f"resumed {resumed['losses']}\nuninterrupted {expected}"
    assert resumed["evals"][-1] == whole["evals"][-1], (resumed["evals"], whole["evals"])


def test_muon_with_float16_grad_scaler_and_accumulation_tracks_float32(data_dir, tmp_path, no_cpu_float16_peak):
    # the scaler multiplies the loss by 65536 and divides the gradients back before Muon sees them:
    # a step it skipped, or gradients left scaled, would part the two curves at once
    flags = ["--optimizer=muon", "--gradient_accumulation_steps=2", "--max_iters=12", "--eval_interval=12"]
    fp32 = run_train(data_dir, tmp_path / "a", *flags, "--dtype=float32")["losses"]
    fp16 = run_train(data_dir, tmp_path / "b", *flags, "--dtype=float16")["losses"]
    diffs = [abs(fp16[it] - fp32[it]) for it in range(12)]
    assert max(diffs) < 0.02, f"float16 {fp16}\nfloat32 {fp32}"
    assert fp16[11] < fp16[0] - 0.5, fp16


def test_resuming_with_the_other_optimizer_is_a_one_line_error(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--optimizer=muon", "--max_iters=10")
    proc = run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}/out",
                      "--init_from=resume", "--optimizer=adamw")
    assert_one_line_error(proc, "was trained with --optimizer=muon", "resume with --optimizer=muon")


def test_all_variants_at_once_resume_exactly_and_log_the_aux_loss(data_dir, tmp_path):
    flags = ["--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=2", "--eval_interval=4",
             "--lr_decay_iters=8", "--dropout=0.1", "--max_iters=8", "--pos_emb=rope", "--mlp=swiglu",
             "--norm=rmsnorm", "--qk_norm=True", "--n_expert=4", "--n_expert_active=2", "--grad_checkpoint=True"]
    whole = run_train(data_dir, tmp_path / "a", *flags)
    run_train(data_dir, tmp_path / "b", *flags, "--max_iters=4")
    ckpt = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert {k: ckpt["model_args"][k] for k in ("pos_emb", "mlp", "norm", "n_expert")} == \
        dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", n_expert=4), ckpt["model_args"]
    resumed = run_train(data_dir, tmp_path / "b", *flags, "--init_from=resume")
    expected = {it: whole["losses"][it] for it in range(4, 8)}
    assert resumed["losses"] == expected, f"resumed {resumed['losses']}\nuninterrupted {expected}"
    aux = [r["aux_loss"] for r in read_log(tmp_path / "a") if "loss" in r]
    assert len(aux) == 8 and all(1.0 <= a < 2.0 for a in aux), f"aux losses logged: {aux}"


def test_without_always_save_only_improvements_are_saved(data_dir, tmp_path, monkeypatch):
    val = iter([3.0, 2.0, 2.5, 1.5, 1.8])  # at iters 0, 10, 20, 30, 40

    def fake_evaluate(model, splits, cfg, rt, bytes_of):
        return {"train": 1.0, "val": next(val)}, {"train": None, "val": None}
    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    saved = []
    monkeypatch.setattr(train, "save_checkpoint", lambda path, ckpt: saved.append(ckpt["iter_num"]))
    s = run_train(data_dir, tmp_path / "out", "--max_iters=40", "--always_save_checkpoint=False")
    assert saved == [10, 30] and s["best_val_loss"] == 1.5, (saved, s["best_val_loss"])


# -----------------------------------------------------------------------------
# The training loop


def test_loss_falls_over_30_iterations(data_dir, tmp_path):
    s = run_train(data_dir, tmp_path / "out")
    first, last = s["losses"][0], np.mean([s["losses"][i] for i in range(25, 30)])
    assert first == pytest.approx(math.log(VOCAB), abs=0.3), f"initial loss {first} should be ~ln(vocab)"
    assert last < first - 1.0, f"loss {first:.3f} -> {last:.3f} over 30 iterations"
    assert s["evals"][-1]["val"] < s["evals"][0]["val"] - 1.0, s["evals"]
    rows = read_log(tmp_path / "out")
    assert [r["iter"] for r in rows if "loss" in r] == list(range(30))
    assert [r["iter"] for r in rows if "val_loss" in r] == [0, 10, 20, 30]
    assert all(r["tokens_per_s"] > 0 and 0 <= r["mfu"] for r in rows if "loss" in r)
    for r in (r for r in rows if "val_loss" in r):  # one ASCII character per token: bits are bytes
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-4), r
        assert r["train_bpb"] > 0 and r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"])), r


def test_nan_loss_stops_and_leaves_the_last_checkpoint_intact(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    path = tmp_path / "out/ckpt.pt"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UserError) as e:
        run_train(data_dir, tmp_path / "out", "--init_from=resume", "--max_iters=30",
                  "--learning_rate=1e30", "--decay_lr=False")
    msg = str(e.value)
    assert "diverged" in msg and "nan" in msg.lower() and f"{path} still holds iter 10" in msg, msg
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "the checkpoint was overwritten"


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_says_so(data_dir, tmp_path, monkeypatch):
    run_train(data_dir, tmp_path, "--max_iters=10")
    before = (tmp_path / "ckpt.pt").read_bytes()

    def fills_the_disk(obj, f):
        f.write(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(UserError) as e:
        run_train(data_dir, tmp_path, "--init_from=resume", "--max_iters=20")
    assert str(e.value) == (f"the disk is full: could not write {tmp_path / 'ckpt.pt'}; the previous one is "
                            "kept; free some space and run again"), str(e.value)
    assert (tmp_path / "ckpt.pt").read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_fine_tuning_on_a_tiny_chat_set_lowers_the_assistant_token_loss(tmp_path):
    chat_dir = make_chat_dataset(tmp_path)
    # a base model, trained on every token of the same text (a copy without the mask) ...
    meta = read_meta(chat_dir)
    shutil.copytree(chat_dir, tmp_path / "text")
    del meta["loss_mask"]
    (tmp_path / "text" / "meta.json").write_text(json.dumps(meta))
    tiny = dict(train.DEFAULTS, device="cpu", compile=False, n_layer=2, n_head=2, n_embd=32, block_size=32,
                batch_size=16, gradient_accumulation_steps=1, eval_iters=4, log_interval=10,
                learning_rate=1e-2, warmup_iters=5, min_lr=1e-3)
    train.train(dict(tiny, out_dir=str(tmp_path / "base"), data_dir=str(tmp_path / "text"), max_iters=10,
                     eval_interval=10, lr_decay_iters=10))
    # ... then fine-tuned from its out_dir on the replies only: their val loss is what evals report
    evals = train.train(dict(tiny, out_dir=str(tmp_path / "chat-out"), data_dir=str(chat_dir),
                             init_from=str(tmp_path / "base"), max_iters=20, eval_interval=20,
                             lr_decay_iters=20))["evals"]
    before, after = evals[0]["val"], evals[-1]["val"]
    assert evals[0]["iter"] == 0, evals
    assert after < 0.6 * before, f"assistant-token val loss {before:.3f} -> {after:.3f}"


# -----------------------------------------------------------------------------
# Under torchrun


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_torchrun_two_processes_match_one_process(data_dir, tmp_path, optimizer):
    """DDP on gloo splits the global batch across 2 processes: the losses are those of 1 process."""
    flags = [*TINY, f"--data_dir={data_dir}", "--max_iters=8", "--eval_interval=100",
             "--gradient_accumulation_steps=4", "--batch_size=4", f"--optimizer={optimizer}"]
    one = run_train(data_dir, tmp_path / "one", *flags[len(TINY):])
    proc = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *flags,
                      f"--out_dir={tmp_path}/two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = {r["iter"]: r["loss"] for r in read_log(tmp_path / "two") if "loss" in r}
    assert sorted(two) == list(range(8)), two
    diffs = [abs(one["losses"][it] - two[it]) for it in range(8)]
    assert max(diffs) < 1e-5, f"1 process {one['losses']}\n2 processes {two}"
    assert "processes 2" in proc.stdout and proc.stdout.count("model:") == 1, "rank 0 alone should print"
