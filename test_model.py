"""Tests of model.py, in the order it defines things: the config; attention, RoPE, QK-norm; the
feed-forward layers (SwiGLU, RMSNorm, Mixture of Experts); sampling from logits; the GPT's forward
pass, gradient checkpointing, its KV cache and generation. Every variant in conftest.VARIANTS (all
at once too) makes the default model's claims too.
"""
import math

import pytest
import torch

import model as M
from conftest import VARIANTS, greedy_without_cache, needs_cuda, tiny_model, tiny_variant, window_starts
from model import GPT, GPTConfig, KVCache
from optim import configure_optimizers

variants = pytest.mark.parametrize("variant", list(VARIANTS))


def max_diff(a, b):
    return (a - b).abs().max().item()


# -----------------------------------------------------------------------------
# GPTConfig


def test_unknown_variant_names_are_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"pos_emb must be one of \('learned', 'rope'\), not 'rotary'"):
        GPTConfig(pos_emb="rotary")
    with pytest.raises(ValueError, match="n_expert_active must be 1..n_expert=4, not 5"):
        GPTConfig(n_expert=4, n_expert_active=5)
    with pytest.raises(ValueError, match="head size n_embd // n_head = 3 must be even"):
        GPTConfig(n_embd=6, n_head=2, pos_emb="rope")


# -----------------------------------------------------------------------------
# Attention


def use_explicit_attention(model):
    for module in model.modules():
        if isinstance(module, M.CausalSelfAttention):
            module.attend = M.explicit_attention


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


# -----------------------------------------------------------------------------
# QK-norm


def record_attention_inputs(model):
    """Wrap every layer's attention kernel; return a list that fills with (q, k) per call."""
    seen = []
    for module in model.modules():
        if isinstance(module, M.CausalSelfAttention):
            module.attend = lambda q, k, *rest, attend=module.attend: seen.append((q, k)) or attend(q, k, *rest)
    return seen


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_qk_norm_gives_every_query_and_key_row_unit_rms_and_the_default_does_not(pos_emb):
    idx = torch.randint(0, 64, (2, 16))
    for qk_norm in (True, False):
        model = tiny_variant(qk_norm=qk_norm, pos_emb=pos_emb)
        seen = record_attention_inputs(model)
        model(idx)
        assert len(seen) == 2
        rms = torch.stack([x.pow(2).mean(dim=-1).sqrt() for qk in seen for x in qk])  # (4, B, nh, T)
        if qk_norm:  # the gains start at 1; RoPE rotates after the norm, keeping the length. Not
            # exactly 1: eps=1e-5 joins mean squares of ~0.01 (q and k are small at init)
            assert max_diff(rms, torch.ones_like(rms)) < 5e-3, rms
        else:
            assert max_diff(rms, torch.ones_like(rms)) > 0.5, "without QK-norm, rows have any length"


