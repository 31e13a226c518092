"""Tests of tokenizer.py, in its order: the tokenizers load_tokenizer builds, a BPE of one's own
(learned, exact, deterministic, loadable by transformers, told apart from others), TextStream's
incremental decoding, and the chat template (the same in training data and in generation prompts).
"""
import json
import random

import numpy as np
import pytest

from checkpoint import GPT2_META
from conftest import (CONVERSATIONS, SHARED, bpe_meta, bpe_text, needs_gpt2_files, needs_transformers, run_script,
                      write_jsonl)
from configurator import UserError
from data import read_meta
from engine import Engine
from model import GPT, GPTConfig
from tokenizer import (BPE_EOT_ID, BYTE_CHARS, CHAT_TEMPLATE, EOT_TEXT, BPETokenizer, TextStream, load_tokenizer,
                       same_tokenizer, tokenizer_fields, train_bpe)

# Text that breaks naive tokenizers: emoji (one with a joiner), CJK, a combining accent, a lone \r,
# U+FFFD (what --errors=replace puts for bytes that are not UTF-8), a NUL, the end-of-text string.
HARD_TEXT = "Üb\u0065\u0301r 🐍👩\u200d💻 東京 a\rb\r\n\ufffd\x00 <|endoftext|> café\t \U0001f600!"

# -----------------------------------------------------------------------------
# The tokenizers


@needs_gpt2_files
def test_load_tokenizer_builds_gpt2_bpe_which_keeps_the_end_of_text_string_as_text():
    tok = load_tokenizer({"tokenizer": "gpt2"})
    ids = tok.encode("Hello world" + EOT_TEXT)
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256) and tok.eot_token not in ids, ids
    assert tok.decode(ids + [tok.eot_token]) == "Hello world" + EOT_TEXT + EOT_TEXT


# Text in many scripts, with contractions, numbers, runs of spaces, tabs and newlines, punctuation,
# combining marks, emoji and unusual spaces: where GPT-2's pre-tokenizer could go wrong.
MIXED = """It's 3.14, isn't it?  We'll see -- 1,000,000 times!!\n\n\tIndented\tline   with    gaps.
Привет, мир! Это тест... «цитата» и т.д.  Ελληνικά: γειά σου, κόσμε; ναι.
这是一个测试。你好，世界！数字１２３和abc混合。日本語のテキスト、カタカナとひらがな。
مرحبا بالعالم، هذا اختبار. नमस्ते दुनिया, यह परीक्षण है। 🐍🐍 emoji 👍🏽 and ZWJ 👨‍👩‍👧 family
non\u00a0breaking\u3000ideographic\u2009thin spaces; x=y+2*(z-1); {"key": [1, 2]} <tag/> 'quoted' "dq"
I'M SHOUTING, YOU'RE NOT. she'd've gone. \r\n windows line\x0cform feed\x1cseparator   \n  \n end"""
ATOMS = [" ", "  ", "\n", "\n\n", "\t", " \n", "a", "bc", "'s", "'ll", "'", "12", "3", ".", "!?", "--", "字",
         "。", "、", "é", "ा", "्", "🐍", "\u00a0", "\u3000", "\x1c", "—", "Z"]


@pytest.mark.parametrize("kind", [pytest.param("gpt2", marks=needs_gpt2_files), "bpe"])
def test_safe_cuts_keep_the_ids_of_the_whole_text_whatever_follows(kind, tiny_bpe):
    # GPT-2's BPE, and a byte-level BPE of one's own (which pre-tokenizes as GPT-2's does)
    tok = load_tokenizer({"tokenizer": "gpt2"}) if kind == "gpt2" else tiny_bpe
    rng = random.Random(0)
    texts = [MIXED] + ["".join(rng.choice(ATOMS) for _ in range(60)) for _ in range(300)]
    texts += [p.read_text(encoding="utf-8")[:200_000] for p in sorted((SHARED / "data").glob("*.txt"))]
    for text in texts:
        cuts, end = [], len(text)  # every safe cut, found from the end as prepare.py finds them
        while (end := tok.safe_cut(text, 0, end)) > 0:
            cuts.append(end)
        pieces = [text[a:b] for a, b in zip([0] + cuts[::-1], cuts[::-1] + [len(text)])]
        assert [i for piece in pieces for i in tok.encode(piece)] == tok.encode(text), text[:80]
        if len(text) > 1000:
            assert len(cuts) > len(text) / 20, f"too few cuts: {len(cuts)} in {len(text)} characters"
            continue
        for end in rng.sample(range(1, len(text) + 1), 10):  # a cut in the first `end` characters holds
            whole = text[:end] + rng.choice(ATOMS) + rng.choice(texts[1:])  # whatever comes after them
            cut = tok.safe_cut(whole, 0, end)
            assert tok.encode(whole[:cut]) + tok.encode(whole[cut:]) == tok.encode(whole), (whole, cut)


