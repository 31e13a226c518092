"""Hugging Face interop: sprout models out to Hugging Face folders, and Hugging Face models in. The
only place that imports transformers, which stays optional: nothing needs it to train or sample.

    export(model, meta, folder, ckpt)   a complete folder: weights, config, tokenizer, chat template,
                                        model card; checked by loading it back with transformers
    save_pretrained(model, folder)      the weights and configs alone
    from_pretrained(name_or_dir)        a GPT from GPT-2's hub names or a local folder of any layout
    tokenizer_meta(folder)              the meta dict of a folder's tokenizer, for load_tokenizer

The layouts, chosen from the model's config; anything else is refused naming the option:

    learned positions, GELU, LayerNorm        GPT2LMHeadModel
    RoPE, SwiGLU, RMSNorm                     LlamaForCausalLM
    RoPE, SwiGLU, RMSNorm, QK-norm, no biases Qwen3ForCausalLM (the TinyStories presets' block)
    RoPE, SwiGLU, RMSNorm, experts            MixtralForCausalLM

The maths match exactly: HF Llama's rotate_half turns channel pairs (i, i + hs/2) with inverse
frequencies base^(-2i/hs), as apply_rope does; our c_fc holds SwiGLU's gate rows, then its up rows;
Mixtral's router takes a softmax over all experts, the top k, and renormalises them, as MoE does
(transformers 5's MixtralTopKRouter); Qwen3's q_norm and k_norm are an RMSNorm over each head's
channels, shared by the heads and applied before RoPE, as ours. Biases map to Llama's attention_bias
and mlp_bias together.
One difference stays: a Hugging Face tokenizer reads the text "<|endoftext|>" as the special token,
where ours keep it as text.
"""
import json
import math
import os
import re
from dataclasses import fields
from pathlib import Path

import torch

from configurator import UserError
from fileio import staged_folder
from model import GPT, GPTConfig, hidden_width
from tokenizer import CHAT_TEMPLATE, EOT_TEXT, GPT2_META, ROLES, chat_prompt, load_tokenizer

HF_GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "mixtral": "MixtralForCausalLM"}
NAMES = {"gpt2": "GPT-2", "llama": "Llama", "qwen3": "Qwen3", "mixtral": "Mixtral"}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("Hugging Face interop needs transformers: pip install transformers") from None
    transformers.utils.logging.disable_progress_bar()  # loading or saving a folder takes a moment: no bars
    return transformers


# -----------------------------------------------------------------------------
# Which layout a config exports to


GPT2_ACTIVATIONS = {"gelu": "gelu_new"}  # our mlp -> GPT2Config's activation_function (GELU, tanh form)
# what each layout needs of the options that shape the network
NEEDS = {"gpt2": dict(pos_emb=("learned",), mlp=tuple(GPT2_ACTIVATIONS), norm=("layernorm",), n_expert=(0,),
                      qk_norm=(False,)),
         "llama": dict(pos_emb=("rope",), mlp=("swiglu",), norm=("rmsnorm",), n_expert=(0,), qk_norm=(False,)),
         # Llama's block with QK-norm (an RMSNorm per head on queries and keys, before RoPE, as ours);
         # its feed-forward layers have no biases
         "qwen3": dict(pos_emb=("rope",), mlp=("swiglu",), norm=("rmsnorm",), n_expert=(0,), bias=(False,)),
         "mixtral": dict(pos_emb=("rope",), mlp=("swiglu",), norm=("rmsnorm",), bias=(False,), qk_norm=(False,))}
# the options every layout's config carries (an untied output layer: tie_word_embeddings=False), and
# those that change training but not what the weights compute; any other option at a value other
# than its default has no place in a Hugging Face format
CARRIED = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias", "pos_emb", "rope_base", "mlp",
           "mlp_hidden", "norm", "qk_norm", "n_expert", "n_expert_active"}
TRAINING_ONLY = {"dropout", "aux_loss_coef", "grad_checkpoint"}


