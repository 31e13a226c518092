"""Tests of configurator.py, in its order: typed overrides from flags and config files, the settings
printout and --help, one-line errors from the scripts, and the device's peak FLOP/s for MFU.
"""
import pytest
import torch

import configurator
import train
from conftest import assert_one_line_error, run_script
from configurator import UserError, configure

DEFAULTS = dict(batch_size=12, learning_rate=6e-4, compile=None, device="auto", bias=False, out_dir="out",
                betas=(0.9, 0.95))


# -----------------------------------------------------------------------------
# Settings: flags, config files, the printout


def test_configure_parses_typed_literals():
    c = configure(DEFAULTS, ["--batch_size=1e3", "--learning_rate=1", "--compile=false", "--bias=TRUE",
                             "--device=cuda:1", "--out_dir=123", "--betas=(0.9, 0.99)"])
    assert c == dict(batch_size=1000, learning_rate=1.0, compile=False, bias=True, device="cuda:1",
                     out_dir="123", betas=(0.9, 0.99)), c
    assert type(c["batch_size"]) is int and type(c["learning_rate"]) is float
    assert configure(DEFAULTS, ["--device='cpu'", "--bias=False"])["device"] == "cpu"
    assert configure(DEFAULTS, []) == DEFAULTS


@pytest.mark.parametrize("flag, expected", [
    ("--batchsize=3", ["unknown option --batchsize", "did you mean --batch_size?"]),
    ("--learnin_rate=3", ["--learning_rate"]),
    ("--zzz=1", ["unknown option --zzz", "--help"]),
    ("--batch_size=1.5", ["batch_size", "1.5", "must be an int"]),
    ("--batch_size=abc", ["batch_size", "'abc'", "must be an int"]),
    ("--bias=1", ["bias", "must be a bool", "got 1"]),
    ("--learning_rate=fast", ["learning_rate", "'fast'", "must be a float"]),
    ("--betas=0.9", ["betas", "must be a tuple"]),
    ("--batch_size", ["--key=value"]),
    ("-b=3", ["--key=value"]),
    ("missing_config.py", ["config file not found: missing_config.py"]),
    ("batch_size=3", ["config file not found", "--key=value"]),
])
def test_configure_errors_name_the_problem(flag, expected):
    with pytest.raises(UserError) as e:
        configure(DEFAULTS, [flag])
    for text in expected:
        assert text in str(e.value), f"{text!r} not in {str(e.value)!r}"


def test_config_file_runs_with_defaults_in_scope_and_flags_win(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("import math\n_local = 2\nbatch_size = 64 * _local\n"
                   "learning_rate = batch_size * 1e-5\ncompile = True\n")
    c = configure(DEFAULTS, ["--batch_size=4", str(cfg)])  # files first, then flags, whatever the order
    assert (c["batch_size"], c["learning_rate"], c["compile"]) == (4, 128e-5, True), c


@pytest.mark.parametrize("body, expected", [
    ("batch_sise = 64\n", ["sets unknown key 'batch_sise'", "did you mean batch_size?"]),
    ("bias = 'yes'\n", ["bias must be a bool", "'yes'"]),
    ("x = (\n", ["line 1"]),
    ("a = 1\nb = undefined\n", ["line 2", "NameError"]),
])
def test_config_file_errors_name_file_and_key(tmp_path, body, expected):
    cfg = tmp_path / "bad.py"
    cfg.write_text(body)
    with pytest.raises(UserError) as e:
        configure(DEFAULTS, [str(cfg)])
    assert str(cfg) in str(e.value), str(e.value)
    for text in expected:
        assert text in str(e.value), f"{text!r} not in {str(e.value)!r}"


def test_a_config_file_builds_on_another_with_include_from_its_own_folder(tmp_path):
    (tmp_path / "presets" / "parts").mkdir(parents=True)
    (tmp_path / "presets" / "parts" / "shape.py").write_text("batch_size = 8\nlearning_rate = 1e-3\n")
    (tmp_path / "presets" / "base.py").write_text('include("parts/shape.py")\nout_dir = "base"\ncompile = True\n')
    (tmp_path / "presets" / "sibling.py").write_text("bias = True\n")
    variant = tmp_path / "presets" / "variant.py"
    # after a nested include, the file's own include still names files from its own folder
    variant.write_text('include("base.py")\ninclude("sibling.py")\nout_dir = "variant"\n'
                       "learning_rate = learning_rate / 2\n")
    c = configure(DEFAULTS, [str(variant), "--batch_size=4"])
    assert c == DEFAULTS | dict(batch_size=4, learning_rate=5e-4, out_dir="variant", compile=True, bias=True), c


@pytest.mark.parametrize("body, expected", [
    ('include("nope.py")\n', ["config file not found", "nope.py"]),
    ('include("inner.py")\n', ["inner.py line 2", "NameError"]),
    ('include("typo.py")\n', ["typo.py sets unknown key 'batch_sise'"]),
    ('include("loop.py")\n', ["include each other in a loop", "outer.py -> ", "loop.py -> ", "outer.py"]),
])
def test_include_errors_name_the_included_file(tmp_path, body, expected):
    (tmp_path / "inner.py").write_text("batch_size = 3\nlearning_rate = undefined\n")
    (tmp_path / "typo.py").write_text("batch_sise = 3\n")
    (tmp_path / "loop.py").write_text('include("outer.py")\n')
    (tmp_path / "outer.py").write_text(body)
    with pytest.raises(UserError) as e:
        configure(DEFAULTS, [str(tmp_path / "outer.py")])
    for text in expected:
        assert text in str(e.value), f"{text!r} not in {str(e.value)!r}"


def test_format_config_marks_changes_and_shows_derived_values():
    text = configurator.format_config(configure(DEFAULTS, ["--batch_size=4"]), DEFAULTS,
                                      {"tokens_per_iter": "4 x 64 = 256"})
    assert "*batch_size" in text and " learning_rate" in text and "*learning_rate" not in text, text
    assert "tokens_per_iter" in text and "256" in text, text


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        configure(train.DEFAULTS, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    missing = [k for k in train.DEFAULTS if k not in out]
    assert not missing, f"--help does not list {missing}"


def test_cli_errors_are_one_line():
    """The configurator's errors reach the user of train.py as one line and exit code 1."""
    proc = run_script("train.py", "config/train_shakespeare_char.py", "--batchsize=3")
    assert_one_line_error(proc, "unknown option --batchsize", "--batch_size")


# -----------------------------------------------------------------------------
# Peak FLOP/s of the device, for MFU


def test_gpu_peak_flops_come_from_the_table_for_the_gpu_in_use(monkeypatch):
    for name, peak in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                       ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA H200", 989e12)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        configurator.device_peak_flops.cache_clear()
        assert configurator.device_peak_flops("cuda", "bfloat16") == peak, name
        assert configurator.device_peak_flops("cuda", "float32") == peak / 2, name
    configurator.device_peak_flops.cache_clear()


def test_measuring_the_cpu_peak_leaves_the_global_rng_alone():
    """train.setup measures the CPU's matmul peak (for MFU); drawing its random matrices from torch's
    global RNG would shift every later dropout mask, and resumed runs would diverge."""
    state = torch.get_rng_state()
    configurator.measured_matmul_flops("cpu", "float32", n=64, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)
