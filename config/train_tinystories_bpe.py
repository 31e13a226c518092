# config/train_tinystories_rope_swiglu.py with a vocabulary of its own: a 16,384-token byte-level BPE
# learned from TinyStories, instead of GPT-2's 50,257 tokens. Same 8 layers, 6 heads, 384 wide, 512
# context, SwiGLU and recipe (Muon, RoPE, QK-norm), so that the two runs differ in the tokenizer alone:
# compare their val bits per byte (the loss itself is per token, and tokens differ). About 20.5M
# parameters, 6.3M of them in the token embedding (16384 x 384) instead of 19.3M, and an output layer
# a third as wide: each step costs less. A new preset rather than a change to that one, so that both
# comparisons stay runnable.
#   python prepare.py tinystories --tokenizer=bpe --vocab_size=16384 --tokenizer_sample=2e8 \
#       --name=tinystories_bpe          # learns from the first 200M characters of the train split
#   python train.py config/train_tinystories_bpe.py
#   python sample.py --out_dir=out-tinystories-bpe --start="Once upon a time"

include("train_tinystories_rope_swiglu.py")  # noqa: F821 (configurator gives config files include)
out_dir = "out-tinystories-bpe"
dataset = "tinystories_bpe"
