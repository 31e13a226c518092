# GPT-2 small (124M) from scratch, on 8 GPUs of one node:
#   python prepare.py openwebtext        # or fineweb-edu: set dataset below
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# On 8 A100s this is about 4 days to a val loss of ~2.85 on OpenWebText (GPT-2 124M itself scores
# ~3.11 on it, before fine-tuning: see config/eval_gpt2.py).

out_dir = "out-gpt2"
dataset = "openwebtext"  # or "fineweb-edu"
wandb_log = False  # True to watch the run on wandb.ai (pip install wandb; wandb login)
wandb_project = "owt"
wandb_run_name = "gpt2-124M"

# ~0.5M tokens per iteration, as in GPT-3's small models:
# 12 sequences x 1024 tokens x 40 micro-batches = 491,520 tokens; under torchrun with 8 GPUs each GPU
# runs 40 / 8 = 5 micro-batches. 600,000 iterations are ~295B tokens.
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False

learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 200
log_interval = 10
