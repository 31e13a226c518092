"""Tokenizers and the chat template: text <-> token ids, for every script.

    GPT2Tokenizer   GPT-2's 50,257-token byte-level BPE, through tiktoken
    CharTokenizer   one id per character of a dataset's vocabulary (shakespeare_char)
    BPETokenizer    a byte-level BPE of any size, learned from a dataset by train_bpe (Hugging Face
                    `tokenizers`); its tokenizer.json travels in meta["tokenizer_json"]; encoded by
                    tiktoken where rank_encoder proves the ids are the same
    load_tokenizer  the tokenizer a dataset's meta.json (or a checkpoint's copy of it) names
    same_tokenizer  whether two metas give the same ids to the same text (train.py's refusal)

Every tokenizer has .name, .vocab_size, .eot_token (None if it has no end-of-text id), .encode(text),
.encode_batch(texts), .decode(ids), .byte_lengths() (the UTF-8 bytes each id stands for, for bits
per byte; 0 for the end-of-text id, a boundary between documents rather than text) and
.safe_cut(text, start, end) (where a long text may be cut to be encoded in pieces). encode() never
parses special tokens: the string "<|endoftext|>" inside a text stays text; documents are separated
by the eot_token id itself.
"""
import functools
import hashlib
import json
import sys

from configurator import UserError

EOT_TEXT = "<|endoftext|>"
GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}  # GPT-2's, as a meta records it
BPE_EOT_ID = 0  # a learned BPE's <|endoftext|>: id 0 whatever the vocabulary size, then 256 bytes


class GPT2Tokenizer:
    """GPT-2 BPE via tiktoken."""
    name = "gpt2"

    def __init__(self):
        import tiktoken
        try:
            self._enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline: a requests ConnectionError; a bad cache: ValueError
            raise UserError(f"could not load the GPT-2 BPE files ({type(e).__name__}); offline, set "
                            "TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files") from None
        self.vocab_size = self._enc.n_vocab  # 50257
        self.eot_token = self._enc.eot_token  # 50256

    def encode(self, text):
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts):
        # One thread: the parallelism comes from prepare.py's worker processes.
        return self._enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids):
        return self._enc.decode(ids)

    def byte_lengths(self):
        lengths = [len(self._enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]
        lengths[self.eot_token] = 0  # a document boundary, not text
        return lengths

    def safe_cut(self, text, start, end):
        """See CharTokenizer.safe_cut. GPT-2's pre-tokenizer splits text into pieces that BPE encodes
        one by one: ' ?' + letters, ' ?' + digits, ' ?' + other symbols, contractions ('s, 't, ...)
        and runs of whitespace. A cut is safe where a piece of the whole text ends and the two sides
        split the same way alone: before a space between two non-spaces (the space starts the next
        piece, and no piece ends in a space followed by a non-space), and between a letter or digit
        and a following symbol (no piece holds both)."""
        match = _gpt2_cuts().search(text, start + 1, end)  # the last one; lookahead stops at end
        return match.start() if match else start


@functools.cache
def _gpt2_cuts():
    """GPT2Tokenizer.safe_cut's two kinds of cut, searched from the end (regex, which tiktoken
    depends on, knows Unicode's letters, \\p{L}, and digits, \\p{N})."""
    import regex
    return regex.compile(r"(?r)(?<=\S) (?=\S)|(?<=[\p{L}\p{N}])(?=[^\s\p{L}\p{N}])")


class CharTokenizer:
    """One id per character of the data's vocabulary, plus an end-of-text id when documents need one."""
    name = "char"

    def __init__(self, chars, eot_token=None):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot_token = eot_token
        self.vocab_size = len(self.chars) + (eot_token is not None)

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in this dataset's vocabulary of "
                            f"{len(self.chars)} characters") from None

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return "".join(EOT_TEXT if i == self.eot_token else self.chars[i] for i in ids)

    def safe_cut(self, text, start, end):
        """The last position i, start < i <= end, where text can be cut without changing its ids,
        encode(text[:i]) + encode(text[i:]) == encode(text), whatever text holds past end; start if
        there is none. prepare.py tokenizes long documents in pieces cut there. Characters are
        encoded one by one: any cut is safe."""
        return end

    def byte_lengths(self):
        return [len(c.encode()) for c in self.chars] + [0] * (self.eot_token is not None)


