# config/train_tinystories.py (its recipe: Muon, rotary positions, QK-norm; its block: SwiGLU, RMSNorm,
# no biases) in a smaller model: 8 layers, 6 heads, 384 wide, 512 context.
# About 33.5M parameters, 19.3M of them in the token embedding (50257 x 384) that doubles as the output
# layer, so the transformer itself is ~14.2M (SwiGLU's hidden width 1024 = 8/3 x 384 keeps it at the
# size of a GELU MLP).
#   python prepare.py tinystories
#   python train.py config/train_tinystories_rope_swiglu.py
# Compare with GPT-2's block: python train.py config/train_tinystories_rope_swiglu.py config/gpt2_block.py

include("train_tinystories.py")  # noqa: F821 (configurator gives config files include)
out_dir = "out-tinystories-rope-swiglu"
n_head = 6  # head size 64: RoPE rotates 32 channel pairs per head
n_embd = 384
