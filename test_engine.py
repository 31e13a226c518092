"""Tests of engine.py, in its order: stream_text yields whole characters, and the Engine batches
requests without changing what each gets, fits chat prompts into the context and knows when its
vocabulary cannot chat.
"""
import queue
import time

import pytest
import torch

import sample
from conftest import char_tokenizer, greedy_ids, tiny_engine, tiny_variant
from configurator import UserError
from decoding import ready_for_decoding
from engine import Engine, QueueFull, ReplyText, stream_text
from model import GPTConfig
from tokenizer import check_chat_tokenizer, load_tokenizer

# -----------------------------------------------------------------------------
# Text out


def test_streamed_pieces_are_whole_characters_even_when_tokens_split_them(tiny_bpe):
    tok = tiny_bpe  # a byte-level BPE: a character it did not learn (字) comes as one token per byte
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
    with pytest.raises(UserError, match="chat template.*a BPE model"):
        check_chat_tokenizer(tok)
    engine = tiny_engine(tok=tok)
    assert "a BPE model" in engine.chat_error  # serve.py refuses its chat requests with this
    with pytest.raises(UserError, match="chat template.*a BPE model"):  # sample.py --chat: one line
        sample.chat_in_terminal(engine)
    assert engine.story_prompt("abc") == ([0, 1, 2], 0)  # story mode still works


def test_reply_text_ends_before_a_stop_string_even_one_split_across_tokens():
    tok = char_tokenizer()
    text = ReplyText(tok, chat=True, stop=["END", "xyz"])
    shown = [text.push(t) for t in tok.encode("  Hello, the ENd and EN")]
    assert "".join(shown) == "Hello, the ENd and " and shown[:3] == ["", "", "H"], shown  # "EN" may begin END
    assert text.push(tok.encode("D")[0]) == "" and text.stopped and text.flush() == ""
    text = ReplyText(tok, stop=["xyz"])
    assert "".join(text.push(t) for t in tok.encode(" ab xy")) == " ab " and text.flush() == "xy"


# -----------------------------------------------------------------------------
# Continuous batching


def run_together(engine, prompts, settings, late=None):
    """Submit the prompts (each with its settings) so that the worker admits them together, then
    `late` (a prompt and settings) once the first has made 5 tokens; each one's tokens."""
    outs = [queue.SimpleQueue() for _ in range(len(prompts) + bool(late))]
    with engine.wakeup:  # held: the worker cannot admit any until all are queued
        requests = [engine.submit(p, s, q.put) for p, s, q in zip(prompts, settings, outs)]
    if late:
        while requests[0].made < 5:
            time.sleep(0.001)
        engine.submit(*late, outs[-1].put)
    return [list(iter(q.get, None)) for q in outs]


def dirty_memory(floats):
    """Leave NaNs where torch's next allocations of up to `floats` floats are likely to land (freed
    memory of the same sizes): an uninitialised cache row would hand them to attention, where a
    mask's weight of 0 times NaN is NaN."""
    junk = [torch.full((n,), float("nan")) for n in range(floats // 8, floats + 1, floats // 8)
            for _ in range(4)]
    del junk


@pytest.mark.parametrize("variant", [None, "all"])
def test_batched_greedy_decoding_gives_each_request_exactly_what_it_gets_alone(variant):
    tok = char_tokenizer()
    model = tiny_variant(variant, block_size=32, vocab_size=tok.vocab_size)
    prompts = [tok.encode(p) for p in ("Hello", "A longer prompt", "x", "Once upon a time, there")]
    # past block_size 32: windows restart while other rows decode; the shortest outlasts the late
    # joiner's wait (5 tokens of the first) by a margin, even on a busy machine
    lengths = [50, 40, 60, 45]
    dirty_memory(2 * 4 * 32 * 32)  # a layer's cache: keys and values of 4 rows, 32 positions, 32 wide
    engine = Engine(model, tok, dict(temperature=0.0, max_new_tokens=8), max_batch=4)
    settings = [{"max_new_tokens": n} for n in lengths]
    try:  # three start together at different positions, the fourth joins while they decode
        got = run_together(engine, prompts[:3], settings[:3], late=(prompts[3], settings[3]))
    finally:
        engine.close()
    assert engine.busiest == 4, f"at most {engine.busiest} rows were decoded together"
    for prompt, n, tokens in zip(prompts, lengths, got):
        want = greedy_ids(model, prompt, n)  # no cache: a full forward over the context window per token
        want = want[:want.index(tok.eot_token)] if tok.eot_token in want else want
        assert tokens == want, (tok.decode(prompt), tok.decode(tokens), tok.decode(want))


@pytest.mark.parametrize("layout, others_top_k", [("plain", 20), ("decoding", 20), ("decoding", 0)])
def test_a_seeded_request_in_a_batch_samples_what_sample_py_samples_with_that_seed(layout, others_top_k):
    engine = tiny_engine(seed=1, block_size=32, max_batch=4)
    screened = []  # the rows of each screen
    if layout == "decoding":  # as serve.py runs it: the top_k of a step whose rows share top_k come
        ready_for_decoding(engine.model)  # screened (ScreenedOutput); mixed steps read every logit
        screen = engine.model.lm_head.screen
        engine.model.lm_head.screen = lambda x: screened.append(len(x)) or screen(x)
    settings = dict(temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=40, seed=7)
    prompt = engine.tok.encode("Once")
    torch.manual_seed(7)  # as sample.py --seed=7 does
    want = "".join(stream_text(engine.model, engine.tok, prompt, settings))
    others = [dict(settings, seed=s, temperature=1.5, top_k=others_top_k) for s in (1, 2, 3)]
    try:
        got = run_together(engine, [prompt] + [engine.tok.encode("Hi")] * 3, [settings] + others)
    finally:
        engine.close()
    texts = [engine.tok.decode(tokens) for tokens in got]
    assert texts[0] == want and engine.busiest == 4, (texts[0], want, engine.busiest)
    assert len(set(texts[1:])) == 3, "different seeds should give different texts"
    assert (4 in screened) == (layout == "decoding" and others_top_k == 20), screened


def test_the_queue_is_bounded_and_cancelled_requests_leave_it():
    engine = tiny_engine(max_batch=1, max_queue=2)
    try:
        with engine.wakeup:  # nothing is admitted while this is held
            waiting = [engine.submit([1], {}, lambda e: None) for _ in range(2)]
            with pytest.raises(QueueFull, match="tiny is busy: 2 requests are waiting"):
                engine.submit([1], {}, lambda e: None)
            waiting[0].cancel()
            engine.submit([1], {}, lambda e: None)  # the cancelled one no longer counts
    finally:
        engine.close()
    assert waiting[0].finish == "cancelled" and waiting[0].made == 0, waiting[0].finish
