"""Train a GPT. One file, top to bottom: settings, setup, data, model, evaluation, the loop.

    python train.py config/train_shakespeare_char.py                        # one GPU, a Mac, or a CPU
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py  # 8 GPUs on one node
    python train.py config/eval_gpt2.py                                     # GPT-2's val loss

Several nodes: run on each `torchrun --nnodes=2 --node_rank=0|1 --nproc_per_node=8
--master_addr=<node 0's address> --master_port=29500 train.py ...`.
Every setting below can be overridden by config files and --key=value flags (see configurator.py).
"""
import gc
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
from checkpoint import load_model, save_checkpoint
from configurator import UserError, autocast, device_peak_flops, peak_memory_mb, pick_device, pick_dtype
from data import Split, read_meta
from fileio import check_folder
from model import GPT, GPTConfig
from optim import configure_optimizers, load_optimizer_states, set_lr_multiplier
from plot import write_loss_svg
from tokenizer import describe_tokenizer, load_tokenizer, same_tokenizer

DEFAULTS = dict(
    # files
    out_dir="out",  # ckpt.pt and log.jsonl go here
    dataset="openwebtext",  # a dataset made by `python prepare.py <dataset>`
    data_dir="",  # where its train.bin, val.bin and meta.json are; '' means data/<dataset>
    init_from="scratch",  # 'scratch', 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl', or a local HF dir,
    # or another run's out_dir: fine-tune its weights from iteration 0 (e.g. config/finetune_chat.py)
    # evaluation and logging
    eval_interval=2000,  # iterations between evaluations; each may save a checkpoint
    eval_iters=200,  # batches per split in one evaluation
    log_interval=1,  # iterations between log lines; only these steps wait for the device
    eval_only=False,  # print the val loss, perplexity and bits per byte, then exit
    always_save_checkpoint=True,  # False: save only when the val loss improves
    wandb_log=False,  # also log to Weights & Biases (pip install wandb)
    wandb_project="sprout",
    wandb_run_name="run",
    # batch: tokens per iteration = batch_size * block_size * gradient_accumulation_steps
    gradient_accumulation_steps=40,  # micro-batches per iteration, summed over all processes
    batch_size=12,  # sequences per micro-batch
    block_size=1024,  # tokens per sequence (the context length)
    # model: the shape of a new one ('resume' and GPT-2 bring their own)
    n_layer=12,
    n_head=12,
    n_embd=768,
    dropout=0.0,  # 0 for pretraining; 0.1-0.2 helps small models on little data
    bias=False,  # biases in Linear and LayerNorm layers: GPT-2 had them, a bit faster without
    # optimizer: 'adamw' for every parameter, or 'muon' for the blocks' weight matrices (see optim.py)
    optimizer="adamw",
    learning_rate=6e-4,  # AdamW's peak learning rate, reached after warmup
    muon_lr=0.02,  # Muon's peak learning rate (optimizer='muon')
    max_iters=600000,  # iterations (optimizer steps) in all
    weight_decay=0.1,  # AdamW's, on matrices only
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,  # clip the global gradient norm to this; 0 turns clipping off
    # learning rate schedule, a multiplier on every peak: linear warmup, then cosine decay to min_lr
    decay_lr=True,  # False: constant learning_rate
    warmup_iters=2000,  # iterations
    lr_decay_iters=600000,  # iterations until min_lr; about max_iters (Chinchilla)
    min_lr=6e-5,  # about learning_rate / 10 (Chinchilla); Muon decays by the same factor
    # system
    device="auto",  # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",  # 'auto' (bfloat16 or float16 on CUDA, else float32), 'float32', 'bfloat16', 'float16'
    compile=None,  # torch.compile the model; None: on CUDA only (elsewhere it costs more than it gains)
    seed=1337,
)
# Model options added to GPTConfig (e.g. model variants) are settings too, with GPTConfig's defaults.
for _f in fields(GPTConfig):
    if _f.name != "vocab_size":  # comes from the dataset
        DEFAULTS.setdefault(_f.name, _f.default)


# -----------------------------------------------------------------------------
# Setup: processes, device, precision