def export_layout(config):
    """'gpt2', 'llama', 'qwen3' or 'mixtral'; a UserError naming the first option none of them can hold."""
    if config.pos_emb == "learned":
        layout = "gpt2"
    else:
        layout = "mixtral" if config.n_expert else "qwen3" if config.qk_norm else "llama"
    chosen_by = f"pos_emb={config.pos_emb!r}" + {"gpt2": "", "llama": "", "qwen3": " and qk_norm=True",
                                                 "mixtral": f" and n_expert={config.n_expert}"}[layout]
    for key, allowed in NEEDS[layout].items():
        if getattr(config, key) not in allowed:
            needed = " or ".join(f"{key}={value!r}" for value in allowed)
            raise UserError(f"{key}={getattr(config, key)!r} has no place in {NAMES[layout]}'s Hugging Face "
                            f"format ({chosen_by} exports as {CLASSES[layout]}, which needs {needed})")
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name not in CARRIED | TRAINING_ONLY and value != f.default:
            raise UserError(f"{f.name}={value!r} has no place in {NAMES[layout]}'s Hugging Face format "
                            f"({CLASSES[layout]} has no such option)")
    return layout


def _tied(model):
    return model.lm_head.weight is model.transformer.wte.weight


def _hf_config(model, layout, eot):
    c, tf = model.config, _transformers()
    common = dict(vocab_size=c.vocab_size, tie_word_embeddings=_tied(model), bos_token_id=eot,
                  eos_token_id=eot, pad_token_id=eot)
    if layout == "gpt2":
        return tf.GPT2Config(n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
                             n_inner=c.mlp_hidden or None, activation_function=GPT2_ACTIVATIONS[c.mlp],
                             layer_norm_epsilon=1e-5, resid_pdrop=c.dropout, embd_pdrop=c.dropout,
                             attn_pdrop=c.dropout, **common)
    # one key/value head per query head (no grouped-query attention); nn.RMSNorm's eps is 1e-5
    shape = dict(hidden_size=c.n_embd, intermediate_size=hidden_width(c, c.mlp), num_hidden_layers=c.n_layer,
                 num_attention_heads=c.n_head, num_key_value_heads=c.n_head, head_dim=c.n_embd // c.n_head,
                 hidden_act="silu", max_position_embeddings=c.block_size, rms_norm_eps=1e-5,
                 rope_theta=c.rope_base, attention_dropout=0.0, **common)
    if layout == "llama":
        return tf.LlamaConfig(attention_bias=c.bias, mlp_bias=c.bias, **shape)
    if layout == "qwen3":
        return tf.Qwen3Config(attention_bias=False, use_sliding_window=False, **shape)
    return tf.MixtralConfig(num_local_experts=c.n_expert, num_experts_per_tok=c.n_expert_active,
                            router_aux_loss_coef=c.aux_loss_coef, sliding_window=None, **shape)


# -----------------------------------------------------------------------------
# Which of their tensors each of ours is

# (our key, their keys): several of theirs are our tensor's row blocks, in order (q, k, v; gate, up);
# "name[e]" is row e of their stacked expert tensor. GPT-2's names are ours (its Conv1D weights are
# stored transposed).
_LAYER = r"transformer\.h\.(\d+)\."
_THEIRS = r"model.layers.\1."
LLAMA_KEYS = [
    (r"transformer\.wte\.weight", ["model.embed_tokens.weight"]),
    (r"transformer\.ln_f\.weight", ["model.norm.weight"]),
    (r"lm_head\.weight", ["lm_head.weight"]),
    (_LAYER + r"ln_1\.weight", [_THEIRS + "input_layernorm.weight"]),
    (_LAYER + r"ln_2\.weight", [_THEIRS + "post_attention_layernorm.weight"]),
    (_LAYER + r"attn\.c_attn\.(weight|bias)", [_THEIRS + f"self_attn.{p}_proj.\\2" for p in "qkv"]),
    (_LAYER + r"attn\.c_proj\.(weight|bias)", [_THEIRS + r"self_attn.o_proj.\2"]),
    (_LAYER + r"attn\.(q|k)_norm\.weight", [_THEIRS + r"self_attn.\2_norm.weight"]),
    (_LAYER + r"mlp\.c_fc\.(weight|bias)", [_THEIRS + r"mlp.gate_proj.\2", _THEIRS + r"mlp.up_proj.\2"]),
    (_LAYER + r"mlp\.c_proj\.(weight|bias)", [_THEIRS + r"mlp.down_proj.\2"]),
    (_LAYER + r"mlp\.router\.weight", [_THEIRS + "mlp.gate.weight"]),
    (_LAYER + r"mlp\.experts\.(\d+)\.c_fc\.weight", [_THEIRS + r"mlp.experts.gate_up_proj[\2]"]),
    (_LAYER + r"mlp\.experts\.(\d+)\.c_proj\.weight", [_THEIRS + r"mlp.experts.down_proj[\2]"]),
]
GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _their_keys(layout, key):
    if layout == "gpt2":
        return [key]
    for ours, theirs in LLAMA_KEYS:
        if m := re.fullmatch(ours, key):
            return [m.expand(t) for t in theirs]
    raise AssertionError(f"no Hugging Face name for {key}")