@needs_gpt2_files
def test_gpt2_byte_lengths_count_each_tokens_utf8_bytes():
    tok = load_tokenizer({"tokenizer": "gpt2"})
    lengths = tok.byte_lengths()
    assert sum(lengths[i] for i in tok.encode(HARD_TEXT)) == len(HARD_TEXT.encode())
    assert lengths[tok.eot_token] == 0 and len(lengths) == 50257


def test_char_tokenizer_names_a_character_outside_its_vocabulary():
    chars = load_tokenizer({"tokenizer": "char", "chars": list("ab"), "eot_token": None})
    with pytest.raises(UserError, match="'z' is not in this dataset's vocabulary of 2"):
        chars.encode("abz")


# -----------------------------------------------------------------------------
# A BPE of one's own


def test_bpe_round_trips_hard_text_and_counts_its_bytes_exactly(tiny_bpe):
    ids = tiny_bpe.encode(HARD_TEXT)
    assert tiny_bpe.decode(ids) == HARD_TEXT, ids
    lengths = tiny_bpe.byte_lengths()
    assert sum(lengths[i] for i in ids) == len(HARD_TEXT.encode()), "bytes per token must add up exactly"
    # the snake's 4 bytes are several tokens (not learned as one): their lengths still add up to 4
    snake = tiny_bpe.encode("\U0001f40d")  # 🐍 alone; in the text it follows a space
    assert [lengths[i] for i in tiny_bpe.encode("\x00\r")] == [1, 1] and sum(lengths[i] for i in snake) == 4
    assert tiny_bpe.encode_batch([HARD_TEXT, "a"]) == [ids, tiny_bpe.encode("a")]


def test_bpe_keeps_the_end_of_text_string_as_text_like_the_gpt2_path(tiny_bpe):
    ids = tiny_bpe.encode("Hello world" + EOT_TEXT)
    assert tiny_bpe.eot_token == BPE_EOT_ID == 0 and tiny_bpe.eot_token not in ids, ids
    assert tiny_bpe.decode(ids + [tiny_bpe.eot_token]) == "Hello world" + EOT_TEXT + EOT_TEXT
    assert tiny_bpe.byte_lengths()[tiny_bpe.eot_token] == 0, "a document boundary is no text"
    # the Hugging Face object alone would have parsed it: the wrapper is what keeps it text
    raw = BPETokenizer(tiny_bpe.json).hf
    raw.encode_special_tokens = False
    assert BPE_EOT_ID in raw.encode(EOT_TEXT, add_special_tokens=False).ids


def tokenizers_ids(tok, texts):
    """The ids the Hugging Face library itself gives: the reference for tiktoken's."""
    return [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]


def atom_texts(n, seed):
    rng = random.Random(seed)
    return ["".join(rng.choices(ATOMS, k=rng.randint(1, 40))) for _ in range(n)]


def test_a_learned_bpe_encodes_through_tiktoken_to_the_ids_tokenizers_gives():
    # learned from text where every rule of the pre-tokenizer matters: tokens for "'s", runs of
    # spaces and newlines, CJK, digits; a piece cut elsewhere by either way would change ids
    tok = train_bpe([MIXED, HARD_TEXT, *atom_texts(2000, seed=0)], 600, show_progress=False)
    assert tok.ranked is not None, "a trained BPE's merge list should pass rank_encoder's checks"
    texts = [HARD_TEXT, MIXED, bpe_text(50, seed=1), *atom_texts(2000, seed=1)]
    if SHARED.is_dir():
        texts += [p.read_text()[:200_000] for p in sorted((SHARED / "data").glob("*.txt"))]
    assert tok.encode_batch(texts) == tokenizers_ids(tok, texts)
    # every code point, between letters, after a space, before a digit: the two regular expressions
    # class each alike (skipped: surrogates, and planes 4-13, where Unicode has assigned nothing yet)
    points = [chr(c) for c in range(0x110000) if not (0xD800 <= c < 0xE000 or 0x40000 <= c < 0xE0000)]
    texts = ["".join(f"a{c}a {c}1" for c in points[i:i + 4096]) for i in range(0, len(points), 4096)]
    assert tok.encode_batch(texts) == tokenizers_ids(tok, texts)


