"""The test suite: `python -m pytest -q test_model.py`. CPU, tiny models, seconds.

Each test is named after the claim it checks. Tests that need the GPT-2 BPE files or the sample
corpora in ../shared skip with a reason when they are absent; tests that need transformers or CUDA
skip when those are missing.
"""
import copy
import hashlib
import http.client
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import model as M
from model import GPT, GPTConfig, KVCache, save_checkpoint

REPO = Path(__file__).resolve().parent
SHARED = REPO.parent / "shared"
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
# the project's scripts, imported after TIKTOKEN_CACHE_DIR is set
import chat  # noqa: E402
import configurator  # noqa: E402
import prepare  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
from configurator import UserError, configure  # noqa: E402
from prepare import load_tokenizer  # noqa: E402

# tiny models gain nothing from a second thread, and lose a lot when the cores are busy
torch.set_num_threads(1)

needs_shared = pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="../shared/data is absent")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_config(**overrides):
    cfg = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    return GPTConfig(**{**cfg, **overrides})


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


def use_explicit_attention(model):
    for module in model.modules():
        if isinstance(module, M.CausalSelfAttention):
            module.attend = M.explicit_attention


def run_script(*args, env=None, input=None, timeout=120):
    """Run one of the project's scripts as a user would; return the CompletedProcess."""
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, input=input,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, *needles):
    """Exit code 1, no traceback, and one line on stderr that says what was wrong."""
    err = result.stderr.strip()
    assert result.returncode == 1, f"exit code {result.returncode}, stderr: {err}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"not one line: {err!r}"
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} missing from {err!r}"



# -----------------------------------------------------------------------------
# model.py: the forward pass


def test_later_tokens_never_change_earlier_logits():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 64
    logits_a, _ = model(idx, idx)
    logits_b, _ = model(changed, changed)
    diff_before = (logits_a[:, :10] - logits_b[:, :10]).abs().max().item()
    diff_after = (logits_a[:, 10:] - logits_b[:, 10:]).abs().max().item()
    assert diff_before == 0.0, f"earlier logits moved by {diff_before}"
    assert diff_after > 1e-3, f"later logits should change, moved only {diff_after}"


def test_sdpa_attention_equals_explicit_attention():
    model = tiny_model()
    idx = torch.randint(0, 64, (3, 16))
    fast, _ = model(idx, idx)
    use_explicit_attention(model)
    slow, _ = model(idx, idx)
    err = (fast - slow).abs().max().item()
    assert err < 1e-5, f"SDPA and explicit attention differ by {err}"


def test_sdpa_attention_equals_explicit_attention_for_a_chunk_after_a_cached_prefix():
    q = torch.randn(2, 2, 5, 8)  # 5 new queries after 7 cached positions
    k, v = torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    err = (M.fast_attention(q, k, v) - M.explicit_attention(q, k, v)).abs().max().item()
    assert err < 1e-5, f"masked SDPA and explicit attention differ by {err}"


def test_loss_at_init_is_close_to_ln_vocab_size():
    model = tiny_model(vocab_size=512)
    idx, targets = torch.randint(0, 512, (2, 8, 16))  # targets unrelated to the inputs
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(512)) < 0.1, f"loss {loss.item():.3f} vs ln(512) {math.log(512):.3f}"


def test_targets_of_minus_one_are_ignored_in_the_loss():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 16))
    targets = idx.clone()
    targets[:, 8:] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, :8].reshape(-1, 64), idx[:, :8].reshape(-1))
    assert abs(loss.item() - expected.item()) < 1e-6, f"{loss.item()} != {expected.item()}"
    _, all_masked = model(idx, torch.full_like(idx, -1))
    assert all_masked.item() == 0.0, f"a fully masked batch gave loss {all_masked.item()}, not 0"


def test_forward_without_targets_returns_only_the_last_position():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 16))
    last, loss = model(idx)
    full, _ = model(idx, idx)
    assert loss is None and last.shape == (2, 1, 64)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


def fit_one_batch(model, idx, steps):
    """Train on the one batch idx (B, T+1) for `steps` AdamW steps; return the last training loss."""
    model.train()
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss


def test_two_layer_model_overfits_one_batch():
    loss = fit_one_batch(tiny_model(), torch.randint(0, 64, (4, 16)), 100)
    assert loss.item() < 0.1, f"loss after 100 steps on one batch is {loss.item():.3f}"


def test_gpt2_124m_config_has_gpt2s_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig())
    # GPT-2 small: 124,439,808 parameters, 786,432 of them in the position table
    assert model.get_num_params(non_embedding=False) == 124_439_808
    assert model.get_num_params() == 124_439_808 - 1024 * 768


def test_crop_block_size_shrinks_the_context():
    model = tiny_model()
    model.crop_block_size(8)
    logits, _ = model(torch.randint(0, 64, (1, 8)))
    assert model.transformer.wpe.weight.shape == (8, 32) and logits.shape == (1, 1, 64)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.randint(0, 64, (1, 9)))


# -----------------------------------------------------------------------------
# model.py: KV cache and generation


def record_decoding_logits(monkeypatch):
    """Make generation greedy and record the logits it decides from at each step."""
    seen = []

    def greedy(logits, temperature=1.0, top_k=None, top_p=None):
        seen.append(logits.clone())
        return logits.argmax(dim=-1)

    monkeypatch.setattr(M, "sample_logits", greedy)
    return seen


def test_kv_cache_decoding_matches_full_forward_at_every_step_beyond_block_size(monkeypatch):
    model = tiny_model()
    seen = record_decoding_logits(monkeypatch)
    prompt = torch.randint(0, 64, (2, 5))
    out = model.generate(prompt, max_new_tokens=40)  # 45 tokens: well past block_size 16
    assert out.shape == (2, 45) and len(seen) == 40
    for step, cached in enumerate(seen):
        context = out[:, : 5 + step][:, -16:]  # what a cache-free model sees: the last block
        full, _ = model(context)
        err = (cached - full[:, -1]).abs().max().item()
        assert err < 1e-4, f"step {step}: cached logits differ from the full forward by {err}"


def test_kv_cache_prefill_then_single_steps_equals_one_forward():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 16))
    full, _ = model(idx, idx)
    cache = M.KVCache(model.config.n_layer, model.config.block_size)
    parts = [model.hidden_states(idx[:, :6], cache)]
    parts += [model.hidden_states(idx[:, t : t + 1], cache) for t in range(6, 16)]
    cached = model.lm_head(torch.cat(parts, dim=1))
    err = (cached - full).abs().max().item()
    assert cache.pos == 16 and err < 1e-4, f"pos {cache.pos}, max error {err}"


def no_cache_greedy(model, idx, n):
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_greedy_generation_is_the_same_with_and_without_the_cache():
    model = tiny_model()
    prompt = torch.randint(0, 64, (3, 4))
    cached = model.generate(prompt, 30, temperature=0)
    slow = no_cache_greedy(model, prompt, 30)
    assert torch.equal(cached, slow), f"first difference at {(cached != slow).nonzero()[:1].tolist()}"


def test_fixed_seed_reproduces_samples_and_other_seeds_differ():
    model = tiny_model()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    samples = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        samples.append(model.generate(prompt, 20, temperature=1.0, top_k=20, top_p=0.9))
    assert torch.equal(samples[0], samples[1])
    assert not torch.equal(samples[0], samples[2])


def test_rows_that_reach_eos_keep_eos_and_the_stream_stops_when_all_have():
    model = tiny_model()
    prompt = torch.randint(0, 64, (2, 3))
    free = model.generate(prompt, 12, temperature=0)[:, 3:]
    eos = free[0, 2].item()  # row 0 reaches this token at step 2 at the latest
    out = model.generate(prompt, 12, temperature=0, eos_token=eos)[:, 3:]
    for row in out:
        hits = (row == eos).nonzero()
        if len(hits):
            first = hits[0].item()
            assert (row[first:] == eos).all(), f"row continued after eos: {row.tolist()}"
    if (out == eos).any(dim=1).all():
        assert out.size(1) == max((r == eos).nonzero()[0].item() for r in out) + 1


def test_top_k_and_top_p_keep_exactly_the_right_tokens():
    probs = torch.tensor([[0.15, 0.05, 0.5, 0.1, 0.2]])  # ranks: 2, 4, 0, 3, 1
    logits = probs.log()

    def kept(**kw):
        return sorted(torch.isfinite(M.filter_logits(logits, **kw))[0].nonzero()[:, 0].tolist())

    assert kept(top_k=2) == [2, 4]
    assert kept(top_p=0.5) == [2]  # the top token alone reaches 0.5
    assert kept(top_p=0.6) == [2, 4]  # 0.5 < 0.6, 0.5 + 0.2 >= 0.6
    assert kept(top_p=0.8) == [0, 2, 4]  # 0.7 < 0.8, 0.85 >= 0.8
    # composed: the top 3 renormalise to 0.59, 0.24, 0.18, so top_p=0.8 keeps two of them
    assert kept(top_k=3, top_p=0.8) == [2, 4]
    assert kept(top_k=1, top_p=0.99) == [2]


def test_top_p_one_and_top_k_none_change_nothing():
    logits = torch.randn(4, 100)
    assert torch.equal(M.filter_logits(logits, top_k=None, top_p=1.0), logits)
    assert torch.equal(M.filter_logits(logits, top_k=100, top_p=None), logits)


def test_temperature_zero_is_greedy():
    logits = torch.randn(5, 50)
    assert torch.equal(M.sample_logits(logits, temperature=0), logits.argmax(-1))


def test_sampling_follows_the_filtered_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]).log().expand(20000, 5)
    counts = torch.bincount(M.sample_logits(logits, top_k=2), minlength=5).float() / 20000
    expected = torch.tensor([0.5, 0.2, 0, 0, 0]) / 0.7
    assert (counts - expected).abs().max() < 0.02, f"frequencies {counts.tolist()}"


# -----------------------------------------------------------------------------
# model.py: parameters, optimizer, MFU, checkpoints


def test_weight_tying_survives_a_state_dict_round_trip(tmp_path):
    model = tiny_model()
    M.save_checkpoint(tmp_path / "ckpt.pt", {"model_args": asdict(model.config), "model": model.state_dict()})
    loaded = GPT.from_checkpoint(M.load_checkpoint(tmp_path / "ckpt.pt"))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    with torch.no_grad():
        loaded.transformer.wte.weight[0, 0] += 1.0
    assert loaded.lm_head.weight[0, 0] == loaded.transformer.wte.weight[0, 0]


