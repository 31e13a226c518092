"""The optimizers: AdamW for everything, or Muon for the hidden weight matrices and AdamW for the rest.

    optimizers = configure_optimizers(model, optimizer="muon", learning_rate=6e-4, muon_lr=0.02,
                                      weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    set_lr_multiplier(optimizers, 0.5)  # every group at half its own peak learning rate

configure_optimizers returns a list (one or two optimizers); the training loop steps each one. Every
param group carries "peak_lr", its learning rate at the top of the schedule, so one multiplier from
the warmup/cosine schedule serves groups whose peaks differ by 30x (Muon's 0.02, AdamW's 6e-4).
"""
import torch

from configurator import UserError

# Newton-Schulz quintic, Jordan et al. 2024 ("Muon: An optimizer for hidden layers in neural
# networks"): p(x) = a x + b x^3 + c x^5 applied to the singular values. A steep slope at 0 (a) pulls
# small singular values up fast; the values then settle in a band around 1 rather than exactly at 1
# (for 5 steps, every singular value at least 0.0015 of the Frobenius norm lands in [0.68, 1.21]; see
# test_optim.py). The paper found the band trains as well as exact orthogonalisation, in fewer steps.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalise(g, steps=5, dtype=torch.float32):
    """U V^T, approximately, for g = U S V^T: the same directions with every singular value moved
    close to 1. g is one matrix (rows, cols) or a stack of same-shaped ones (n, rows, cols), each
    orthogonalised on its own; a stack runs as batched products, far fewer and larger than one
    matrix at a time. Returned in g's shape and dtype."""
    x = g.to(dtype).reshape(-1, *g.shape[-2:])  # (n, rows, cols)
    tall = x.size(1) > x.size(2)
    if tall:  # work on the wide form, so x x^T below is the smaller Gram matrix
        x = x.mT  # (n, small, large)
    # the quintic sends singular values much above 1 off to infinity (p(1.5) ~ 4.5): dividing by the
    # Frobenius norm, which is at least the largest singular value, puts them all in (0, 1]
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    small, large = x.shape[1:]
    # the Gram form costs fewer FLOPs once large > 1.5 small; float32 only (see newton_schulz_gram)
    if dtype == torch.float32 and 2 * large > 3 * small:
        x = newton_schulz_gram(x, steps)
    else:
        x = newton_schulz(x, steps)
    return (x.mT if tall else x).to(g.dtype).reshape(g.shape)  # (rows, cols) or (n, rows, cols)


