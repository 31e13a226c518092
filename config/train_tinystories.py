# A GPT-2-tokenized TinyStories model sized for one GPU: 8 layers, 8 heads, 512 wide, 512 context.
# About 51M parameters, 25.7M of them in the token embedding (50257 x 512) that doubles as the output
# layer, so the transformer itself is ~25M: the range of the models TinyStories was made for.
#   python prepare.py tinystories        # ~470M training tokens
#   python train.py config/train_tinystories.py
# Not yet run end to end here (no GPU has been lent for it; BENCH.md): by ~1.6 val loss TinyStories
# models of this size write fluent, mostly consistent stories. 1.3B tokens on one GPU: a few hours.

out_dir = "out-tinystories"
dataset = "tinystories"
eval_interval = 1000
eval_iters = 100
log_interval = 10
always_save_checkpoint = True

# Batch arithmetic: 32 sequences x 512 tokens x 4 micro-batches = 65,536 tokens per iteration;
# 20000 iterations = 1.3B tokens, about 2.8 passes over the data. One 32 x 512 micro-batch of this
# model needs ~6 GB of activations and logits in bf16; with less memory, halve batch_size and double
# gradient_accumulation_steps (the iteration stays 65,536 tokens). Under torchrun with N GPUs the
# accumulation steps are divided among them, so keep it a multiple of N.
gradient_accumulation_steps = 4
batch_size = 32
block_size = 512

n_layer = 8
n_head = 8
n_embd = 512
dropout = 0.0  # plenty of data: no need to regularise

learning_rate = 1e-3  # ~25M transformer parameters: higher than GPT-2 124M's 6e-4
max_iters = 20000
lr_decay_iters = 20000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 1000
weight_decay = 0.1

# The recipe (BENCH.md: found on the CPU shakespeare_char run, not yet measured at this size): Muon for
# the blocks' weight matrices, AdamW for the embeddings and norms; rotary positions and QK-norm. The
# rest of the block is Llama's (SwiGLU, RMSNorm, no biases), so that export.py can write the model as
# a Hugging Face Qwen3 (GPT-2's block with RoPE and QK-norm has no Hugging Face layout).
optimizer = "muon"
muon_lr = 0.02  # Muon's usual peak; the CPU run trained alike at 0.015 and 0.02
pos_emb = "rope"
qk_norm = True
mlp = "swiglu"  # hidden width ~8C/3: the parameters of GPT-2's 4C GELU MLP
norm = "rmsnorm"
bias = False
# config/gpt2_block.py after this file: GPT-2's block and AdamW alone, as before the recipe.