def test_rank_encoder_matches_tokenizers_on_bpes_learned_from_repetitive_text():
    # few letters, many merges: the merges overlap and compete (aaa, abab), where the two ways of
    # choosing the next merge could part if rank_encoder's checks were not enough
    rng = random.Random(0)
    for trial in range(12):
        letters = "abcd"[:rng.choice([2, 3, 4])]
        words = lambda n, most: ["".join(rng.choices(letters, k=rng.randint(1, most))) for _ in range(n)]
        tok = train_bpe([" ".join(words(50, 12)) for _ in range(100)], rng.choice([280, 320, 400]),
                        show_progress=False)
        assert tok.ranked is not None
        texts = words(1000, 30)
        assert tok.encode_batch(texts) == tokenizers_ids(tok, texts), trial


def hand_made_bpe(merges, extra=(), **config):
    """A tokenizer.json with the 256 bytes (ids 1-256), then the given merges' tokens in order, then
    the extra tokens."""
    vocab = {EOT_TEXT: 0} | {c: b + 1 for b, c in BYTE_CHARS.items()}
    for token in [a + b for a, b in merges] + list(extra):
        vocab.setdefault(token, len(vocab))
    parsed = json.loads(train_bpe(bpe_text().splitlines(), 257, show_progress=False).json)
    parsed["model"] |= {"vocab": vocab, "merges": [list(m) for m in merges]}
    return BPETokenizer(json.dumps(parsed | config))


def test_rank_encoder_leaves_merge_lists_it_cannot_prove_to_tokenizers():
    # "bc" merges before "ab", so "abc" alone never reaches its merge (ab, c): tiktoken would merge
    # a + bc into "abc", `tokenizers` does not
    tok = hand_made_bpe([("b", "c"), ("a", "b"), ("ab", "c")])
    assert tok.ranked is None and tok.encode("xabc") == tokenizers_ids(tok, ["xabc"])[0]
    assert [tok.decode([i]) for i in tok.encode("xabc")] == ["x", "a", "bc"]
    assert hand_made_bpe([("a", "b"), ("ab", "c")]).ranked is not None
    assert hand_made_bpe([("a", "b"), ("ab", "c"), ("b", "c")]).ranked is not None
    # a token that no merge makes: tiktoken would merge b + c into it, `tokenizers` never does
    tok = hand_made_bpe([("a", "b")], extra=["bc"])
    assert tok.ranked is None and [tok.decode([i]) for i in tok.encode("xbc")] == ["x", "b", "c"]
    assert hand_made_bpe([("a", "b"), ("ab", "c")], normalizer={"type": "Lowercase"}).ranked is None


@pytest.mark.parametrize("size", [257, 300, 420])
def test_train_bpe_gives_exactly_the_vocab_size_asked(size):
    tok = train_bpe(bpe_text().splitlines(), size, show_progress=False)
    assert (tok.vocab_size, tok.eot_token) == (size, BPE_EOT_ID)
    lengths = tok.byte_lengths()
    assert len(lengths) == size and lengths[0] == 0 and min(lengths[1:]) == 1, lengths[:5]
    if size == 257:  # the bytes alone: every token is one byte
        assert lengths == [0] + [1] * 256
    assert load_tokenizer(bpe_meta(tok)).encode("the cat") == tok.encode("the cat")


def test_train_bpe_says_when_the_text_is_too_small_for_the_vocabulary():
    with pytest.raises(UserError, match=r"enough distinct pairs for \d+ tokens, not 5,000"):
        train_bpe(["a small text"], 5000, show_progress=False)
    with pytest.raises(UserError, match="at least 257 tokens"):
        train_bpe(["a small text"], 256, show_progress=False)