def newton_schulz(x, steps):
    """`steps` quintic steps on x (n, small, large), whose singular values are in (0, 1]."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.mT  # (n, small, small)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b (x x^T) + c (x x^T)^2
        # a x + poly x: odd powers of x keep its singular vectors unchanged
        x = torch.baddbmm(x, poly, x, beta=a)  # (n, small, large)
    return x


def newton_schulz_gram(x, steps):
    """newton_schulz's result, computed mostly on (small, small) matrices. Each step multiplies x by
    q = a + b G + c G^2, a polynomial in its Gram matrix G = x x^T; so x_k = P x_0 with P the product
    of the q's, and the next Gram matrix is q G q. Tracking G and P costs ~17 small^3 multiply-adds
    plus 2 small^2 large (G_0 and P x_0), against 5 (2 small^2 large + small^3) for 5 steps: 44% less
    for a 128 x 512 matrix. Forming G squares the singular values, which bfloat16 cannot hold
    accurately (measured: some land far outside the band), so only float32 takes this path."""
    a, b, c = NS_COEFFS
    gram = x @ x.mT  # (n, small, small)
    product = None  # P, the product of the q's so far
    for step in range(steps):
        q = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        q.diagonal(dim1=1, dim2=2).add_(a)  # + a I
        product = q if product is None else q @ product
        if step < steps - 1:
            gram = q @ gram @ q  # the Gram matrix of q x
    return product @ x  # (n, small, large)


class Muon(torch.optim.Optimizer):
    """Muon: SGD with (Nesterov) momentum whose update for each weight matrix is orthogonalised
    (Jordan et al. 2024). For 2-D parameters only; embeddings, the output layer, norms and biases
    belong to AdamW (configure_optimizers splits them). A step orthogonalises the matrices of each
    shape (one per block: every c_attn, every c_fc, ...) together, as batched products.

    ns_dtype is the Newton-Schulz dtype: bfloat16 on GPUs, float32 on CPUs, which emulate bfloat16
    without native units and run it several times slower. It is kept out of the param groups so
    that it is chosen afresh for the device in use, not restored from a checkpoint."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, ns_steps=5,
                 ns_dtype=torch.float32):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise UserError(f"Muon needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0 and ns_steps >= 1; "
                            f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, ns_steps={ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise UserError(f"Muon updates weight matrices only, got a parameter of shape "
                                    f"{tuple(p.shape)}; give it to AdamW")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            # one kernel over all the matrices for each elementwise step, rather than one per matrix
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, grads)  # buf = m buf + grad
            # Nesterov: step from where momentum is about to carry the weights
            updates = torch._foreach_add(grads, bufs, alpha=m) if group["nesterov"] else bufs
            if group["weight_decay"]:  # decoupled, as in AdamW: shrink, then step
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            # same-shaped matrices (one per block, e.g. every c_attn) are orthogonalised together
            for shape, index in same_shapes(params).items():
                stack = orthogonalise(torch.stack([updates[i] for i in index]), group["ns_steps"],
                                      self.ns_dtype)  # (n, rows, cols)
                # Same-sized updates whatever the shape: for an input of RMS 1, an orthogonalised
                # wide matrix (rows <= cols) gives outputs of RMS about 1, but a tall one (c_attn,
                # c_fc) only sqrt(cols / rows), as its cols unit singular values spread over more
                # outputs; sqrt(rows / cols) brings those back to 1 (Jordan et al. 2024).
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                torch._foreach_add_([params[i] for i in index], stack.unbind(0), alpha=-lr * scale)
        return loss


def same_shapes(tensors):
    """{shape: [indices of the tensors of that shape]}, in order of first appearance."""
    groups = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    return groups


def configure_optimizers(model, *, optimizer, learning_rate, muon_lr, weight_decay, betas, device_type,
                         muon_momentum=0.95, muon_weight_decay=0.0):
    """A list of optimizers covering every trainable parameter of a GPT exactly once.

    'adamw': [AdamW], decay on matrices (>= 2-D) only: decaying biases and norm gains would pull them
    toward zero without regularising anything useful.
    'muon': [Muon, AdamW]. Muon (at muon_lr) takes the 2-D weights inside the blocks (attention and
    MLP matrices, every expert's). AdamW (at learning_rate, with the same decay rule) takes the rest:
    the token and position tables and the output layer (input and output layers, which Jordan et al.
    2024 leave to AdamW), norms and biases (not matrices), and MoE routers, whose outputs are logits
    of a softmax over experts, like an output layer's, rather than activations for a next layer.
    Muon's weight decay is separate (default none, as in the original Muon): AdamW's 0.1 at Muon's
    30x higher learning rate would shrink the weights 30x faster."""
    if optimizer not in ("adamw", "muon"):
        raise UserError(f"optimizer must be 'adamw' or 'muon', got {optimizer!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # a tied weight once
    muon, adam = [], []
    for name, p in named:
        hidden = name.startswith("transformer.h.") and p.ndim == 2 and not name.endswith("mlp.router.weight")
        (muon if optimizer == "muon" and hidden else adam).append(p)
    groups = [{"params": [p for p in adam if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in adam if p.ndim < 2], "weight_decay": 0.0}]
    # the fused kernel updates every tensor in one pass: standard on CUDA, several times faster on CPU
    optimizers = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))]
    if muon:
        # bfloat16 Newton-Schulz on GPUs (tensor cores); float32 on CPUs (see Muon)
        ns_dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
        optimizers.insert(0, Muon(muon, lr=muon_lr, momentum=muon_momentum, weight_decay=muon_weight_decay,
                                  ns_dtype=ns_dtype))
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    grouped = [id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for _, p in named), "each parameter in exactly one group"
    return optimizers


def set_lr_multiplier(optimizers, multiplier):
    """Set every group's learning rate to its own peak_lr times `multiplier` (the schedule's shape)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * multiplier


def load_optimizer_states(optimizers, states):
    """Restore optimizers saved as [o.state_dict() for o in optimizers] (a single state dict, from a
    run before there was a list, counts as a list of one). Each group keeps the peak_lr it was just
    configured with, so a resume with a new --learning_rate uses it, as it would without this step."""
    states = [states] if isinstance(states, dict) else list(states)
    kinds = [type(o).__name__ for o in optimizers]
    saved = ["AdamW" if "betas" in s["param_groups"][0] else "Muon" for s in states]
    if saved != kinds:
        raise UserError(f"the checkpoint holds optimizer state for {' + '.join(saved)} but this run "
                        f"uses {' + '.join(kinds)}; resume with the --optimizer it was trained with")
    for opt, state in zip(optimizers, states):
        peaks = [g["peak_lr"] for g in opt.param_groups]
        opt.load_state_dict(state)
        for group, peak in zip(opt.param_groups, peaks):
            group["peak_lr"] = peak