def test_optimizer_groups_partition_the_parameters_and_decay_only_matrices():
    model = tiny_model()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    decayed = opt.param_groups[0]
    assert decayed["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decayed["params"])
    assert opt.param_groups[1]["weight_decay"] == 0.0 and all(p.dim() == 1 for p in opt.param_groups[1]["params"])


def test_checkpoint_write_interrupted_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    M.save_checkpoint(path, {"model_args": {}, "model": {}, "iter_num": 1})

    def half_write_then_ctrl_c(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_write_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        M.save_checkpoint(path, {"model_args": {}, "model": {}, "iter_num": 2})
    assert M.load_checkpoint(path)["iter_num"] == 1


def test_load_checkpoint_explains_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        M.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        M.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a sprout checkpoint"):
        M.load_checkpoint(tmp_path / "foreign.pt")


def test_gpu_peak_flops_come_from_the_table_for_the_gpu_in_use(monkeypatch):
    for name, peak in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                       ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA H200", 989e12)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        M.device_peak_flops.cache_clear()
        assert M.device_peak_flops("cuda", "bfloat16") == peak, name
        assert M.device_peak_flops("cuda", "float32") == peak / 2, name
    M.device_peak_flops.cache_clear()


def test_mfu_on_cpu_is_measured_against_the_cpus_own_matmul_peak():
    model = tiny_model()
    peak = M.device_peak_flops("cpu", "float32")
    assert 1e8 < peak < 1e14, f"measured CPU peak {peak:.3g} FLOP/s is implausible"
    # a step that achieved exactly half the peak reports 0.5
    flops = model.flops_per_token() * model.config.block_size * 4
    assert abs(model.estimate_mfu(4, dt=flops / (peak / 2)) - 0.5) < 1e-9
    assert abs(model.estimate_mfu(4, dt=1.0, peak_flops=flops) - 1.0) < 1e-9


# -----------------------------------------------------------------------------
# model.py: Hugging Face interop


def hf_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    return transformers, hf


def test_from_pretrained_loads_a_local_hf_gpt2_with_identical_logits(tmp_path):
    _, hf = hf_gpt2(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        expected = hf(idx).logits
    got, _ = ours(idx, idx)
    err = (got - expected).abs().max().item()
    assert err < 1e-5, f"logits differ from Hugging Face by {err}"


def test_save_pretrained_output_loads_in_automodel_with_identical_logits(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    for bias in (True, False):
        ours = tiny_model(bias=bias)
        ours.save_pretrained(tmp_path / f"out{bias}")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"out{bias}").eval()
        idx = torch.randint(0, 64, (2, 16))
        with torch.no_grad():
            expected = hf(idx).logits
        got, _ = ours(idx, idx)
        err = (got - expected).abs().max().item()
        assert err < 1e-5, f"bias={bias}: Hugging Face logits differ from ours by {err}"


def test_from_pretrained_explains_an_offline_hub_and_an_unknown_name(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed")
    # in a fresh process: huggingface_hub reads HF_HUB_OFFLINE once, at import
    code = "import model\ntry: model.GPT.from_pretrained('gpt2')\nexcept RuntimeError as e: print(e)"
    out = run_script("-c", code, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert "could not download 'gpt2'" in out.stdout and "pass a local directory" in out.stdout, out
    with pytest.raises(ValueError, match="neither a directory nor one of gpt2"):
        GPT.from_pretrained("gpt7")


# -----------------------------------------------------------------------------
# model.py on a GPU (skipped on CPU-only machines)


@needs_cuda
def test_bf16_autocast_logits_are_close_to_fp32_on_cuda():
    model = tiny_model().cuda()
    idx = torch.randint(0, 64, (4, 16), device="cuda")
    full, _ = model(idx, idx)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half, _ = model(idx, idx)
    err = (half.float() - full).abs().max().item()
    assert err < 0.05, f"bf16 logits differ from fp32 by {err}"


@needs_cuda
def test_kv_cache_generation_matches_no_cache_greedy_on_cuda():
    model = tiny_model().cuda()
    prompt = torch.randint(0, 64, (2, 4), device="cuda")
    assert torch.equal(model.generate(prompt, 30, temperature=0), no_cache_greedy(model, prompt, 30))


# -----------------------------------------------------------------------------
# prepare.py: text to token memmaps


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


def test_txt_round_trip_through_cli_with_worker_processes(tmp_path):
    src = write_txt(tmp_path / "stories.txt", DOCS)
    result = run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path / 'data'}", "--num_proc=2",
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
    result = run_script("prepare.py", name, f"--input={SHARED / 'data' / 'tinyshakespeare.txt'}", f"--out_dir={tmp_path}")
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
    result = run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path}", "--text_field=body", "--num_proc=1")
    assert result.returncode == 0, result.stderr
    train, val = decoded(tmp_path / "docs")
    assert train + EOT + val == EOT.join(DOCS)

    result = run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path}", "--name=other")
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
    assert run_script("prepare.py", *args).returncode == 0
    assert_one_line_error(run_script("prepare.py", *args, "--tokenizer=char"), "already holds", "--force")
    assert prepare.read_meta(tmp_path / "in")["tokenizer"] == "gpt2"
    result = run_script("prepare.py", *args, "--tokenizer=char", "--force")
    assert result.returncode == 0, result.stderr
    assert prepare.read_meta(tmp_path / "in")["tokenizer"] == "char"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_repository_commits_no_prepared_dataset_files():
    # a committed meta.json would make a fresh clone's `prepare.py NAME` refuse to run without --force
    tracked = subprocess.run(["git", "ls-files", "data"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    prepared = [p for p in tracked if Path(p).name in ("train.bin", "val.bin", "meta.json")]
    assert not prepared, f"prepared dataset files are committed: {prepared}"


def test_bad_utf8_names_the_byte_offset_and_replace_works(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("plain ascii first\n\n".encode() + "caf\xe9".encode("latin-1") + b"\n")
    assert_one_line_error(run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path}"),
                          str(src), "offset 22", "--errors=replace")
    assert not (tmp_path / "latin1").exists()
    result = run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path}", "--errors=replace", "--num_proc=1")
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
    assert_one_line_error(run_script("prepare.py", *args, f"--out_dir={tmp_path / 'out'}"), *needles)
    assert not (tmp_path / "out").exists()


def test_offline_without_bpe_files_says_set_tiktoken_cache_dir(tmp_path):
    src = write_txt(tmp_path / "in.txt", DOCS)
    (tmp_path / "empty_cache").mkdir()
    result = run_script("prepare.py", f"--input={src}", f"--out_dir={tmp_path / 'out'}",
                         env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache")})
    assert_one_line_error(result, "GPT-2 BPE", "TIKTOKEN_CACHE_DIR")
    assert not (tmp_path / "out").exists()


def test_offline_hub_says_use_input_or_a_filled_cache(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    result = run_script("prepare.py", "tinystories", f"--out_dir={tmp_path / 'out'}", env=env)
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
                             "--num_proc=2"], cwd=REPO, stderr=subprocess.PIPE, text=True,
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
    result = run_script("prepare.py", "shakespeare_char", f"--out_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    meta = prepare.read_meta(tmp_path / "shakespeare_char")
    assert meta["source"] == prepare.SHAKESPEARE_URL and meta["eot_token"] is None, meta
    cut = int(len(text) * 0.9)
    assert (meta["train_tokens"], meta["val_tokens"]) == (cut, len(text) - cut), meta
    assert "".join(decoded(tmp_path / "shakespeare_char")) == text


# -----------------------------------------------------------------------------
# train.py and configurator.py


# These models are tiny: a second thread only adds synchronisation, which is slow on a busy 2-core machine.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

# A 2-layer, 32-wide model on 16-character windows: a whole run of 30 iterations takes about a second.
TINY = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
        "--batch_size=8", "--gradient_accumulation_steps=1", "--eval_iters=4", "--eval_interval=10",
        "--log_interval=1", "--learning_rate=1e-2", "--warmup_iters=2", "--lr_decay_iters=30",
        "--min_lr=1e-3", "--dropout=0.0", "--max_iters=30"]


# Short sentences from a handful of words: easy to learn, not trivial.
WORDS = ["the cat", "a dog", "sat on", "ran to", "the mat", "a log", "and then", "slept."]
VOCAB = len(set(" ".join(WORDS)))  # 16 characters


def make_dataset(data_dir, text=None, seed=0):
    """A char-level dataset as prepare.py writes it: train.bin, val.bin (uint16) and meta.json."""
    if text is None:
        text = " ".join(np.random.default_rng(seed).choice(WORDS, size=6000))
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    os.makedirs(data_dir, exist_ok=True)
    ids[:n].tofile(Path(data_dir) / "train.bin")
    ids[n:].tofile(Path(data_dir) / "val.bin")
    meta = {"name": Path(data_dir).name, "tokenizer": "char", "vocab_size": len(chars), "eot_token": None,
            "dtype": "uint16", "train_tokens": n, "val_tokens": len(ids) - n, "source": "test",
            "command": "test", "chars": chars}
    (Path(data_dir) / "meta.json").write_text(json.dumps(meta))
    return meta


@pytest.fixture
def data_dir(tmp_path):
    make_dataset(tmp_path / "tiny")
    return tmp_path / "tiny"


def run_train(data_dir, out_dir, *flags):
    """train.train() in this process, with TINY settings and `flags` on top."""
    argv = [*TINY, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *flags]
    return train.train(configure(train.DEFAULTS, argv))


def run_command(*args, timeout=120):
    """Run a command from the repo root; return the CompletedProcess (text)."""
    return subprocess.run(args, cwd=REPO, env=ONE_THREAD, capture_output=True, text=True, timeout=timeout)


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


# -----------------------------------------------------------------------------
# configurator.py

DEFAULTS = dict(batch_size=12, learning_rate=6e-4, compile=None, device="auto", bias=False, out_dir="out",
                betas=(0.9, 0.95))


def test_configure_parses_typed_literals():
    c = configure(DEFAULTS, ["--batch_size=1e3", "--learning_rate=1", "--compile=false", "--bias=TRUE",
                             "--device=cuda:1", "--out_dir=123", "--betas=(0.9, 0.99)"])
    assert c == dict(batch_size=1000, learning_rate=1.0, compile=False, bias=True, device="cuda:1",
                     out_dir="123", betas=(0.9, 0.99)), c
    assert type(c["batch_size"]) is int and type(c["learning_rate"]) is float
    assert configure(DEFAULTS, ["--device='cpu'", "--bias=False"])["device"] == "cpu"
    assert configure(DEFAULTS, []) == DEFAULTS


@pytest.mark.parametrize("flag, expected", [
    ("--batchsize=3", ["unknown option --batchsize", "did you mean --batch_size?"]),
    ("--learnin_rate=3", ["--learning_rate"]),
    ("--zzz=1", ["unknown option --zzz", "--help"]),
    ("--batch_size=1.5", ["batch_size", "1.5", "must be an int"]),
    ("--batch_size=abc", ["batch_size", "'abc'", "must be an int"]),
    ("--bias=1", ["bias", "must be a bool", "got 1"]),
    ("--learning_rate=fast", ["learning_rate", "'fast'", "must be a float"]),
    ("--betas=0.9", ["betas", "must be a tuple"]),
    ("--batch_size", ["--key=value"]),
    ("-b=3", ["--key=value"]),
    ("missing_config.py", ["config file not found: missing_config.py"]),
    ("batch_size=3", ["config file not found", "--key=value"]),
])
def test_configure_errors_name_the_problem(flag, expected):
    with pytest.raises(UserError) as e:
        configure(DEFAULTS, [flag])
    for text in expected:
        assert text in str(e.value), f"{text!r} not in {str(e.value)!r}"


def test_config_file_runs_with_defaults_in_scope_and_flags_win(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("import math\n_local = 2\nbatch_size = 64 * _local\n"
                   "learning_rate = batch_size * 1e-5\ncompile = True\n")
    c = configure(DEFAULTS, ["--batch_size=4", str(cfg)])  # files first, then flags, whatever the order
    assert (c["batch_size"], c["learning_rate"], c["compile"]) == (4, 128e-5, True), c


@pytest.mark.parametrize("body, expected", [
    ("batch_sise = 64\n", ["sets unknown key 'batch_sise'", "did you mean batch_size?"]),
    ("bias = 'yes'\n", ["bias must be a bool", "'yes'"]),
    ("x = (\n", ["line 1"]),
    ("a = 1\nb = undefined\n", ["line 2", "NameError"]),
])
def test_config_file_errors_name_file_and_key(tmp_path, body, expected):
    cfg = tmp_path / "bad.py"
    cfg.write_text(body)
    with pytest.raises(UserError) as e:
        configure(DEFAULTS, [str(cfg)])
    assert str(cfg) in str(e.value), str(e.value)
    for text in expected:
        assert text in str(e.value), f"{text!r} not in {str(e.value)!r}"


def test_format_config_marks_changes_and_shows_derived_values():
    text = configurator.format_config(configure(DEFAULTS, ["--batch_size=4"]), DEFAULTS,
                                      {"tokens_per_iter": "4 x 64 = 256"})
    assert "*batch_size" in text and " learning_rate" in text and "*learning_rate" not in text, text
    assert "tokens_per_iter" in text and "256" in text, text


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        configure(train.DEFAULTS, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    missing = [k for k in train.DEFAULTS if k not in out]
    assert not missing, f"--help does not list {missing}"


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_sets_only_known_keys(path):
    c = configure(train.DEFAULTS, [str(path)])
    assert c["gradient_accumulation_steps"] >= 1 and c["batch_size"] >= 1, c


def test_gpt2_config_is_half_a_million_tokens_over_8_gpus():
    c = configure(train.DEFAULTS, [str(REPO / "config/train_gpt2.py")])
    tokens = c["batch_size"] * c["block_size"] * c["gradient_accumulation_steps"]
    assert tokens == 491520 and c["gradient_accumulation_steps"] % 8 == 0, tokens


def test_cli_errors_are_one_line():
    """The configurator's errors reach the user of train.py as one line and exit code 1."""
    proc = run_command(sys.executable, "train.py", "config/train_shakespeare_char.py", "--batchsize=3")
    assert_one_line_error(proc, "unknown option --batchsize", "--batch_size")


# -----------------------------------------------------------------------------
# train.py: schedule and vocabulary


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    c = train.SimpleNamespace(**configure(train.DEFAULTS, ["--learning_rate=1.0", "--min_lr=0.1",
                                                           "--warmup_iters=10", "--lr_decay_iters=110"]))
    lrs = [train.lr_at(it, c) for it in range(130)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11), lrs[:10]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11])), "warmup must rise"
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55), (lrs[10], lrs[60])
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111])), "decay must not rise"
    assert lrs[110] == lrs[129] == 0.1, (lrs[110], lrs[129])
    c.decay_lr = False
    assert train.lr_at(5, c) == train.lr_at(500, c) == 1.0


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


