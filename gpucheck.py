"""The GPU check: one command on a lent CUDA machine, `python bench.py --only=gpu`, 5-8 minutes on an
H200. The parts run in this order (by importance), each capped at its share of --gpu_budget_s
(GPU_SHARES) and saved to bench.json as soon as it ends; one that fails records its error and the
next one runs. `--quick` runs every part at toy sizes on any device in seconds, which keeps it alive
in the test suite.

  mfu     GPT-2 124M training as `python train.py config/train_gpt2.py` runs on one GPU (12 layers,
          12 heads, 768 wide, block 1024, GPT-2's 50257 tokens; bfloat16, torch.compile, fused
          AdamW), micro-batch 32 x 1024, random tokens: ms/iter, tokens/s and MFU (medians of 5 log
          rows of 10 iterations each, after 21 iterations of warm-up and compilation), against the
          datasheet peak (configurator.GPU_PEAK_FLOPS) and against an 8192^3 bfloat16 matmul timed here.
  recipe  config/train_shakespeare_char.py as it stands (6 layers, 384 wide, block 256, batch 64,
          dropout 0.2, 5000 iterations, compiled) on --shakespeare_dir: first with config/gpt2_block.py
          after it (GPT-2's block, AdamW alone: the preset before the recipe), then as it is (Muon,
          RoPE, QK-norm); each run is stopped at its first evaluation with val <= 1.47: its wall time (time_s
          in train.py's log, compilation included) and iteration; else the best val and its iteration.
  sample  decoding tokens/s with the KV cache, as sample.py runs it, batch 1 and 8: the sample
          section's 6-layer, 384-wide model and GPT-2 124M's shape, random weights.
  vocab   the output layer and its loss, forward and backward, compiled, at GPT-2's 50257 tokens and
          padded to 50304 (a multiple of 64): what padding the vocabulary would save per step.

A library: bench.py runs it (run_gpu_check) and prints its rows (gpu_rows).
"""
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from configurator import UserError, device_peak_flops, measured_matmul_flops
from measure import (QUICK_SAMPLE_MODEL, SAMPLE_MODEL, first_at_target, thread_env, time_decoding,
                     time_to_target, timed, train_speed, watch_training, write_random_dataset)
from model import GPT, GPTConfig

GPU_SHARES = dict(mfu=0.29, adamw=0.32, muon=0.22, sample=0.05)  # of gpu_budget_s; the rest: vocab, start-up
GPU_VAL_TARGET = 1.47  # nanoGPT's shakespeare_char reached 1.4697 on one GPU in 5000 iterations
GPT2_RUN = ["config/train_gpt2.py", "--batch_size=32", "--gradient_accumulation_steps=1", "--compile=True",
            "--dtype=bfloat16", "--log_interval=10"]
GPU_QUICK = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4", "--compile=False",
             "--dtype=float32", "--max_iters=20", "--eval_interval=10", "--eval_iters=2"]


def run_gpu_check(cfg, device, save):
    """The GPU check's parts in turn, for bench.py's settings `cfg` (quick, gpu_budget_s, shakespeare_dir,
    threads, dtype, seed); save(partial results) after each. Returns the results."""
    if not device.startswith("cuda") and not cfg.quick:
        raise UserError("the gpu section needs a CUDA GPU; --quick runs it at toy sizes here")
    results = {"budget_s": cfg.gpu_budget_s, "val_target": GPU_VAL_TARGET}
    parts = {"mfu": gpu_mfu, "recipe": gpu_recipe, "sample": gpu_sample, "vocab": gpu_vocab}  # by importance
    with tempfile.TemporaryDirectory() as tmp:
        for name, part in parts.items():
            print(f"gpu {name}: running", flush=True)
            t0 = time.perf_counter()
            try:
                results[name] = part(cfg, device, Path(tmp))
            except Exception as e:  # a one-shot check on a lent machine: keep what the others measure
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            results[name]["elapsed_s"] = time.perf_counter() - t0
            save(results)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()  # what this part held stays out of the next one's way
            print("\n".join(f"gpu {name}: {f}: {v}" for f, v in gpu_rows({name: results[name]})), flush=True)
    return results


