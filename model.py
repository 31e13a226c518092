"""The GPT, in one file read top to bottom.

The config; attention with its KV cache; the feed-forward layers (GELU MLP, SwiGLU, Mixture of
Experts); the pre-norm Transformer block; sampling from logits; and the GPT itself: forward (logits
and loss) and generate (KV-cache decoding). The defaults are GPT-2; each variant (RoPE, QK-norm,
SwiGLU, RMSNorm, MoE, gradient checkpointing) sits beside the part it replaces. Optimizers live in
optim.py, checkpoints in checkpoint.py, the CPU decoding layout in decoding.py, Hugging Face in hf.py.

Shapes: B = batch, T = time (tokens), C = n_embd, nh = n_head, hs = head size (C // nh), V = vocab.
References: GPT-2 (Radford et al. 2019), "Attention Is All You Need" (Vaswani et al. 2017).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum context length, in tokens
    vocab_size: int = 50257  # GPT-2's BPE vocabulary: 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # on attention weights and on each residual branch, training only
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    # variants; the defaults are GPT-2's block
    pos_emb: str = "learned"  # 'learned' (a table of positions) or 'rope' (rotary, see apply_rope)
    rope_base: float = 10000.0  # RoPE's slowest rotation turns once every ~2*pi*rope_base positions
    mlp: str = "gelu"  # 'gelu' (GPT-2) or 'swiglu' (see SwiGLU)
    mlp_hidden: int = 0  # the feed-forward layer's hidden width; 0: 4C for GELU, ~8C/3 for SwiGLU
    norm: str = "layernorm"  # 'layernorm' (GPT-2) or 'rmsnorm' (see make_norm)
    qk_norm: bool = False  # RMSNorm on every head's queries and keys (see CausalSelfAttention)
    n_expert: int = 0  # 0: one dense MLP per block; E >= 1: a mixture of E expert MLPs (see MoE)
    n_expert_active: int = 2  # k: experts each token is sent to
    aux_loss_coef: float = 0.01  # weight of MoE's load-balancing loss in the training loss
    grad_checkpoint: bool = False  # recompute activations in backward: less memory, ~1/3 more compute

    def __post_init__(self):
        """Refuse a shape or option that cannot work, with a ValueError saying why in a sentence
        (the scripts print it as their one-line error)."""
        for key in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a whole number of at least 1, not {value!r}")
        if self.n_embd % self.n_head:  # suggest the nearest head count that divides, and a width
            heads = min((h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0),
                        key=lambda h: abs(h - self.n_head))
            raise ValueError(f"n_embd={self.n_embd} does not split into n_head={self.n_head} equal heads; "
                             f"use n_head={heads} or n_embd={-(-self.n_embd // self.n_head) * self.n_head}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout is the probability of zeroing an activation: from 0 to below 1, "
                             f"not {self.dropout}")
        choices = dict(pos_emb=("learned", "rope"), mlp=("gelu", "swiglu"), norm=("layernorm", "rmsnorm"))
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, not {getattr(self, key)!r}")
        if self.n_expert < 0:
            raise ValueError(f"n_expert must be 0 (one dense MLP) or more, not {self.n_expert}")
        if self.n_expert and not 1 <= self.n_expert_active <= self.n_expert:
            raise ValueError(f"n_expert_active must be 1..n_expert={self.n_expert}, "
                             f"not {self.n_expert_active}")
        if self.pos_emb == "rope" and self.n_embd // self.n_head % 2:
            raise ValueError(f"pos_emb='rope' rotates channel pairs: the head size n_embd // n_head = "
                             f"{self.n_embd // self.n_head} must be even")


# -----------------------------------------------------------------------------
# Attention


class KVCache:
    """The keys and values of every layer for the tokens seen so far: decoding token t then costs one
    query against t cached keys, not t tokens recomputed. Allocated on first use, in the keys' dtype
    (autocast's). All rows sit at one position, so attention's mask follows from the shapes;
    engine.BatchCache gives each row its own (.pos a (B, 1) tensor, .mask the keys each may see)."""
    mask = None

    def __init__(self, n_layer, max_len):
        self.max_len = max_len
        self.pos = 0  # positions filled so far; GPT.forward advances it after the last layer
        self.buffers = [None] * n_layer

    def update(self, layer, k, v):
        """Store k, v (B, nh, T, hs) at positions pos..pos+T; return all keys and values so far."""
        B, nh, T, hs = k.shape
        assert self.pos + T <= self.max_len, "KV cache overflow: the caller must restart the window"
        if self.buffers[layer] is None:
            self.buffers[layer] = k.new_empty(2, B, nh, self.max_len, hs)
        buf = self.buffers[layer]
        buf.narrow(3, self.pos, T).copy_(torch.stack((k, v)))  # (2, B, nh, T, hs)
        return buf.narrow(3, 0, self.pos + T).unbind(0)  # (B, nh, pos + T, hs) each


def explicit_attention(q, k, v, dropout_p=0.0, mask=None):
    """The slow, textbook path: softmax(q k^T / sqrt(hs)) v under a causal mask (or the given one:
    True where a query may look). Kept for the tests."""
    T, S = q.size(-2), k.size(-2)  # S >= T when earlier keys come from a KV cache
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, S)
    if mask is None:  # query i sits at absolute position S - T + i and may look at keys 0..S - T + i
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, T, hs)


def fast_attention(q, k, v, dropout_p=0.0, mask=None):
    """The same maths through torch's fused kernels (flash / memory-efficient where available)."""
    T, S = q.size(-2), k.size(-2)
    if mask is not None:  # rows at different positions (engine.BatchCache): (B, 1, T, S)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if T == S:  # no cache, or a prefill: plain causal attention
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if T == 1:  # one new token may look at everything before it: no mask needed
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    # several new tokens after a cached prefix; SDPA's is_causal would align the mask top-left
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def rope_tables(config):
    """cos and sin of every position's rotation angles, (block_size, hs/2) each. Channel pair i turns
    by pos * base^(-2i/hs) radians: fast-turning pairs resolve nearby tokens, slow ones far ones."""
    hs = config.n_embd // config.n_head
    freqs = config.rope_base ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)  # (hs/2,)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), freqs)  # (block_size, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotary position embedding (RoFormer, Su et al. 2021): rotate channel pairs (i, i + hs/2) of
    x (B, nh, T, hs) by angles given per position, cos and sin (T, hs/2). A query at position m and
    a key at n are rotated by m and n, so their dot product depends only on m - n: attention sees
    relative positions, and cached keys stay valid as decoding moves on."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each; rotated in float32 for accuracy
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.layer_idx = layer_idx  # which slot of a KVCache is ours
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.attend = fast_attention  # tests swap in explicit_attention
        # QK-norm (Dehghani et al. 2023): unit-RMS queries and keys (times a learned gain per channel)
        # bound the attention logits, which can otherwise grow until softmax saturates (BENCH.md: Muon)
        hs = config.n_embd // config.n_head
        self.q_norm = nn.RMSNorm(hs, eps=1e-5) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(hs, eps=1e-5) if config.qk_norm else None

    def forward(self, x, cache=None, rope=None):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs)
        # q, k and v with their channels split into heads: each head attends in its own hs-wide subspace
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, nh, T, hs) each
        if self.q_norm is not None:  # per head, before RoPE and the cache: keys are cached normalised
            q, k = self.q_norm(q.float()).type_as(v), self.k_norm(k.float()).type_as(v)  # in float32, as RoPE
        if rope is not None:  # before caching: keys are stored rotated to their absolute positions
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = None
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nh, S, hs), S = tokens so far
            mask = cache.mask
        y = self.attend(q, k, v, self.dropout if self.training else 0.0, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


# -----------------------------------------------------------------------------
# Feed-forward layers and the Transformer block


def make_norm(config):
    """GPT-2's LayerNorm, or RMSNorm (Zhang & Sennrich 2019): only a rescale to unit root mean square,
    with no mean subtraction and no bias; cheaper, and trains as well."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def make_mlp(config, experts=True):
    """The feed-forward layer: GELU (GPT-2) or SwiGLU, as one dense layer or a mixture of experts."""
    if config.n_expert and experts:
        return MoE(config)
    return SwiGLU(config) if config.mlp == "swiglu" else MLP(config)


def hidden_width(config, mlp):
    """The hidden width of a feed-forward layer of kind `mlp`: mlp_hidden if set, else 4C for GELU
    (GPT-2), and for SwiGLU ~8C/3, which keeps its three matrices at the parameters of GELU's two,
    rounded up to a multiple of 64, which matmul kernels run faster (384 -> 1024, 512 -> 1408)."""
    if config.mlp_hidden:
        return config.mlp_hidden
    return -(-8 * config.n_embd // 3 // 64) * 64 if mlp == "swiglu" else 4 * config.n_embd


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = hidden_width(config, "gelu")
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        # GPT-2 used the tanh approximation of GELU; matching it keeps Hugging Face logits identical
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, hidden) inside, (B, T, C) out


class SwiGLU(nn.Module):
    """SwiGLU (GLU Variants Improve Transformer, Shazeer 2020): silu(x W_gate) * (x W_up), then W_down.
    Three matrices instead of two, so the hidden width shrinks from 4C to ~8C/3 (hidden_width)."""

    def __init__(self, config):
        super().__init__()
        hidden = hidden_width(config, "swiglu")
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)  # gate and up at once
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(F.silu(gate) * up))  # (B, T, C)


class MoE(nn.Module):
    """Mixture of Experts: E expert MLPs and a router sending each token to its top k, for E times the
    feed-forward parameters at about k times the compute. Dropless: every token reaches k experts."""

    def __init__(self, config):
        super().__init__()
        self.k = config.n_expert_active
        self.router = nn.Linear(config.n_embd, config.n_expert, bias=False)
        self.experts = nn.ModuleList([make_mlp(config, experts=False) for _ in range(config.n_expert)])
        self.aux_loss = None  # set by each forward

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(B * T, C)  # (N, C): tokens are routed one by one
        probs = self.router(x).softmax(dim=-1)  # (N, E)
        weights, chosen = probs.topk(self.k, dim=-1)  # (N, k) each
        weights = weights / weights.sum(dim=-1, keepdim=True)  # the k chosen experts' shares sum to 1
        y = torch.zeros_like(x)  # (N, C)
        for e, expert in enumerate(self.experts):
            # the tokens that chose expert e, and in which of their k slots; an expert chosen by
            # none still runs (on zero rows) so every parameter gets a gradient, as DDP expects
            token, slot = torch.where(chosen == e)  # (n_e,) each
            out = expert(x[token]) * weights[token, slot, None]  # (n_e, C)
            y.index_add_(0, token, out.to(y.dtype))
        self.aux_loss = load_balancing_loss(probs, chosen)
        return y.view(B, T, C)


def load_balancing_loss(probs, chosen):
    """Switch Transformer's auxiliary loss (Fedus et al. 2021), with top-k: E * sum_e f_e * P_e, where
    f_e is the share of routing slots given to expert e and P_e its mean router probability (N, E).
    Only P_e has a gradient; the loss is smallest, 1, when routing is uniform (f = P = 1/E)."""
    E = probs.size(-1)
    f = F.one_hot(chosen, E).float().mean(dim=(0, 1))  # (E,), sums to 1
    return E * (f * probs.mean(dim=0)).sum()


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = make_mlp(config)

    def forward(self, x, cache=None, rope=None):
        x = x + self.attn(self.ln_1(x), cache, rope)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


# -----------------------------------------------------------------------------
# Sampling


def filter_logits(logits, top_k=None, top_p=None):
    """Set to -inf every logit outside the top_k largest, then outside the nucleus: the smallest
    set of most likely tokens whose probabilities sum to at least top_p (Holtzman et al. 2019)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
        probs = sorted_logits.softmax(dim=-1)
        # a token is dropped when the more likely ones before it already reach top_p
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p  # (B, V), the top token never drops
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


GREEDY_BELOW = 1e-4  # temperatures under this pick the likeliest token (see sample_logits)


def sample_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None, ids=None):
    """Pick the next token from logits (B, V): greedy at temperature 0, else sample (from torch's
    global random numbers, or the given torch.Generator's). Given ids (B, k), logits (B, k) are those
    tokens' logits only: the top_k already taken (GPT.top_logits). Temperatures below GREEDY_BELOW count as
    0: dividing by them could overflow float32 logits to inf (and the probabilities to NaN), and the
    draw is all but greedy there anyway, since a token trailing the best by even 0.01 in logit is
    exp(-100) times as likely."""
    if temperature < GREEDY_BELOW:
        choice = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        return (choice if ids is None else ids.gather(-1, choice))[:, 0]  # (B,)
    if ids is None and top_k is not None and top_k < logits.size(-1):
        # keep just the k best: the softmax and the draw then cost k entries, not V (with GPT-2's
        # 50k-token vocabulary a full-width draw is a noticeable share of a CPU decoding step)
        logits, ids = torch.topk(logits, top_k, dim=-1)  # (B, k) each
    probs = filter_logits(logits.float() / temperature, None, top_p).softmax(dim=-1)  # (B, k or V)
    # the exponential race: with E_i ~ Exp(1), argmax p_i / E_i is token i with probability p_i.
    # torch.multinomial draws the same way, after validating the probabilities, which costs more than
    # the draw; the clamp keeps a (rare) E = 0 from making 0 / 0 = NaN win for a filtered-out token
    race = torch.empty_like(probs).exponential_(generator=generator)  # (B, k or V)
    race.clamp_(min=torch.finfo(probs.dtype).tiny)
    choice = (probs / race).argmax(dim=-1, keepdim=True)  # (B, 1)
    return (choice if ids is None else ids.gather(-1, choice))[:, 0]  # (B,)


