"""The test suite: `python -m pytest -q test_model.py`. CPU, tiny models, seconds.

Each test is named after the claim it checks. Tests that need the GPT-2 BPE files or the sample
corpora in ../shared skip with a reason when they are absent; tests that need transformers or CUDA
skip when those are missing.
"""
import io
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import model as M
from model import GPT, GPTConfig

REPO = Path(__file__).resolve().parent
SHARED = REPO.parent / "shared"
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
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


def test_forward_without_targets_returns_only_the_last_position():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 16))
    last, loss = model(idx)
    full, _ = model(idx, idx)
    assert loss is None and last.shape == (2, 1, 64)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


def test_two_layer_model_overfits_one_batch():
    model = tiny_model().train()
    idx = torch.randint(0, 64, (4, 16))
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    for _ in range(100):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
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
