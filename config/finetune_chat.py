# Fine-tune a trained model to chat. The chat data carries a loss mask (prepare.py --format=chat), so
# only the assistant's replies are learned: the model learns to answer, not to imitate the user.
#   python train.py config/train_tinystories.py      # the model to start from, in out-tinystories
#   python prepare.py ultrachat                      # HuggingFaceH4/ultrachat_200k, or your own:
#   python prepare.py --input=chats.jsonl --format=chat --name=ultrachat
#   python train.py config/finetune_chat.py
#   python sample.py --out_dir=out-chat --chat       # or --serve for the web page
# From GPT-2 instead: --init_from=gpt2 (124M parameters, 1024-token context).
# From a model with a BPE of its own (config/train_tinystories_bpe.py): tokenize the chats with its
# vocabulary, `python prepare.py ultrachat --tokenizer=out-tinystories-bpe` (or the dataset's folder),
# and --init_from=out-tinystories-bpe; train.py refuses data tokenized otherwise.

out_dir = "out-chat"
dataset = "ultrachat"
init_from = "out-tinystories"  # another run's out_dir: its weights, with a fresh optimizer
eval_interval = 250
eval_iters = 50
log_interval = 10
always_save_checkpoint = False  # keep the checkpoint with the best val loss on the replies

# 16 sequences x 512 tokens x 4 micro-batches = 32,768 tokens per iteration. UltraChat's ~200k
# conversations hold ~300M tokens, so 3000 iterations see about a third of them: a model this small
# learns the turn-taking early and gains little from more passes.
batch_size = 16
block_size = 512  # the TinyStories model's context; conversations longer than this are cut in windows
gradient_accumulation_steps = 4
max_iters = 3000

learning_rate = 3e-4  # below the 1e-3 of pretraining: keep what the model knows while it adapts
warmup_iters = 100
lr_decay_iters = 3000
min_lr = 3e-5
dropout = 0.0
