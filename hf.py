"""Hugging Face interop: GPT-2's weights in, Hugging Face folders out. The only place that imports
transformers, which stays optional: nothing needs it to train or sample a model of your own.

    from_pretrained("gpt2")            GPT-2 (or -medium, -large, -xl) from the hub, or a local folder
    save_pretrained(model, folder)     a folder transformers.AutoModelForCausalLM loads
"""
import os

import torch

from model import GPT, GPTConfig

HF_GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("Hugging Face interop needs transformers: pip install transformers") from None
    return transformers


def _is_conv1d(key):
    """HF GPT-2 stores these as Conv1D, (in, out): the transpose of nn.Linear's (out, in)."""
    return key.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))


def from_pretrained(name_or_dir, **overrides):
    """GPT-2 weights from a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a local Hugging Face
    folder (works offline). overrides: GPTConfig fields the weights do not depend on (dropout)."""
    GPT2LMHeadModel = _transformers().GPT2LMHeadModel
    if os.path.isdir(name_or_dir):
        hf = GPT2LMHeadModel.from_pretrained(name_or_dir, local_files_only=True)
    elif name_or_dir in HF_GPT2_NAMES:
        try:
            hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        except OSError as e:
            raise RuntimeError(
                f"could not download '{name_or_dir}' from the Hugging Face hub ({type(e).__name__}); "
                "offline, pass a local directory saved with save_pretrained() instead") from None
    else:
        raise ValueError(f"'{name_or_dir}' is neither a directory nor one of {', '.join(HF_GPT2_NAMES)}")
    c = hf.config
    model = GPT(GPTConfig(**{**dict(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                                    n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, bias=True), **overrides}))
    ours = model.state_dict()
    with torch.no_grad():
        for key, value in hf.state_dict().items():
            if key in ours:  # skips HF's non-parameter buffers (attention masks)
                ours[key].copy_(value.t() if _is_conv1d(key) else value)
    return model


def save_pretrained(model, out_dir):
    """Write a folder that transformers.AutoModelForCausalLM.from_pretrained() loads."""
    c = model.config
    gpt2 = dict(pos_emb="learned", mlp="gelu", norm="layernorm", qk_norm=False, n_expert=0)
    for key, gpt2s in gpt2.items():
        if getattr(c, key) != gpt2s:
            raise ValueError(f"save_pretrained: {key}={getattr(c, key)!r} has no place in GPT-2's "
                             f"Hugging Face format (it needs {key}={gpt2s!r})")
    tf = _transformers()
    hf_config = tf.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                              n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                              resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                              tie_word_embeddings=True)
    hf = tf.GPT2LMHeadModel(hf_config)
    ours = model.state_dict()
    with torch.no_grad():
        for key, value in hf.state_dict().items():
            if key in ours:
                value.copy_(ours[key].t() if _is_conv1d(key) else ours[key])
            elif key.endswith(".bias") and key[:-5] + ".weight" in ours:
                value.zero_()  # bias=False is the same model as GPT-2 with zero biases
    hf.save_pretrained(out_dir)
