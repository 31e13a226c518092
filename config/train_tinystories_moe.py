# config/train_tinystories.py as a Mixture of Experts: every block has 4 SwiGLU expert MLPs and each
# token goes to its top 2, so the model holds ~4x the feed-forward parameters for ~2x the compute.
# 8 layers, 8 heads, 512 wide, 512 context. About 103.4M parameters: 25.8M in the token embedding
# (50257 x 512, also the output layer), 69.2M in the experts, 8.4M in attention; each token uses
# ~68.8M of them (two experts of four).
#   python prepare.py tinystories
#   python train.py config/train_tinystories_moe.py
# The log (out_dir/log.jsonl) has aux_loss, the load-balancing loss: 1.0 when the experts share the
# tokens evenly, rising toward 2 (E/k) if two experts take them all. Short of memory? grad_checkpoint = True
# recomputes each block's activations in backward instead of keeping them (~30% slower).

include("train_tinystories.py")  # noqa: F821 (configurator gives config files include)
out_dir = "out-tinystories-moe"
n_expert = 4
n_expert_active = 2
aux_loss_coef = 0.01  # Switch Transformer's value: enough to balance the experts, small next to the loss
grad_checkpoint = False
# The recipe with the routers among AdamW's parameters, and without QK-norm: with RMSNorm and no biases
# this is the block export.py writes as a Hugging Face Mixtral, which has no QK-norm.
qk_norm = False