# The least value each numeric setting may take (the model's shape is GPTConfig's to check).
AT_LEAST = dict(batch_size=1, block_size=1, gradient_accumulation_steps=1, eval_interval=1, eval_iters=1,
                log_interval=1, max_iters=0, warmup_iters=0, lr_decay_iters=0, learning_rate=0.0,
                muon_lr=0.0, min_lr=0.0, weight_decay=0.0, grad_clip=0.0)


def model_settings(cfg):
    """The GPTConfig fields a run sets (the vocabulary comes from the dataset)."""
    return {f.name: getattr(cfg, f.name) for f in fields(GPTConfig) if f.name != "vocab_size"}


def check_settings(cfg):
    """Refuse settings that cannot work, before anything is loaded: one line saying which and why."""
    for key, low in AT_LEAST.items():
        if getattr(cfg, key) < low:
            raise UserError(f"{key} must be at least {low}, got {getattr(cfg, key)}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"{key} is a moving average's decay: from 0 to below 1, got {getattr(cfg, key)}")
    if cfg.compile not in (None, True, False):
        raise UserError(f"compile must be True, False or None (automatic), got {cfg.compile!r}")
    check_folder(cfg.out_dir, "--out_dir")
    try:  # the model's shape and options, as given (a checkpoint or GPT-2 brings its own shape)
        GPTConfig(**model_settings(cfg))
    except ValueError as e:
        raise UserError(str(e)) from None


def setup(cfg):
    """Check the settings; start the process group under torchrun; pick device and dtype; seed.
    Returns a namespace."""
    check_settings(cfg)
    world = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if cfg.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} does not divide "
                        f"across {world} processes; make it a multiple of {world}")
    device = pick_device(cfg.device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local_rank}"  # one GPU per process
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    device_type = device.split(":")[0]
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for any float32 work left
    torch.manual_seed(cfg.seed + rank)  # differs per process: each draws its own dropout masks
    dtype = pick_dtype(device, cfg.dtype)
    return SimpleNamespace(
        ddp=world > 1, world=world, rank=rank, master=rank == 0, device=device,
        device_type=device_type, dtype=dtype, autocast=autocast(device, dtype),
        peak_flops=device_peak_flops(device, dtype),  # for MFU
        accum=cfg.gradient_accumulation_steps // world,  # micro-batches per process
        compile=cfg.compile if cfg.compile is not None else device_type == "cuda")


# -----------------------------------------------------------------------------
# Data


def load_splits(cfg, rt):
    """The dataset's meta.json and its splits (val only for eval_only)."""
    data_dir = cfg.data_dir or os.path.join("data", cfg.dataset)
    meta = read_meta(data_dir)
    names = ["val"] if cfg.eval_only else ["train", "val"]
    return meta, {name: Split(data_dir, name, meta, cfg.block_size, rt.device) for name in names}


# -----------------------------------------------------------------------------
# Model


# What a checkpoint must hold, besides the model, to resume a run exactly (see evaluate_and_save).
RESUME_STATE = ("optimizer", "scaler", "iter_num", "best_val_loss", "config", "rng")


def build_model(cfg, meta):
    """The model to train, on the CPU, and the checkpoint it was resumed from (or None)."""
    ckpt = None
    if cfg.init_from == "scratch":  # the vocabulary is exactly the tokenizer's: every id decodes
        model = GPT(GPTConfig(**model_settings(cfg), vocab_size=meta["vocab_size"]))
    else:  # resume, another run's weights, or a Hugging Face model
        hint = "; point --out_dir at an earlier run, or start one with --init_from=scratch"
        model, model_meta, ckpt = load_model(cfg.init_from, cfg.out_dir, hint, dropout=cfg.dropout)
        check_same_tokenizer(model_meta, meta, cfg)
        if cfg.init_from != "resume":
            ckpt = None  # another run's weights only: a fresh optimizer, schedule and data order
        elif missing := [k for k in RESUME_STATE if k not in ckpt and not cfg.eval_only]:
            raise UserError(f"{os.path.join(cfg.out_dir, 'ckpt.pt')} holds a model but not the training "
                            f"state an exact resume needs (no {', '.join(missing)}); fine-tune from its "
                            f"weights instead: --init_from={cfg.out_dir} with another --out_dir")
    model.config.grad_checkpoint = cfg.grad_checkpoint  # trades memory for compute, whatever the source
    source = "the checkpoint" if ckpt else cfg.init_from
    if model.config.vocab_size < meta["vocab_size"]:
        raise UserError(f"{source} has a vocabulary of {model.config.vocab_size} tokens but the dataset "
                        f"{meta['name']!r} uses {meta['vocab_size']}; train from scratch on it instead")
    if cfg.block_size > model.config.block_size:
        raise UserError(f"block_size={cfg.block_size} is longer than the {model.config.block_size} "
                        f"tokens {source} was trained on; use --block_size={model.config.block_size}")
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    return model, ckpt