# -----------------------------------------------------------------------------
# A byte-level BPE of one's own
#
# Byte-level: the text's UTF-8 bytes are the alphabet, each shown in tokenizer.json as one printable
# character (GPT-2's mapping, BYTE_CHARS), so every string encodes and there is no unknown token.
# Learning follows GPT-2: a regular expression first cuts the text into words and runs of spaces,
# digits or punctuation; merges never cross those cuts. The ids: <|endoftext|> 0 (BPE_EOT_ID), the
# 256 bytes 1-256, then the merged tokens in the order they were learned.


def _byte_chars():
    """Byte -> the character that stands for it in a byte-level token (GPT-2's table): printable
    Latin-1 bytes stand for themselves, the 68 others (controls, space, ...) for U+0100 onwards."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}


BYTE_CHARS = _byte_chars()
CHAR_BYTES = {c: b for b, c in BYTE_CHARS.items()}


class BPETokenizer:
    """A byte-level BPE held by a Hugging Face `tokenizers.Tokenizer` (.hf), built from the text of
    its tokenizer.json (.json): the file transformers' AutoTokenizer loads too. It encodes through
    .ranked, the same BPE in tiktoken, where rank_encoder proves the ids equal."""
    name = "bpe"

    def __init__(self, json_text):
        from tokenizers import Tokenizer  # a Rust extension: imported when a BPE is used

        try:
            self.hf = Tokenizer.from_str(json_text)
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise UserError(f"not a readable tokenizer.json ({' '.join(str(e).split())[:200]})") from None
        self.json = json_text
        # "<|endoftext|>" inside a text is text, as in the GPT-2 path: without this, tokenizers
        # turns the string into the special id even with add_special_tokens=False
        self.hf.encode_special_tokens = True
        self.eot_token = self.hf.token_to_id(EOT_TEXT)
        if self.eot_token is None:
            raise UserError(f"this tokenizer.json has no {EOT_TEXT} token to separate documents with")
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def ranked(self):
        """The same BPE as a tiktoken Encoding, when rank_encoder proves it gives the same ids; else None."""
        return rank_encoder(json.loads(self.json))

    def encode(self, text):
        if self.ranked is not None:
            return self.ranked.encode_ordinary(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        if self.ranked is not None:  # one thread: prepare.py's worker processes are the parallelism
            return self.ranked.encode_ordinary_batch(texts, num_threads=1)
        # _fast: no character offsets, which nothing here uses. Threads: tokenizers' own (Rayon), but
        # one per process in prepare.py's workers (TOKENIZERS_PARALLELISM, set there).
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def safe_cut(self, text, start, end):
        """See CharTokenizer.safe_cut. A BPE learned by train_bpe splits text first with GPT-2's own
        pre-tokenizer (ByteLevel, its regular expression), so GPT-2's safe cuts hold for it; another
        tokenizer.json (one reused from elsewhere) may split differently, and is never cut."""
        if not self._splits_like_gpt2:
            return start
        match = _gpt2_cuts().search(text, start + 1, end)
        return match.start() if match else start

    @functools.cached_property
    def _splits_like_gpt2(self):
        return _splits_like_gpt2(json.loads(self.json))

    def byte_lengths(self):
        """A token's bytes are exact even when it holds part of a character: one byte per character
        of its byte-level string. Special tokens are no text: 0."""
        special = {i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
        lengths = []
        for i in range(self.vocab_size):
            token = self.hf.id_to_token(i)
            if i in special:
                lengths.append(0)
            elif token is None or not all(c in CHAR_BYTES for c in token):
                raise UserError(f"token {i} ({token!r}) is not made of byte-level characters: this "
                                "tokenizer.json is not a byte-level BPE")
            else:
                lengths.append(len(token))
        return lengths


def _splits_like_gpt2(config):
    """Whether a tokenizer.json cuts text into pieces exactly as GPT-2 does: no normalizer, and the
    ByteLevel pre-tokenizer with GPT-2's regular expression and no space added in front."""
    pre = config.get("pre_tokenizer") or {}
    return (config.get("normalizer") is None and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) and not pre.get("add_prefix_space", False))