def gpu_mfu(cfg, device, tmp):
    """GPT-2 124M's training speed and MFU, as train.py runs config/train_gpt2.py on one GPU."""
    data = tmp / "gpt2-data"
    data.mkdir()
    write_random_dataset(data, 50257, n_tokens=10_000 if cfg.quick else 2_000_000)
    dtype = "float32" if cfg.quick else "bfloat16"
    measured = measured_matmul_flops(device, dtype, n=256 if cfg.quick else 8192)
    args = [*GPT2_RUN, *(GPU_QUICK if cfg.quick else []), f"--device={device}", f"--data_dir={data}"]
    rows = dict(warmup_rows=1, timed_rows=3, log_interval=1) if cfg.quick else \
        dict(warmup_rows=3, timed_rows=5, log_interval=10)
    run = train_speed(args, tmp / "gpt2", **rows, timeout_s=GPU_SHARES["mfu"] * cfg.gpu_budget_s,
                      env=thread_env(cfg.threads))
    peak = device_peak_flops(device, dtype)  # what train.py's MFU divides by
    return {**run, "dtype": dtype, "train_py_peak_tflops": peak / 1e12, "measured_matmul_tflops": measured / 1e12,
            "mfu_of_measured_peak": run["mfu"] * peak / measured}


def gpu_vocab(cfg, device, tmp):
    """ms per forward and backward of the output layer and loss at 50257 tokens, and padded to 50304."""
    rows, width = (64, 32) if cfg.quick else (32 * 1024, 768)
    dtype = torch.float32 if cfg.quick else torch.bfloat16
    # compiled as in train.py (whose shape padding may pad the product itself), a graph per vocabulary
    # size (not one for any size: dynamic=False); --quick: eager
    loss_of = (lambda f: f) if cfg.quick else partial(torch.compile, dynamic=False)
    ms = {}
    for vocab in (50257, 50304):
        x = torch.randn(rows, width, device=device, dtype=dtype, requires_grad=True)  # (B*T, C)
        w = torch.randn(vocab, width, device=device, dtype=dtype, requires_grad=True)  # (V, C)
        y = torch.randint(50257, (rows,), device=device)  # (B*T,): padded ids are never targets
        # the loss in float32, as autocast computes train.py's
        loss = loss_of(lambda x, w, y: torch.nn.functional.cross_entropy((x @ w.T).float(), y))

        def step():
            loss(x, w, y).backward()
        ms[vocab] = 1000 * min(timed(step, device) for _ in range(3 if cfg.quick else 20))
    return {"rows": rows, "ms_50257": ms[50257], "ms_50304": ms[50304], "padded_speedup": ms[50257] / ms[50304]}


def gpu_sample(cfg, device, tmp):
    """Decoding tokens/s with the KV cache, batch 1 and 8, of two random models."""
    from decoding import ready_for_decoding
    from engine import SAMPLING

    shapes = {"sample_model": SAMPLE_MODEL, "gpt2_124m": dict(vocab_size=50257)}  # GPTConfig's defaults: 124M
    settings = {k: SAMPLING[k] for k in ("temperature", "top_k", "top_p")}
    deadline = time.perf_counter() + GPU_SHARES["sample"] * cfg.gpu_budget_s
    results = {"new_tokens": 8 if cfg.quick else 300}
    for name, shape in shapes.items():
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig(**(QUICK_SAMPLE_MODEL if cfg.quick else shape)))
        model = ready_for_decoding(model, device, cfg.dtype)
        for batch in (1, 8):
            if time.perf_counter() < deadline:  # else left out: the part is over its share
                idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
                results[f"{name}_batch{batch}"] = time_decoding(model, idx, results["new_tokens"], True, settings,
                                                                cfg.seed, repeats=1 if cfg.quick else 3)
    return results