def _split_index(name):
    """'x.gate_up_proj[3]' -> ('x.gate_up_proj', 3); a plain name -> (name, None)."""
    m = re.fullmatch(r"(.*)\[(\d+)\]", name)
    return (m[1], int(m[2])) if m else (name, None)


def to_theirs(model, layout):
    """Our state dict under their names and shapes (a tied output layer is left out)."""
    theirs, stacked = {}, {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and _tied(model):
            continue
        if layout == "gpt2" and key.endswith(GPT2_CONV1D):
            value = value.t()
        names = _their_keys(layout, key)
        for name, part in zip(names, value.chunk(len(names), dim=0)):
            name, e = _split_index(name)
            if e is None:
                theirs[name] = part.contiguous()
            else:
                stacked.setdefault(name, {})[e] = part
    for name, parts in stacked.items():
        theirs[name] = torch.stack([parts[e] for e in range(len(parts))])
    return theirs


def to_ours(theirs, model, layout):
    """Their state dict as our model's (ours must be tied if theirs is: the caller checks)."""
    ours = {}
    for key in model.state_dict():
        if key == "lm_head.weight" and _tied(model):
            ours[key] = ours["transformer.wte.weight"]
            continue
        parts = []
        for name in _their_keys(layout, key):
            name, e = _split_index(name)
            parts.append(theirs[name] if e is None else theirs[name][e])
        value = torch.cat(parts) if len(parts) > 1 else parts[0]
        ours[key] = value.t() if layout == "gpt2" and key.endswith(GPT2_CONV1D) else value
    return ours


# -----------------------------------------------------------------------------
# Writing a folder


def save_pretrained(model, folder, eot_token=None):
    """The weights (safetensors), config.json and generation_config.json (end-of-text as eos and pad)
    of `model` in `folder`, a folder transformers.AutoModelForCausalLM loads."""
    layout = export_layout(model.config)
    tf = _transformers()
    hf_model = getattr(tf, CLASSES[layout])(_hf_config(model, layout, eot_token))
    theirs = to_theirs(model, layout)
    wanted = hf_model.state_dict()
    for key in wanted.keys() - theirs.keys():
        if key.endswith(".bias") and not model.config.bias:
            theirs[key] = torch.zeros_like(wanted[key])  # bias=False is the same model with zero biases
    missing, unexpected = hf_model.load_state_dict(theirs, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and _tied(model))]
    if missing or unexpected:
        raise UserError(f"transformers {tf.__version__} lays out {CLASSES[layout]} differently from what "
                        f"this hf.py writes ({(missing + unexpected)[0]}); pip install -U transformers")
    if eot_token is not None:
        hf_model.generation_config.update(bos_token_id=eot_token, eos_token_id=eot_token,
                                          pad_token_id=eot_token)
    hf_model.save_pretrained(folder)
    return hf_model.eval()


# -----------------------------------------------------------------------------
# The tokenizer and the chat template

