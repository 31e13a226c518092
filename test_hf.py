"""Tests of hf.py, Hugging Face interop: GPT-2's weights in (from_pretrained), Hugging Face folders
out (save_pretrained). Skipped without transformers, which stays optional, except where hf.py must
refuse before it would need it.
"""
import pytest
import torch

import hf
from conftest import needs_transformers, run_script, tiny_model, tiny_variant
from model import GPTConfig


def hf_gpt2(tmp_path):
    """A small random Hugging Face GPT-2, saved to tmp_path/hf."""
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return model


# -----------------------------------------------------------------------------
# from_pretrained


@needs_transformers
def test_from_pretrained_loads_a_local_hf_gpt2_with_identical_logits(tmp_path):
    theirs = hf_gpt2(tmp_path)
    ours = hf.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        expected = theirs(idx).logits
    got, _ = ours(idx, idx)
    err = (got - expected).abs().max().item()
    assert err < 1e-5, f"logits differ from Hugging Face by {err}"


@needs_transformers
def test_from_pretrained_explains_an_offline_hub_and_an_unknown_name(tmp_path):
    # in a fresh process: huggingface_hub reads HF_HUB_OFFLINE once, at import
    code = "import hf\ntry: hf.from_pretrained('gpt2')\nexcept RuntimeError as e: print(e)"
    out = run_script("-c", code, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert "could not download 'gpt2'" in out.stdout and "pass a local directory" in out.stdout, out
    with pytest.raises(ValueError, match="neither a directory nor one of gpt2"):
        hf.from_pretrained("gpt7")


# -----------------------------------------------------------------------------
# save_pretrained


@needs_transformers
def test_save_pretrained_output_loads_in_automodel_with_identical_logits(tmp_path):
    import transformers
    for bias in (True, False):
        ours = tiny_model(bias=bias)
        hf.save_pretrained(ours, tmp_path / f"out{bias}")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"out{bias}").eval()
        idx = torch.randint(0, 64, (2, 16))
        with torch.no_grad():
            expected = theirs(idx).logits
        got, _ = ours(idx, idx)
        err = (got - expected).abs().max().item()
        assert err < 1e-5, f"bias={bias}: Hugging Face logits differ from ours by {err}"


@pytest.mark.parametrize("option,value", [("pos_emb", "rope"), ("mlp", "swiglu"), ("norm", "rmsnorm"),
                                          ("qk_norm", True), ("n_expert", 4)])
def test_save_pretrained_refuses_variants_naming_the_option(tmp_path, option, value):
    model = tiny_variant(**{option: value})
    with pytest.raises(ValueError) as info:
        hf.save_pretrained(model, tmp_path / "hf")
    message = str(info.value)
    assert message == f"save_pretrained: {option}={value!r} has no place in GPT-2's Hugging Face format " \
                      f"(it needs {option}={getattr(GPTConfig(), option)!r})", message
    assert not (tmp_path / "hf").exists()