def check_same_tokenizer(model_meta, meta, cfg):
    """Refuse to train a model on ids that mean other text to it: a dataset prepared with another
    tokenizer than the one the model learned (its checkpoint's meta, or GPT-2's for GPT-2 weights)."""
    if same_tokenizer(model_meta, meta):
        return
    model = "the checkpoint" if cfg.init_from == "resume" else cfg.init_from
    reuse = cfg.out_dir if cfg.init_from == "resume" else cfg.init_from  # prepare.py reads its ckpt.pt
    if model_meta["tokenizer"] == "gpt2":
        reuse = "gpt2"
    raise UserError(f"{model} uses {describe_tokenizer(model_meta)} but the dataset {meta['name']!r} is "
                    f"tokenized with {describe_tokenizer(meta)}; prepare the data with the model's "
                    f"tokenizer (python prepare.py ... --tokenizer={reuse}) or train from scratch")


def lr_multiplier(it, cfg):
    """The schedule at iteration `it`, as a fraction of each optimizer's peak learning rate: linear
    warmup, cosine decay to min_lr / learning_rate, then flat."""
    if not cfg.decay_lr:
        return 1.0
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    floor = cfg.min_lr / cfg.learning_rate if cfg.learning_rate else 0.0
    if it >= cfg.lr_decay_iters:
        return floor
    progress = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)  # 0 -> 1
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (1 - floor)


def lr_at(it, cfg):
    """AdamW's learning rate at iteration `it` (what the logs show)."""
    return cfg.learning_rate * lr_multiplier(it, cfg)


def token_bytes(meta, device):
    """The UTF-8 bytes each token id stands for (tokenizer.byte_lengths), on the device, for bits per
    byte; None, with a note, where the tokenizer cannot be loaded (GPT-2's BPE files, offline)."""
    try:
        return torch.tensor(load_tokenizer(meta).byte_lengths(), dtype=torch.float32, device=device)
    except UserError as e:
        print(f"note: no bits per byte in this run: {e}")
        return None


@torch.no_grad()
def evaluate(model, splits, cfg, rt, bytes_of=None):
    """(mean loss over eval_iters batches of each split, bits per byte of each split or None). Bits
    per byte: the loss summed over the targets that count, / ln 2, / the UTF-8 bytes those targets
    stand for (bytes_of, from token_bytes); unlike the loss, it compares models across tokenizers.
    The same batches every time (a fixed seed, apart from the training RNG), so evaluations are
    comparable and resume stays exact."""
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    losses, bpb = {}, {}
    for name, split in splits.items():
        sums = torch.zeros(3, device=rt.device)  # batch losses, nats over targets, bytes of targets
        for starts in split.starts(generator, (cfg.eval_iters, cfg.batch_size)):
            x, y = split.batch(starts)
            with rt.autocast:
                loss = model(x, y)[1].float()
            scored = y != -1  # (B, T): chat data scores the replies only
            sums[0] += loss
            if bytes_of is not None:  # the loss is a mean over the scored targets
                sums[1] += loss * scored.sum()
                sums[2] += (bytes_of[y.clamp(min=0)] * scored).sum()
        loss_sum, nats, n_bytes = sums.tolist()  # the only host sync of each split
        losses[name] = loss_sum / cfg.eval_iters
        bpb[name] = nats / math.log(2) / n_bytes if n_bytes else None
    model.train()
    return losses, bpb


def perplexity(loss):
    return math.exp(loss) if loss < 700 else math.inf  # math.exp overflows past ~709


def eval_summary(loss, bpb):
    """'loss 1.2345, perplexity 3.44, 1.782 bits per byte' (bits per byte where known)."""
    return f"loss {loss:.4f}, perplexity {perplexity(loss):.2f}" + (
        f", {bpb:.4f} bits per byte" if bpb is not None else "")


# -----------------------------------------------------------------------------
# Checkpoints and logs