def test_qk_norm_gains_are_learned_per_head_channel_and_scale_the_rows():
    model = tiny_variant(qk_norm=True)
    attn = model.transformer.h[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (16,)  # head size 32 / 2
    with torch.no_grad():
        attn.q_norm.weight.fill_(3.0)
    seen = record_attention_inputs(model)
    model(torch.randint(0, 64, (1, 8)))
    q_rms, k_rms = (x.pow(2).mean(dim=-1).sqrt() for x in seen[0])
    assert max_diff(q_rms, torch.full_like(q_rms, 3.0)) < 2e-2 and max_diff(k_rms, torch.ones_like(k_rms)) < 5e-3


# -----------------------------------------------------------------------------
# Feed-forward layers: RMSNorm, SwiGLU


def test_rmsnorm_scales_each_vector_to_unit_root_mean_square():
    norm = M.make_norm(GPTConfig(n_embd=32, n_head=2, norm="rmsnorm"))
    x = torch.randn(4, 5, 32) * 3 + 1
    rms = norm(x).pow(2).mean(dim=-1).sqrt()
    assert max_diff(rms, torch.ones_like(rms)) < 1e-3 and not hasattr(norm, "bias")


@pytest.mark.parametrize("n_embd,hidden", [(384, 1024), (512, 1408), (768, 2048), (32, 128)])
def test_swiglu_hidden_width_is_8_thirds_rounded_up_to_64(n_embd, hidden):
    mlp = M.SwiGLU(GPTConfig(n_embd=n_embd, n_head=1))
    assert mlp.c_proj.in_features == hidden and mlp.c_fc.out_features == 2 * hidden, mlp


def test_swiglu_computes_silu_gate_times_up_projection():
    mlp = M.SwiGLU(GPTConfig(n_embd=32, n_head=2, bias=False))
    x = torch.randn(2, 3, 32)
    gate_w, up_w = mlp.c_fc.weight.chunk(2, dim=0)
    expected = (torch.nn.functional.silu(x @ gate_w.T) * (x @ up_w.T)) @ mlp.c_proj.weight.T
    assert max_diff(mlp(x), expected) < 1e-5


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
    moe = M.MoE(GPTConfig(n_embd=32, n_head=2, n_expert=4, n_expert_active=2))
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
    moe = M.MoE(GPTConfig(n_embd=32, n_head=2, n_expert=4, n_expert_active=2))
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
# Sampling: filter_logits and sample_logits


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


def test_exponential_race_draws_what_multinomial_draws():
    logits = torch.randn(64, 300)
    torch.manual_seed(3)
    want = torch.multinomial(logits.softmax(dim=-1), num_samples=1)[:, 0]
    torch.manual_seed(3)
    got = M.sample_logits(logits, temperature=1.0)
    assert torch.equal(got, want), (got, want)


def test_top_k_sampling_draws_only_the_k_best_in_softmax_proportions():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0, 1.5, 0.5]]).repeat(20000, 1)  # 20,000 draws at once
    drawn = M.sample_logits(logits, temperature=1.0, top_k=3)
    counts = torch.bincount(drawn, minlength=6).float() / len(drawn)
    want = torch.zeros(6)
    want[[1, 4, 2]] = torch.tensor([2.0, 1.5, 1.0]).softmax(dim=0)
    assert torch.allclose(counts, want, atol=0.015), f"drawn {counts.tolist()}, expected {want.tolist()}"
    # with top_p as well: of the 3 best (0.51, 0.31, 0.19), 0.8 of the mass needs the first two
    drawn = M.sample_logits(logits, temperature=1.0, top_k=3, top_p=0.8)
    assert set(drawn.tolist()) == {1, 4}, set(drawn.tolist())


def test_logits_already_cut_to_the_top_k_draw_what_the_full_logits_draw():
    logits = torch.randn(8, 300)
    top, ids = logits.topk(20)  # (8, 20) each, as GPT.top_logits may give them
    for temperature, top_p in ((0.0, None), (0.7, None), (1.0, 0.9)):
        torch.manual_seed(5)
        want = M.sample_logits(logits, temperature, top_k=20, top_p=top_p)
        torch.manual_seed(5)
        got = M.sample_logits(top, temperature, top_k=20, top_p=top_p, ids=ids)
        assert torch.equal(got, want), (temperature, got, want)
    assert not torch.equal(want, M.sample_logits(top, 1.0, top_k=20, top_p=0.9)), "ids were not used"


def test_a_plain_gpt_gives_sampling_every_logit():
    model = tiny_model()
    x = torch.randn(2, model.config.n_embd)
    with torch.no_grad():
        logits, ids = model.top_logits(x, top_k=5)
        assert ids is None and torch.equal(logits, model.lm_head(x)), logits.shape


# -----------------------------------------------------------------------------
# The GPT: parameters and the forward pass


def test_gpt2_124m_config_has_gpt2s_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig())
    # GPT-2 small: 124,439,808 parameters, 786,432 of them in the position table
    assert model.get_num_params(non_embedding=False) == 124_439_808
    assert model.get_num_params() == 124_439_808 - 1024 * 768


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
    [opt] = configure_optimizers(model, optimizer="adamw", learning_rate=1e-2, muon_lr=0.0, weight_decay=0.0,
                                 betas=(0.9, 0.95), device_type="cpu")
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss


def test_two_layer_model_overfits_one_batch():
    loss = fit_one_batch(tiny_model(), torch.randint(0, 64, (4, 16)), 100)
    assert loss.item() < 0.1, f"loss after 100 steps on one batch is {loss.item():.3f}"


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