def test_without_always_save_only_improvements_are_saved(data_dir, tmp_path, monkeypatch):
    val = iter([3.0, 2.0, 2.5, 1.5, 1.8])  # at iters 0, 10, 20, 30, 40

    def fake_evaluate(model, splits, cfg, rt):
        return {"train": 1.0, "val": next(val)}
    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    saved = []
    monkeypatch.setattr(train, "save_checkpoint", lambda path, ckpt: saved.append(ckpt["iter_num"]))
    s = run_train(data_dir, tmp_path / "out", "--max_iters=40", "--always_save_checkpoint=False")
    assert saved == [10, 30] and s["best_val_loss"] == 1.5, (saved, s["best_val_loss"])


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


def test_eval_only_prints_val_loss_and_perplexity(data_dir, tmp_path, capsys):
    s = run_train(data_dir, tmp_path / "o", "--eval_only=True", "--eval_iters=8")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    loss, ppl = float(line.split()[2].rstrip(",")), float(line.split()[4])
    assert line.startswith("val loss ") and ppl == pytest.approx(math.exp(loss), rel=1e-3), line
    assert loss == pytest.approx(math.log(VOCAB), abs=0.3), f"untrained, it should score ~ln(vocab): {line}"
    assert s == {"val_loss": pytest.approx(loss, abs=1e-4)}, s
    assert not (tmp_path / "o/ckpt.pt").exists() and not (tmp_path / "o/log.jsonl").exists()


