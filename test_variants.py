"""Tests for the model variants: RoPE, SwiGLU, RMSNorm, Mixture of Experts, gradient checkpointing.

`python -m pytest -q test_variants.py`. CPU, tiny models, a second or two each.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import model as M
from model import GPT, GPTConfig, KVCache

REPO = Path(__file__).resolve().parent

VARIANTS = {
    "rope": dict(pos_emb="rope"),
    "swiglu": dict(mlp="swiglu"),
    "rmsnorm": dict(norm="rmsnorm"),
    "moe": dict(n_expert=4, n_expert_active=2),
    "all": dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", n_expert=4, n_expert_active=2),
}
variants = pytest.mark.parametrize("variant", list(VARIANTS))


def tiny_model(variant=None, seed=0, **overrides):
    cfg = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**cfg, **VARIANTS.get(variant, {}), **overrides})).eval()


def max_diff(a, b):
    return (a - b).abs().max().item()


# -----------------------------------------------------------------------------
# Every variant: the claims the default model's tests make


@variants
def test_later_tokens_never_change_earlier_logits(variant):
    model = tiny_model(variant)
    idx = torch.randint(0, 64, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 64
    logits_a, _ = model(idx, idx)
    logits_b, _ = model(changed, changed)
    before, after = max_diff(logits_a[:, :10], logits_b[:, :10]), max_diff(logits_a[:, 10:], logits_b[:, 10:])
    assert before == 0.0, f"{variant}: earlier logits moved by {before}"
    assert after > 1e-3, f"{variant}: later logits should change, moved only {after}"


@variants
def test_kv_cache_prefill_then_single_steps_equals_one_forward(variant):
    model = tiny_model(variant)
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
    model = tiny_model(variant)
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
    model = tiny_model(variant).train()
    idx = torch.randint(0, 64, (4, 17))
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    for _ in range(60):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    _, final = model(idx[:, :-1], idx[:, 1:])
    assert final.item() < 0.1, f"{variant}: loss {final.item():.3f} after 60 steps on one batch"


@variants
def test_variant_runs_under_bf16_autocast_close_to_float32(variant):
    model = tiny_model(variant)
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
    default, rope = tiny_model(), tiny_model("rope")
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
    dense, moe = tiny_model(mlp=mlp), tiny_model(mlp=mlp, n_expert=1, n_expert_active=1)
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
    model = tiny_model("moe", aux_loss_coef=0.25)
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
    model = tiny_model("moe").train()
    with torch.no_grad():  # the router never picks experts 2 and 3
        for block in model.transformer.h:
            block.mlp.router.weight.zero_()
    model(torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16)))[1].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient (DDP would fail): {missing}"


def test_flops_per_token_count_only_the_active_experts():
    dense = tiny_model()
    moe = tiny_model("moe")
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
    plain = gradients(tiny_model(variant, dropout=0.1).train(), idx)
    recomputed = gradients(tiny_model(variant, dropout=0.1, grad_checkpoint=True).train(), idx)
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
    plain = saved_activation_bytes(tiny_model(**kw).train(), idx)
    recomputed = saved_activation_bytes(tiny_model(grad_checkpoint=True, **kw).train(), idx)
    # checkpointing keeps each block's input (B, T, C) in float32; a block keeps ~10x that otherwise
    assert recomputed < plain / 4, f"saved {recomputed:,} bytes with checkpointing vs {plain:,} without"
    assert recomputed >= 4 * 4 * 64 * 64 * 4, f"the 4 block inputs alone are 262,144 bytes: {recomputed:,}"


def test_grad_checkpointing_is_off_in_eval_mode_and_under_no_grad(monkeypatch):
    calls = []
    monkeypatch.setattr(M, "checkpoint", lambda *a, **k: calls.append(1) or a[0](*a[1:]))
    model = tiny_model(grad_checkpoint=True)
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
    model = tiny_model(**{option: value})
    with pytest.raises(ValueError) as info:
        model.save_pretrained(tmp_path / "hf")
    message = str(info.value)
    assert message == f"save_pretrained: {option}={value!r} has no place in GPT-2's Hugging Face format " \
                      f"(it needs {option}={getattr(GPTConfig(), option)!r})", message
    assert not (tmp_path / "hf").exists()


# -----------------------------------------------------------------------------
# train.py: variants train, checkpoint and resume


def make_char_dataset(data_dir):
    """A char-level dataset in prepare.py's format, from a few repeated words."""
    words = ["the cat", "a dog", "sat on", "ran to", "the mat", "a log", "and then", "slept."]
    text = " ".join(np.random.default_rng(0).choice(words, size=3000))
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    data_dir.mkdir(parents=True)
    ids[:n].tofile(data_dir / "train.bin")
    ids[n:].tofile(data_dir / "val.bin")
    meta = {"name": data_dir.name, "tokenizer": "char", "vocab_size": len(chars), "eot_token": None,
            "dtype": "uint16", "train_tokens": n, "val_tokens": len(ids) - n, "source": "test",
            "command": "test", "chars": chars}
    (data_dir / "meta.json").write_text(json.dumps(meta))


def run_train(data_dir, out_dir, *flags):
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
    make_char_dataset(tmp_path / "data")
    whole = run_train(tmp_path / "data", tmp_path / "a", *flags)
    run_train(tmp_path / "data", tmp_path / "b", *flags, "--max_iters=4")
    ckpt = M.load_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert {k: ckpt["model_args"][k] for k in ("pos_emb", "mlp", "norm", "n_expert")} == \
        dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", n_expert=4), ckpt["model_args"]
    resumed = run_train(tmp_path / "data", tmp_path / "b", *flags, "--init_from=resume")
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
    make_char_dataset(tmp_path / "data")
    proc = subprocess.run([sys.executable, "train.py", "--device=cpu", f"--data_dir={tmp_path / 'data'}",
                           f"--out_dir={tmp_path / 'out'}", "--pos_emb=rotary"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "Traceback" not in err, proc.stderr
    assert err == "error: pos_emb must be one of ('learned', 'rope'), not 'rotary'", err