# tiktoken builds its "gpt2" encoding from these two files, which it downloads once and caches (in
# TIKTOKEN_CACHE_DIR) under the SHA-1 of their address: they are, byte for byte, the vocab.json and
# merges.txt of Hugging Face's GPT-2 tokenizer. Address and SHA-256 as in tiktoken_ext/openai_public.py.
GPT2_FILES = {
    "vocab.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                   "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


def chat_template_jinja():
    """tokenizer.py's chat template in Jinja, for apply_chat_template: an end-of-text first, each
    message as its role's header, a space, its stripped content and an end-of-text, then the assistant's
    header. The header and the content tokenize apart in both: the header ends in ':', which GPT-2's
    pre-tokenizer never joins to the ' ' that starts the content (export checks this on a sample)."""
    headers = ", ".join(f"'{role}': '{header}'" for role, header in ROLES.items())
    return ("{%- set headers = {" + headers + "} -%}{{- eos_token -}}"
            "{%- for message in messages -%}"
            "{%- if message['role'] not in headers -%}"
            "{{- raise_exception('unknown role ' + message['role'] + ': the roles are '"
            " + headers | join(', ')) -}}"
            "{%- endif -%}"
            "{{- headers[message['role']] + ' ' + (message['content'] | trim) + eos_token -}}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- headers['assistant'] -}}{%- endif -%}")


def _eot_text(meta):
    """The text of the end-of-text token in a trained BPE's tokenizer.json."""
    added = json.loads(meta["tokenizer_json"]).get("added_tokens", [])
    return next((t["content"] for t in added if t["id"] == meta["eot_token"]), EOT_TEXT)


def write_tokenizer(folder, meta, block_size, chat):
    """GPT-2's vocab.json + merges.txt, or a trained BPE's tokenizer.json, and tokenizer_config.json
    (with the chat template for chat models) in folder."""
    folder = Path(folder)
    eot = _eot_text(meta) if meta["tokenizer"] == "bpe" else EOT_TEXT
    config = {"bos_token": eot, "eos_token": eot, "model_max_length": block_size,
              "clean_up_tokenization_spaces": False}  # decode(encode(text)) == text, as ours
    if meta["tokenizer"] == "gpt2":
        from tiktoken.load import read_file_cached
        for name, (url, sha256) in GPT2_FILES.items():
            (folder / name).write_bytes(read_file_cached(url, sha256))
        config |= {"tokenizer_class": "GPT2Tokenizer", "unk_token": eot, "add_prefix_space": False}
    else:
        (folder / "tokenizer.json").write_text(meta["tokenizer_json"], encoding="utf-8")
        config |= {"tokenizer_class": "PreTrainedTokenizerFast"}
    if chat:
        config["chat_template"] = chat_template_jinja()
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# Text that trips tokenizers up: accents, a combining mark, emoji, CJK, a lone \r, runs of spaces and
# tabs, contractions, digits. (Not "<|endoftext|>": a Hugging Face tokenizer reads it as the special
# token, where ours keeps text as text.)
CHECK_TEXT = "Héllo wörld! naïve e\u0301 🐍🎉 中文字符 Ünïcödé\r\n\tit's  IT'S   1234567 ... \u00a0x\n\n"
CHECK_CHAT = [{"role": "system", "content": "Be brief. 🙂"},
              {"role": "user", "content": " Wie geht's? 中文 "},
              {"role": "assistant", "content": "Gut!\n\n1234"},
              {"role": "user", "content": "...and you?"}]


def check_folder(folder, model, tok, chat):
    """Load the folder with transformers and raise unless it is our model: the same token ids on
    CHECK_TEXT, the same chat prompt ids, and the same logits within 1e-4 in float32."""
    tf = _transformers()
    theirs = tf.AutoTokenizer.from_pretrained(folder)
    if theirs(CHECK_TEXT, add_special_tokens=False, verbose=False)["input_ids"] != tok.encode(CHECK_TEXT):
        raise UserError("the exported tokenizer encodes text differently from this model's own; please "
                        "report this with the tokenizer.json")
    if chat:
        got = theirs.apply_chat_template(CHECK_CHAT, add_generation_prompt=True, tokenize=True,
                                         return_dict=False, tokenizer_kwargs=dict(verbose=False))
        if got != chat_prompt(tok, CHECK_CHAT, budget=10 ** 9)[0]:
            raise UserError("the exported chat template gives other token ids than sprout's own on a sample "
                            "conversation; please report this with the tokenizer.json")
    ids = torch.tensor([tok.encode(CHECK_TEXT)[:model.config.block_size]])
    hf_model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected, _ = model.eval()(ids, ids)  # targets: logits at every position
        err = (hf_model(ids).logits - expected).abs().max().item()
    if not err <= 1e-4 * max(1.0, expected.abs().max().item()):
        raise UserError(f"transformers computes other logits from the exported weights (off by {err:.2g}); "
                        "please report this with the model's config")


# -----------------------------------------------------------------------------
# The model card and the whole export


def model_card(model, meta, ckpt, layout, name, chat):
    """README.md: what the model is, what it was trained on and how well, and how to load it."""
    c, ckpt = model.config, ckpt or {}
    words = {"learned": "learned positions", "rope": "RoPE", "gelu": "GELU", "swiglu": "SwiGLU",
             "layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
    variant = ", ".join(words[v] for v in (c.pos_emb, c.mlp, c.norm))
    variant += f", {c.n_expert} experts ({c.n_expert_active} active)" if c.n_expert else ""
    tokens = ("GPT-2's BPE" if meta["tokenizer"] == "gpt2" else "a byte-level BPE trained on its data") \
        + f", {meta['vocab_size']:,} tokens"
    facts = [f"- shape: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, {c.block_size}-token context; "
             f"{variant}; {model.get_num_params() / 1e6:.2f}M parameters",
             f"- tokenizer: {tokens}" + ("; chat template included" if chat else "")]
    if meta.get("name"):
        data = f"- data: {meta['name']}" + (f" ({meta['source']})" if meta.get("source") else "")
        facts.append(data + (f", {meta['train_tokens']:,} training tokens" if meta.get("train_tokens") else ""))
    if "iter_num" in ckpt:
        facts.append(f"- trained for {ckpt['iter_num']:,} iterations")
    scores = ckpt.get("eval") or {}  # the evaluation the checkpoint was saved at
    val_loss = scores.get("val_loss", ckpt.get("best_val_loss", math.inf))
    if math.isfinite(val_loss):
        facts.append(f"- validation loss: {val_loss:.4f} (nats per token)")
    if scores.get("val_bpb") is not None:  # the loss that compares across tokenizers
        facts.append(f"- validation bits per byte: {scores['val_bpb']:.4f}")
    usage = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
             f'model = AutoModelForCausalLM.from_pretrained("{name}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{name}")']
    if chat:
        usage += ['messages = [{"role": "user", "content": "Hello!"}]',
                  "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,",
                  "                                    return_tensors='pt', return_dict=False)",
                  "out = model.generate(ids, max_new_tokens=100)",
                  "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))"]
    else:
        usage += ['ids = tokenizer("Once upon a time", return_tensors="pt").input_ids',
                  "print(tokenizer.decode(model.generate(ids, max_new_tokens=100, do_sample=True)[0]))"]
    return "\n".join(["---", "library_name: transformers", "pipeline_tag: text-generation",
                      f"tags: [sprout, {layout}]", "---", "", f"# {name}", "",
                      f"A small GPT trained with sprout, as a Hugging Face `{CLASSES[layout]}`.", "", *facts,
                      "", "```python", *usage, "```", "",
                      "sprout loads it back with `--init_from=<this folder>` (train.py, sample.py, serve.py).",
                      ""])


def export(model, meta, folder, ckpt=None, replace=False, name=None):
    """Write `folder`, a complete Hugging Face model: weights, configs, tokenizer, chat template (for
    models trained on chat data: meta has "chat_template"), README.md (the model called `name`, the
    folder's by default). It is loaded back with transformers and checked (check_folder) before it
    takes its name, so a failed export leaves no folder behind. Returns the layout ('gpt2', 'llama'
    or 'mixtral')."""
    if meta.get("tokenizer") not in ("gpt2", "bpe"):
        raise UserError(f"a model with a {meta.get('tokenizer')!r} tokenizer cannot be exported: Hugging "
                        "Face needs a BPE vocabulary (GPT-2's, or one trained with prepare.py --tokenizer=bpe)")
    layout = export_layout(model.config)
    tok = load_tokenizer(meta)
    chat = bool(meta.get("chat_template"))
    folder = Path(folder)
    with staged_folder(folder, replace) as tmp:
        save_pretrained(model, tmp, tok.eot_token)
        write_tokenizer(tmp, meta, model.config.block_size, chat)
        card = model_card(model, meta, ckpt, layout, name or folder.name, chat)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        check_folder(tmp, model, tok, chat)
    return layout


def push_to_hub(folder, repo_id):
    """Upload a folder to the Hugging Face hub as the model repository repo_id (created if needed)."""
    try:
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder)).commit_url
    except Exception as e:  # offline, no token, no rights: the same advice for each
        why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise UserError(f"could not upload to the Hugging Face hub ({why}); {folder} is complete: upload "
                        f"it later with `hf upload {repo_id} {folder}` (after `hf auth login`)") from None