# -----------------------------------------------------------------------------
# The GPT


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            # learned position embeddings; RoPE has none, it rotates q and k in every layer instead
            wpe=nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if config.pos_emb == "rope":  # not saved in checkpoints: recomputed from the config
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.last_aux_loss = None  # MoE's load-balancing loss of the latest forward
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf 2017): reading a token in and writing it out share one matrix
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer), since each block adds two
        # branches to the residual stream and its variance would otherwise grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=True):
        """Parameter count; by default without the position table (the token table is also the output layer)."""
        n = sum(p.numel() for p in self.parameters())  # a tied weight is counted once
        if non_embedding and self.transformer.wpe is not None:
            n -= self.transformer.wpe.weight.numel()
        return n

    def hidden_states(self, idx, cache=None):
        """Token ids (B, T) -> final normalised hidden states (B, T, C)."""
        B, T = idx.shape
        # where the new tokens start: an int, or (B, 1) when each row has its own (engine.BatchCache)
        start = cache.pos if cache is not None else 0
        if isinstance(start, int) and start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size "
                             f"{self.config.block_size}")
        # the rows of the position tables to use: a slice when all rows share them (no copy), else (B, T)
        pos = slice(start, start + T) if isinstance(start, int) else start + torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe.weight[pos]  # + (T, C) or (B, T, C)
        else:  # the rotations for these positions, which every attention layer applies
            # (1, T, hs/2) or (B, 1, T, hs/2) each: broadcast over the heads
            rope = self.rope_cos[pos].unsqueeze(-3), self.rope_sin[pos].unsqueeze(-3)
        x = self.transformer.drop(x)
        # gradient checkpointing keeps each block's input alone and recomputes the rest in backward
        recompute = self.config.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.transformer.h:
            x = checkpoint(block, x, cache, rope, use_reentrant=False) if recompute else block(x, cache, rope)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(self, idx, targets=None, cache=None):
        """Return (logits, loss). Targets equal to -1 are ignored. Without targets, only the last
        position's logits (B, 1, V), all generation needs. MoE's load-balancing loss (mean over layers,
        self.last_aux_loss) joins the loss in training only: evaluation is pure cross-entropy."""
        x = self.hidden_states(idx, cache)  # (B, T, C)
        if self.config.n_expert:
            self.last_aux_loss = torch.stack([block.mlp.aux_loss for block in self.transformer.h]).mean()
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, V)
        logits = self.lm_head(x)  # (B, T, V)
        # a mean over the targets that count; summed and divided so that a batch whose targets are
        # all masked (chat data trains on replies only) gives 0 rather than 0/0 = NaN
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction="sum") / (targets != -1).sum().clamp(min=1)
        if self.config.n_expert and self.training:
            loss = loss + self.config.aux_loss_coef * self.last_aux_loss
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to fine-tune GPT-2 (1024) with a smaller block."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if self.transformer.wpe is not None:  # RoPE's tables are simply longer than needed
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    # -------------------------------------------------------------------------
    # Generation

    @torch.inference_mode()  # no_grad, and no autograd bookkeeping either: less work per token
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        eos_token=None):
        """Yield the next token of every row, (B,), one step at a time, using the KV cache. Call
        model.eval() first (decoding.ready_for_decoding does). A row that has produced eos_token keeps
        yielding it; the stream ends once every row has. Random draws use torch's global RNG.

        The context window. Each token is predicted from the tokens since the window's start: at
        first the prompt's last block_size tokens. When the window is full and another token is
        wanted, it restarts at the sequence's last block_size // 2 tokens, which are run through the
        model afresh (one prefill into the emptied cache), and grows again one token at a time. So
        every prediction sees at least half a block of context, and within the first block_size
        tokens it sees them all: there this is exactly the full-context decode. A long generation
        costs one prefill of block_size // 2 tokens per about block_size // 2 new ones. (Sliding the
        window by one token would cost a prefill of the whole window for every token: each cached
        key was computed with the dropped tokens in its context, and at its old position.)
        engine.Engine restarts the windows of the rows it batches the same way."""
        block, keep = self.config.block_size, self.window_restart()
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,)
        cache = KVCache(self.config.n_layer, block)
        idx = idx[:, -block:]  # (B, T): the most recent tokens, all that a window can hold
        for step in range(max_new_tokens):
            if step == 0:  # the first window: the prompt
                x = self.hidden_states(idx, cache)[:, -1]  # (B, C)
            elif cache.pos == block:  # full: restart the window, reusing the cache's buffers
                cache.pos = 0
                x = self.hidden_states(idx[:, -keep:], cache)[:, -1]  # (B, C)
            else:  # one new token against the cached ones
                x = self.hidden_states(idx[:, -1:], cache)[:, -1]  # (B, C)
            logits, ids = self.top_logits(x, top_k)  # (B, V) and None, or the top_k: (B, k) each
            next_token = sample_logits(logits, temperature, top_k, top_p, ids=ids)  # (B,)
            if eos_token is not None:
                next_token = next_token.masked_fill(done, eos_token)
                done |= next_token == eos_token
            idx = torch.cat([idx, next_token[:, None]], dim=1)[:, -block:]  # (B, <= block)
            yield next_token
            if eos_token is not None and done.all():
                return

    def top_logits(self, x, top_k=None):
        """What sampling reads of the logits of hidden states x (B, C): all of them (B, V), with ids
        None; or, when top_k is given and the output layer can find the top_k largest without the
        rest (decoding.ScreenedOutput, in the CPU decoding layout), just those (B, k) and their ids."""
        if top_k is not None and top_k < self.config.vocab_size and hasattr(self.lm_head, "top_logits"):
            return self.lm_head.top_logits(x, top_k)
        return self.lm_head(x), None

    def window_restart(self):
        """How many of the latest tokens a full context window restarts from (see generate_stream)."""
        return max(1, self.config.block_size // 2)

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_token=None):
        """Continue idx (B, T) by up to max_new_tokens; return (B, T + new)."""
        new = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, eos_token))
        return torch.cat([idx] + [t[:, None] for t in new], dim=1)

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 per matmul weight (2 forward, 4 backward) plus the
        attention scores and mixing, 12 * n_layer * T * C (PaLM paper, Chowdhery et al. 2022, app. B)."""
        cfg = self.config
        n = self.get_num_params()
        if cfg.n_expert:  # each token passes through only k of the E experts
            experts = sum(p.numel() for block in self.transformer.h for p in block.mlp.experts.parameters())
            n -= experts * (cfg.n_expert - cfg.n_expert_active) // cfg.n_expert
        return 6 * n + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd
