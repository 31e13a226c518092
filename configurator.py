"""Settings and the machine: typed overrides, one-line errors, device, dtype, peak FLOP/s and memory.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

A script keeps its settings in one dict of defaults; configure() returns a copy with overrides applied:
config files first (Python files run with the defaults in scope, in the order given), then
`--key=value` flags, so a flag always wins. Every value must have its default's type.
"""
import ast
import contextlib
import difflib
import functools
import os
import re
import signal
import sys
import time
import types
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, ...): printed as one line, exit code 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is: it cleans up as Ctrl-C does (temporary files removed,
    old ones kept)."""


def _terminated(signum, frame):
    raise Terminated


def run(main):
    """Call main(); turn a UserError into one line on stderr and a non-zero exit, never a traceback.
    SIGTERM is handled as Ctrl-C is, so that whatever was being written is cleaned up. A reader that
    stops early (`python sample.py | head`) ends the script quietly, as it ends any Unix tool."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM: the exit codes a shell reports for them
        terminated = isinstance(e, Terminated)
        print("\nterminated" if terminated else "\ninterrupted", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    except BrokenPipeError:
        # stdout's reader is gone: point stdout at /dev/null so that Python's final flush of what
        # is still buffered cannot fail again, then exit as a tool killed by SIGPIPE does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)


def configure(defaults, argv):
    """Return a copy of `defaults` with the config files and `--key=value` flags in argv applied."""
    if "-h" in argv or "--help" in argv:
        print(f"usage: python {Path(sys.argv[0]).name} [config.py ...] [--key=value ...]\n")
        print(format_config(defaults, defaults))
        raise SystemExit(0)
    config = dict(defaults)
    flags = [a for a in argv if a.startswith("-")]
    for path in [a for a in argv if not a.startswith("-")]:
        _apply_file(path, config, defaults)
    for flag in flags:
        key, eq, text = flag.removeprefix("--").partition("=")
        if not eq and isinstance(defaults.get(key), bool):  # a bare --flag turns a switch on: --chat
            eq, text = "=", "True"
        if not flag.startswith("--") or not eq or not key:
            raise UserError(f"cannot read {flag!r}: write options as --key=value")
        _check_known(key, defaults, f"unknown option --{key}", prefix="--")
        config[key] = _check_type(key, _parse(text, defaults[key]), defaults[key], f"--{key}={text}")
    return config


def _apply_file(path, config, defaults):
    """Run a config file with the current settings in scope; keep what it sets, type-checked."""
    scope = dict(config)
    _run_file(Path(path), scope, defaults)
    config.update(_settings(scope))


def _run_file(file, scope, defaults, including=()):
    """exec a config file in scope, then check what it set. In it, include("other.py") runs another
    config file (named from this one's folder) into the same scope, there: a preset builds on another
    and changes only what differs, and what it sets after the include wins. including: the files
    whose include led here, outermost first."""
    if not file.is_file():
        hint = " (options are written --key=value)" if "=" in str(file) else ""
        raise UserError(f"config file not found: {file}{hint}")
    if file.resolve() in [f.resolve() for f in including]:
        raise UserError(f"config files include each other in a loop: {' -> '.join(map(str, [*including, file]))}")
    outer = scope.get("include")
    scope["include"] = lambda name: _run_file(file.parent / name, scope, defaults, (*including, file))
    try:
        exec(compile(file.read_text(), str(file), "exec"), scope)
    except UserError:  # from an include: it already names its file
        raise
    except SyntaxError as e:
        raise UserError(f"{file} line {e.lineno}: {e.msg}") from None
    except Exception as e:  # the user's own Python: report it as one line naming the file
        line = _last_line_in(e, str(file))
        raise UserError(f"{file}{line}: {type(e).__name__}: {e}") from None
    finally:  # an including file goes on with its own include; the settings keep none
        if outer is None:
            del scope["include"]
        else:
            scope["include"] = outer
    for key, value in list(_settings(scope)):
        _check_known(key, defaults, f"{file} sets unknown key {key!r}")
        scope[key] = _check_type(key, value, defaults[key], str(file))


def _settings(scope):
    """The settings a config file's scope holds: not the helpers it may define for itself (_private
    names, imports, functions), nor Python's __builtins__."""
    return ((key, value) for key, value in scope.items()
            if not key.startswith("_") and not isinstance(value, (types.ModuleType, types.FunctionType, type)))


def _last_line_in(error, filename):
    """' line N' of the innermost frame of `error` that ran in `filename`, or ''."""
    line, tb = "", error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = f" line {tb.tb_lineno}"
        tb = tb.tb_next
    return line


def _check_known(key, defaults, message, prefix=""):
    if key not in defaults:
        near = [prefix + k for k in difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)]
        hint = f"did you mean {' or '.join(near)}?" if near else "run with --help to list the options"
        raise UserError(f"{message}; {hint}")


