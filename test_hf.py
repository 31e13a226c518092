"""Tests of hf.py, Hugging Face interop: sprout models exported as Hugging Face folders (export,
save_pretrained) in the four layouts, and Hugging Face models read back (from_pretrained,
tokenizer_meta). Each claim is checked against transformers itself: its logits, its tokenizer, its
chat template, its text-generation pipeline. Skipped without transformers, which stays optional,
except where hf.py must refuse before it would need it.
"""
from types import SimpleNamespace

import pytest
import torch

import hf
import sample
import train
from checkpoint import GPT2_META, load_model
from configurator import UserError, configure
from conftest import (CHAR_META, CONVERSATIONS, REPO, bpe_meta, greedy_ids, make_bpe_dataset, needs_gpt2_files,
                      needs_transformers, run_train, tiny_model, tiny_variant)
from model import GPTConfig
from tokenizer import CHAT_TEMPLATE, chat_prompt, encode_conversation, load_tokenizer

LAYOUTS = {  # the model options that choose each Hugging Face layout
    "gpt2": {},
    "llama": dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", bias=False),
    "qwen3": dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", bias=False, qk_norm=True),
    "mixtral": dict(pos_emb="rope", mlp="swiglu", norm="rmsnorm", bias=False, n_expert=4, n_expert_active=2),
}
EXPORTED = {  # the models exported: each layout, and options each has a place for
    "gpt2": ("gpt2", dict(mlp_hidden=96)),
    "llama": ("llama", LAYOUTS["llama"]),
    "llama-bias": ("llama", LAYOUTS["llama"] | dict(bias=True, mlp_hidden=80)),
    "qwen3": ("qwen3", LAYOUTS["qwen3"] | dict(rope_base=500.0)),
    "mixtral": ("mixtral", LAYOUTS["mixtral"]),
}
# what tokenizers trip on: accents, a combining mark, emoji (one with a joiner), CJK, RTL, a lone \r
HARD_TEXT = "Ça va? ÅNGSTRÖM naïve e\u0301 👩‍💻🐍 日本語の文 مرحبا\r x\t\ty   z 12,345.678 don't\n\n end"


@pytest.fixture(scope="module")
def chat_meta():
    return bpe_meta() | {"chat_template": CHAT_TEMPLATE}


@pytest.fixture(scope="module", params=EXPORTED)
def exported(request, tmp_path_factory, chat_meta):
    """A tiny model of each layout with a trained BPE and the chat template, exported."""
    layout, options = EXPORTED[request.param]
    model = tiny_variant(block_size=64, vocab_size=chat_meta["vocab_size"], **options)
    with torch.no_grad():  # weights far from GPT-2's small init: greedy text that varies, not one token again
        for p in model.parameters():
            if p.dim() > 1 or p.abs().max() == 0:  # matrices and biases; the norms' gains stay 1
                p.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp(request.param) / "hf"
    assert hf.export(model, chat_meta, folder, {"iter_num": 10, "best_val_loss": 3.0}) == layout
    return SimpleNamespace(layout=layout, model=model, folder=folder, meta=chat_meta,
                           tok=hf.load_tokenizer(chat_meta))


def ids_of(encoding):
    """The ids of apply_chat_template's answer: a list, or a dict holding one (transformers 5)."""
    return list(encoding["input_ids"] if hasattr(encoding, "keys") else encoding)


# -----------------------------------------------------------------------------
# Export: what transformers makes of the folder


