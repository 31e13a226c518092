"""Tokenizers and the chat template: text <-> token ids, for every script.

    GPT2Tokenizer   GPT-2's 50,257-token byte-level BPE, through tiktoken
    CharTokenizer   one id per character of a dataset's vocabulary (shakespeare_char)
    load_tokenizer  the tokenizer a dataset's meta.json (or a checkpoint's copy of it) names

Every tokenizer has .name, .vocab_size, .eot_token (None if it has no end-of-text id), .encode(text),
.encode_batch(texts) and .decode(ids). encode() never parses special tokens: the string
"<|endoftext|>" inside a text stays text; documents are separated by the eot_token id itself.
"""
from configurator import UserError

EOT_TEXT = "<|endoftext|>"
GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}  # GPT-2's, as a meta records it


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


def load_tokenizer(meta):
    """The tokenizer a dataset's meta dict names: the one place in the project that builds one."""
    kind = meta.get("tokenizer")
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer(meta["chars"], meta.get("eot_token"))
    raise UserError(f"unknown tokenizer {kind!r} in meta.json (expected 'gpt2' or 'char')")


def tokenizer_fields(tok):
    """What a meta dict records about a tokenizer, for load_tokenizer to rebuild it."""
    return {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot_token": tok.eot_token,
            **({"chars": tok.chars} if tok.name == "char" else {})}


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
    """Raise UserError unless the tokenizer can write the template: GPT-2 BPE always can; a character
    vocabulary only with an end-of-text id and every character of the role markers."""
    if tok.eot_token is None:
        raise UserError("this model's vocabulary has no end-of-text token to end a chat turn with; chat "
                        "needs a GPT-2 BPE model, e.g. one fine-tuned with config/finetune_chat.py")
    try:
        for header in ROLES.values():
            tok.encode(header + " ")
    except UserError as e:
        raise UserError(f"this model cannot write the chat template ({e}); chat needs a GPT-2 BPE "
                        "model, e.g. one fine-tuned with config/finetune_chat.py") from None


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
