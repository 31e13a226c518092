"""Tests of decoding.py: the CPU decoding layout computes what the plain model computes, and its
output layer's float16 screen finds exactly the k largest float32 logits.
"""
import copy

import pytest
import torch

from conftest import CHAR_META, greedy_ids
from decoding import DecodingLinear, ScreenedOutput, prepare_for_decoding, ready_for_decoding
from model import GPT, GPTConfig
from tokenizer import load_tokenizer


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_decoding_linear_computes_what_nn_linear_does(n):
    torch.manual_seed(0)
    for linear in (torch.nn.Linear(8, 12), torch.nn.Linear(8, 12, bias=False)):
        blocked = DecodingLinear(linear, n)  # n = 5: 12 outputs need 3 zero-padded ones
        for x in (torch.randn(3, 5, 8), torch.randn(1, 1, 8), torch.randn(8), torch.randn(0, 8)):
            with torch.no_grad():
                want, got = linear(x), blocked(x)
            assert got.shape == want.shape, (got.shape, want.shape)
            assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max().item()


def near_ties(vocab=3000, width=64, k=200):
    """An output layer whose 2k largest logits for x are 1e-5 apart: finer than float16 can tell
    (near 0.5, its steps are 2.4e-4), far coarser than float32's (3e-8). Those 2k rows also differ
    at random in directions x does not see, where float16's roundings move their logits by ~5e-4
    at random: a float16 ranking is far from the exact one. Returns (layer, x, the k largest's ids)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(width, vocab, bias=False)
    x = torch.randn(1, width)
    unit = x[0] / x[0].norm()
    noise = 0.5 * torch.randn(2 * k, width)
    noise -= (noise @ unit)[:, None] * unit  # (2k, C), orthogonal to x
    with torch.no_grad():
        linear.weight.normal_(0, 0.005)  # logits of about +-0.04
        order = torch.randperm(vocab)[:2 * k]  # these rows get logits 0.5 + 1e-5 * rank
        linear.weight[order] = 0.5 * unit / x[0].norm() * (1 + 2e-5 * torch.arange(2 * k)[:, None]) + noise
    assert top_ids(linear, x, k) == set(order[k:].tolist())
    return linear, x, set(order[k:].tolist())


def top_ids(linear, x, k):
    """The ids of the k largest logits of x (1, C), in float64."""
    return set((linear.weight.double() @ x[0].double()).topk(k).indices.tolist())


@pytest.mark.parametrize("n", [1, 3])
def test_screened_output_finds_the_k_largest_logits_that_float16_alone_gets_wrong(n):
    linear, x, want = near_ties()
    layer = ScreenedOutput(linear, n)
    with torch.no_grad():
        values, ids = layer.top_logits(x, 200)
        exact = linear.weight.double() @ x[0].double()  # (V,)
        rough = layer.screen(x.half()).float().topk(200).indices  # float16 alone
    assert set(ids[0].tolist()) == want, len(set(ids[0].tolist()) ^ want)
    assert torch.allclose(values[0].double(), exact[ids[0]], rtol=0, atol=5e-6)  # float32's rounding
    assert set(rough[0].tolist()) != want, "the test needs ties float16 cannot break"


def test_screened_output_finds_each_rows_top_k_in_a_batch():
    linear, x, want = near_ties()
    torch.manual_seed(2)
    rows = torch.cat([x, 1.5 * x, -x])  # (3, C): near ties twice, then the other rows' largest
    layer = ScreenedOutput(linear, 2)
    layer.MAX_SHARE = 0.5  # in 3,000 tokens, -x's 200 largest are ~2,000 candidates: keep screening
    with torch.no_grad():
        values, ids = layer.top_logits(rows, 200)
        screened = layer.screen(rows.half()).float()  # (3, V): all rows in one pass
        assert (screened - linear(rows)).abs().max() < 0.01, "each row gets its own float16 logits"
        count = layer.candidates(rows, 200)[0].bincount().tolist()
    assert count[:2] == [400, 400] and count[2] > 400, count
    assert ids.shape == values.shape == (3, 200)
    for r in range(3):
        exact = linear.weight.double() @ rows[r].double()  # (V,)
        assert set(ids[r].tolist()) == (want if r < 2 else top_ids(linear, rows[r:r + 1], 200)), r
        assert torch.allclose(values[r].double(), exact[ids[r]], rtol=0, atol=5e-6), r


@pytest.mark.parametrize("case", ["random", "near ties"])
def test_screened_output_keeps_every_token_that_may_be_in_the_top_k_and_few_others(case):
    if case == "random":  # the screen's error is small beside the logits' spread: a few more than k
        torch.manual_seed(1)
        linear, x, k = torch.nn.Linear(64, 3000, bias=False), torch.randn(1, 64), 50
        most = 1.2 * k
    else:  # 400 logits within the screen's error of each other: all of them, and few others
        (linear, x, _), k = near_ties(), 150
        most = 450
    with torch.no_grad():
        rows, ids = ScreenedOutput(linear, 2).candidates(x, k)
    candidates = ids.tolist()
    assert rows.tolist() == [0] * len(candidates)
    assert top_ids(linear, x, k) <= set(candidates) and len(set(candidates)) == len(candidates)
    assert len(candidates) <= most and (case == "random" or len(candidates) >= 400), len(candidates)


def test_screened_output_computes_every_logit_when_float16_cannot_screen(monkeypatch):
    linear, x, _ = near_ties(vocab=400, k=10)
    layer = ScreenedOutput(linear, 2)
    with torch.no_grad():
        # 1e6 is beyond float16's 65,504: the screen would hold inf and NaN; 6e4 is not, but times
        # the largest weight of its column (over 1), a logit could be
        for big in (1e6, 6e4):
            huge = x.clone()
            huge[0, 0] = big
            want = torch.topk(layer(huge), 10)
            with monkeypatch.context() as patch:
                patch.setattr(layer, "screen", lambda x: pytest.fail(f"screened x[0] = {big}"))
                values, ids = layer.top_logits(huge, 10)
            assert torch.equal(ids, want.indices) and torch.equal(values, want.values)
        linear.weight.copy_(linear.weight[:1].expand(400, -1))  # every logit ties: all are candidates
        layer = ScreenedOutput(linear, 2)
        exact = layer.weight @ x[0]
        picked = []
        monkeypatch.setattr(layer, "forward", lambda x: picked.append(x) or exact[None])
        values, ids = layer.top_logits(x, 10)
    assert len(picked) == 1 and torch.equal(values[0], exact[ids[0]]), "too many candidates: compute all"


@pytest.mark.parametrize("variant", [{}, dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", n_expert=4)])
def test_prepare_for_decoding_swaps_every_linear_and_dropout_and_logits_stay_the_same(variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, **variant)).eval()
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        want = model(idx)[0]
        ready_for_decoding(model)
        got = model(idx)[0]
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear" not in kinds and "DecodingLinear" in kinds and "Dropout" not in kinds, kinds
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max().item()


@pytest.mark.parametrize("threads", [1, 3])
def test_decoding_layout_greedy_decodes_like_the_plain_model_for_any_thread_count(char_run, threads):
    _, model = char_run  # vocabulary 62: 3 threads need a zero-padded last block of the output layer
    ids = load_tokenizer(CHAR_META).encode("hello")
    want = greedy_ids(model, ids, 30)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = prepare_for_decoding(copy.deepcopy(model))
        got = torch.cat(list(fast.generate_stream(torch.tensor([ids]), 30, temperature=0))).tolist()
    finally:
        torch.set_num_threads(before)
    assert got == want, (got, want)


@pytest.mark.parametrize("rows", [1, 3])
def test_decoding_layout_samples_the_tokens_the_plain_model_samples_with_top_k(monkeypatch, rows):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=500, n_layer=2, n_head=2, n_embd=32)).eval()
    fast = ready_for_decoding(copy.deepcopy(model))
    screened = []
    screen = fast.lm_head.screen
    monkeypatch.setattr(fast.lm_head, "screen", lambda x: screened.append(len(x)) or screen(x))
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]][:rows])
    runs = []
    for m in (model, fast):
        torch.manual_seed(4)  # past block_size 32: the window restarts (a prefill) twice
        runs.append(torch.stack(list(m.generate_stream(prompt, 60, temperature=1.0, top_k=40))).tolist())
    assert runs[0] == runs[1] and len({t for step in runs[0] for t in step}) > 20, runs
    assert screened == [rows] * 60, f"the screen ran for {len(screened)} of 60 tokens"


def test_float16_on_cpu_keeps_plain_linears_and_greedy_matches_no_cache_decoding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    model = ready_for_decoding(model, "cpu", "float16")  # the blocked layout is slow in 16-bit
    kinds = {type(m).__name__ for m in model.modules()}
    assert "DecodingLinear" not in kinds and next(model.parameters()).dtype == torch.float16, kinds
    ids = [3, 1, 4, 1, 5]
    got = torch.cat(list(model.generate_stream(torch.tensor([ids]), 20, temperature=0))).tolist()
    assert got == greedy_ids(model, ids, 20), got
