"""The CPU decoding layout: a trained model made ready to generate one token at a time on a CPU,
where the speed of a token is set by how fast the weights stream from memory.

    ready_for_decoding(model, device, dtype)   eval mode, cast once, and on a CPU in float32:
    prepare_for_decoding(model)                every nn.Linear swapped for a DecodingLinear (one row
                                               reads its weights through F.embedding_bag), the output
                                               layer for a ScreenedOutput (which finds the top k
                                               logits from half the bytes)

sample.py, serve.py and bench.py lay models out this way before decoding them (engine.py).
"""
import math

import torch
import torch.nn as nn
from torch.nn import functional as F


class DecodingLinear(nn.Module):
    """nn.Linear's x W^T + b for decoding on a CPU, where one row per sequence meets every weight
    matrix and speed is set by how fast the weights stream from memory. W^T is stored cut into n
    column blocks, (n, in, out/n), one under the other as .rows (n * in, out/n), so that each of
    the n CPU threads streams a block of its own; the bias, cut the same way, is n more rows.
    - One row (decoding a single sequence): x W^T + b = sum_k x[k] W^T[k] + 1 * b, a weighted sum
      of rows, which is what F.embedding_bag computes (bag j: block j's rows weighted by x, then its
      bias row weighted by 1), with a kernel that streams rows at close to the read bandwidth
      (F.linear runs a one-row product on one core, in a layout that streams far slower; BENCH.md
      has the figures).
    - Several rows (a batch, a prompt): one bmm, which reads each block once for all the rows.
    out is zero-padded to a multiple of n; the extra outputs are cut off."""

    def __init__(self, linear, n):
        super().__init__()
        out, inp = linear.weight.shape
        self.n, self.in_features, self.out_features = n, inp, out
        weight = F.pad(linear.weight.detach(), (0, 0, 0, -out % n))  # (n * out/n, in): zero rows last
        self.padded = weight.size(0)  # n * out/n
        # block j's W^T, (in, out/n), in rows j*in..(j+1)*in: what embedding_bag reads, and viewed as
        # (n, in, out/n), what bmm reads
        rows = weight.view(n, -1, inp).transpose(1, 2).reshape(n * inp, -1)  # (n * in, out/n)
        ids = torch.arange(n * inp).view(n, inp)  # bag j: block j's rows...
        self.has_bias = linear.bias is not None
        if self.has_bias:  # ...then block j's part of the bias, one of n more rows, with weight 1
            bias = F.pad(linear.bias.detach(), (0, -out % n)).view(n, -1)  # (n, out/n)
            rows = torch.cat([rows, bias])  # (n * in + n, out/n)
            ids = torch.cat([ids, torch.arange(n * inp, n * inp + n).view(n, 1)], dim=1)  # (n, in + 1)
        self.register_buffer("rows", rows)
        self.register_buffer("row_ids", ids.reshape(-1), persistent=False)
        self.register_buffer("bag_starts", torch.arange(0, ids.numel(), ids.size(1)), persistent=False)
        # what follows x in each bag's row weights: the bias row's 1, or nothing, (1,) or (0,)
        self.register_buffer("one", torch.ones(int(self.has_bias)), persistent=False)

    def forward(self, x):
        # a call per matrix per token: kept to the fewest tensor operations, each costing microseconds
        n, inp = self.n, self.in_features
        if x.numel() == inp:  # one row
            weights = torch.cat((x.reshape(inp), self.one) * n)  # (n * (in + 1) or n * in,)
            y = F.embedding_bag(self.row_ids, self.rows, self.bag_starts, mode="sum",
                                per_sample_weights=weights)  # (n, out/n): bag j, block j's outputs
        else:
            rows = x.reshape(-1, inp).expand(n, -1, -1)  # (n, M, in): a view, no copy
            blocks = self.rows[:n * inp].view(n, inp, -1)  # (n, in, out/n)
            if self.has_bias:
                y = torch.baddbmm(self.rows[n * inp:].view(n, 1, -1), rows, blocks)  # (n, M, out/n)
            else:
                y = torch.bmm(rows, blocks)  # (n, M, out/n)
            y = y.transpose(0, 1)  # (M, n, out/n)
        y = y.reshape(*x.shape[:-1], self.padded)  # (..., n * out/n): the blocks side by side
        return y if self.padded == self.out_features else y[..., :self.out_features]  # (..., out)


