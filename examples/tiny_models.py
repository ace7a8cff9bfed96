"""Write model directories to register while trying evalhub out, built offline in seconds.

    python examples/tiny_models.py [DIR]

writes DIR/tiny-base (a tiny Llama with its tokenizer and chat template, untrained) and two LoRA
adapters of it, DIR/bot-v1 and DIR/bot-v2 (random, different weights). They are what the README's
registry section registers; `evalhub finetune run` makes adapters that learned something.
"""

from __future__ import annotations

import sys
from pathlib import Path


def write_adapter(base: Path, directory: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0); these change the answers
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    model.save_pretrained(directory)


def main() -> None:
    from transformers.utils import logging

    from evalhub.finetune.tiny import build_tiny_model

    logging.disable_progress_bar()

    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    base = build_tiny_model(root / "tiny-base", pretrain_steps=0)
    for seed, name in enumerate(("bot-v1", "bot-v2"), start=1):
        write_adapter(base, root / name, seed)
    print(f"wrote {root / 'tiny-base'}, {root / 'bot-v1'} and {root / 'bot-v2'}")


if __name__ == "__main__":
    main()