def rng_states(rt):
    """Every process's dropout RNG state (they differ); collective, so every process calls it."""
    state = {"cpu": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state(rt.device) if rt.device_type == "cuda" else None}
    if not rt.ddp:
        return [state]
    states = [None] * rt.world
    dist.all_gather_object(states, state)
    return states


def restore(ckpt, run, cfg, rt):
    """Put the optimizer, scaler, counters and RNGs back as they were when `ckpt` was saved."""
    saved = ckpt["config"].get("optimizer", "adamw")  # checkpoints from before the setting: AdamW
    if saved != cfg.optimizer:  # one optimizer's moments mean nothing to the other
        raise UserError(f"{run.ckpt_path} was trained with --optimizer={saved}, whose state cannot carry "
                        f"over to {cfg.optimizer}; resume with --optimizer={saved}")
    load_optimizer_states(run.optimizers, ckpt["optimizer"])
    if ckpt["scaler"] is not None and run.scaler.is_enabled():
        run.scaler.load_state_dict(ckpt["scaler"])
    run.iter_num = run.saved_iter = ckpt["iter_num"]
    run.best_val_loss = ckpt["best_val_loss"]
    run.batch_rng.set_state(ckpt["rng"]["batches"])
    states = ckpt["rng"]["dropout"]
    if len(states) == rt.world:  # else the process count changed and fresh seeds will do
        torch.set_rng_state(states[rt.rank]["cpu"])
        if rt.device_type == "cuda" and states[rt.rank]["cuda"] is not None:
            torch.cuda.set_rng_state(states[rt.rank]["cuda"], rt.device)


class Log:
    """Rows of numbers to out_dir/log.jsonl (for plots) and, if asked, to wandb. Main process only."""

    def __init__(self, cfg, enabled):
        self.path = self.wandb = None
        if not enabled:
            return
        os.makedirs(cfg.out_dir, exist_ok=True)
        self.path = os.path.join(cfg.out_dir, "log.jsonl")  # appended to, also across resumes
        if cfg.wandb_log:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb_log=True needs wandb: pip install wandb") from None
            self.wandb = wandb
            wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=vars(cfg))

    def __call__(self, row):
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.wandb:
            self.wandb.log(row, step=row["iter"])


# -----------------------------------------------------------------------------
# Training


def train_step(run, starts, cfg, rt, want_loss):
    """One optimizer step over this process's micro-batches at `starts` (accum, B). Returns the
    mean loss as a device tensor if want_loss, else None: reading it would wait for the device."""
    model, optimizers, scaler, split = run.model, run.optimizers, run.scaler, run.splits["train"]
    loss_sum = None
    x, y = split.batch(starts[0])
    for micro in range(rt.accum):
        last = micro == rt.accum - 1
        # DDP averages gradients across processes in backward; only the last micro-batch needs it
        with model.no_sync() if rt.ddp and not last else nullcontext():
            with rt.autocast:
                _, loss = model(x, y)
            if not last:
                x, y = split.batch(starts[micro + 1])  # read the next batch while the device computes
            scaler.scale(loss / rt.accum).backward()
        if want_loss:
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    if cfg.grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    for opt in optimizers:
        scaler.step(opt)  # skipped by the scaler if fp16 gradients overflowed
        opt.zero_grad(set_to_none=True)
    scaler.update()
    if not want_loss:
        return None
    loss = loss_sum / rt.accum
    if rt.ddp:  # the loss of the whole global batch, as one process would report it
        dist.all_reduce(loss)
        loss /= rt.world
    return loss


def diverged(what, value, it, run):
    """The error that ends a run whose loss is no longer a number."""
    kept = (f"{run.ckpt_path} still holds iter {run.saved_iter}" if run.saved_iter is not None
            else "no checkpoint was written")
    return UserError(f"{what} is {value} at iter {it}: training diverged, stopped without "
                     f"saving ({kept}); try a lower learning_rate, a longer warmup or grad_clip=1.0")


