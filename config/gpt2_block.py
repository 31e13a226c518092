# GPT-2's block trained by AdamW alone, one file away from the recipe the presets use (BENCH.md):
#   python train.py config/train_shakespeare_char.py config/gpt2_block.py
# Learned positions, GELU, LayerNorm with biases, no QK-norm: after train_shakespeare_char.py or
# train_tinystories.py, exactly the preset as it was before the recipe (test_train.py checks it), and
# a model hf.export writes as GPT-2. Put it after the preset: later files win.
optimizer = "adamw"
pos_emb = "learned"
mlp = "gelu"
norm = "layernorm"
qk_norm = False
bias = True
learning_rate = 1e-3  # AdamW's peak for every weight, as in the presets before the recipe
# Adam's first steps need a warmup that Muon's do not: at least 100 iterations, or the preset's if longer
warmup_iters = max(warmup_iters, 100)  # noqa: F821 (the earlier config file set it)