# -----------------------------------------------------------------------------
# Reading a folder (or GPT-2 from the hub)


def _rope(h):
    """(rope_theta, rope type): transformers 5 keeps both in rope_parameters; 4 in rope_theta and
    rope_scaling (None unless scaled)."""
    params = getattr(h, "rope_parameters", None) or getattr(h, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(h, "rope_theta", 10000.0))
    return theta, params.get("rope_type", params.get("type", "default"))


_OUR_ACTIVATIONS = {theirs: ours for ours, theirs in GPT2_ACTIVATIONS.items()} | {"gelu_pytorch_tanh": "gelu"}


def _misfits(h, layout):
    """(setting, value, whether this model.py can hold it, what it needs) for a Hugging Face config."""
    if layout == "gpt2":
        act = h.activation_function
        return [("activation_function", act, act in _OUR_ACTIVATIONS, " or ".join(map(repr, _OUR_ACTIVATIONS))),
                ("layer_norm_epsilon", h.layer_norm_epsilon, h.layer_norm_epsilon == 1e-5, "1e-05"),
                ("scale_attn_weights", h.scale_attn_weights, h.scale_attn_weights, "True"),
                ("scale_attn_by_inverse_layer_idx", h.scale_attn_by_inverse_layer_idx,
                 not h.scale_attn_by_inverse_layer_idx, "False")]
    nh, head_dim, rope_type = h.num_attention_heads, h.hidden_size // h.num_attention_heads, _rope(h)[1]
    bias, window = getattr(h, "attention_bias", False), getattr(h, "sliding_window", None)
    return [("num_key_value_heads", h.num_key_value_heads, h.num_key_value_heads == nh,
             f"{nh}, one per query head: no grouped-query attention"),
            ("head_dim", getattr(h, "head_dim", None), getattr(h, "head_dim", None) in (None, head_dim),
             f"hidden_size / num_attention_heads = {head_dim}"),
            ("hidden_act", h.hidden_act, h.hidden_act == "silu", "'silu'"),
            ("rms_norm_eps", h.rms_norm_eps, h.rms_norm_eps == 1e-5, "1e-05"),
            ("rope_type", rope_type, rope_type == "default", "'default': no rope scaling"),
            ("mlp_bias", getattr(h, "mlp_bias", False), getattr(h, "mlp_bias", False) == bias,
             f"attention_bias={bias}: one bias setting covers both"),
            ("sliding_window", window, window is None or window >= h.max_position_embeddings, "None")]