@needs_transformers
def test_export_loads_in_automodel_with_sprouts_logits(exported):
    import transformers
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported.folder).eval()
    assert type(theirs).__name__ == hf.CLASSES[exported.layout]
    idx = torch.randint(0, exported.meta["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = exported.model(idx, idx)
        err = (theirs(idx).logits - expected).abs().max().item()
    assert err < 1e-4, f"{exported.layout}: Hugging Face logits differ from ours by {err}"


@needs_transformers
def test_export_tokenizer_encodes_hard_unicode_as_sprout_does(exported):
    import transformers
    theirs = transformers.AutoTokenizer.from_pretrained(exported.folder)
    ids = exported.tok.encode(HARD_TEXT)
    assert theirs(HARD_TEXT, add_special_tokens=False)["input_ids"] == ids
    assert theirs.decode(ids) == HARD_TEXT == exported.tok.decode(ids)
    assert theirs.eos_token_id == exported.meta["eot_token"]


@needs_transformers
def test_export_chat_template_gives_sprouts_token_ids(exported):
    import transformers
    theirs = transformers.AutoTokenizer.from_pretrained(exported.folder)
    eot = exported.tok.eot_token
    for messages in CONVERSATIONS:
        prompt = ids_of(theirs.apply_chat_template(messages, add_generation_prompt=True))
        assert prompt == chat_prompt(exported.tok, messages, budget=10 ** 6)[0], messages
        whole = ids_of(theirs.apply_chat_template(messages))
        assert whole == [eot] + encode_conversation(exported.tok, messages)[0], messages  # as trained on
    with pytest.raises(Exception, match="unknown role tool"):
        theirs.apply_chat_template([{"role": "tool", "content": "x"}])


@needs_transformers
def test_export_pipeline_greedy_text_equals_sample_py(exported, run_main):
    import transformers
    prompt = "the cat sat"
    pipe = transformers.pipeline("text-generation", model=str(exported.folder))
    theirs = pipe(prompt, max_new_tokens=20, do_sample=False)[0]["generated_text"]
    ours = run_main(sample, f"--init_from={exported.folder}", f"--start={prompt}", "--max_new_tokens=20",
                    "--temperature=0").stdout
    assert ours == theirs + "\n", (ours, theirs)
    prompt_ids = exported.tok.encode(prompt)  # and the ids, which text with broken UTF-8 would hide
    out = pipe.model.generate(torch.tensor([prompt_ids]), max_new_tokens=20, do_sample=False)
    new = out[0, len(prompt_ids):]
    expected = greedy_ids(exported.model, prompt_ids, 20)
    assert new.tolist() == expected[:len(new)] and len(set(expected)) > 3, (new, expected)


@needs_transformers
def test_export_then_import_gives_identical_logits_and_meta(exported):
    model, meta, ckpt = load_model(str(exported.folder), "unused")
    assert ckpt is None and model.config == exported.model.config
    assert meta == exported.meta  # the tokenizer.json text itself, and the chat template
    idx = torch.randint(0, exported.meta["vocab_size"], (1, 64))
    with torch.no_grad():
        assert torch.equal(model.eval()(idx, idx)[0], exported.model(idx, idx)[0])


@needs_transformers
def test_export_writes_the_files_a_hub_model_has(exported):
    import json
    names = sorted(p.name for p in exported.folder.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"], names
    eot = exported.meta["eot_token"]
    generation = json.loads((exported.folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == eot, generation
    card = (exported.folder / "README.md").read_text()
    for fact in ("2 layers, 2 heads, 32 wide, 64-token context", "trained for 10 iterations",
                 "validation loss: 3.0000", "chat template included", hf.CLASSES[exported.layout]):
        assert fact in card, (fact, card)


@needs_gpt2_files
@needs_transformers
def test_export_with_gpt2s_tokenizer_writes_vocab_and_merges_that_match_tiktoken(tmp_path):
    import transformers
    meta = GPT2_META | {"chat_template": CHAT_TEMPLATE}
    model = tiny_model(block_size=32, vocab_size=50257, n_embd=16)
    hf.export(model, meta, tmp_path / "hf")
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    theirs, ours = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf"), load_tokenizer(GPT2_META)
    assert theirs(HARD_TEXT, add_special_tokens=False)["input_ids"] == ours.encode(HARD_TEXT)
    for messages in CONVERSATIONS:
        prompt = ids_of(theirs.apply_chat_template(messages, add_generation_prompt=True))
        assert prompt == chat_prompt(ours, messages, budget=10 ** 6)[0], messages
    assert load_model(str(tmp_path / "hf"), "unused")[1] == meta  # GPT-2's meta, and chat


# -----------------------------------------------------------------------------
# Export: what has no place in a Hugging Face format


@pytest.mark.parametrize("options,message", [
    (dict(pos_emb="rope"), "mlp='gelu' has no place in Llama's Hugging Face format (pos_emb='rope' exports "
                           "as LlamaForCausalLM, which needs mlp='swiglu')"),
    (dict(mlp="swiglu"), "mlp='swiglu' has no place in GPT-2's Hugging Face format (pos_emb='learned' exports "
                         "as GPT2LMHeadModel, which needs mlp='gelu')"),
    (dict(norm="rmsnorm"), "norm='rmsnorm' has no place in GPT-2's"),
    (dict(n_expert=4), "n_expert=4 has no place in GPT-2's"),
    (LAYOUTS["llama"] | dict(norm="layernorm"), "norm='layernorm' has no place in Llama's"),
    (LAYOUTS["qwen3"] | dict(bias=True), "bias=True has no place in Qwen3's Hugging Face format "
                                         "(pos_emb='rope' and qk_norm=True exports as Qwen3ForCausalLM"),
    (dict(pos_emb="rope", qk_norm=True), "mlp='gelu' has no place in Qwen3's"),
    (LAYOUTS["mixtral"] | dict(bias=True), "bias=True has no place in Mixtral's Hugging Face format "
                                           "(pos_emb='rope' and n_expert=4 exports as MixtralForCausalLM"),
])
def test_export_refuses_an_option_without_a_place_naming_it(tmp_path, options, message):
    model = tiny_variant(**options)
    with pytest.raises(UserError) as info:
        hf.export(model, GPT2_META, tmp_path / "hf")  # refused before its tokenizer loads
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary folder


@pytest.mark.parametrize("layout,name,chosen_by", [("gpt2", "GPT-2's", "pos_emb='learned'"),
                                                    ("mixtral", "Mixtral's", "pos_emb='rope' and n_expert=4")])
def test_export_refuses_qk_norm_where_the_layout_has_none_naming_it(tmp_path, layout, name, chosen_by):
    with pytest.raises(UserError, match=rf"^qk_norm=True has no place in {name} Hugging Face format "
                                        rf"\({chosen_by} exports as {hf.CLASSES[layout]}, which needs "
                                        rf"qk_norm=False\)$"):
        hf.export(tiny_variant(**LAYOUTS[layout], qk_norm=True), GPT2_META, tmp_path / "hf")
    assert not list(tmp_path.iterdir())
    config = GPTConfig(**LAYOUTS["llama"], dropout=0.1, grad_checkpoint=True)  # training-only options pass
    assert hf.export_layout(config) == "llama"
    assert hf.export_layout(GPTConfig(**LAYOUTS["llama"], qk_norm=True)) == "qwen3"


@pytest.mark.parametrize("preset", sorted(p.name for p in REPO.glob("config/train_tinystories*.py")))
def test_every_tinystories_preset_trains_a_model_that_exports(preset):
    """The presets meant for publishing: what they train has a Hugging Face layout (found out before
    hours of training, not after)."""
    settings = configure(train.DEFAULTS, [str(REPO / "config" / preset)])
    config = GPTConfig(**train.model_settings(SimpleNamespace(**settings)))  # as train.py builds it
    assert hf.export_layout(config) in hf.CLASSES


def test_export_refuses_a_character_level_model(tmp_path):
    with pytest.raises(UserError, match="a model with a 'char' tokenizer cannot be exported: Hugging Face "
                                        "needs a BPE vocabulary"):
        hf.export(tiny_model(vocab_size=CHAR_META["vocab_size"]), CHAR_META, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# -----------------------------------------------------------------------------
# Import: Hugging Face models from elsewhere


def hf_gpt2(tmp_path):
    """A small random Hugging Face GPT-2, saved to tmp_path/hf."""
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return model


def hf_llama(folder, seed=0, **options):
    """A small random Hugging Face Llama (its own hidden width, tied), saved to folder."""
    import transformers
    torch.manual_seed(seed)
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=True)
    config = transformers.LlamaConfig(**shape | options)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


def assert_same_logits(theirs, ours, vocab_size, tolerance=1e-5):
    idx = torch.randint(0, vocab_size, (2, ours.config.block_size))
    with torch.no_grad():
        expected = theirs(idx).logits
    got, _ = ours.eval()(idx, idx)
    err = (got - expected).abs().max().item()
    assert err < tolerance, f"logits differ from Hugging Face by {err}"


@needs_transformers
def test_from_pretrained_loads_a_local_hf_gpt2_with_identical_logits(tmp_path):
    theirs = hf_gpt2(tmp_path)
    assert_same_logits(theirs, hf.from_pretrained(str(tmp_path / "hf")), 96)


@needs_transformers
def test_from_pretrained_loads_a_llama_from_elsewhere_which_then_fine_tunes(tmp_path, tiny_bpe):
    theirs = hf_llama(tmp_path / "llama", vocab_size=tiny_bpe.vocab_size)
    (tmp_path / "llama" / "tokenizer.json").write_text(tiny_bpe.json, encoding="utf-8")
    ours = hf.from_pretrained(str(tmp_path / "llama"))
    assert ours.config.mlp_hidden == 80 and ours.config.pos_emb == "rope", ours.config
    assert_same_logits(theirs, ours, tiny_bpe.vocab_size)
    # data tokenized with the folder's own tokenizer (train.py refuses any other)
    data = make_bpe_dataset(tmp_path / "data", tiny_bpe, tokenizer=str(tmp_path / "llama"))
    s = run_train(data, tmp_path / "out", f"--init_from={tmp_path / 'llama'}", "--max_iters=10")
    assert s["evals"][-1]["val"] < s["evals"][0]["val"], s["evals"]


@needs_transformers
def test_from_pretrained_accepts_an_untied_head_only_when_it_equals_the_embeddings(tmp_path):
    theirs = hf_llama(tmp_path / "same", tie_word_embeddings=False)
    with torch.no_grad():
        theirs.lm_head.weight.copy_(theirs.model.embed_tokens.weight)
    theirs.save_pretrained(tmp_path / "same")
    assert_same_logits(theirs, hf.from_pretrained(str(tmp_path / "same")), 64)
    hf_llama(tmp_path / "apart", tie_word_embeddings=False)
    with pytest.raises(UserError, match="^tie_word_embeddings=False has no place in this model.py"):
        hf.from_pretrained(str(tmp_path / "apart"))


LLAMA = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, rms_norm_eps=1e-5)


@needs_transformers
@pytest.mark.parametrize("kind,options,message", [
    ("LlamaConfig", dict(num_key_value_heads=2), "num_key_value_heads=2 has no place in this model.py (it needs "
                                                 "num_key_value_heads=4, one per query head: no grouped-query "
                                                 "attention)"),
    ("LlamaConfig", dict(attention_bias=True), "mlp_bias=False has no place in this model.py (it needs "
                                               "mlp_bias=attention_bias=True: one bias setting covers both)"),
    ("LlamaConfig", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
     "rope_type='linear' has no place in this model.py"),
    ("LlamaConfig", dict(rms_norm_eps=1e-6), "rms_norm_eps=1e-06 has no place in this model.py (it needs "
                                             "rms_norm_eps=1e-05)"),
    ("LlamaConfig", dict(hidden_act="gelu"), "hidden_act='gelu' has no place in this model.py"),
    ("MixtralConfig", dict(num_key_value_heads=4, sliding_window=8, max_position_embeddings=64),
     "sliding_window=8 has no place in this model.py"),
    ("GPT2Config", dict(activation_function="relu"), "activation_function='relu' has no place in this model.py "
                                                     "(it needs activation_function='gelu_new' or "
                                                     "'gelu_pytorch_tanh')"),
    ("GPTNeoConfig", {}, "model_type 'gpt_neo' has no counterpart here (sprout reads gpt2, llama, qwen3, mixtral)"),
])
def test_from_pretrained_refuses_settings_it_cannot_hold_naming_them(tmp_path, kind, options, message):
    import transformers
    config = getattr(transformers, kind)(**(LLAMA if kind != "GPTNeoConfig" else {}) | options)
    config.save_pretrained(tmp_path)  # the config is refused before any weights are read
    with pytest.raises(UserError) as info:
        hf.from_pretrained(str(tmp_path))
    assert str(info.value).startswith(message), str(info.value)


@needs_transformers
def test_from_pretrained_explains_an_offline_hub_and_an_unknown_name(tmp_path):
    from conftest import run_script
    # in a fresh process: huggingface_hub reads HF_HUB_OFFLINE once, at import
    code = "import hf\ntry: hf.from_pretrained('gpt2')\nexcept RuntimeError as e: print(e)"
    out = run_script("-c", code, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert "could not download 'gpt2'" in out.stdout and "pass a local directory" in out.stdout, out
    with pytest.raises(ValueError, match="neither a directory nor one of gpt2"):
        hf.from_pretrained("gpt7")


# -----------------------------------------------------------------------------
# save_pretrained: the model files alone


@needs_transformers
def test_save_pretrained_output_loads_in_automodel_with_identical_logits(tmp_path):
    import transformers
    for bias in (True, False):  # without biases: GPT-2's format with zero biases
        ours = tiny_model(bias=bias)
        hf.save_pretrained(ours, tmp_path / f"out{bias}")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"out{bias}").eval()
        assert_same_logits(theirs, ours, 64)


@needs_transformers
@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_save_pretrained_writes_an_untied_output_layer_as_tie_word_embeddings_false(tmp_path, layout):
    import transformers
    ours = tiny_variant(**LAYOUTS[layout])
    with torch.no_grad():  # an output layer apart from the token embeddings
        ours.lm_head.weight = torch.nn.Parameter(ours.lm_head.weight + 0.1 * torch.randn_like(ours.lm_head.weight))
    hf.save_pretrained(ours, tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.tie_word_embeddings is False
    assert_same_logits(theirs, ours, 64)