def test_eval_only_needs_no_train_split(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    os.remove(data_dir / "train.bin")
    s = run_train(data_dir, tmp_path / "out", "--init_from=resume", "--eval_only=True")
    assert s["val_loss"] < math.log(VOCAB) - 0.5, s


# -----------------------------------------------------------------------------
# train.py: errors a user can make


def test_resume_without_checkpoint_is_one_line_error(data_dir, tmp_path):
    proc = run_command(sys.executable, "train.py", *TINY, f"--data_dir={data_dir}",
                   f"--out_dir={tmp_path}/none", "--init_from=resume")
    assert_one_line_error(proc, f"no checkpoint at {tmp_path}/none/ckpt.pt", "--init_from=scratch")


def test_missing_dataset_says_which_prepare_command_to_run(tmp_path):
    proc = run_command(sys.executable, "train.py", *TINY, "--dataset=no_such_set", f"--out_dir={tmp_path}/o")
    assert_one_line_error(proc, "data/no_such_set", "python prepare.py no_such_set")


def test_missing_split_and_too_short_data_are_user_errors(data_dir, tmp_path):
    with pytest.raises(UserError, match="too few for block_size=5000"):
        run_train(data_dir, tmp_path / "o", "--block_size=5000")
    os.remove(data_dir / "val.bin")
    with pytest.raises(UserError, match="val.bin is missing; run `python prepare.py tiny"):
        run_train(data_dir, tmp_path / "o")


def test_batch_that_does_not_divide_across_processes_is_a_user_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun would set it; refused before any process group
    with pytest.raises(UserError, match="gradient_accumulation_steps=3 does not divide across 2 processes"):
        run_train(data_dir, tmp_path / "o", "--gradient_accumulation_steps=3")


def test_checkpoint_that_does_not_fit_the_data_is_a_user_error(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "out", "--max_iters=10")
    with pytest.raises(UserError, match="block_size=32 is longer than the 16 tokens"):
        run_train(data_dir, tmp_path / "out", "--init_from=resume", "--block_size=32")
    make_dataset(tmp_path / "wide", text="".join(chr(65 + i % 40) for i in range(5000)))
    with pytest.raises(UserError, match="vocabulary of 16 tokens but the dataset 'wide' uses 40"):
        run_train(tmp_path / "wide", tmp_path / "out", "--init_from=resume")


def test_nonpositive_intervals_are_user_errors(data_dir, tmp_path):
    with pytest.raises(UserError, match="eval_interval must be at least 1"):
        run_train(data_dir, tmp_path / "o", "--eval_interval=0")


# -----------------------------------------------------------------------------
# train.py under torchrun


def test_torchrun_two_processes_match_one_process(data_dir, tmp_path):
    """DDP on gloo splits the global batch across 2 processes: the losses are those of 1 process."""
    flags = [*TINY, f"--data_dir={data_dir}", "--max_iters=8", "--eval_interval=100",
             "--gradient_accumulation_steps=4", "--batch_size=4"]
    one = run_train(data_dir, tmp_path / "one", *flags[len(TINY):])
    proc = run_command(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "train.py", *flags, f"--out_dir={tmp_path}/two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = {r["iter"]: r["loss"] for r in read_log(tmp_path / "two") if "loss" in r}
    assert sorted(two) == list(range(8)), two
    diffs = [abs(one["losses"][it] - two[it]) for it in range(8)]
    assert max(diffs) < 1e-5, f"1 process {one['losses']}\n2 processes {two}"
    assert "processes 2" in proc.stdout and proc.stdout.count("model:") == 1, "rank 0 alone should print"


def test_init_from_a_local_hugging_face_dir_crops_and_fine_tunes(data_dir, tmp_path):
    pytest.importorskip("transformers")
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    hf_model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
    hf_model.save_pretrained(tmp_path / "hf")
    s = run_train(data_dir, tmp_path / "out", f"--init_from={tmp_path / 'hf'}", "--dropout=0.1",
                  "--max_iters=10")
    ckpt = torch.load(tmp_path / "out/ckpt.pt", weights_only=True)
    args = ckpt["model_args"]
    assert args["block_size"] == 16 and args["vocab_size"] == 64, args
    assert args["dropout"] == 0.1 and args["bias"] is True, args
    assert s["evals"][-1]["val"] < s["evals"][0]["val"], s["evals"]


# -----------------------------------------------------------------------------
# sample.py and bench.py



CHARS = sorted(set("\n !',.:;?-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
CHAR_META = {"tokenizer": "char", "chars": CHARS, "vocab_size": len(CHARS), "eot_token": None}
GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}
HAVE_BPE = any(Path(os.environ.get("TIKTOKEN_CACHE_DIR", "/nonexistent")).glob("*"))


def make_checkpoint(out_dir, meta=CHAR_META, block_size=16, seed=0):
    """A tiny random model saved as train.py saves it; returns the model (eval mode)."""
    torch.manual_seed(seed)
    config = GPTConfig(block_size=block_size, vocab_size=meta["vocab_size"], n_layer=2, n_head=2, n_embd=16)
    model = GPT(config).eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(out_dir) / "ckpt.pt", {"model_args": asdict(config), "model": model.state_dict(),
                                                "meta": meta, "config": {}, "iter_num": 0})
    return model


@torch.no_grad()
def greedy_without_cache(model, ids, n):
    """The reference decode: a full forward over the (cropped) context for every new token."""
    idx = torch.tensor([ids])
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx[0, len(ids):].tolist()


class Result:
    def __init__(self, stdout, stderr):
        self.stdout, self.stderr, self.returncode = stdout, stderr, 0


@pytest.fixture
def run_sample(capsys, monkeypatch):
    """Call sample.py's main in this process (no interpreter start-up): returns its stdout and stderr."""
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["sample.py", *map(str, args)])
        capsys.readouterr()
        sample.main()
        return Result(*capsys.readouterr())
    return run


def assert_ok(result):
    assert result.returncode == 0, f"exit code {result.returncode}, stderr: {result.stderr}"


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("char")
    return out_dir, make_checkpoint(out_dir)


# -----------------------------------------------------------------------------
# Output


def test_same_seed_gives_identical_output_and_another_seed_differs(char_run, run_sample):
    out_dir, _ = char_run
    args = [f"--out_dir={out_dir}", "--start=to be", "--max_new_tokens=60", "--temperature=1.0"]
    first, second = run_sample(*args, "--seed=7"), run_sample(*args, "--seed=7")
    other = run_sample(*args, "--seed=8")
    for r in (first, second, other):
        assert_ok(r)
    assert first.stdout == second.stdout, f"{first.stdout!r} != {second.stdout!r}"
    assert first.stdout != other.stdout, f"seeds 7 and 8 both gave {first.stdout!r}"
    assert first.stdout.startswith("to be") and len(first.stdout) == len("to be") + 60 + 1, repr(first.stdout)


def test_greedy_output_equals_no_cache_greedy_decode_past_the_context(char_run, run_sample):
    out_dir, model = char_run
    # 40 new tokens after a 5-token prompt run well past block_size 16: the window slides
    result = run_sample(f"--out_dir={out_dir}", "--start=hello", "--max_new_tokens=40", "--temperature=0")
    assert_ok(result)
    tok = load_tokenizer(CHAR_META)
    expected = "hello" + tok.decode(greedy_without_cache(model, tok.encode("hello"), 40)) + "\n"
    assert result.stdout == expected, f"\n{result.stdout!r}\n{expected!r}"


def test_file_prompt_gives_the_same_output_as_the_text(char_run, tmp_path, run_sample):
    out_dir, _ = char_run
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon\na time", encoding="utf-8")
    args = [f"--out_dir={out_dir}", "--max_new_tokens=20", "--temperature=0"]
    from_file = run_sample(*args, f"--start=FILE:{prompt}")
    from_text = run_sample(*args, "--start=Once upon\na time")
    assert_ok(from_file)
    assert from_file.stdout == from_text.stdout and from_file.stdout.startswith("Once upon\na time"), (
        f"{from_file.stdout!r} vs {from_text.stdout!r}")


def test_several_samples_are_one_batch_each_followed_by_a_separator(char_run, run_sample):
    out_dir, model = char_run
    result = run_sample(f"--out_dir={out_dir}", "--start=ab", "--max_new_tokens=25", "--temperature=0",
                        "--num_samples=3")
    assert_ok(result)
    tok = load_tokenizer(CHAR_META)
    one = "ab" + tok.decode(greedy_without_cache(model, tok.encode("ab"), 25))
    assert result.stdout == f"{one}\n{sample.SEPARATOR}\n" * 3, repr(result.stdout)


def test_long_prompt_is_cut_to_the_context_with_a_notice(char_run, run_sample):
    out_dir, model = char_run
    prompt = "the quick brown fox jumps over the lazy dog"  # 43 characters, block_size 16
    result = run_sample(f"--out_dir={out_dir}", f"--start={prompt}", "--max_new_tokens=10", "--temperature=0")
    assert_ok(result)
    assert "longer than the model's context; keeping its last 16" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    tok = load_tokenizer(CHAR_META)
    expected = prompt[-16:] + tok.decode(greedy_without_cache(model, tok.encode(prompt[-16:]), 10)) + "\n"
    assert result.stdout == expected, f"{result.stdout!r} != {expected!r}"


@pytest.mark.skipif(not HAVE_BPE, reason="GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
def test_gpt2_checkpoint_decodes_with_tiktoken(tmp_path, run_sample):
    model = make_checkpoint(tmp_path, GPT2_META, block_size=32)
    result = run_sample(f"--out_dir={tmp_path}", "--start=Hello, world", "--max_new_tokens=12",
                        "--temperature=0", "--stop_at_eot=False")
    assert_ok(result)
    tok = load_tokenizer(GPT2_META)
    new = greedy_without_cache(model, tok.encode("Hello, world"), 12)
    assert result.stdout == "Hello, world" + tok.decode(new) + "\n", f"{result.stdout!r} vs ids {new}"


@pytest.mark.skipif(not HAVE_BPE, reason="GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
def test_generation_stops_at_end_of_text(tmp_path, run_sample):
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    with torch.no_grad():  # the final norm always outputs eot's (big) embedding
        model.transformer.wte.weight[50256] = 1.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
    save_checkpoint(tmp_path / "ckpt.pt", {"model_args": asdict(config), "model": model.state_dict(),
                                           "meta": GPT2_META, "config": {}, "iter_num": 0})
    args = [f"--out_dir={tmp_path}", "--start=Hi", "--max_new_tokens=3", "--temperature=0"]
    stopped, unstopped = run_sample(*args), run_sample(*args, "--stop_at_eot=False")
    assert_ok(stopped)
    assert stopped.stdout == "Hi\n", repr(stopped.stdout)
    assert unstopped.stdout == "Hi" + "<|endoftext|>" * 3 + "\n", repr(unstopped.stdout)


@pytest.mark.skipif(not HAVE_BPE, reason="GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
def test_streamed_pieces_are_whole_characters_even_when_tokens_split_them():
    tok = load_tokenizer(GPT2_META)
    text = "naïve café 🐍🐍 字字 ok"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids), "the text should have tokens that split a character"

    class Replay:  # stands in for a model: "generates" the given ids
        config = GPTConfig(block_size=64)

        def parameters(self):
            yield torch.zeros(1)

        def generate_stream(self, idx, max_new_tokens, **kwargs):
            yield from (torch.tensor([i]) for i in ids[:max_new_tokens])

    cfg = sample.SimpleNamespace(**sample.DEFAULTS)
    pieces = list(sample.stream_text(Replay(), tok, [0], cfg))
    assert "".join(pieces) == text, pieces
    assert not any("\ufffd" in p for p in pieces), pieces
    assert len(pieces) > 5, f"expected the text in many pieces, got {pieces}"


def test_local_hugging_face_directory_samples_with_gpt2_tokens(tmp_path, run_sample):
    pytest.importorskip("transformers")
    if not HAVE_BPE:
        pytest.skip("GPT-2 BPE files not found (set TIKTOKEN_CACHE_DIR)")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)).eval()
    model.save_pretrained(tmp_path / "hf")
    result = run_sample(f"--init_from={tmp_path / 'hf'}", "--start=The", "--max_new_tokens=8",
                        "--temperature=0", "--stop_at_eot=False")
    assert_ok(result)
    tok = load_tokenizer(GPT2_META)
    assert result.stdout == "The" + tok.decode(greedy_without_cache(model, tok.encode("The"), 8)) + "\n"


# -----------------------------------------------------------------------------
# Decoding speed-ups give the same numbers


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_decoding_linear_computes_what_nn_linear_does(n):
    from model import DecodingLinear
    torch.manual_seed(0)
    for linear in (torch.nn.Linear(8, 12), torch.nn.Linear(8, 12, bias=False)):
        blocked = DecodingLinear(linear, n)  # n = 5: 12 outputs need 3 zero-padded ones
        for x in (torch.randn(3, 5, 8), torch.randn(1, 1, 8), torch.randn(8), torch.randn(0, 8)):
            with torch.no_grad():
                want, got = linear(x), blocked(x)
            assert got.shape == want.shape, (got.shape, want.shape)
            assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max().item()


@pytest.mark.parametrize("variant", [{}, dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", n_expert=4)])
def test_prepare_for_decoding_swaps_every_linear_and_logits_stay_the_same(variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, **variant)).eval()
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        want = model(idx)[0]
        sample.ready_for_decoding(model)
        got = model(idx)[0]
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear" not in kinds and "DecodingLinear" in kinds, kinds
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max().item()


@pytest.mark.parametrize("threads", [1, 3])
def test_decoding_layout_greedy_decodes_like_the_plain_model_for_any_thread_count(char_run, threads):
    _, model = char_run  # vocabulary 62: 3 threads need a zero-padded last block of the output layer
    ids = load_tokenizer(CHAR_META).encode("hello")
    want = greedy_without_cache(model, ids, 30)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = copy.deepcopy(model).prepare_for_decoding()
        got = torch.cat(list(fast.generate_stream(torch.tensor([ids]), 30, temperature=0))).tolist()
    finally:
        torch.set_num_threads(before)
    assert got == want, (got, want)


def test_float16_on_cpu_keeps_plain_linears_and_greedy_matches_no_cache_decoding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    model = sample.ready_for_decoding(model, "cpu", "float16")  # the blocked layout is slow in 16-bit
    kinds = {type(m).__name__ for m in model.modules()}
    assert "DecodingLinear" not in kinds and next(model.parameters()).dtype == torch.float16, kinds
    ids = [3, 1, 4, 1, 5]
    got = torch.cat(list(model.generate_stream(torch.tensor([ids]), 20, temperature=0))).tolist()
    assert got == greedy_without_cache(model, ids, 20), got


def test_exponential_race_draws_what_multinomial_draws():
    from model import sample_logits
    logits = torch.randn(64, 300)
    torch.manual_seed(3)
    want = torch.multinomial(logits.softmax(dim=-1), num_samples=1)[:, 0]
    torch.manual_seed(3)
    got = sample_logits(logits, temperature=1.0)
    assert torch.equal(got, want), (got, want)


def test_top_k_sampling_draws_only_the_k_best_in_softmax_proportions():
    from model import sample_logits
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0, 1.5, 0.5]]).repeat(20000, 1)  # 20,000 draws at once
    drawn = sample_logits(logits, temperature=1.0, top_k=3)
    counts = torch.bincount(drawn, minlength=6).float() / len(drawn)
    want = torch.zeros(6)
    want[[1, 4, 2]] = torch.tensor([2.0, 1.5, 1.0]).softmax(dim=0)
    assert torch.allclose(counts, want, atol=0.015), f"drawn {counts.tolist()}, expected {want.tolist()}"
    # with top_p as well: of the 3 best (0.51, 0.31, 0.19), 0.8 of the mass needs the first two
    drawn = sample_logits(logits, temperature=1.0, top_k=3, top_p=0.8)
    assert set(drawn.tolist()) == {1, 4}, set(drawn.tolist())


# -----------------------------------------------------------------------------
# Interactive mode


def test_interactive_mode_answers_each_prompt_until_an_empty_line(char_run):
    out_dir, model = char_run
    result = run_script("sample.py", f"--out_dir={out_dir}", "--interactive=True", "--max_new_tokens=10", "--temperature=0",
                        input="hello\nwhy é\nab\n\nnever read\n")
    assert_ok(result)
    tok = load_tokenizer(CHAR_META)
    answers = [tok.decode(greedy_without_cache(model, tok.encode(p), 10)) for p in ("hello", "ab")]
    # a character the vocabulary lacks is reported and the loop goes on
    expected = f"> {answers[0]}\n" + "> " + f"> {answers[1]}\n" + "> "  # the middle prompt got no answer
    assert result.stdout == expected, f"{result.stdout!r} != {expected!r}"
    assert "error: the prompt cannot be encoded: character 'é'" in result.stderr, result.stderr