def test_train_bpe_is_deterministic_across_processes(tiny_bpe):
    again = train_bpe(bpe_text().splitlines(), 400, show_progress=False)
    assert again.json == tiny_bpe.json
    # another process: another seed for every hash table in Python and in the Rust trainer
    code = ("import sys, conftest, tokenizer; sys.stdout.write(tokenizer.train_bpe("
            "conftest.bpe_text().splitlines(), 400, show_progress=False).json)")
    result = run_script("-c", code, env={"PYTHONHASHSEED": "123"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == tiny_bpe.json, "a second process learned another tokenizer.json"


@needs_transformers
def test_transformers_loads_the_tokenizer_json_and_encodes_to_the_same_ids(tiny_bpe, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    (tmp_path / "tokenizer.json").write_text(tiny_bpe.json, encoding="utf-8")
    text = HARD_TEXT.replace(EOT_TEXT, "") + " " + bpe_text(5)  # transformers would parse the string
    ids = tiny_bpe.encode(text)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast(text)["input_ids"] == ids and fast.decode(ids) == text
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == ids


def test_same_tokenizer_tells_vocabularies_apart_whatever_the_json_layout(tiny_bpe):
    meta = bpe_meta(tiny_bpe)
    pretty = meta | {"tokenizer_json": json.dumps(json.loads(tiny_bpe.json), indent=2)}
    other = tokenizer_fields(train_bpe(bpe_text(seed=1).splitlines(), 400, show_progress=False))
    chars = {"tokenizer": "char", "chars": list("abc"), "eot_token": 3}
    assert same_tokenizer(meta, pretty) and same_tokenizer({"tokenizer": "gpt2"}, GPT2_META)
    assert not same_tokenizer(meta, other) and not same_tokenizer(meta, GPT2_META)
    assert not same_tokenizer(chars, chars | {"chars": list("abd")}) and same_tokenizer(chars, dict(chars))


def test_a_tokenizer_json_without_end_of_text_or_not_json_is_refused(tiny_bpe):
    parsed = json.loads(tiny_bpe.json)
    parsed["added_tokens"] = []
    del parsed["model"]["vocab"][EOT_TEXT]
    with pytest.raises(UserError, match="no <\\|endoftext\\|> token"):
        BPETokenizer(json.dumps(parsed))
    with pytest.raises(UserError, match="not a readable tokenizer.json"):
        BPETokenizer("{not json")


# -----------------------------------------------------------------------------
# TextStream


class ByteTokenizer:
    """One token per UTF-8 byte, decoded as BPE decodes: an incomplete character comes out as U+FFFD."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_holds_back_a_character_split_across_bpe_tokens(tiny_bpe):
    stream = TextStream(tiny_bpe)
    ids = tiny_bpe.encode("a 🐍 b")
    assert "".join(stream.push(i) for i in ids) + stream.flush() == "a 🐍 b"
    assert all("\ufffd" not in TextStream(tiny_bpe).push(i) for i in ids[:2])


def test_text_stream_holds_back_a_split_character_until_its_last_byte_arrives():
    stream = TextStream(ByteTokenizer())
    pieces = [stream.push(b) for b in "aé🐍".encode()]
    assert pieces == ["a", "", "é", "", "", "", "🐍"], pieces
    assert stream.flush() == ""
    # bytes that never complete a character are shown (as U+FFFD) after 4 tokens, and flush empties it
    assert [stream.push(b) for b in b"\xf0\x9f\x90\xf0"] == ["", "", "", "\ufffd\ufffd"]
    assert stream.push(0x9f) == "" and stream.flush() == "\ufffd"


# -----------------------------------------------------------------------------
# The chat template


@pytest.mark.parametrize("tokenizer", [pytest.param("gpt2", marks=needs_gpt2_files), "learned", "reused"])
def test_chat_template_round_trips_and_mask_covers_exactly_assistant_tokens_and_end_of_turn(
        tmp_path, tokenizer, tiny_bpe):
    src = write_jsonl(tmp_path / "chats.jsonl", CONVERSATIONS)
    (tmp_path / "tokenizer.json").write_text(tiny_bpe.json, encoding="utf-8")
    flags = {"gpt2": [], "learned": ["--tokenizer=bpe", "--vocab_size=280"],  # learned from the 2 train chats
             "reused": [f"--tokenizer={tmp_path / 'tokenizer.json'}"]}[tokenizer]
    result = run_script("prepare.py", f"--input={src}", "--format=chat", f"--out_dir={tmp_path}", "--name=c",
                        "--val_fraction=0.34", *flags)
    assert result.returncode == 0, result.stderr
    meta = read_meta(tmp_path / "c")
    tok = load_tokenizer(meta)
    assert meta["chat_template"] == CHAT_TEMPLATE, meta
    assert (meta["tokenizer"], meta["vocab_size"]) == {"gpt2": ("gpt2", 50257), "learned": ("bpe", 280),
                                                       "reused": ("bpe", 400)}[tokenizer], meta
    assert (meta["train_conversations"], meta["val_conversations"], meta["skipped_conversations"]) == \
        (2, 1, 0), meta
    ids = {s: np.fromfile(tmp_path / "c" / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")}
    mask = {s: np.fromfile(tmp_path / "c" / f"{s}_mask.bin", dtype=np.uint8) for s in ("train", "val")}
    eot = EOT_TEXT
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
    engine = Engine(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=64)), tok,
                    dict(temperature=0.0, max_new_tokens=8))
    prompt, kept = engine.chat_prompt(CONVERSATIONS[2][:1], 8)
    assert tok.decode(prompt) == f"{eot}User: Name a colour.{eot}Assistant:" and kept == CONVERSATIONS[2][:1]
    assert prompt[1:] + tok.encode(" Green.") + [tok.eot_token] == ids["val"].tolist()
