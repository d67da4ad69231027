"""`python -m ltx2_tuner.cli.convert_lora IN OUT --to official|musubi`: convert an LTX-2 LoRA file's format.

The formats and the conversion are in `ltx2_tuner.networks.convert_lora`; which files are refused (DoRA, LoKr, ...)
in `ltx2_tuner.networks.lora_files`.
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
        description="Convert an LTX-2 LoRA file between the official/ComfyUI format and musubi-tuner's format.",
    )
    parser.add_argument("input", type=Path, help="LoRA file (official/ComfyUI or musubi format)")
    parser.add_argument("output", type=Path, help="converted file to write")
    parser.add_argument("--to", choices=tuple(CONVERTERS), default="official", help="target format (default official)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    count = convert_lora_file(args.input, args.output, args.to)
    print(f"wrote {args.output} ({count} tensors, {args.to} format)")
    return 0


def entry_point() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    entry_point()