def test_interactive_mode_quits_at_end_of_input(char_run, run_sample, monkeypatch):
    out_dir, _ = char_run
    monkeypatch.setattr(sys, "stdin", io.StringIO("ab\n"))  # no empty line: Ctrl-D ends it
    result = run_sample(f"--out_dir={out_dir}", "--interactive=True", "--max_new_tokens=5")
    assert result.stdout.count("> ") == 2 and result.stdout.endswith("> \n"), repr(result.stdout)


def test_interactive_ctrl_c_stops_the_generation_and_asks_again(char_run):
    out_dir, _ = char_run
    proc = subprocess.Popen([sys.executable, "sample.py", f"--out_dir={out_dir}", "--interactive=True",
                             "--max_new_tokens=1000000"], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"ab\n")
        proc.stdin.flush()
        seen = b""
        deadline = time.time() + 60
        while len(seen) < 20 and time.time() < deadline:  # the answer is streaming
            seen += os.read(proc.stdout.fileno(), 100)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        out, err = proc.communicate(b"\n", timeout=60)  # then an empty line quits
    finally:
        proc.kill()
    text = (seen + out).decode()
    assert proc.returncode == 0, f"exit code {proc.returncode}: {err.decode()}"
    assert "[stopped]\n> " in text, repr(text[-200:])


# -----------------------------------------------------------------------------
# Errors


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    assert_one_line_error(run_script("sample.py", f"--out_dir={tmp_path}"), "no checkpoint at", "python train.py",
                          "--init_from=gpt2")


def test_unreadable_and_foreign_checkpoints_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ckpt.pt").write_bytes(b"not a checkpoint at all")
    assert_one_line_error(run_script("sample.py", f"--out_dir={tmp_path / 'a'}"), "not a readable checkpoint")
    (tmp_path / "b").mkdir()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "b" / "ckpt.pt")
    assert_one_line_error(run_script("sample.py", f"--out_dir={tmp_path / 'b'}"), "not a sprout checkpoint")


def test_missing_prompt_file_is_named(char_run, tmp_path):
    out_dir, _ = char_run
    missing = tmp_path / "nope.txt"
    assert_one_line_error(run_script("sample.py", f"--out_dir={out_dir}", f"--start=FILE:{missing}"),
                          f"prompt file {missing} does not exist")


def test_character_outside_the_vocabulary_is_named(char_run):
    out_dir, _ = char_run
    assert_one_line_error(run_script("sample.py", f"--out_dir={out_dir}", "--start=caf\u00e9"), "character '\u00e9'")


def test_bad_settings_are_one_line_errors(char_run):
    out_dir, _ = char_run
    assert_one_line_error(run_script("sample.py", f"--out_dir={out_dir}", "--top_p=0"), "top_p")
    assert_one_line_error(run_script("sample.py", "--init_from=gpt3"), "init_from='gpt3'", "gpt2-medium")


# -----------------------------------------------------------------------------
# bench.py


def test_bench_quick_runs_and_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "bench.py", "--quick", f"--out={out}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert {"device", "torch", "threads"} <= set(data["env"]), data["env"]
    assert data["env"]["torch"] == torch.__version__
    assert data["train"]["step"] == "train.train_step" and data["train"]["ms_per_iter"] > 0, data["train"]
    assert 0 < data["train"]["mfu"] < 1, data["train"]
    for run in ("cache_batch1", "no_cache_batch1", "cache_batch8", "no_cache_batch8"):
        assert data["sample"][run]["tokens_per_s"] > 0, data["sample"]
    assert data["sample"]["memory_bound_tokens_per_s"] > 0 and data["cpu"]["matmul_gflops"] > 0
    if SHARED.is_dir():
        for key in ("prepare_py", "datasets_map"):
            p = data["prepare"][key]
            assert p["tokens"] > 0 and p["tokens_per_s"] > 0 and p["peak_rss_mb"] > 0, data["prepare"]
        ours, theirs = data["prepare"]["prepare_py"]["tokens"], data["prepare"]["datasets_map"]["tokens"]
        assert abs(ours - theirs) < 0.01 * ours, f"the two ways tokenized {ours} and {theirs} tokens"
    for needle in ("ms/iter", "cache batch1", "tok/s", "GFLOP/s"):
        assert needle in result.stdout, result.stdout


# -----------------------------------------------------------------------------
# model variants: RoPE, SwiGLU, RMSNorm, MoE, gradient checkpointing


VARIANTS = {
    "rope": dict(pos_emb="rope"),
    "swiglu": dict(mlp="swiglu"),
    "rmsnorm": dict(norm="rmsnorm"),
    "moe": dict(n_expert=4, n_expert_active=2),
    "all": dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", n_expert=4, n_expert_active=2),
}
variants = pytest.mark.parametrize("variant", list(VARIANTS))


def tiny_variant(variant=None, seed=0, **overrides):
    return tiny_model(seed, **{**VARIANTS.get(variant, {}), **overrides})


def max_diff(a, b):
    return (a - b).abs().max().item()


# -----------------------------------------------------------------------------
# Every variant: the claims the default model's tests make


@variants
def test_each_variant_keeps_later_tokens_from_changing_earlier_logits(variant):
    model = tiny_variant(variant)
    idx = torch.randint(0, 64, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 64
    logits_a, _ = model(idx, idx)
    logits_b, _ = model(changed, changed)
    before, after = max_diff(logits_a[:, :10], logits_b[:, :10]), max_diff(logits_a[:, 10:], logits_b[:, 10:])
    assert before == 0.0, f"{variant}: earlier logits moved by {before}"
    assert after > 1e-3, f"{variant}: later logits should change, moved only {after}"


@variants
def test_each_variant_kv_cache_prefill_then_single_steps_equals_one_forward(variant):
    model = tiny_variant(variant)
    idx = torch.randint(0, 64, (2, 16))
    full, _ = model(idx, idx)  # (2, 16, V)
    cache = KVCache(model.config.n_layer, 16)
    prefill, _ = model(idx[:, :9], idx[:, :9], cache=cache)
    errors = [max_diff(prefill, full[:, :9])]
    for t in range(9, 16):
        step, _ = model(idx[:, t:t + 1], cache=cache)  # (2, 1, V)
        errors.append(max_diff(step[:, 0], full[:, t]))
    assert max(errors) < 1e-5, f"{variant}: cache vs full forward differ by {errors}"


@variants
def test_greedy_generation_past_block_size_is_the_same_with_and_without_the_cache(variant):
    model = tiny_variant(variant)
    prompt = torch.randint(0, 64, (2, 5))
    cached = model.generate(prompt, 30, temperature=0)  # slides the window twice past block_size 16
    idx = prompt
    with torch.no_grad():
        for _ in range(30):  # the textbook loop: the whole (cropped) context every step, no cache
            logits, _ = model(idx[:, -16:])
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(cached, idx), f"{variant}:\ncached {cached.tolist()}\nno cache {idx.tolist()}"


@variants
def test_variant_overfits_one_batch(variant):
    model = tiny_variant(variant)
    idx = torch.randint(0, 64, (4, 17))
    fit_one_batch(model, idx, 60)
    model.eval()
    _, final = model(idx[:, :-1], idx[:, 1:])
    assert final.item() < 0.1, f"{variant}: loss {final.item():.3f} after 60 steps on one batch"


@variants
def test_variant_runs_under_bf16_autocast_close_to_float32(variant):
    model = tiny_variant(variant)
    idx = torch.randint(0, 64, (2, 16))
    full, _ = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, loss = model(idx, idx)
    err = max_diff(low.float(), full)
    assert math.isfinite(loss.item()) and err < 0.05, f"{variant}: bf16 logits differ by {err}"


def test_unknown_variant_names_are_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"pos_emb must be one of \('learned', 'rope'\), not 'rotary'"):
        GPTConfig(pos_emb="rotary")
    with pytest.raises(ValueError, match="n_expert_active must be 1..n_expert=4, not 5"):
        GPTConfig(n_expert=4, n_expert_active=5)
    with pytest.raises(ValueError, match="head size n_embd // n_head = 3 must be even"):
        GPTConfig(n_embd=6, n_head=2, pos_emb="rope")


# -----------------------------------------------------------------------------
# RoPE


def test_rope_attention_scores_depend_only_on_relative_position():
    config = GPTConfig(block_size=64, n_embd=64, n_head=4)  # head size 16
    cos, sin = M.rope_tables(config)  # (64, 8) each
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)  # (B, nh, T, hs)
    scores = {}
    for shift in (0, 7, 50):  # the same 10 tokens placed at positions shift..shift+9
        pos = slice(shift, shift + 10)
        q_rot, k_rot = M.apply_rope(q, cos[pos], sin[pos]), M.apply_rope(k, cos[pos], sin[pos])
        scores[shift] = q_rot @ k_rot.transpose(-2, -1)  # (B, nh, 10, 10)
    plain = q @ k.transpose(-2, -1)
    errors = [max_diff(scores[s], scores[0]) for s in (7, 50)]
    assert max(errors) < 1e-4, f"shifting all positions changed the scores by {errors}"
    assert max_diff(scores[0], plain) > 0.1, "the rotation should change the scores at all"


def test_rope_keeps_the_length_of_every_query():
    cos, sin = M.rope_tables(GPTConfig(block_size=32, n_embd=32, n_head=2))
    q = torch.randn(1, 2, 32, 16)
    err = max_diff(M.apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1))
    assert err < 1e-5, f"rotation changed vector lengths by {err}"


def test_rope_has_no_position_table_and_the_default_keeps_gpt2s_state_dict():
    default, rope = tiny_variant(), tiny_variant("rope")
    keys = set(default.state_dict())
    assert "transformer.wpe.weight" in keys
    assert set(rope.state_dict()) == keys - {"transformer.wpe.weight"}, "rope: no wpe and no extra keys"
    per_layer = sorted(k.removeprefix("transformer.h.0.") for k in keys if k.startswith("transformer.h.0."))
    assert per_layer == ["attn.c_attn.bias", "attn.c_attn.weight", "attn.c_proj.bias", "attn.c_proj.weight",
                         "ln_1.bias", "ln_1.weight", "ln_2.bias", "ln_2.weight", "mlp.c_fc.bias",
                         "mlp.c_fc.weight", "mlp.c_proj.bias", "mlp.c_proj.weight"], per_layer
    assert rope.get_num_params() == rope.get_num_params(non_embedding=False)


# -----------------------------------------------------------------------------
# SwiGLU and RMSNorm


