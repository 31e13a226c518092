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

out_dir = "out-tinystories-moe"
dataset = "tinystories"
eval_interval = 1000
eval_iters = 100
log_interval = 10
always_save_checkpoint = True

# 32 sequences x 512 tokens x 4 micro-batches = 65,536 tokens per iteration, as in train_tinystories.py
gradient_accumulation_steps = 4
batch_size = 32
block_size = 512

n_layer = 8
n_head = 8
n_embd = 512
dropout = 0.0
mlp = "swiglu"
n_expert = 4
n_expert_active = 2
aux_loss_coef = 0.01  # Switch Transformer's value: enough to balance the experts, small next to the loss
grad_checkpoint = False

learning_rate = 1e-3
max_iters = 20000
lr_decay_iters = 20000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 1000
weight_decay = 0.1

# The recipe (BENCH.md: found on the CPU shakespeare_char run, not yet measured at this size): Muon for
# the blocks' weight matrices, AdamW for the embeddings, norms and the routers; rotary positions. Not
# QK-norm: with RMSNorm and no biases this is the block export.py writes as a Hugging Face Mixtral,
# which has no QK-norm.
optimizer = "muon"
muon_lr = 0.02  # Muon's usual peak; the CPU run trained alike at 0.015 and 0.02
pos_emb = "rope"
qk_norm = False
norm = "rmsnorm"
bias = False
# As before the recipe: --optimizer=adamw --pos_emb=learned --norm=layernorm --bias=True.
