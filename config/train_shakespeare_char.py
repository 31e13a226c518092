# The classic baby GPT: a character-level model of Shakespeare, about 10.7M parameters.
# On one GPU it takes a few minutes; nanoGPT's version of it reached a val loss of about 1.47
# (this one's GPU run has not been measured).
#   python prepare.py shakespeare_char
#   python train.py config/train_shakespeare_char.py
# On a CPU, a smaller model (README): a few minutes, val loss in BENCH.md.
#   python train.py config/train_shakespeare_char.py --device=cpu --compile=False --block_size=64
#     --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
#     --dropout=0.0 --eval_iters=20

out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250  # a small model overfits quickly: evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep only the best val loss: later iterations overfit

# 64 x 256 = 16,384 characters per iteration; 5000 iterations see the 1M-character corpus ~80 times
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # characters of context

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2  # the corpus is tiny: dropout keeps the model from memorising it
bias = True  # GPT-2's biases: cheap extra capacity for a small model

# The recipe, searched on the CPU run below (BENCH.md: it reaches nanoGPT's final val loss in about a
# third of nanoGPT's time). `config/gpt2_block.py` after this file trains GPT-2's block with AdamW
# alone, as before. Each setting, and why (val losses of the CPU run at equal iterations):
optimizer = "muon"  # Muon for the blocks' weight matrices, AdamW for the rest: ~0.3 lower at 400
muon_lr = 0.015  # 0.015 and 0.02 alike at 2000 iterations, 0.015 a little sooner to 1.88; 0.03+ worse
learning_rate = 3e-3  # AdamW's peak, now for the embeddings, norms and biases alone: beat 1e-3 and 1e-2
max_iters = 5000
lr_decay_iters = 5000  # = max_iters
min_lr = 1e-4  # both optimizers decay to 1/30 of their peaks; decaying to 0 did no better
warmup_iters = 20  # Muon's orthogonalised steps are well-sized from the first: 100 was slower
pos_emb = "rope"  # rotary positions (relative, nothing to learn): ~0.08 lower at 400 under Muon
qk_norm = True  # bounded attention logits for Muon's large steps: ~0.06 lower at 400
# Tuned for AdamW on the CPU run before (a short run far from overfitting; the GPU run has dropout
# against that): Adam's default beta2 (few tokens per iteration: average the second moment over many
# steps), no weight decay, no clipping and the biases. Under Muon, beta2 0.99 did no better and no
# biases did worse.
beta2 = 0.999
weight_decay = 0.0
grad_clip = 0.0
