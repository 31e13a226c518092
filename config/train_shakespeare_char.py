# The classic baby GPT: a character-level model of Shakespeare, about 10.7M parameters.
# On one GPU it takes a few minutes and reaches a val loss of about 1.47.
#   python prepare.py shakespeare_char
#   python train.py config/train_shakespeare_char.py
# On a CPU, a smaller model (README): val loss about 1.90 in 2000 iterations, a few minutes.
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

learning_rate = 1e-3  # a small model tolerates a higher learning rate
max_iters = 5000
lr_decay_iters = 5000  # = max_iters
min_lr = 1e-4  # = learning_rate / 10
beta2 = 0.99  # few tokens per iteration: average the second moment over more steps
warmup_iters = 100