# -----------------------------------------------------------------------------
# Encoding a learned BPE with tiktoken
#
# tiktoken encodes about 1.7x faster than `tokenizers` (BENCH.md), and it takes any byte-level BPE
# given as ranks. The two apply merges differently: `tokenizers` merges, again and again, the
# adjacent pair that comes first in the merge list; tiktoken the adjacent pair whose concatenation
# is the lowest-ranked token. rank_encoder hands a BPE to tiktoken only when that cannot change an id.

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # GPT-2's encoder.py


def rank_encoder(config):
    """A tiktoken Encoding that gives exactly the ids `tokenizers` gives with this tokenizer.json
    (parsed), or None where that is not proven. It is proven when the text is cut into pieces as
    GPT-2 cuts it, every token is bytes, and the merge list passes two checks:
      (1) each merge's token is ranked after its two parts and after every earlier merge's token;
      (2) each merge's token, encoded alone by the merge list, comes out as that one token.
    Why that suffices: in the merge-list run on a piece, a stretch whose ends are token boundaries
    has evolved as it would alone (no merge crossed its ends). So two adjacent tokens x, y that spell
    a token t have evolved like t alone, which by (1) and (2) holds two tokens only as the parts of
    t's own merge, just before it: (x, y) is that merge. Every adjacent pair that spells a token is
    then a merge, ordered by (1) as its token is, so both ways take the same steps (ties to the left
    in both). A greedy trainer's merges pass: each token was first made, in its text, from its parts."""
    from tokenizers import models

    model = config.get("model") or {}
    plain = (model.get("type") == "BPE" and not any(model.get(k) for k in (
        "dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")))
    added_are_special = all(t.get("special") for t in config.get("added_tokens") or [])
    vocab, merges = model.get("vocab") or {}, model.get("merges") or []
    if not (plain and added_are_special and _splits_like_gpt2(config)):
        return None
    special = {t["content"] for t in config.get("added_tokens") or []}
    if not all(c in CHAR_BYTES for token in vocab if token not in special for c in token):
        return None
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    alone = models.BPE(vocab, merges, ignore_merges=False)  # the merge list, without vocabulary shortcuts
    last = -1
    for a, b in merges:
        rank = vocab.get(a + b, -1)
        if not max(vocab.get(a, rank), vocab.get(b, rank), last) < rank:  # (1)
            return None
        if [t.value for t in alone.tokenize(a + b)] != [a + b]:  # (2)
            return None
        last = rank
    return _tiktoken_encoding(vocab, special, len(merges))