class ScreenedOutput(DecodingLinear):
    """The output layer (no bias) in the decoding layout: a DecodingLinear that can also find the k
    largest logits of each row while streaming half the bytes. Sampling with top_k reads only those
    k, and the output layer is most of a small model's weights (GPT-2's 50,257 tokens).
    1. Every logit is computed from a float16 copy of the weights: a, off the exact logit by at most
       e + U |a|, a bound proven from the rounding errors (worked out below; e is computed for
       each row x, and U is float16's rounding of a).
    2. Take any t at most the k-th largest a. At least k tokens have a >= t, so exact logits of at
       least low = t - U |t| - e (a - U |a| grows with a), and so has the k-th largest exact logit.
       A token whose a + e + U |a| is below low cannot be among the k largest.
    3. The tokens left, usually a few more than k, are computed again from the float32 weights, and
       their k largest taken.
    So the k largest logits are those of the float32 product (to float32 rounding, which also
    depends on the order of the sum), for the cost of float16 weights and a few float32 rows."""

    MAX_SHARE = 0.25  # more candidates than this share of all the logits: compute every logit instead
    U = 2.0**-11 / (1 - 2.0**-11)  # |a - s| <= U |a| for a = float16(s), s in float16's normal range
    F16_MAX = 65504.0  # float16's largest finite value
    SCREEN_BLOCK = 2**18  # bytes of float16 weights per block of the screen: a share of a core's L2

    def __init__(self, linear, n):
        super().__init__(linear, n)
        assert linear.bias is None
        w = linear.weight.detach()  # (V, C)
        self.register_buffer("weight", w, persistent=False)  # the token embedding's, when tied
        # the same layout in float16, in blocks small enough that several rows read each block once
        # from memory and again from the cache (see screen)
        width = max(1, self.SCREEN_BLOCK // (2 * self.in_features))  # outputs per block
        self.screen_layer = DecodingLinear(linear, max(n, -(-self.out_features // width))).half()
        # The bound. x16 = float16(x), w16 = float16(w); a = float16(s), s the float32 sum of the
        # products x16 * w16, each exact in float32 (11 + 11 significant bits). Per input j, over
        # the vocabulary, rounding moved w by at most d[j], and |w16| <= m16[j], |w| <= m[j]. With
        # gamma = C u32 / (1 - C u32), u32 = 2**-24 (Higham, Accuracy and Stability of Numerical
        # Algorithms, 2002, section 3.1), |a - x.w| is at most
        #   sum_j |x16[j]| d[j] + sum_j |x16[j] - x[j]| m[j]    x and the weights rounded
        #   + gamma sum_j |x16[j]| m16[j]                        the float32 sum
        #   + U |a| + 2**-25                                     s rounded to float16 (normal, subnormal)
        # = e + U |a|, with e = |x16| . per_x16 + |x16 - x| . m + 2**-25. That holds while no |s|
        # overflows float16, as |x16| . m16 (1 + gamma), the reach, tells.
        w16 = w.half().float()  # (V, C); w - w16, what rounding dropped, is exact in float32
        gamma = self.in_features * 2.0**-24 / (1 - self.in_features * 2.0**-24)
        d, m, m16 = [t.amax(0).double() for t in ((w - w16).abs(), w.abs(), w16.abs())]  # (C,) each
        per_x16 = torch.stack([d + gamma * m16, m16 * (1 + gamma)], 1)  # (C, 2): e's part, the reach
        # in float32 with room to spare: these sums round too (by less than gamma)
        self.register_buffer("per_x16", (per_x16 * (1 + 2**-10)).float(), persistent=False)  # (C, 2)
        self.register_buffer("per_dx", (m * (1 + 2**-10)).float()[:, None], persistent=False)  # (C, 1)

    def top_logits(self, x, k):
        """The k largest logits of each row of x (B, C), (B, k), and their token ids (B, k)."""
        found = self.candidates(x, k)
        if found is None:
            return torch.topk(self(x), k, dim=-1)
        rows, ids = found  # (K,) each, row by row
        exact = (self.weight.index_select(0, ids) @ x.T).gather(1, rows[:, None])[:, 0]  # (K,)
        if x.size(0) == 1:  # the one row's candidates are all there are
            values, picks = exact.topk(k)  # (k,) each
            return values[None], ids.index_select(0, picks)[None]  # (1, k) each
        # each row's candidates side by side, (B, most), padded with -inf, then each row's top k
        count = torch.bincount(rows, minlength=x.size(0))  # (B,)
        place = torch.arange(rows.numel()) - (count.cumsum(0) - count).index_select(0, rows)  # (K,)
        table = exact.new_full((x.size(0), int(count.max())), -math.inf).index_put_((rows, place), exact)
        values, picks = table.topk(k, dim=-1)  # (B, k) each
        id_table = torch.zeros_like(table, dtype=torch.long).index_put_((rows, place), ids)
        return values, id_table.gather(1, picks)  # (B, k) each

    def candidates(self, x, k):
        """(rows, ids), (K,) each: the tokens whose logit in that row of x (B, C) may be among the k
        largest, at least k a row, from the float16 screen; None where the screen cannot tell."""
        x16 = x.half()  # (B, C)
        rounded = x16.float()  # (B, C): x as the screen sees it
        part, reach = (rounded.abs() @ self.per_x16).unbind(1)  # (B,) each
        if not bool((reach < self.F16_MAX).all()):  # logits may overflow float16 (or x did, or is NaN)
            return None
        e = part + ((rounded - x).abs() @ self.per_dx)[:, 0] + 2**-25  # (B,)
        a = self.screen(x16).float()  # (B, V)
        # t: the k-th largest of the maxima of 4k groups (tokens j, j + 4k, j + 8k, ..., up to a
        # multiple of 4k), at most the k-th largest a since k groups hold an a at least t, and
        # cheaper to find (no top-k over V); a small vocabulary is one group a token
        g = 4 * k
        groups = a[:, :a.size(1) // g * g].unflatten(1, (-1, g)).amax(1) if a.size(1) >= g else a  # (B, g or V)
        t, e = groups.topk(k).values[:, -1].double(), e.double()  # (B,) each
        low = t - self.U * t.abs() - e  # the k-th largest exact logit is at least this, (B,)
        y = low - e  # keep the tokens with a + U |a| >= y: a >= cut (a + U |a| grows with a)
        cut = torch.where(y >= 0, y / (1 + self.U), y / (1 - self.U))  # (B,)
        cut = (cut - 2**-20 * (t.abs() + e)).float()  # below float64's roundings, and float32's of cut
        rows, ids = (a >= cut[:, None]).nonzero(as_tuple=True)  # (K,) each
        return (rows, ids) if ids.numel() <= self.MAX_SHARE * a.numel() else None

    def screen(self, x16):
        """The float16 logits of x16 (B, C), (B, V): bag (j, r) sums block j's rows weighted by row
        r, and one block's bags come one after another, so that with several rows each block is
        read from memory once and from the cache for the others (a float16 bmm is slow here)."""
        layer = self.screen_layer  # its layout; its forward would take one row only
        n, B, C = layer.n, x16.size(0), self.in_features
        ids = layer.row_ids.view(n, 1, C).expand(n, B, C).reshape(-1)  # (n * B * C,)
        weights = x16.expand(n, B, C).reshape(-1)  # (n * B * C,)
        y = F.embedding_bag(ids, layer.rows, torch.arange(0, n * B * C, C), mode="sum",
                            per_sample_weights=weights)  # (n * B, out/n)
        return y.view(n, B, -1).transpose(0, 1).reshape(B, -1)[:, :self.out_features]  # (B, V)


def prepare_for_decoding(model):
    """Swap every nn.Linear of the model for a DecodingLinear with the same weights, the output
    layer (if it has no bias) for a ScreenedOutput, and every nn.Dropout (which does nothing in eval
    mode, at the cost of a call) for nn.Identity. The output layer becomes a copy of the token
    embedding rather than the tied parameter, so the model is for inference only after this; a
    ScreenedOutput also holds a float16 copy, and the weight itself for the candidates' rows.
    Returns the model."""
    threads = torch.get_num_threads()
    if getattr(model, "lm_head", None) is not None and model.lm_head.bias is None:
        model.lm_head = ScreenedOutput(model.lm_head, threads)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, DecodingLinear(child, threads))
            elif isinstance(child, nn.Dropout):
                setattr(module, name, nn.Identity())
    return model


def ready_for_decoding(model, device="cpu", dtype="float32", compile=False):
    """The model as sample.py and serve.py run it: eval mode, on device, in dtype, laid out for
    decoding."""
    # inference only: casting the weights once halves the bytes each token reads in 16-bit, where
    # autocast would convert every weight again on every call
    model.eval().to(device=device, dtype=getattr(torch, dtype))
    # float32 weights get the blocked layout; 16-bit ones keep F.linear, since DecodingLinear's bmm
    # has no fast 16-bit path on a CPU (prompts would read many times slower)
    if device == "cpu" and dtype == "float32":
        prepare_for_decoding(model)
    if compile:  # slow to start; on a CPU it did not decode faster (the matmuls already dominate)
        # a graph per block and kind of call (prefill, one token): the blocks differ in layer_idx
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(model.transformer.h))
        for block in model.transformer.h:
            block.compile(dynamic=True)  # dynamic: one graph serves every cache length
    return model
