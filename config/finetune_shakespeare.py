# Fine-tune GPT-2 on Shakespeare (GPT-2 tokens): a few minutes on one GPU.
#   python prepare.py shakespeare
#   python train.py config/finetune_shakespeare.py
#   python sample.py --out_dir=out-shakespeare
# The data is ~300K tokens, so the model overfits within a few hundred iterations: keep only the best
# checkpoint, and use a small, constant learning rate.

out_dir = "out-shakespeare"
dataset = "shakespeare"
init_from = "gpt2-xl"  # the largest GPT-2 (1.5B); "gpt2" (124M) fits a smaller GPU
eval_interval = 5
eval_iters = 40
log_interval = 1
always_save_checkpoint = False  # only save when val improves

# 1 sequence x 1024 tokens x 32 micro-batches = 32,768 tokens per iteration; ~9 iterations per pass
batch_size = 1
block_size = 1024
gradient_accumulation_steps = 32
max_iters = 20

learning_rate = 3e-5  # fine-tuning: small and constant
decay_lr = False
warmup_iters = 0
