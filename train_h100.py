"""Train a Llama-style language model; on Hopper GPUs use FP8 + torch.compile + flash attention:

    python train_h100.py --dim 896 --n_heads 14 --intermediate_size 3584 --batch_size 16 \\
        --gradient_accumulation_steps 8 --use_fp8 --compile_model --use_flash_attn --no_gradient_checkpointing

Run with --help for every flag; with no --train_data it trains on text that ships with Python.
"""

import sys

from cs336_basics.cli.train import cli

if __name__ == "__main__":
    sys.exit(cli())