@pytest.mark.parametrize("n_embd,hidden", [(384, 1024), (512, 1408), (768, 2048), (32, 128)])
def test_swiglu_hidden_width_is_8_thirds_rounded_up_to_64(n_embd, hidden):
    mlp = M.SwiGLU(GPTConfig(n_embd=n_embd))
    assert mlp.c_proj.in_features == hidden and mlp.c_fc.out_features == 2 * hidden, mlp


def test_swiglu_computes_silu_gate_times_up_projection():
    mlp = M.SwiGLU(GPTConfig(n_embd=32, bias=False))
    x = torch.randn(2, 3, 32)
    gate_w, up_w = mlp.c_fc.weight.chunk(2, dim=0)
    expected = (torch.nn.functional.silu(x @ gate_w.T) * (x @ up_w.T)) @ mlp.c_proj.weight.T
    assert max_diff(mlp(x), expected) < 1e-5


def test_rmsnorm_scales_each_vector_to_unit_root_mean_square():
    norm = M.make_norm(GPTConfig(n_embd=32, norm="rmsnorm"))
    x = torch.randn(4, 5, 32) * 3 + 1
    rms = norm(x).pow(2).mean(dim=-1).sqrt()
    assert max_diff(rms, torch.ones_like(rms)) < 1e-3 and not hasattr(norm, "bias")


# -----------------------------------------------------------------------------
# Mixture of Experts


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_moe_with_one_expert_equals_the_dense_mlp_with_the_same_weights(mlp):
    dense, moe = tiny_variant(mlp=mlp), tiny_variant(mlp=mlp, n_expert=1, n_expert_active=1)
    weights = {k.replace(".mlp.", ".mlp.experts.0."): v for k, v in dense.state_dict().items()}
    weights |= {k: v for k, v in moe.state_dict().items() if "router" in k}
    moe.load_state_dict(weights)
    idx = torch.randint(0, 64, (2, 16))
    err = max_diff(moe(idx, idx)[0], dense(idx, idx)[0])
    assert err < 1e-6, f"one-expert MoE and dense MLP differ by {err}"


def record_expert_inputs(moe):
    """Hook every expert; return a list that fills with (expert index, its input rows) per call."""
    seen = []
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda mod, args, out, e=e: seen.append((e, args[0].detach())))
    return seen


@pytest.mark.parametrize("skewed", [False, True])
def test_router_sends_every_token_to_exactly_k_experts_without_dropping_any(skewed):
    moe = M.MoE(GPTConfig(n_embd=32, n_expert=4, n_expert_active=2))
    x = torch.randn(3, 50, 32)
    if skewed:  # every token prefers expert 0: a capacity limit would have to drop tokens here
        x += 3.0
        with torch.no_grad():
            moe.router.weight[0] = 1.0
    seen = record_expert_inputs(moe)
    moe(x)
    tokens = x.reshape(-1, 32)  # (150, C); random floats, so each row is unique
    visits = torch.zeros(150, dtype=torch.long)
    for e, rows in seen:
        match = (rows[:, None, :] == tokens[None]).all(dim=-1)  # (n_e, 150)
        assert (match.sum(dim=1) == 1).all(), "each row an expert sees is one of the tokens"
        visits += match.sum(dim=0)
    loads = [len(rows) for _, rows in seen]
    assert visits.eq(2).all(), f"tokens reached {visits.unique().tolist()} experts, not exactly 2"
    assert sum(loads) == 300, loads
    if skewed:
        assert loads[0] == 150, f"expert 0 should take every token, loads {loads}"


def test_moe_output_mixes_the_chosen_experts_with_renormalised_weights():
    moe = M.MoE(GPTConfig(n_embd=32, n_expert=4, n_expert_active=2))
    x = torch.randn(1, 6, 32)
    tokens = x.view(6, 32)
    probs = moe.router(tokens).softmax(dim=-1)  # (6, E)
    top, chosen = probs.topk(2, dim=-1)
    expected = torch.stack([sum(top[n, j] / top[n].sum() * moe.experts[chosen[n, j]](tokens[n])
                                for j in range(2)) for n in range(6)])
    assert max_diff(moe(x).view(6, 32), expected) < 1e-6


def test_aux_loss_is_one_under_uniform_routing_and_larger_when_skewed():
    E, N = 4, 8
    uniform = M.load_balancing_loss(torch.full((N, E), 1 / E), torch.arange(2 * N).view(N, 2) % E)
    skewed_probs = torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(N, E)
    skewed = M.load_balancing_loss(skewed_probs, torch.tensor([0, 1]).expand(N, 2))
    assert uniform.item() == pytest.approx(1.0, abs=1e-6), uniform
    assert skewed.item() > 1.5, f"all tokens on experts 0 and 1 should cost more, got {skewed.item()}"


def test_aux_loss_joins_the_training_loss_but_not_the_evaluation_loss():
    model = tiny_variant("moe", aux_loss_coef=0.25)
    for block in model.transformer.h:  # a zero router: every probability is exactly 1/E
        torch.nn.init.zeros_(block.mlp.router.weight)
    idx = torch.randint(0, 64, (2, 16))
    _, eval_loss = model(idx, idx)
    assert model.last_aux_loss.item() == pytest.approx(1.0, abs=1e-6), "uniform routing: minimal, 1"
    _, train_loss = model.train()(idx, idx)
    expected = eval_loss.item() + 0.25 * model.last_aux_loss.item()
    assert train_loss.item() == pytest.approx(expected, abs=1e-6), (train_loss.item(), eval_loss.item())
    train_loss.backward()
    grad = model.transformer.h[0].mlp.router.weight.grad
    assert grad is not None and grad.abs().sum() > 0, "the router learns from both losses"


def test_every_expert_gets_a_gradient_even_when_no_token_chose_it():
    model = tiny_variant("moe").train()
    with torch.no_grad():  # the router never picks experts 2 and 3
        for block in model.transformer.h:
            block.mlp.router.weight.zero_()
    model(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))[1].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient (DDP would fail): {missing}"


def test_flops_per_token_count_only_the_active_experts():
    dense = tiny_variant()
    moe = tiny_variant("moe")
    expert_params = sum(p.numel() for p in dense.transformer.h[0].mlp.parameters())
    router = 32 * 4
    extra = 2 * (router + 1 * expert_params)  # 2 layers; top-2 of 4: one more expert's worth active
    assert moe.flops_per_token() - dense.flops_per_token() == 6 * extra


# -----------------------------------------------------------------------------
# Gradient checkpointing


def gradients(model, idx):
    torch.manual_seed(1)  # the same dropout masks for both runs
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_grad_checkpointing_gives_the_same_gradients(variant):
    idx = torch.randint(0, 64, (2, 17))
    plain = gradients(tiny_variant(variant, dropout=0.1).train(), idx)
    recomputed = gradients(tiny_variant(variant, dropout=0.1, grad_checkpoint=True).train(), idx)
    err = max(max_diff(plain[n], recomputed[n]) for n in plain)
    assert err < 1e-5, f"{variant}: gradients differ by {err}"


