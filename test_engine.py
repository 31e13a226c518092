"""Tests of engine.py, in its order: the CPU decoding layout gives the same numbers, stream_text
yields whole characters, and the Engine fits chat prompts into the context and knows when its
vocabulary cannot chat.
"""
import copy

import pytest
import torch

import sample
import serve
from conftest import CHAR_META, ByteTokenizer, greedy_ids, tiny_engine
from configurator import UserError
from engine import DecodingLinear, prepare_for_decoding, ready_for_decoding, stream_text
from model import GPT, GPTConfig
from tokenizer import check_chat_tokenizer, load_tokenizer

# -----------------------------------------------------------------------------
# The CPU decoding layout


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


@pytest.mark.parametrize("variant", [{}, dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", n_expert=4)])
def test_prepare_for_decoding_swaps_every_linear_and_logits_stay_the_same(variant):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, **variant)).eval()
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        want = model(idx)[0]
        ready_for_decoding(model)
        got = model(idx)[0]
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear" not in kinds and "DecodingLinear" in kinds, kinds
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


def test_float16_on_cpu_keeps_plain_linears_and_greedy_matches_no_cache_decoding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    model = ready_for_decoding(model, "cpu", "float16")  # the blocked layout is slow in 16-bit
    kinds = {type(m).__name__ for m in model.modules()}
    assert "DecodingLinear" not in kinds and next(model.parameters()).dtype == torch.float16, kinds
    ids = [3, 1, 4, 1, 5]
    got = torch.cat(list(model.generate_stream(torch.tensor([ids]), 20, temperature=0))).tolist()
    assert got == greedy_ids(model, ids, 20), got


# -----------------------------------------------------------------------------
# Text out


def test_streamed_pieces_are_whole_characters_even_when_tokens_split_them():
    tok = ByteTokenizer()
    text = "naïve café 🐍🐍 字字 ok"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids), "the text should have tokens that split a character"

    class Replay:  # stands in for a model: "generates" the given ids
        config = GPTConfig(block_size=64)

        def parameters(self):
            yield torch.zeros(1)

        def generate_stream(self, idx, max_new_tokens, **kwargs):
            yield from (torch.tensor([i]) for i in ids[:max_new_tokens])

    settings = dict(temperature=0.8, top_k=200, top_p=1.0, max_new_tokens=500)
    pieces = list(stream_text(Replay(), tok, [0], settings))
    assert "".join(pieces) == text, pieces
    assert not any("\ufffd" in p for p in pieces), pieces
    assert len(pieces) > 5, f"expected the text in many pieces, got {pieces}"


# -----------------------------------------------------------------------------
# The Engine


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
    ids, cut = engine.story_prompt("0123456789" * 10)  # a story prompt keeps its last 64 tokens
    assert cut == 36 and engine.tok.decode(ids) == ("0123456789" * 10)[36:], (cut, ids)


def test_char_vocabulary_without_the_markers_cannot_chat_and_says_so():
    tok = load_tokenizer({"tokenizer": "char", "chars": list("abc "), "eot_token": 4})
    with pytest.raises(UserError, match="chat template.*GPT-2 BPE"):
        check_chat_tokenizer(tok)
    engine = tiny_engine(tok=tok)
    with pytest.raises(UserError, match="chat template.*GPT-2 BPE"):  # sample.py --chat: one line
        sample.chat_in_terminal(engine)
    assert serve.info(engine)["chat"] is False
    with pytest.raises(ValueError, match="GPT-2 BPE"):
        serve.parse_request(engine, {"messages": [{"role": "user", "content": "abc"}]})
    assert serve.parse_request(engine, {"prompt": "abc"})["ids"] == [0, 1, 2]  # story mode still works