def evaluate_and_save(run, cfg, rt):
    """Evaluate on the main process; save a checkpoint if it is due and the losses are numbers."""
    dropout_rngs = rng_states(rt)  # every process joins in, before the main one evaluates
    if not rt.master:
        return
    losses, bpb = evaluate(run.eval_model, run.splits, cfg, rt, run.bytes_of)
    it = run.iter_num
    print(f"iter {it}: train loss {losses['train']:.4f}, val {eval_summary(losses['val'], bpb['val'])}")
    scores = {"train_loss": losses["train"], "val_loss": losses["val"],
              "val_perplexity": perplexity(losses["val"]), "train_bpb": bpb["train"], "val_bpb": bpb["val"]}
    run.log({"iter": it, **scores, "lr": lr_at(it, cfg), "tokens_per_iter": run.tokens_per_iter,
             "time_s": time.perf_counter() - run.started})
    write_loss_svg(cfg.out_dir)  # out_dir/loss.svg, redrawn from log.jsonl
    run.evals.append({"iter": it, **losses, "train_bpb": bpb["train"], "val_bpb": bpb["val"]})
    for name, value in losses.items():
        if not math.isfinite(value):
            raise diverged(f"the {name} loss", value, it, run)
    if losses["val"] < run.best_val_loss or cfg.always_save_checkpoint:
        run.best_val_loss = min(run.best_val_loss, losses["val"])
        if it > 0:
            save_checkpoint(run.ckpt_path, {
                "model_args": asdict(run.raw_model.config),
                "model": run.raw_model.state_dict(),  # the plain model's keys, whatever wraps it
                "optimizer": [opt.state_dict() for opt in run.optimizers],
                "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
                "iter_num": it,
                "best_val_loss": run.best_val_loss,
                "eval": scores,  # this evaluation's: losses, perplexity, bits per byte
                "config": vars(cfg),
                "meta": run.meta,
                "rng": {"batches": run.batch_rng.get_state(), "dropout": dropout_rngs},  # data position
            })
            run.saved_iter = it
            print(f"saved {run.ckpt_path}")


def train(config):
    """Train (or just evaluate, with eval_only) with a full settings dict. Returns a summary:
    {"iter_num", "best_val_loss", "losses": {iter: train loss at log steps}, "evals": [...]}
    ({"val_loss"} for eval_only), filled on the main process."""
    cfg = SimpleNamespace(**config)
    rt = setup(cfg)
    try:
        return run_or_evaluate(cfg, rt)
    finally:
        if rt.ddp:
            # the DDP wrapper holds the process group, in reference cycles: free it now, while the
            # interpreter is whole (left to exit, gloo's threads could abort the process)
            gc.collect()
            dist.destroy_process_group()


def run_or_evaluate(cfg, rt):
    """train()'s work, in a frame of its own: the model, DDP and all, is released when it returns."""
    run = prepare_run(cfg, rt)
    if cfg.eval_only:
        summary = {}
        if rt.master:
            losses, bpb = evaluate(run.eval_model, run.splits, cfg, rt, run.bytes_of)
            print(f"val {eval_summary(losses['val'], bpb['val'])}")
            summary = {"val_loss": losses["val"], "val_perplexity": perplexity(losses["val"]),
                       "val_bpb": bpb["val"]}
    else:
        loop(run, cfg, rt)
        summary = {"iter_num": run.iter_num, "best_val_loss": run.best_val_loss, "losses": run.losses,
                   "evals": run.evals}
    if rt.ddp:  # no process leaves while another still evaluates or saves
        dist.barrier()
    return summary


