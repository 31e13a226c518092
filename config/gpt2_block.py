# GPT-2's block and AdamW, one file away from the recipe that the presets use (BENCH.md: the search):
#   python train.py config/train_shakespeare_char.py config/gpt2_block.py
# Learned positions, GELU, LayerNorm, tied input and output embeddings and no QK-norm, trained by
# AdamW alone: each preset as it was before the recipe search, and the only model hf.save_pretrained
# can export to Hugging Face's GPT-2 format. Put it after the preset: later files win.
optimizer = "adamw"
pos_emb = "learned"
mlp = "gelu"
norm = "layernorm"
qk_norm = False