def test_crop_block_size_shrinks_the_context():
    model = tiny_model()
    model.crop_block_size(8)
    logits, _ = model(torch.randint(0, 64, (1, 8)))
    assert model.transformer.wpe.weight.shape == (8, 32) and logits.shape == (1, 1, 64)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.randint(0, 64, (1, 9)))


# -----------------------------------------------------------------------------
# The GPT: gradient checkpointing


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
# The GPT: KV cache and generation


def record_decoding_logits(monkeypatch):
    """Make generation greedy and record the logits it decides from at each step."""
    seen = []

    def greedy(logits, temperature=1.0, top_k=None, top_p=None, ids=None):
        assert ids is None  # generated without top_k: every logit
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
    for step, (cached, start) in enumerate(zip(seen, window_starts(5, 40, 16))):
        full, _ = model(out[:, start:5 + step])  # what the contract's window holds, without a cache
        err = (cached - full[:, -1]).abs().max().item()
        assert err < 1e-4, f"step {step}: cached logits differ from the full forward by {err}"


def test_window_sees_everything_within_block_size_then_restarts_at_its_last_half(monkeypatch):
    model = tiny_model()  # block_size 16
    prompt = torch.randint(0, 64, (1, 3))
    with torch.no_grad():  # within the block: the plain decode over the whole sequence, no window
        plain = prompt
        for _ in range(13):
            plain = torch.cat([plain, model(plain)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    prefills = []  # the lengths of the runs through the model, one token for a cached step
    real = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda idx, cache=None: prefills.append(idx.size(1))
                        or real(idx, cache))
    out = model.generate(prompt, 13 + 24, temperature=0)
    assert torch.equal(out[:, :16], plain), "within block_size, cached decoding must be the full decode"
    # the 3-token prompt, cached steps up to 16 tokens; then the last 8 afresh, and 8 cached steps
    assert prefills == [3] + [1] * 13 + ([8] + [1] * 8) * 2 + [8] + [1] * 4, prefills
    assert list(window_starts(3, 37, 16)) == [0] * 14 + [9] * 9 + [18] * 9 + [27] * 5


def test_kv_cache_prefill_then_single_steps_equals_one_forward():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 16))
    full, _ = model(idx, idx)
    cache = KVCache(model.config.n_layer, model.config.block_size)
    parts = [model.hidden_states(idx[:, :6], cache)]
    parts += [model.hidden_states(idx[:, t : t + 1], cache) for t in range(6, 16)]
    cached = model.lm_head(torch.cat(parts, dim=1))
    err = (cached - full).abs().max().item()
    assert cache.pos == 16 and err < 1e-4, f"pos {cache.pos}, max error {err}"


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


def test_greedy_generation_is_the_same_with_and_without_the_cache():
    model = tiny_model()
    prompt = torch.randint(0, 64, (3, 4))
    cached = model.generate(prompt, 30, temperature=0)
    slow = greedy_without_cache(model, prompt, 30)
    assert torch.equal(cached, slow), f"first difference at {(cached != slow).nonzero()[:1].tolist()}"


@variants
def test_greedy_generation_past_block_size_is_the_same_with_and_without_the_cache(variant):
    model = tiny_variant(variant)
    prompt = torch.randint(0, 64, (2, 5))
    cached = model.generate(prompt, 30, temperature=0)  # restarts the window 3 times past block_size 16
    slow = greedy_without_cache(model, prompt, 30)
    assert torch.equal(cached, slow), f"{variant}:\ncached {cached.tolist()}\nno cache {slow.tolist()}"


@pytest.mark.parametrize("block_size,prompt_len", [(1, 1), (5, 7), (16, 16), (16, 40)])
def test_any_block_size_and_prompt_length_decode_like_the_reference(block_size, prompt_len):
    model = tiny_model(block_size=block_size)  # prompts longer than the block keep its last tokens
    prompt = torch.randint(0, 64, (2, prompt_len))
    cached = model.generate(prompt, 20, temperature=0)
    assert torch.equal(cached, greedy_without_cache(model, prompt, 20)), cached.tolist()


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


# -----------------------------------------------------------------------------
# On a GPU (skipped on CPU-only machines)


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
    assert torch.equal(model.generate(prompt, 30, temperature=0), greedy_without_cache(model, prompt, 30))
