"""Tests of tokenizer.py, in its order: the tokenizers load_tokenizer builds, TextStream's incremental
decoding, and the chat template (the same in training data and in generation prompts).
"""
import random

import numpy as np
import pytest

from conftest import CONVERSATIONS, SHARED, ByteTokenizer, needs_gpt2_files, run_script, write_jsonl
from configurator import UserError
from data import read_meta
from engine import Engine
from model import GPT, GPTConfig
from tokenizer import CHAT_TEMPLATE, EOT_TEXT, TextStream, load_tokenizer

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


@needs_gpt2_files
def test_gpt2_safe_cuts_keep_the_ids_of_the_whole_text_whatever_follows():
    tok = load_tokenizer({"tokenizer": "gpt2"})
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


def test_char_tokenizer_names_a_character_outside_its_vocabulary():
    chars = load_tokenizer({"tokenizer": "char", "chars": list("ab"), "eot_token": None})
    with pytest.raises(UserError, match="'z' is not in this dataset's vocabulary of 2"):
        chars.encode("abz")


# -----------------------------------------------------------------------------
# TextStream


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


def test_chat_template_round_trips_and_mask_covers_exactly_assistant_tokens_and_end_of_turn(tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", CONVERSATIONS)
    result = run_script("prepare.py", f"--input={src}", "--format=chat", f"--out_dir={tmp_path}", "--name=c",
                        "--val_fraction=0.34", "--tokenizer=char")
    assert result.returncode == 0, result.stderr
    meta = read_meta(tmp_path / "c")
    tok = load_tokenizer(meta)
    assert meta["chat_template"] == CHAT_TEMPLATE, meta
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