def gpu_recipe(cfg, device, tmp):
    """The shakespeare_char recipe with AdamW, then Muon: when each first reaches val 1.47."""
    data = Path(cfg.shakespeare_dir).resolve()
    if cfg.quick:  # random tokens and a toy model: runs the code, never reaches the target
        data = tmp / "toy-data"
        data.mkdir()
        write_random_dataset(data, 65, n_tokens=10_000)
    elif not (data / "meta.json").is_file():
        return {"skipped": f"no {data}/meta.json: run python prepare.py shakespeare_char, or set --shakespeare_dir"}

    def reached(rows):
        return first_at_target(rows, GPU_VAL_TARGET) is not None

    results = {}
    # adamw: GPT-2's block trained by AdamW alone, the preset as it was before the recipe (nanoGPT's
    # kind of run); muon: the preset as it stands (Muon, RoPE, QK-norm)
    recipes = {"adamw": ["config/gpt2_block.py"], "muon": []}
    for optimizer, overlay in recipes.items():
        args = ["config/train_shakespeare_char.py", *overlay, f"--device={device}",
                f"--data_dir={data}", "--init_from=scratch", "--wandb_log=False", *(GPU_QUICK if cfg.quick else [])]
        try:  # one run failing leaves the other to run
            rows, how = watch_training(args, tmp / optimizer, stop=reached, env=thread_env(cfg.threads),
                                       timeout_s=GPU_SHARES[optimizer] * cfg.gpu_budget_s)
            results[optimizer] = time_to_target(rows, how, GPU_VAL_TARGET)
        except UserError as e:
            results[optimizer] = {"error": str(e)}
    if results["adamw"].get("time_s") and results["muon"].get("time_s"):
        results["muon_over_adamw_time"] = results["muon"]["time_s"] / results["adamw"]["time_s"]
    return results



def gpu_rows(g):
    """The results as (figure, value) rows for bench.py's table."""
    rows = []
    for part, r in g.items():
        if not isinstance(r, dict):
            continue
        if "error" in r or "skipped" in r:
            rows.append((part, r.get("error") or r["skipped"]))
        elif part == "mfu":
            rows += [(f"GPT-2 124M, {r['tokens_per_iter']:,} tokens/iter", f"{r['ms_per_iter']:.1f} ms/iter, "
                      f"{r['tokens_per_s']:,.0f} tok/s, peak memory {r['peak_memory_mb']:,.0f} MB"),
                     (f"MFU of {r['train_py_peak_tflops']:.3g} TFLOP/s (train.py's peak)", f"{r['mfu'] * 100:.1f}%"),
                     (f"MFU of {r['measured_matmul_tflops']:.3g} TFLOP/s (measured matmul)",
                      f"{r['mfu_of_measured_peak'] * 100:.1f}%")]
        elif part == "vocab":
            rows.append(("output layer + loss, 50257 / 50304 tokens", f"{r['ms_50257']:.2f} / "
                         f"{r['ms_50304']:.2f} ms ({r['padded_speedup']:.2f}x)"))
        elif part == "sample":
            rows += [(f"decoding, {key.replace('_', ' ')}, {r['new_tokens']} tokens",
                      f"{r[key]['tokens_per_s']:,.0f} tok/s") for key in r if key.endswith(("batch1", "batch8"))]
        elif part == "recipe":
            rows += [(f"shakespeare_char {opt}, val {GPU_VAL_TARGET}", o.get("error") or (
                f"iter {o['iter']}, {o['time_s']:.0f} s" if o["iter"] is not None else
                f"not reached ({o['how']} at iter {o['last_iter']}); best {o['best_val']:.4f} at iter "
                f"{o['best_iter']}")) for opt, o in r.items() if isinstance(o, dict)]
            if "muon_over_adamw_time" in r:
                rows.append(("Muon's time to it / AdamW's", f"{r['muon_over_adamw_time']:.2f}x"))
    return rows