def saved_activation_bytes(model, idx):
    """Bytes of the tensors autograd keeps from forward for backward, parameters excepted."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    loss.backward()
    return sum(n for ptr, n in storages.items() if ptr not in params)


def test_grad_checkpointing_keeps_far_fewer_activations_for_backward():
    idx = torch.randint(0, 64, (4, 65))
    kw = dict(block_size=64, n_layer=4, n_embd=64)
    plain = saved_activation_bytes(tiny_variant(**kw).train(), idx)
    recomputed = saved_activation_bytes(tiny_variant(grad_checkpoint=True, **kw).train(), idx)
    # checkpointing keeps each block's input (B, T, C) in float32; a block keeps ~10x that otherwise
    assert recomputed < plain / 4, f"saved {recomputed:,} bytes with checkpointing vs {plain:,} without"
    assert recomputed >= 4 * 4 * 64 * 64 * 4, f"the 4 block inputs alone are 262,144 bytes: {recomputed:,}"


def test_grad_checkpointing_is_off_in_eval_mode_and_under_no_grad(monkeypatch):
    calls = []
    monkeypatch.setattr(M, "checkpoint", lambda *a, **k: calls.append(1) or a[0](*a[1:]))
    model = tiny_variant(grad_checkpoint=True)
    idx = torch.randint(0, 64, (1, 8))
    model(idx, idx)
    with torch.no_grad():
        model.train()(idx, idx)
    assert calls == [], "no recomputation without a backward to come"
    model(idx, idx)
    assert len(calls) == 2, calls


# -----------------------------------------------------------------------------
# Hugging Face export


@pytest.mark.parametrize("option,value", [("pos_emb", "rope"), ("mlp", "swiglu"), ("norm", "rmsnorm"),
                                          ("n_expert", 4)])
def test_save_pretrained_refuses_variants_naming_the_option(tmp_path, option, value):
    model = tiny_variant(**{option: value})
    with pytest.raises(ValueError) as info:
        model.save_pretrained(tmp_path / "hf")
    message = str(info.value)
    assert message == f"save_pretrained: {option}={value!r} has no place in GPT-2's Hugging Face format " \
                      f"(it needs {option}={getattr(GPTConfig(), option)!r})", message
    assert not (tmp_path / "hf").exists()


# -----------------------------------------------------------------------------
# train.py: variants train, checkpoint and resume


def run_variant_train(data_dir, out_dir, *flags):
    import configurator
    import train
    argv = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
            "--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=2", "--eval_interval=4",
            "--log_interval=1", "--learning_rate=1e-2", "--warmup_iters=2", "--lr_decay_iters=8",
            "--dropout=0.1", "--max_iters=8", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *flags]
    return train.train(configurator.configure(train.DEFAULTS, argv))


def test_all_variants_at_once_resume_exactly_and_log_the_aux_loss(tmp_path):
    flags = ["--pos_emb=rope", "--mlp=swiglu", "--norm=rmsnorm", "--n_expert=4", "--n_expert_active=2",
             "--grad_checkpoint=True"]
    make_dataset(tmp_path / "data")
    whole = run_variant_train(tmp_path / "data", tmp_path / "a", *flags)
    run_variant_train(tmp_path / "data", tmp_path / "b", *flags, "--max_iters=4")
    ckpt = M.load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert {k: ckpt["model_args"][k] for k in ("pos_emb", "mlp", "norm", "n_expert")} == \
        dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", n_expert=4), ckpt["model_args"]
    resumed = run_variant_train(tmp_path / "data", tmp_path / "b", *flags, "--init_from=resume")
    expected = {it: whole["losses"][it] for it in range(4, 8)}
    assert resumed["losses"] == expected, f"resumed {resumed['losses']}\nuninterrupted {expected}"
    rows = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    aux = [r["aux_loss"] for r in rows if "loss" in r]
    assert len(aux) == 8 and all(1.0 <= a < 2.0 for a in aux), f"aux losses logged: {aux}"


def test_measuring_the_cpu_peak_leaves_the_global_rng_alone():
    """estimate_mfu measures the CPU's matmul peak on first use; drawing its random matrices from
    torch's global RNG would shift every later dropout mask, and resumed runs would diverge."""
    state = torch.get_rng_state()
    M.measured_matmul_flops("cpu", "float32", n=64, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_train_py_explains_an_unknown_variant_in_one_line(tmp_path):
    make_dataset(tmp_path / "data")
    proc = subprocess.run([sys.executable, "train.py", "--device=cpu", f"--data_dir={tmp_path / 'data'}",
                           f"--out_dir={tmp_path / 'out'}", "--pos_emb=rotary"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "Traceback" not in err, proc.stderr
    assert err == "error: pos_emb must be one of ('learned', 'rope'), not 'rotary'", err


# -----------------------------------------------------------------------------
# chat: template, loss mask, REPL, web server


if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
needs_bpe = pytest.mark.skipif(not os.environ.get("TIKTOKEN_CACHE_DIR"),
                               reason="GPT-2 BPE files absent: set TIKTOKEN_CACHE_DIR")

CONVERSATIONS = [  # hand-written: a system prompt, several turns, non-ASCII text
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello! Über 🐍"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": " 6 "}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Green."}],
]
MALFORMED = [  # each skipped for the reason given
    ('{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}',
     "unknown role 'tool'"),
    ('{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}', "missing role"),
    ('{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}',
     "empty content"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ('{"text": "not a conversation"}', "no messages list"),
    ("this line is not JSON", "no messages list"),
]
# A character vocabulary that can write the template: printable ASCII, then end-of-text.
ASCII = [chr(i) for i in range(32, 127)] + ["\n"]


def write_jsonl(path, conversations, extra_lines=()):
    lines = [json.dumps({"messages": c}, ensure_ascii=False) for c in conversations] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def conversation_counts(meta):
    return meta["train_conversations"], meta["val_conversations"], meta["skipped_conversations"]


def char_tokenizer():
    return prepare.load_tokenizer({"tokenizer": "char", "chars": ASCII, "eot_token": len(ASCII)})


def tiny_engine(seed=0, block_size=64, tok=None, **settings):
    tok = tok or char_tokenizer()
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32))
    defaults = dict(temperature=0.0, top_k=None, top_p=None, max_new_tokens=40) | settings
    return chat.Engine(model, tok, defaults, name="tiny")


# ----------------------------------------------------------------------------- template and data

@needs_bpe
def test_chat_template_round_trips_and_mask_covers_exactly_assistant_tokens_and_end_of_turn(tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", CONVERSATIONS)
    result = run_script("prepare.py", f"--input={src}", "--format=chat", f"--out_dir={tmp_path}", "--name=c",
                     "--val_fraction=0.34")
    assert result.returncode == 0, result.stderr
    meta = prepare.read_meta(tmp_path / "c")
    tok = prepare.load_tokenizer(meta)
    assert meta["chat_template"] == chat.TEMPLATE, meta
    assert conversation_counts(meta) == (2, 1, 0), meta
    ids = {s: np.fromfile(tmp_path / "c" / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")}
    mask = {s: np.fromfile(tmp_path / "c" / f"{s}_mask.bin", dtype=np.uint8) for s in ("train", "val")}
    eot = "<|endoftext|>"
    assert tok.decode(ids["train"].tolist()) == (
        f"System: Be brief.{eot}User: Hi there{eot}Assistant: Hello! Über 🐍{eot}"
        f"User: 2+2?{eot}Assistant: 4{eot}User: and 3+3?{eot}Assistant: 6{eot}")
    assert tok.decode(ids["val"].tolist()) == f"User: Name a colour.{eot}Assistant: Green.{eot}"
    # the mask picks out exactly each reply's tokens (with its leading space) and its end-of-turn
    assert tok.decode(ids["train"][mask["train"] == 1].tolist()) == f" Hello! Über 🐍{eot} 4{eot} 6{eot}"
    assert tok.decode(ids["val"][mask["val"] == 1].tolist()) == f" Green.{eot}"
    for s in ("train", "val"):
        assert len(mask[s]) == len(ids[s]) == meta[f"{s}_tokens"], (s, len(mask[s]), len(ids[s]))
        assert meta[f"{s}_reply_tokens"] == int(mask[s].sum()), meta
    # and the template used in generation is the same one: a prompt is the history plus a header
    engine = chat.Engine(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=64)), tok,
                         dict(temperature=0.0, max_new_tokens=8))
    prompt, kept = engine.chat_prompt(CONVERSATIONS[2][:1], 8)
    assert tok.decode(prompt) == f"{eot}User: Name a colour.{eot}Assistant:" and kept == CONVERSATIONS[2][:1]
    assert prompt[1:] + tok.encode(" Green.") + [tok.eot_token] == ids["val"].tolist()


def test_prepare_chat_skips_and_counts_malformed_conversations(tmp_path):
    src = write_jsonl(tmp_path / "mixed.jsonl", CONVERSATIONS, [line for line, _ in MALFORMED])
    result = run_script("prepare.py", f"--input={src}", "--format=chat", "--tokenizer=char",
                     f"--out_dir={tmp_path}", "--name=m")
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stdout.splitlines() if "skipped" in line)
    assert "3 usable conversations; skipped 6 of 9" in summary, summary
    for _, reason in MALFORMED:
        assert reason in summary, (reason, summary)
    meta = prepare.read_meta(tmp_path / "m")
    assert meta["skipped_conversations"] == 6 and meta["tokenizer"] == "char", meta
    tok = prepare.load_tokenizer(meta)
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
    class FakeSet:  # what datasets.load_dataset returns, as far as chat.py uses it
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
    meta = chat.prepare_chat(tmp_path / "u", hub=prepare.DATASETS["ultrachat"], tokenizer="char")
    assert sorted(set(loaded)) == [("HuggingFaceH4/ultrachat_200k", "test_sft"),
                                   ("HuggingFaceH4/ultrachat_200k", "train_sft")], loaded
    assert conversation_counts(meta) == (2, 1, 1), meta
    assert meta["source"] == "hf:HuggingFaceH4/ultrachat_200k", meta


def test_char_vocabulary_without_the_markers_cannot_chat_and_says_so():
    tok = prepare.load_tokenizer({"tokenizer": "char", "chars": list("abc "), "eot_token": 4})
    with pytest.raises(chat.UserError, match="chat template.*GPT-2 BPE"):
        chat.check_tokenizer(tok)
    engine = tiny_engine(tok=tok)
    with pytest.raises(chat.UserError, match="chat template.*GPT-2 BPE"):  # sample.py --chat: one line
        chat.chat_in_terminal(engine)
    assert engine.info()["chat"] is False
    with pytest.raises(ValueError, match="GPT-2 BPE"):
        engine.parse_request({"messages": [{"role": "user", "content": "abc"}]})
    assert engine.parse_request({"prompt": "abc"})["ids"] == [0, 1, 2]  # story mode still works


# ----------------------------------------------------------------------------- fine-tuning

def test_fine_tuning_on_a_tiny_chat_set_lowers_the_assistant_token_loss(tmp_path):
    import train
    rng = np.random.default_rng(0)
    animals = ["cat", "dog", "cow", "hen", "fox", "owl"]
    convs = [[{"role": "user", "content": f"What does the {a} say?"},
              {"role": "assistant", "content": f"The {a} says {a[::-1]}."}] for a in rng.choice(animals, 300)]
    src = write_jsonl(tmp_path / "animals.jsonl", convs)
    chat.prepare_chat(tmp_path / "chat", paths=[src], tokenizer="char")
    # the batch function sets targets to -1 exactly where the mask is 0
    meta = prepare.read_meta(tmp_path / "chat")
    x, y = train.Split(tmp_path / "chat", "val", meta, 32, "cpu").batch(np.array([0, 5, 40]))
    mask = np.fromfile(tmp_path / "chat" / "val_mask.bin", dtype=np.uint8)
    expected = np.stack([mask[s + 1:s + 33] for s in (0, 5, 40)])  # (3, 32)
    assert ((y.numpy() != -1) == (expected == 1)).all(), (y, expected)
    # a base model, trained on every token of the same text (a copy without the mask) ...
    shutil.copytree(tmp_path / "chat", tmp_path / "text")
    del meta["loss_mask"]
    (tmp_path / "text" / "meta.json").write_text(json.dumps(meta))
    tiny = dict(train.DEFAULTS, device="cpu", compile=False, n_layer=2, n_head=2, n_embd=32, block_size=32,
                batch_size=16, gradient_accumulation_steps=1, eval_iters=4, log_interval=10,
                learning_rate=1e-2, warmup_iters=5, min_lr=1e-3)
    train.train(dict(tiny, out_dir=str(tmp_path / "base"), data_dir=str(tmp_path / "text"), max_iters=10,
                     eval_interval=10, lr_decay_iters=10))
    # ... then fine-tuned from its out_dir on the replies only: their val loss is what evals report
    evals = train.train(dict(tiny, out_dir=str(tmp_path / "chat-out"), data_dir=str(tmp_path / "chat"),
                             init_from=str(tmp_path / "base"), max_iters=20, eval_interval=20,
                             lr_decay_iters=20))["evals"]
    before, after = evals[0]["val"], evals[-1]["val"]
    assert evals[0]["iter"] == 0, evals
    assert after < 0.6 * before, f"assistant-token val loss {before:.3f} -> {after:.3f}"


# ----------------------------------------------------------------------------- generation and REPL

def test_chat_prompt_drops_oldest_turns_but_keeps_the_system_message():
    engine = tiny_engine(block_size=64)
    system = {"role": "system", "content": "Be kind."}
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i}"}
             for i in range(8)]
    ids, kept = engine.chat_prompt([system] + turns, max_new_tokens=16)
    assert len(ids) <= 64 - 16, len(ids)
    assert kept[0] == system and kept[-1] == turns[-1] and len(kept) < 9, kept
    assert engine.tok.decode(ids).endswith("Assistant:")
    ids, kept = engine.chat_prompt(turns[:1], max_new_tokens=16)
    assert kept == turns[:1] and len(ids) == 1 + len("User: message number 0") + 1 + len("Assistant:")
    job = engine.parse_request({"prompt": "0123456789" * 10})  # a story prompt keeps its last 64 tokens
    assert job["trimmed"] == 36 and engine.tok.decode(job["ids"]) == ("0123456789" * 10)[36:], job


