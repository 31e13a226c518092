"""Tests of optim.py: `python -m pytest -q test_optim.py`. CPU, tiny models, a few seconds.

Each test is named after the claim it checks.
"""
import copy
import io
import re

import pytest
import torch

import conftest
import optim
from configurator import UserError
from optim import Muon, configure_optimizers, load_optimizer_states, orthogonalise, set_lr_multiplier

# tiny models gain nothing from a second thread, and lose a lot when the cores are busy
# the weights Muon should own: attention and MLP matrices of every block, every expert's included
HIDDEN = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj"
                    r"|mlp\.experts\.\d+\.c_fc|mlp\.experts\.\d+\.c_proj)\.weight")


def tiny_model(seed=0, **overrides):
    return conftest.tiny_model(seed, **{"vocab_size": 32, **overrides}).train()


def make_optimizers(model, optimizer="muon", device_type="cpu", **overrides):
    kwargs = dict(optimizer=optimizer, learning_rate=1e-3, muon_lr=0.02, weight_decay=0.1, betas=(0.9, 0.95),
                  device_type=device_type)
    return configure_optimizers(model, **{**kwargs, **overrides})


def fixed_batch(seed, batch=8, block=16, vocab=32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (2, batch, block), generator=gen)  # x and y, (B, T) each


def train_steps(model, optimizers, batches):
    """One step of every optimizer per (x, y); returns the last loss."""
    for x, y in batches:
        _, loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return loss.item()


def ids(tensors):
    return sorted(id(t) for t in tensors)


def quintic_reference(s, steps=5):
    """The Newton-Schulz map on singular values s, one number at a time: s normalised by the
    Frobenius norm, then p(x) = a x + b x^3 + c x^5 applied `steps` times."""
    a, b, c = optim.NS_COEFFS
    x = s.double() / s.double().norm()
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


