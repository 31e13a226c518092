# The val loss of OpenAI's gpt2-xl (1558M parameters) on a prepared dataset, with nothing trained:
#   python train.py config/eval_gpt2_xl.py                     # OpenWebText: expect ~2.56
#   python train.py config/eval_gpt2_xl.py --dataset=tinystories
# Needs transformers and the weights (downloaded once from the Hugging Face hub; offline, set
# init_from to a local directory holding them).
init_from = "gpt2-xl"
eval_only = True
dataset = "openwebtext"
batch_size = 8
eval_iters = 500  # 500 x 8 x 1024 = 4M tokens: the estimate is good to about 0.01
wandb_log = False