def our_config(hf_config):
    """(layout, GPTConfig fields) for a Hugging Face config; a UserError naming the first setting this
    model.py cannot hold."""
    h, layout = hf_config, hf_config.model_type
    if layout not in CLASSES:
        raise UserError(f"model_type {layout!r} has no counterpart here (sprout reads {', '.join(CLASSES)})")
    for key, value, fits, needed in _misfits(h, layout):
        if not fits:
            raise UserError(f"{key}={value!r} has no place in this model.py (it needs {key}={needed})")
    if layout == "gpt2":
        args = dict(block_size=h.n_positions, n_layer=h.n_layer, n_head=h.n_head, n_embd=h.n_embd, bias=True,
                    mlp=_OUR_ACTIVATIONS[h.activation_function], mlp_hidden=h.n_inner or 0)
    else:
        args = dict(block_size=h.max_position_embeddings, n_layer=h.num_hidden_layers,
                    n_head=h.num_attention_heads, n_embd=h.hidden_size, pos_emb="rope",
                    bias=getattr(h, "attention_bias", False), rope_base=float(_rope(h)[0]), mlp="swiglu",
                    mlp_hidden=h.intermediate_size, norm="rmsnorm", qk_norm=layout == "qwen3")
    if layout == "mixtral":
        args |= dict(n_expert=h.num_local_experts, n_expert_active=h.num_experts_per_tok,
                     aux_loss_coef=h.router_aux_loss_coef)
    args["vocab_size"] = h.vocab_size
    if args["mlp_hidden"] == hidden_width(GPTConfig(n_embd=args["n_embd"], n_head=args["n_head"]),
                                          args.get("mlp", "gelu")):
        args["mlp_hidden"] = 0  # the default width: model_args read as a model of ours would have them
    return layout, args