def with_spectrum(rows, cols, s, seed):
    """A random (rows, cols) matrix U diag(s) V^T with the given singular values; also U and V."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(s), generator=gen))  # (rows, k), orthonormal columns
    v, _ = torch.linalg.qr(torch.randn(cols, len(s), generator=gen))  # (cols, k)
    return u @ torch.diag(s) @ v.T, u, v


# -----------------------------------------------------------------------------
# Newton-Schulz and the Muon step


SHAPES = [(64, 64), (32, 96), (96, 32)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,low", [(torch.float32, 0.68), (torch.bfloat16, 0.66)])
def test_orthogonalise_moves_all_singular_values_into_the_quintics_band(shape, dtype, low):
    # singular values over two decades; the smallest is ~0.004 of the Frobenius norm, above the
    # ~0.0015 that 5 steps can lift into the band. Measured over 50 seeds and these shapes: float32
    # [0.682, 1.201], bfloat16 [0.671, 1.206]; 1.2024 is the quintic's maximum on [0, 1].
    k = min(shape)
    for seed in range(3):
        g, _, _ = with_spectrum(*shape, torch.logspace(0, -2, k), seed)
        s = torch.linalg.svdvals(orthogonalise(g, steps=5, dtype=dtype).float())  # (k,)
        assert low <= s.min() and s.max() <= 1.21, (s.min().item(), s.max().item())


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
@pytest.mark.parametrize("dtype,low", [(torch.float32, 0.68), (torch.bfloat16, 0.66)])
def test_orthogonalise_maps_a_gaussian_rectangle_into_the_band(shape, dtype, low):
    # a Gaussian (32, 96) matrix is well conditioned (singular values within ~3x of each other).
    # Measured over 50 seeds: float32 [0.682, 1.134], bfloat16 [0.668, 1.136]
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(orthogonalise(g, dtype=dtype).float())
    assert low <= s.min() and s.max() <= 1.21


def test_orthogonalise_cannot_lift_a_gaussian_squares_near_zero_singular_values():
    # the limit of 5 steps: a random square matrix has singular values near 0, and the quintic
    # multiplies small ones by at most a^5 ~ 485, so they stay well below the band
    g = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(orthogonalise(g))
    assert s.min() < 0.5 and s.max() <= 1.21
    # p is not monotone on [0, 1], so the two lists match once both are sorted
    expected = quintic_reference(torch.linalg.svdvals(g)).sort(descending=True).values
    assert torch.allclose(s.double(), expected, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_orthogonalise_applies_the_quintic_to_singular_values_and_keeps_the_vectors(shape):
    s = torch.logspace(0, -1, min(shape))
    g, u, v = with_spectrum(*shape, s, seed=1)
    o = orthogonalise(g)
    inner = u.T @ o @ v  # (k, k): diagonal iff o has g's singular vectors
    assert torch.allclose(inner.diagonal().double(), quintic_reference(s), atol=1e-4)
    assert (inner - torch.diag(inner.diagonal())).abs().max() < 1e-4
    assert o.dtype == g.dtype


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_step_matches_hand_computed_momentum_scale_and_decay(nesterov):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(12, 4))  # tall: scale sqrt(12 / 4)
    grads = torch.randn(2, 12, 4)
    lr, m, wd = 0.1, 0.9, 0.5
    opt = Muon([p], lr=lr, momentum=m, nesterov=nesterov, weight_decay=wd)
    expected, buf = p.detach().clone(), torch.zeros(12, 4)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
        buf = m * buf + grad
        g = grad + m * buf if nesterov else buf
        expected = expected * (1 - lr * wd) - lr * 3**0.5 * orthogonalise(g)
        assert torch.allclose(p.detach(), expected, atol=1e-6)


def direct_newton_schulz(g, steps=5):
    """The textbook loop, one matrix at a time in float64: the reference for the batched and Gram
    paths. Normalise by the Frobenius norm, then x <- a x + b (x x^T) x + c (x x^T)^2 x."""
    a, b, c = optim.NS_COEFFS
    x = g.double()
    tall = x.size(0) > x.size(1)
    x = (x.T if tall else x) / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(12, 32), (32, 12), (16, 16), (48, 16)])  # Gram, Gram, direct, Gram
def test_orthogonalise_matches_the_textbook_loop_in_float64_and_within_1e5_in_float32(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = direct_newton_schulz(g)
    assert torch.allclose(orthogonalise(g, dtype=torch.float64), expected, atol=1e-12, rtol=0)
    # float32: the Gram form squares the singular values, so it rounds more than the direct loop
    # does (measured on 128 x 512: 3e-5 at most where the direct loop is within 2e-6)
    assert torch.allclose(orthogonalise(g.float()).double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(12, 32), (32, 12), (16, 16)])
def test_orthogonalising_a_stack_equals_orthogonalising_each_matrix_alone(shape):
    stack = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    together = orthogonalise(stack)  # (5, rows, cols): batched products
    assert together.shape == stack.shape
    for g, o in zip(stack, together):
        assert torch.allclose(o, orthogonalise(g), atol=1e-6, rtol=0)


def reference_muon_step(params, grads, bufs, lr, m, wd):
    """Muon one matrix at a time, as first written (before same-shaped matrices were stacked):
    momentum, Nesterov, float64 Newton-Schulz, decay, step with the shape's scale."""
    for p, grad, buf in zip(params, grads, bufs):
        buf.mul_(m).add_(grad)
        update = direct_newton_schulz(grad + m * buf).float()
        p.mul_(1 - lr * wd).add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def test_muon_step_over_stacked_shapes_matches_the_one_matrix_at_a_time_reference():
    # 3 blocks' worth of tall, wide and square matrices, each shape several times, in mixed order
    gen = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (16, 16), (64, 16), (16, 64)] * 3
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]
    reference = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    opt = Muon(params, lr=0.05, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        grads = [torch.randn(*s, generator=gen) for s in shapes]
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        opt.step()
        reference_muon_step(reference, grads, bufs, lr=0.05, m=0.9, wd=0.1)
        for p, ref, buf in zip(params, reference, bufs):
            assert torch.allclose(p.detach(), ref, atol=1e-5, rtol=0), p.shape
            assert torch.equal(opt.state[p]["momentum_buffer"], buf), "momentum, elementwise: exact"


def test_muon_leaves_matrices_without_gradients_alone():
    a, b = torch.nn.Parameter(torch.ones(8, 4)), torch.nn.Parameter(torch.ones(8, 4))
    opt = Muon([a, b], lr=0.1)
    opt.step()  # no gradients at all (e.g. a frozen part): nothing to do
    b.grad = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    opt.step()
    assert torch.equal(a, torch.ones(8, 4)) and not torch.equal(b, torch.ones(8, 4))
    assert a not in opt.state


def test_muon_refuses_a_vector():
    with pytest.raises(UserError, match="weight matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(5))])


# -----------------------------------------------------------------------------
# Which parameters go where


def assert_each_parameter_once(model, optimizers):
    grouped = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert ids(grouped) == ids(model.parameters())  # parameters() lists a tied weight once
    assert len(set(map(id, grouped))) == len(grouped)


@pytest.mark.parametrize("overrides", [dict(bias=True), dict(bias=False),
                                       dict(n_expert=4, n_expert_active=2, bias=True),
                                       dict(n_expert=4, n_expert_active=2, bias=False, mlp="swiglu",
                                            norm="rmsnorm", pos_emb="rope")])
def test_muon_partition_puts_block_matrices_in_muon_and_the_rest_in_adamw(overrides):
    model = tiny_model(**overrides)
    muon, adamw = make_optimizers(model)
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    assert_each_parameter_once(model, [muon, adamw])
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = sorted(names[id(p)] for p in muon.param_groups[0]["params"])
    assert in_muon == sorted(n for n in names.values() if HIDDEN.fullmatch(n))
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert "transformer.wte.weight" in in_adamw  # = lm_head.weight, tied
    if model.config.n_expert:
        assert {"transformer.h.0.mlp.router.weight", "transformer.h.1.mlp.router.weight"} <= in_adamw


@pytest.mark.parametrize("n_expert,expected", [(0, 2 * 4), (4, 2 * 2 + 2 * 4 * 2)])
def test_muon_partition_counts_every_block_matrix(n_expert, expected):
    # dense: 2 layers x (c_attn, c_proj, c_fc, c_proj); MoE: 2 layers x (c_attn, c_proj) + 2 layers
    # x 4 experts x (c_fc, c_proj)
    muon, _ = make_optimizers(tiny_model(n_expert=n_expert))
    assert len(muon.param_groups[0]["params"]) == expected


def test_untied_output_layer_goes_to_adamw():
    model = tiny_model()
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    muon, adamw = make_optimizers(model)
    assert_each_parameter_once(model, [muon, adamw])
    assert id(model.lm_head.weight) in ids(p for g in adamw.param_groups for p in g["params"])


def reference_adamw(model, weight_decay, learning_rate, betas):
    """GPT.configure_optimizers as model.py had it before optim.py (commit 09a70e6), for CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)


@pytest.mark.parametrize("bias", [True, False])
def test_adamw_path_groups_and_steps_exactly_as_before_optim_py(bias):
    ours_model, theirs_model = tiny_model(bias=bias), tiny_model(bias=bias)
    [ours] = make_optimizers(ours_model, optimizer="adamw")
    theirs = reference_adamw(theirs_model, 0.1, 1e-3, (0.9, 0.95))
    names = {id(p): n for n, p in ours_model.named_parameters()}
    theirs_names = {id(p): n for n, p in theirs_model.named_parameters()}
    for a, b in zip(ours.param_groups, theirs.param_groups, strict=True):
        assert sorted(names[id(p)] for p in a["params"]) == sorted(theirs_names[id(p)] for p in b["params"])
        for key in ("weight_decay", "lr", "betas", "eps", "fused"):
            assert a[key] == b[key], key
    batches = [fixed_batch(i) for i in range(2)]
    train_steps(ours_model, [ours], batches)
    train_steps(theirs_model, [theirs], batches)
    for (name, a), b in zip(ours_model.named_parameters(), theirs_model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_muon_path_decays_adamw_matrices_only_and_muon_not_at_all():
    muon, adamw = make_optimizers(tiny_model(n_expert=4, n_expert_active=2))
    decayed, plain = adamw.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert muon.param_groups[0]["weight_decay"] == 0.0


def test_newton_schulz_dtype_follows_the_device():
    model = tiny_model()
    assert make_optimizers(model, device_type="cpu")[0].ns_dtype == torch.float32
    assert make_optimizers(model, device_type="cuda")[0].ns_dtype == torch.bfloat16


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="optimizer must be 'adamw' or 'muon', got 'sgd'"):
        make_optimizers(tiny_model(), optimizer="sgd")


# -----------------------------------------------------------------------------
# Learning rates


def test_set_lr_multiplier_scales_each_group_by_its_own_peak():
    optimizers = make_optimizers(tiny_model(), learning_rate=6e-4, muon_lr=0.02)
    set_lr_multiplier(optimizers, 0.25)
    lrs = [g["lr"] for opt in optimizers for g in opt.param_groups]
    assert lrs == [0.02 * 0.25, 6e-4 * 0.25, 6e-4 * 0.25]  # Muon first, then AdamW's two groups
    assert [g["peak_lr"] for opt in optimizers for g in opt.param_groups] == [0.02, 6e-4, 6e-4]


# -----------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_muon_memorises_a_batch_faster_than_adamw(seed):
    # 30 full-batch steps on one fixed random batch, AdamW at 1e-3 (the small-model rate of
    # config/train_shakespeare_char.py) for all of AdamW's parameters in both runs. Measured over
    # seeds 0-9: AdamW 2.62-2.69, Muon 2.37-2.41, Muon lower by 0.238-0.279.
    x, y = fixed_batch(100 + seed)
    losses = {}
    for name in ("adamw", "muon"):
        model = tiny_model(seed, bias=False)
        losses[name] = train_steps(model, make_optimizers(model, optimizer=name, weight_decay=0.0),
                                   [(x, y)] * 30)
    assert losses["muon"] < losses["adamw"] - 0.15, losses


def test_resume_from_saved_optimizer_states_continues_bit_for_bit():
    batches = [fixed_batch(i) for i in range(6)]
    model = tiny_model(n_expert=2, n_expert_active=1)
    optimizers = make_optimizers(model)
    train_steps(model, optimizers, batches[:3])
    buffer = io.BytesIO()  # as a checkpoint would: torch.save, then a safe load
    torch.save({"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers]}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)

    def resumed(load_state):
        fresh = tiny_model(seed=1, n_expert=2, n_expert_active=1)  # other weights, overwritten next
        fresh.load_state_dict(ckpt["model"])
        fresh_optimizers = make_optimizers(fresh)
        if load_state:
            load_optimizer_states(fresh_optimizers, ckpt["optimizers"])
        train_steps(fresh, fresh_optimizers, batches[3:])
        return fresh

    train_steps(model, optimizers, batches[3:])
    restored = resumed(load_state=True)
    for (name, a), b in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b), name
    # the control: without the momentum buffers and Adam moments the runs part
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight,
                           resumed(load_state=False).transformer.h[0].attn.c_attn.weight)


def test_load_optimizer_states_keeps_the_configured_peak_lr():
    model = tiny_model()
    saved = [o.state_dict() for o in make_optimizers(model, learning_rate=1e-3, muon_lr=0.02)]
    optimizers = make_optimizers(model, learning_rate=3e-4, muon_lr=0.01)
    load_optimizer_states(optimizers, saved)
    assert [g["peak_lr"] for opt in optimizers for g in opt.param_groups] == [0.01, 3e-4, 3e-4]


def test_load_optimizer_states_refuses_another_optimizers_state():
    model = tiny_model()
    saved = make_optimizers(model, optimizer="adamw")[0].state_dict()  # a single dict: the old format
    with pytest.raises(UserError, match="AdamW but this run uses Muon \\+ AdamW"):
        load_optimizer_states(make_optimizers(model, optimizer="muon"), saved)


def test_grad_scaler_skips_the_muon_and_adamw_steps_when_gradients_overflow():
    # a loss scaled by 2^127 has infinite gradients: the scaler must skip both optimizers, not let
    # Newton-Schulz turn inf into NaN weights, and halve its scale for the next try
    x, y = fixed_batch(0)
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    optimizers = make_optimizers(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    scaler.scale(model(x, y)[1]).backward()
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not optimizers[0].state, "Muon took no step, so it holds no momentum yet"
    assert scaler.get_scale() == 2.0**126


def test_grad_scaler_steps_muon_and_adamw_like_plain_steps():
    # train.py's pattern: unscale_ each optimizer, clip, step each, one update
    x, y = fixed_batch(0)
    results = []
    for enabled in (False, True):
        model = tiny_model()
        optimizers = make_optimizers(model)
        scaler = torch.amp.GradScaler("cpu", enabled=enabled, init_scale=2.0**10)
        for _ in range(2):
            scaler.scale(model(x, y)[1]).backward()
            for opt in optimizers:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for opt in optimizers:
                scaler.step(opt)
            scaler.update()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        results.append(copy.deepcopy(model.state_dict()))
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key
