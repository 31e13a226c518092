# config/train_tinystories.py (its recipe: Muon, rotary positions, QK-norm; its block: SwiGLU, RMSNorm,
# no biases) in a smaller model: 8 layers, 6 heads, 384 wide, 512 context.
# About 33.5M parameters, 19.3M of them in the token embedding (50257 x 384) that doubles as the output
# layer, so the transformer itself is ~14.2M (SwiGLU's hidden width 1024 = 8/3 x 384 keeps it at the
# size of a GELU MLP).
#   python prepare.py tinystories
#   python train.py config/train_tinystories_rope_swiglu.py
# Compare with GPT-2's block: python train.py config/train_tinystories.py config/gpt2_block.py

out_dir = "out-tinystories-rope-swiglu"
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
n_head = 6  # head size 64: RoPE rotates 32 channel pairs per head
n_embd = 384
dropout = 0.0
mlp = "swiglu"

learning_rate = 1e-3
max_iters = 20000
lr_decay_iters = 20000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 1000
weight_decay = 0.1

# The recipe (BENCH.md: found on the CPU shakespeare_char run, not yet measured at this size): Muon for
# the blocks' weight matrices, AdamW for the embeddings and norms; rotary positions and QK-norm; with
# RMSNorm and no biases, a block export.py writes as a Hugging Face Qwen3.
optimizer = "muon"
muon_lr = 0.02  # Muon's usual peak; the CPU run trained alike at 0.015 and 0.02
pos_emb = "rope"
qk_norm = True
norm = "rmsnorm"
bias = False
# As before the recipe: --optimizer=adamw --qk_norm=False --norm=layernorm --bias=True.
