"""Write a tiny random LTX-2 checkpoint (official unified format) and a tiny Gemma 3 directory.

    python -m ltx2_tuner.testing.make_tiny --out DIR --version 2.0|2.3

writes DIR/ltx2_tiny.safetensors and DIR/gemma/. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ltx2_tuner.testing.tiny_configs import SIZES, VERSIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ltx2_tuner.testing.make_tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--version", required=True, choices=VERSIONS, help="LTX-2 model family to imitate")
    parser.add_argument(
        "--size",
        default="tiny",
        choices=SIZES,
        help="tiny: a few MB for tests (default); bench: a few hundred MB of transformer weights for benchmarks",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.add_argument("--no-gemma", action="store_true", help="skip writing the tiny Gemma 3 directory")
    return parser


def make_tiny(out: Path, version: str, size: str = "tiny", seed: int = 0, gemma: bool = True) -> Path:
    from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint
    from ltx2_tuner.testing.tiny_gemma import write_tiny_gemma

    path = write_tiny_checkpoint(out, version, size=size, seed=seed)
    if gemma:
        write_tiny_gemma(out / "gemma", seed=seed)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    path = make_tiny(args.out, args.version, args.size, args.seed, gemma=not args.no_gemma)
    extra = f" and {args.out / 'gemma'}" if not args.no_gemma else ""
    print(f"wrote {path}{extra} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