def _tiktoken_encoding(vocab, special, n_merges):
    """tiktoken's ranks are the ids; a vocabulary that holds more than the 256 bytes and the merges'
    tokens (a token no merge makes, which tiktoken would still merge into) is left to `tokenizers`."""
    import tiktoken

    ranks = {bytes(CHAR_BYTES[c] for c in token): i for token, i in vocab.items() if token not in special}
    if len(ranks) != 256 + n_merges or any(bytes([b]) not in ranks for b in range(256)):
        return None
    return tiktoken.Encoding("sprout-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})


def train_bpe(texts, vocab_size, length=None, show_progress=None):
    """Learn a byte-level BPE of exactly vocab_size tokens from an iterator of texts, streamed:
    memory holds the counts of distinct words, not the text. Deterministic: the trainer's ties go
    to the lower ids and the alphabet is fixed, so the same texts give a byte-identical tokenizer.json.
    The trainer's progress bars show on a terminal (`length`, the number of texts if known, sizes
    the first); elsewhere they would print only blank lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise UserError(f"a byte-level BPE needs at least 257 tokens (256 bytes and {EOT_TEXT}), "
                        f"got {vocab_size}")
    # ignore_merges: a word that is one token in the vocabulary is that token, as tiktoken does
    hf = Tokenizer(models.BPE(ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    alphabet = [BYTE_CHARS[b] for b in range(256)]
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], initial_alphabet=alphabet,
                                  show_progress=show_progress)
    hf.train_from_iterator(texts, trainer, length=length)
    if hf.get_vocab_size() != vocab_size:
        raise UserError(f"the text holds only enough distinct pairs for {hf.get_vocab_size():,} tokens, "
                        f"not {vocab_size:,}: give more text or a smaller --vocab_size")
    assert hf.token_to_id(EOT_TEXT) == BPE_EOT_ID
    return BPETokenizer(hf.to_str())


# -----------------------------------------------------------------------------
# Building and comparing tokenizers from a meta dict


def load_tokenizer(meta):
    """The tokenizer a dataset's meta dict names: the one place in the project that builds one."""
    kind = meta.get("tokenizer")
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer(meta["chars"], meta.get("eot_token"))
    if kind == "bpe":
        if "tokenizer_json" not in meta:
            raise UserError("this meta names a BPE tokenizer but holds no tokenizer_json (data.read_meta "
                            "adds it from the dataset's tokenizer.json); re-run prepare.py")
        return BPETokenizer(meta["tokenizer_json"])
    raise UserError(f"unknown tokenizer {kind!r} in meta.json (expected 'gpt2', 'char' or 'bpe')")


def tokenizer_fields(tok):
    """What a meta dict records about a tokenizer, for load_tokenizer to rebuild it."""
    extra = {"char": lambda: {"chars": tok.chars}, "bpe": lambda: {"tokenizer_json": tok.json}}
    return {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot_token": tok.eot_token,
            **extra.get(tok.name, dict)()}


def tokenizer_fingerprint(meta):
    """A short name that is equal for two metas exactly when they give the same ids to the same text:
    'gpt2', 'char:<hash>' or 'bpe:<hash>'. A BPE's hash covers what decides its ids (the model, the
    special tokens, the text's pre-processing), not the JSON's layout."""
    kind = meta.get("tokenizer")
    if kind == "char":
        what = [meta["chars"], meta.get("eot_token")]
    elif kind == "bpe":
        parsed = json.loads(meta["tokenizer_json"])
        what = [parsed.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer", "decoder")]
    else:
        return str(kind)
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{kind}:{digest[:12]}"


def same_tokenizer(a, b):
    """Whether metas a and b (a dataset's, a checkpoint's, checkpoint.GPT2_META) tokenize alike."""
    return tokenizer_fingerprint(a) == tokenizer_fingerprint(b)


def describe_tokenizer(meta):
    """'GPT-2's BPE (50,257 tokens)', 'a 4,096-token BPE (bpe:1a2b...)', 'a 65-character vocabulary'."""
    kind = meta.get("tokenizer")
    if kind == "gpt2":
        return "GPT-2's BPE (50,257 tokens)"
    if kind == "char":
        return f"a {len(meta['chars'])}-character vocabulary ({tokenizer_fingerprint(meta)})"
    return f"a {meta.get('vocab_size', 0):,}-token BPE ({tokenizer_fingerprint(meta)})"


class TextStream:
    """Turns tokens into text as they arrive. A character's UTF-8 bytes may span several BPE tokens:
    until they are all in, the partial text decodes to U+FFFD, so it is held back (at most 4 tokens,
    the longest UTF-8 character) rather than shown broken."""

    def __init__(self, tok):
        self.tok, self.pending = tok, []

    def push(self, token):
        """The text that token completes ('' while a character is still incomplete)."""
        self.pending.append(token)
        text = self.tok.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text

    def flush(self):
        text, self.pending = (self.tok.decode(self.pending) if self.pending else ""), []
        return text


# -----------------------------------------------------------------------------
# The chat template
#
# Role markers are plain text that GPT-2's BPE already has ("User:" and "Assistant:" are two tokens
# each), not new special ids beyond 50256. So any GPT-2-vocabulary checkpoint (GPT-2 itself, a
# TinyStories model) can learn to chat by fine-tuning alone: no embedding rows to add and train from
# nothing, and the words arrive with their meaning. Every message ends with <|endoftext|>, which such
# a model already predicts where a text is finished: generation stops there.
#
#     User: How are you?<|endoftext|>Assistant: Fine, thanks.<|endoftext|>
#
# The header and the content of a message are encoded apart (content with one leading space), so the
# point where a prompt ends and a reply begins tokenizes alike in training and in generation.

ROLES = {"system": "System:", "user": "User:", "assistant": "Assistant:"}
CHAT_TEMPLATE = ("sprout chat v1: 'System: ', 'User: ', 'Assistant: ' + content, <|endoftext|> after "
                 "each message")


def check_chat_tokenizer(tok):
    """Raise UserError unless the tokenizer can write the template: a byte-level BPE always can; a
    character vocabulary only with an end-of-text id and every character of the role markers."""
    if tok.eot_token is None:
        raise UserError("this model's vocabulary has no end-of-text token to end a chat turn with; chat "
                        "needs a BPE model (GPT-2's or one's own), e.g. one fine-tuned with "
                        "config/finetune_chat.py")
    try:
        for header in ROLES.values():
            tok.encode(header + " ")
    except UserError as e:
        raise UserError(f"this model cannot write the chat template ({e}); chat needs a BPE model "
                        "(GPT-2's or one's own), e.g. one fine-tuned with config/finetune_chat.py") from None


def encode_message(tok, role, content):
    """One message's token ids and loss mask: 1 on an assistant's content and end-of-turn, else 0."""
    header = tok.encode(ROLES[role])
    body = tok.encode(" " + content.strip()) + [tok.eot_token]
    learn = int(role == "assistant")
    return header + body, [0] * len(header) + [learn] * len(body)


def encode_conversation(tok, messages):
    """A whole conversation: (ids, mask), lists of equal length."""
    ids, mask = [], []
    for message in messages:
        message_ids, message_mask = encode_message(tok, message["role"], message["content"])
        ids += message_ids
        mask += message_mask
    return ids, mask


def chat_prompt(tok, messages, budget):
    """(prompt ids for the next assistant reply, at most `budget` of them; the messages kept). The
    oldest messages (after a leading system message) are left out until the prompt fits; a last
    message longer than that loses its beginning."""
    parts = [encode_message(tok, m["role"], m["content"])[0] for m in messages]
    first = int(messages[0]["role"] == "system" and len(messages) > 1)
    # every training conversation followed an end-of-turn, so a fresh chat starts after one too
    start, header = [tok.eot_token], tok.encode(ROLES["assistant"])
    while len(parts) - first > 1 and len(start) + sum(map(len, parts)) + len(header) > budget:
        del parts[first]
        messages = messages[:first] + messages[first + 1:]
    ids = start + [t for part in parts for t in part] + header
    return ids[-budget:], messages


def message_problem(message):
    """Why a message cannot be used, or None."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        return "missing role"
    if message["role"] not in ROLES:
        return f"unknown role {message['role']!r}"
    if not isinstance(message.get("content"), str) or not message["content"].strip():
        return "empty content"
    return None


def conversation_problem(messages):
    """Why a conversation cannot be trained on, or None."""
    if not isinstance(messages, list) or not messages:
        return "no messages list"
    for message in messages:
        if problem := message_problem(message):
            return problem
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message"
    return None