def prepare_run(cfg, rt):
    """Data, model, optimizer and, when resuming, their saved state: everything the loop uses."""
    meta, splits = load_splits(cfg, rt)
    run = SimpleNamespace(meta=meta, splits=splits, iter_num=0, best_val_loss=float("inf"), saved_iter=None,
                          losses={}, evals=[], ckpt_path=os.path.join(cfg.out_dir, "ckpt.pt"),
                          tokens_per_iter=cfg.batch_size * cfg.block_size * rt.accum * rt.world,
                          started=time.perf_counter())  # for time_s in the log: wall time to quality
    if rt.master:
        print(configurator.format_config(vars(cfg), DEFAULTS, {
            "device": f"{rt.device}, {rt.dtype}, compile={rt.compile}",
            "tokens_per_iter": f"{run.tokens_per_iter:,} = batch_size {cfg.batch_size} x block_size "
                               f"{cfg.block_size} x accumulation {rt.accum} x processes {rt.world}"}))
    run.raw_model, ckpt = build_model(cfg, meta)
    run.raw_model.to(rt.device)
    run.bytes_of = token_bytes(meta, rt.device) if rt.master else None  # only the main process evaluates
    if rt.master:
        print(f"model: {run.raw_model.get_num_params() / 1e6:.2f}M parameters, from {cfg.init_from}")
    # raw_model: for saving and MFU; eval_model: compiled, for the main process's evaluations alone;
    # model: wrapped in DDP, which averages gradients across processes, for training
    run.eval_model = run.model = torch.compile(run.raw_model) if rt.compile else run.raw_model
    if cfg.eval_only:
        return run
    if rt.ddp:
        run.model = DDP(run.eval_model, device_ids=[rt.device] if rt.device_type == "cuda" else None)
    run.optimizers = configure_optimizers(
        run.raw_model, optimizer=cfg.optimizer, learning_rate=cfg.learning_rate, muon_lr=cfg.muon_lr,
        weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), device_type=rt.device_type)
    run.scaler = torch.amp.GradScaler(rt.device_type, enabled=rt.dtype == "float16")
    run.batch_rng = torch.Generator().manual_seed(cfg.seed)  # the same on every process
    if ckpt is not None:
        restore(ckpt, run, cfg, rt)
        changed = [k for k, v in ckpt["config"].items()
                   if k not in ("init_from", "max_iters", "eval_only") and vars(cfg).get(k, v) != v]
        if changed and rt.master:
            print(f"note: resuming with settings that differ from the checkpoint's: {', '.join(changed)}")
    run.log = Log(cfg, enabled=rt.master and not cfg.eval_only)
    return run


def loop(run, cfg, rt):
    """Evaluate when due, step, log; until max_iters."""
    start_iter = run.iter_num
    t_last, iters_timed = time.perf_counter(), 0
    while True:
        it = run.iter_num
        # a resumed run was evaluated at its first iteration, just before that checkpoint was saved
        if (it % cfg.eval_interval == 0 or it == cfg.max_iters) and (it > start_iter or it == 0):
            evaluate_and_save(run, cfg, rt)
            t_last, iters_timed = time.perf_counter(), 0  # keep evaluation out of ms/iter
        if it >= cfg.max_iters:
            break
        lr = lr_at(it, cfg)
        set_lr_multiplier(run.optimizers, lr_multiplier(it, cfg))
        # every process draws the whole global batch alike, then takes its own rows of it
        starts = run.splits["train"].starts(run.batch_rng, (cfg.gradient_accumulation_steps, cfg.batch_size))
        starts = starts[rt.rank * rt.accum:(rt.rank + 1) * rt.accum]  # (accum, B)
        log_now = it % cfg.log_interval == 0
        loss = train_step(run, starts, cfg, rt, want_loss=log_now)
        run.iter_num, iters_timed = it + 1, iters_timed + 1
        if log_now:
            lossf = loss.item()  # waits for the device, so the timing below is true
            if not math.isfinite(lossf):
                raise diverged("the training loss", lossf, it, run)
            run.losses[it] = lossf
            dt = (time.perf_counter() - t_last) / iters_timed  # seconds per iteration
            if rt.master:
                tok_s = run.tokens_per_iter / dt
                mfu = run.raw_model.flops_per_token() * tok_s / rt.world / rt.peak_flops
                memory = peak_memory_mb(rt.device)
                row = {"iter": it, "loss": lossf, "lr": lr, "ms_per_iter": dt * 1000, "tokens_per_s": tok_s,
                       "tokens_per_iter": run.tokens_per_iter, "mfu": mfu, "peak_memory_mb": memory}
                aux = run.raw_model.last_aux_loss  # MoE's load-balancing loss (last micro-batch) or None
                if aux is not None:  # shown apart from the loss, which includes it
                    row["aux_loss"] = aux.item()
                extra = f", aux loss {row['aux_loss']:.4f}" if "aux_loss" in row else ""
                print(f"iter {it}: loss {lossf:.4f}, {dt * 1000:.1f} ms/iter, {tok_s:,.0f} tok/s, "
                      f"mfu {mfu * 100:.1f}%, lr {lr:.2e}, peak memory {memory:,.0f} MB{extra}")
                run.log(row)
            t_last, iters_timed = time.perf_counter(), 0


def main():
    train(configurator.configure(DEFAULTS, sys.argv[1:]))


if __name__ == "__main__":
    configurator.run(main)