def _load(cls, name_or_dir, **kwargs):
    """cls.from_pretrained from a local folder (offline) or one of GPT-2's hub names."""
    if os.path.isdir(name_or_dir):
        return cls.from_pretrained(name_or_dir, local_files_only=True, **kwargs)
    if name_or_dir not in HF_GPT2_NAMES:
        raise ValueError(f"'{name_or_dir}' is neither a directory nor one of {', '.join(HF_GPT2_NAMES)}")
    try:
        return cls.from_pretrained(name_or_dir, **kwargs)
    except OSError as e:
        raise RuntimeError(
            f"could not download '{name_or_dir}' from the Hugging Face hub ({type(e).__name__}); "
            "offline, pass a local directory saved with save_pretrained() instead") from None


def from_pretrained(name_or_dir, **overrides):
    """A GPT from one of GPT-2's hub names (gpt2 ... gpt2-xl) or a local Hugging Face folder of any of
    the four layouts (works offline). overrides: GPTConfig fields the weights do not depend on."""
    tf = _transformers()
    layout, args = our_config(_load(tf.AutoConfig, name_or_dir))
    hf_model = _load(getattr(tf, CLASSES[layout]), name_or_dir, dtype=torch.float32)
    theirs = hf_model.state_dict()
    if not hf_model.config.tie_word_embeddings and not torch.equal(theirs["lm_head.weight"],
                                                                   hf_model.get_input_embeddings().weight):
        raise UserError("tie_word_embeddings=False has no place in this model.py (its output layer is its "
                        "token embedding table)")
    model = GPT(GPTConfig(**{**args, "dropout": 0.0, **overrides}))
    model.load_state_dict(to_ours(theirs, model, layout))
    return model


def tokenizer_meta(folder):
    """The meta dict of a Hugging Face folder's tokenizer, for tokenizer.load_tokenizer: GPT-2's own
    (a vocab.json of GPT-2's 50,257 tokens) or none at all -> GPT-2's meta; a tokenizer.json (or any
    tokenizer transformers turns into one) -> a "bpe" meta holding it. Our chat template comes along."""
    folder = Path(folder)
    files = [f for f in ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")
             if (folder / f).exists()]
    if not files:
        return dict(GPT2_META)  # as for GPT-2's own weights
    theirs = _transformers().AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if _is_gpt2s(folder):
        meta = dict(GPT2_META)
    elif theirs.is_fast:
        text = ((folder / "tokenizer.json").read_text(encoding="utf-8") if "tokenizer.json" in files
                else theirs.backend_tokenizer.to_str())
        meta = {"tokenizer": "bpe", "vocab_size": len(theirs), "eot_token": theirs.eos_token_id,
                "tokenizer_json": text}
    else:
        raise UserError(f"{folder}'s tokenizer has no tokenizer.json form (transformers could not convert it)")
    if theirs.chat_template == chat_template_jinja():
        meta["chat_template"] = CHAT_TEMPLATE
    return meta


def _is_gpt2s(folder):
    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return len(vocab) == 50257 and vocab.get(EOT_TEXT) == 50256 and vocab.get("\u0120the") == 262
