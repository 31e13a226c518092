"""Export a trained model as a Hugging Face model: weights, config, tokenizer, chat template, card.

    python export.py --out_dir=out-tinystories --to=hf/tinystories
    python export.py --out_dir=out-chat --to=hf/chat --push_to_hub=you/sprout-chat

The folder loads with transformers' AutoModelForCausalLM and AutoTokenizer, and back here with
--init_from=hf/tinystories. Its layout follows the model's config (hf.py): GPT-2's block ->
GPT2LMHeadModel; RoPE + SwiGLU + RMSNorm -> LlamaForCausalLM, with QK-norm (and no biases)
Qwen3ForCausalLM, with experts MixtralForCausalLM.
Models trained on chat data (prepare.py --format=chat) get a chat template that gives exactly
sprout's token ids. The folder is checked by loading it back before it takes its name.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import configurator
import hf
from checkpoint import load_model
from configurator import UserError

DEFAULTS = dict(
    init_from="resume",  # 'resume' (out_dir/ckpt.pt), another run's out_dir, a GPT-2 name or a HF folder
    out_dir="out",  # the training run to export
    to="",  # the folder to write; '' means hf/<name of out_dir>
    force=False,  # replace the folder if it exists
    push_to_hub="",  # a hub repository (user/name) to upload the folder to; '' uploads nothing
)


def main():
    cfg = SimpleNamespace(**configurator.configure(DEFAULTS, sys.argv[1:]))
    folder = Path(cfg.to or Path("hf") / Path(cfg.out_dir).resolve().name)
    if folder.exists() and not cfg.force:
        raise UserError(f"{folder} already exists; pass --force to replace it, or choose another --to")
    hint = "; point --out_dir at a training run (train.py writes ckpt.pt there)"
    model, meta, ckpt = load_model(cfg.init_from, cfg.out_dir, hint)
    layout = hf.export(model, meta, folder, ckpt, replace=cfg.force, name=cfg.push_to_hub or None)
    print(f"wrote {folder} ({hf.CLASSES[layout]}); load it with transformers' "
          f"AutoModelForCausalLM.from_pretrained({str(folder)!r}), or here with --init_from={folder}")
    if cfg.push_to_hub:
        print(f"uploaded: {hf.push_to_hub(folder, cfg.push_to_hub)}")


if __name__ == "__main__":
    configurator.run(main)