def _parse(text, default):
    """The Python value a flag's text stands for; bare text stays a string where one is expected."""
    if text.lower() in ("true", "false") and not isinstance(default, str):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # e.g. --device=cuda:1 or --dataset=tinystories
    if isinstance(default, str) and not isinstance(value, str):
        return text  # --out_dir=123 means the folder "123"
    return value


def _check_type(key, value, default, shown):
    """`value` converted to the default's type, or a UserError naming key, value and expected type."""
    if default is None:
        return value  # no type to hold it to
    kind = type(default)
    if kind is float and type(value) in (int, float):
        return float(value)
    if kind is int and type(value) is float and value.is_integer():
        return int(value)  # --max_iters=5e3
    if type(value) is kind or (kind not in (bool, int, float) and isinstance(value, kind)):
        return value
    a = "an" if kind.__name__[0] in "aeiou" else "a"
    raise UserError(f"{shown}: {key} must be {a} {kind.__name__} (default {default!r}), got {value!r}")


def format_config(config, defaults, derived=None):
    """The resolved settings, one per line, `*` marking those changed from the default; then
    `derived`, a dict of values computed from them (e.g. tokens per iteration)."""
    width = max(len(k) for k in [*config, *(derived or {})])
    lines = ["settings (* = changed from the default):"]
    for key, value in config.items():
        changed = "*" if key in defaults and value != defaults[key] else " "
        lines.append(f" {changed}{key:<{width}} = {value!r}")
    if derived:
        lines.append("derived:")
        lines += [f"  {key:<{width}} = {value}" for key, value in derived.items()]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Device and dtype: resolved in one place for train.py, sample.py and bench.py.
# torch is imported inside, so that reading a config stays instant.


def pick_device(device="auto"):
    """'auto' picks cuda, then Apple's mps, then cpu; an explicit choice is checked."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N (the Nth GPU) or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' was asked for but CUDA is not available; use --device=cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"device '{device}' was asked for but this machine has "
                        f"{torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' was asked for but is not available; use --device=cpu")
    return device


def pick_dtype(device, dtype="auto"):
    """'auto': bfloat16 on GPUs that have it, else float16 (with a GradScaler); float32 elsewhere."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype '{dtype}' is not one of float32, bfloat16, float16")
    return dtype


def autocast(device, dtype):
    """Mixed precision for the forward pass: matmuls in dtype, reductions kept in float32."""
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


# -----------------------------------------------------------------------------
# Peak FLOP/s of the device in use, for MFU (model FLOPs utilisation)

# Dense 16-bit tensor-core peaks from the vendors' datasheets, in FLOP/s. The first name contained
# in torch.cuda.get_device_name() wins, so the more specific names come first. A GPU that is not
# listed is measured instead (a large matmul), as a CPU is.
GPU_PEAK_FLOPS = {
    "H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12,
    "A100": 312e12, "A10G": 125e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


@functools.lru_cache(maxsize=None)
def device_peak_flops(device, dtype):
    """Peak FLOP/s of the device in use for matmuls in dtype: the table for a known GPU, else measured."""
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                # fp32 matmuls run as TF32 on these tensor cores: half the 16-bit rate
                return peak / 2 if dtype == "float32" else peak
    return measured_matmul_flops(device, dtype)


def measured_matmul_flops(device, dtype, n=1024, repeats=10):
    """Best FLOP/s of a square matmul: the practical peak of a CPU (or an unknown accelerator)."""
    import torch

    # a private generator: drawing from torch's global RNG would shift the caller's dropout masks
    gen = torch.Generator(device).manual_seed(0)
    a, b = torch.randn(2, n, n, generator=gen, device=device, dtype=getattr(torch, dtype))
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None  # wait for the GPU
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_memory_mb(device):
    """The most memory this process has held so far, in MB: on CUDA what torch's allocator gave out
    (tensors, not its cache); elsewhere the process's peak resident size, which also counts the
    interpreter and libraries (a few hundred MB with torch)."""
    import resource
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 1e6
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e6 if sys.platform == "darwin" else rss * 1024 / 1e6  # bytes on macOS, KiB on Linux