def test_settings_out_of_range_or_of_the_wrong_type_are_refused_with_the_field_named():
    engine = tiny_engine()
    bad = [({"temperature": 2.5}, "temperature must be from 0.0 to 2.0"),
           ({"temperature": "hot"}, "temperature must be a number"),
           ({"top_k": 1.5}, "top_k must be an integer"), ({"top_k": True}, "top_k must be an integer"),
           ({"top_k": -1}, "top_k must be from 0"), ({"top_p": 0}, "top_p must be above 0.0"),
           ({"top_p": float("nan")}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens must be from 1"),
           ({"max_new_tokens": 10**9}, "max_new_tokens"), ({"stream": "yes"}, "stream must be"),
           ({"colour": 1}, "unknown field 'colour'")]
    for fields, message in bad:
        with pytest.raises(ValueError, match=message):
            engine.parse_request({"prompt": "hi", **fields})
    with pytest.raises(ValueError, match="either a prompt"):
        engine.parse_request({"prompt": "hi", "messages": []})
    with pytest.raises(ValueError, match=r"messages\[1\]: unknown role 'robot'"):
        engine.parse_request({"messages": [{"role": "user", "content": "a"},
                                           {"role": "robot", "content": "b"}]})
    job = engine.parse_request({"prompt": "hi", "top_k": None, "top_p": 1, "max_new_tokens": 5.0})
    assert job["settings"] == dict(temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=5, seed=None), job


def test_repl_streams_replies_keeps_history_resets_and_quits(monkeypatch, capsys):
    engine = tiny_engine(block_size=64, max_new_tokens=12)
    seen = []
    real_prompt = chat.Engine.chat_prompt

    def spy(self, messages, max_new_tokens):
        seen.append([m["content"] for m in messages])
        return real_prompt(self, messages, max_new_tokens)

    monkeypatch.setattr(chat.Engine, "chat_prompt", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you\n/reset\nagain\n/quit\nnever read\n"))
    chat.chat_in_terminal(engine)
    out = capsys.readouterr().out
    assert out.count("bot> ") == 3 and "(a new conversation)" in out, out
    assert seen[0] == ["hello"] and seen[1][0] == "hello" and seen[1][-1] == "how are you", seen
    assert seen[2] == ["again"] and len(seen) == 3, seen  # /reset emptied the history; /quit stopped


def test_repl_says_once_when_the_oldest_turns_no_longer_fit(monkeypatch, capsys):
    engine = tiny_engine(block_size=32, max_new_tokens=8)
    lines = "".join(f"question {i} is rather long\n" for i in range(4))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))  # then Ctrl-D (end of input) quits
    chat.chat_in_terminal(engine)
    out = capsys.readouterr().out
    assert out.count("the oldest turns are left out") == 1 and out.count("bot> ") == 4, out


def save_char_checkpoint(out_dir, chars=ASCII, seed=0):
    """out_dir/ckpt.pt as train.py writes it: a tiny random model on a character vocabulary."""
    meta = {"name": "tiny", "tokenizer": "char", "chars": chars, "eot_token": len(chars),
            "vocab_size": len(chars) + 1, "dtype": "uint16"}
    torch.manual_seed(seed)
    config = GPTConfig(block_size=64, vocab_size=len(chars) + 1, n_layer=2, n_head=2, n_embd=32)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "ckpt.pt", {"model_args": asdict(config), "model": GPT(config).state_dict(),
                                          "meta": meta, "iter_num": 0})
    return out_dir


def test_sample_chat_runs_the_repl_through_stdin(tmp_path):
    out = save_char_checkpoint(tmp_path / "out")
    result = run_script("sample.py", f"--out_dir={out}", "--chat", "--device=cpu", "--temperature=0",
                     "--max_new_tokens=10", input="hello\n/reset\nhi there\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("bot> ") == 2 and "(a new conversation)" in result.stdout, result.stdout


def test_sample_serve_listens_on_localhost_by_default_and_stops_on_ctrl_c(tmp_path):
    import signal
    out = save_char_checkpoint(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "sample.py", f"--out_dir={out}", "--serve", "--port=0",
                             "--device=cpu", "--max_new_tokens=5"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        status, reply = post(("127.0.0.1", port), {"prompt": "Hi", "temperature": 0})
        assert status == 200 and reply["tokens"] <= 5, reply
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.stdout.close()


# ----------------------------------------------------------------------------- the web server

@pytest.fixture
def server():
    """The server on a free port in a thread, for a tiny random char model; yields (host, port, engine)."""
    engine = tiny_engine(seed=3, block_size=64, max_new_tokens=40)
    httpd = chat.make_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.server_address[:2], engine
    httpd.shutdown()
    httpd.server_close()


def post(address, body, headers=None, raw=None):
    """POST /generate; returns (status, parsed JSON or a list of server-sent events)."""
    conn = http.client.HTTPConnection(*address, timeout=60)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", "/generate", data, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read().decode()
    conn.close()
    if response.getheader("Content-Type") == "text/event-stream":
        return response.status, [json.loads(e[len("data: "):]) for e in payload.split("\n\n") if e]
    return response.status, json.loads(payload)


def test_server_page_info_and_json_endpoint_generate(server):
    address, engine = server
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", "/")
    page = conn.getresponse()
    html = page.read().decode()
    assert page.status == 200 and "<textarea" in html and "/generate" in html, page.status
    assert "http://" not in html and "https://" not in html, "the page must not load anything from outside"
    status, info = post(address, {"prompt": "Hello", "max_new_tokens": 10, "temperature": 0})
    expected = engine.tok.decode(engine.model.generate(
        torch.tensor([engine.tok.encode("Hello")]), 10, temperature=0)[0, 5:].tolist())
    assert status == 200 and info["text"] == expected.split("<|endoftext|>")[0], (info, expected)
    assert info["prompt_tokens"] == 5 and info["stop"] in ("end_of_text", "max_new_tokens"), info
    status, reply = post(address, {"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 5})
    assert status == 200 and isinstance(reply["text"], str) and reply["tokens"] <= 5, reply


def test_server_streams_several_chunks_then_a_done_event(server):
    address, _ = server
    status, events = post(address, {"prompt": "Once", "max_new_tokens": 30, "temperature": 1.0,
                                    "seed": 7, "stream": True})
    texts = [e["text"] for e in events if "text" in e]
    assert status == 200 and len(texts) >= 3, events
    assert events[-1]["done"] and events[-1]["tokens"] >= len(texts), events[-1]
    status, whole = post(address, {"prompt": "Once", "max_new_tokens": 30, "temperature": 1.0, "seed": 7})
    assert whole["text"] == "".join(texts), (whole["text"], texts)


def test_server_refuses_bad_parameters_with_400_and_a_message(server):
    address, _ = server
    for body, message in [({"prompt": "a", "temperature": 3}, "temperature must be from 0.0 to 2.0"),
                          ({"prompt": "a", "top_k": "ten"}, "top_k must be an integer"),
                          ({"prompt": 5}, "prompt must be a string"), ([1, 2], "JSON object"),
                          ({"messages": [{"role": "user"}]}, "empty content")]:
        status, reply = post(address, body)
        assert status == 400 and message in reply["error"], (body, status, reply)
    status, reply = post(address, None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"], reply
    status, reply = post(address, {"prompt": "a"}, headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in reply["error"], reply
    status, reply = post(address, {"prompt": "a"}, headers={"Host": f"rebound.example:{address[1]}"})
    assert status == 403 and "localhost" in reply["error"], reply
    status, reply = post(address, {"prompt": "a", "max_new_tokens": 3})
    assert status == 200, "the server must keep serving after bad requests"


def test_server_refuses_an_oversized_request_with_413(server):
    address, _ = server
    status, reply = post(address, {"prompt": "x" * (chat.MAX_BODY + 1)})
    assert status == 413 and "limit is 65,536" in reply["error"], (status, reply)


def test_two_concurrent_requests_match_the_same_requests_made_one_at_a_time(server):
    address, engine = server
    requests = [{"prompt": "The cat", "temperature": 1.0, "seed": 1, "max_new_tokens": 120, "stream": True},
                {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.0,
                 "max_new_tokens": 120, "stream": True}]
    alone = [post(address, r) for r in requests]
    together = [None, None]

    def call(i):
        together[i] = post(address, requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    with engine.lock:  # both requests arrive and wait while the model is busy, then race for it
        for t in threads:
            t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(60)
    assert together == alone, (together, alone)
    assert all(events[-1].get("done") for _, events in alone), alone


def test_a_client_that_goes_away_stops_generation_and_frees_the_model(server, capsys):
    address, _ = server
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("POST", "/generate", json.dumps({"prompt": "a", "max_new_tokens": 2048, "stream": True,
                                                 "temperature": 1.0}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.fp.readline().startswith(b"data: "), "no first event"
    response.close()
    conn.close()  # as the page's stop button does: the connection goes away mid-stream
    log, deadline = "", time.time() + 20
    while "client went away" not in log and time.time() < deadline:
        time.sleep(0.05)
        log += capsys.readouterr().err
    stopped = int(log.split("stopped after ")[1].split()[0])
    assert stopped < 2048, f"generation ran on to {stopped} tokens"
    status, reply = post(address, {"prompt": "a", "max_new_tokens": 4})
    assert status == 200, reply


# ----------------------------------------------------------------------------- a real browser

def browser():
    """A headless Chromium driven by selenium, or skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver_path))


def test_browser_page_streams_text_stops_on_request_and_chats(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    (host, port), _ = server
    driver = browser()
    js = driver.execute_script
    try:
        driver.get(f"http://{host}:{port}/")
        WebDriverWait(driver, 20).until(lambda d: "tiny" in d.find_element(By.ID, "model").text)
        js("document.getElementById('max_new_tokens').value = 1000")  # greedy: runs until stopped
        driver.find_element(By.ID, "prompt").send_keys("Once upon a time")
        driver.find_element(By.ID, "generate").click()
        # text appears while the reply is still streaming (the stop button is live) ...
        WebDriverWait(driver, 30, poll_frequency=0.02).until(lambda d: js(
            "return document.querySelector('#story-out .gen').textContent.length > 0"
            " && !document.querySelector('.stop').disabled"))
        partial = js("return document.querySelector('#story-out .gen').textContent")
        driver.find_element(By.CSS_SELECTOR, "#story .stop").click()
        # ... and stop ends it early: the status says so and Generate is back
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "status").text == "stopped")
        final = js("return document.querySelector('#story-out .gen').textContent")
        assert final.startswith(partial) and len(final) < 1000, (partial, len(final))
        assert driver.find_element(By.ID, "generate").is_enabled()
        # chat mode: a message and its streamed reply as bubbles; the status reports the finished turn
        js("document.getElementById('max_new_tokens').value = 20")
        driver.find_element(By.ID, "tab-chat").click()
        driver.find_element(By.ID, "message").send_keys("Hello there", Keys.ENTER)
        WebDriverWait(driver, 30).until(lambda d: "tokens in" in d.find_element(By.ID, "status").text)
        bubbles = [(e.get_attribute("class"), e.text) for e in driver.find_elements(By.CSS_SELECTOR, ".msg")]
        assert bubbles[0] == ("msg user", "Hello there") and bubbles[1][0] == "msg assistant", bubbles
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
