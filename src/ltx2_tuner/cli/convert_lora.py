"""`python -m ltx2_tuner.cli.convert_lora IN OUT --to official|musubi [--base CHECKPOINT]`: convert an LTX-2 adapter
file (LoRA, DoRA, LoKr, LoHa) between the official/ComfyUI format and musubi-tuner's.

The formats and the conversion are in `ltx2_tuner.networks.convert_lora` (DoRA needs `--base`: the two formats
store its magnitude relative to different norms); which files are refused (OFT, (IA)^3, ...) in
`ltx2_tuner.networks.lora_files`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltx2_tuner.cli._common import run
from ltx2_tuner.networks.convert_lora import CONVERTERS, convert_lora_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ltx2_tuner.cli.convert_lora",
        description="Convert an LTX-2 LoRA, DoRA, LoKr or LoHa file between the official/ComfyUI format and "
        "musubi-tuner's format.",
    )
    parser.add_argument("input", type=Path, help="LoRA file (official/ComfyUI or musubi format)")
    parser.add_argument("output", type=Path, help="converted file to write")
    parser.add_argument("--to", choices=tuple(CONVERTERS), default="official", help="target format (default official)")
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="the official checkpoint the adapter was trained on; needed for DoRA files only",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    count = convert_lora_file(args.input, args.output, args.to, args.base)
    print(f"wrote {args.output} ({count} tensors, {args.to} format)")
    return 0


def entry_point() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    entry_point()
