"""Train a LoRA on cached latents and text embeddings: `ltx2_train_network.py`.

    accelerate launch --mixed_precision bf16 ltx2_train_network.py --dataset_config dataset.toml \\
        --ltx2_checkpoint ltx-2.3-22b-dev.safetensors --ltx_mode av --network_dim 16 --network_alpha 16
"""

from __future__ import annotations

import sys

from ltx2_tuner.cli._common import run
from ltx2_tuner.training.config import build_parser, parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.debug_dataset:
        from ltx2_tuner.training.debug_dataset import debug_dataset

        debug_dataset(args)
        return 0
    from ltx2_tuner.training.trainer import train

    train(args)
    return 0


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(run(main))
