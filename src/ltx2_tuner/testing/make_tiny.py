"""Write a tiny random LTX-2 checkpoint (official format) and a tiny Gemma text encoder.

    python -m ltx2_tuner.testing.make_tiny --out DIR --version 2.0|2.3|2.5 [--layout unified|pack]

unified (default): DIR/ltx2_tiny.safetensors and DIR/gemma/ (Gemma 3; LTX 2.5: the LTX Gemma 4 as a directory).
pack (LTX 2.5): the split pack under DIR/pack/ (diffusion_models/, text_encoders/ with the packed Gemma 4, vae/).
Nothing is downloaded.
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
    parser.add_argument(
        "--layout",
        choices=("unified", "pack"),
        default="unified",
        help="unified: one checkpoint file and a Gemma directory (default); pack: LTX 2.5's split pack",
    )
    parser.add_argument("--no-gemma", action="store_true", help="skip writing the tiny Gemma directory")
    return parser


def make_tiny_paths(out: Path, layout: str) -> Path:
    """The file `make_tiny` returns, without writing anything (the tiny pack's name for LTX 2.5)."""
    from ltx2_tuner.testing.tiny_checkpoint import CHECKPOINT_NAME
    from ltx2_tuner.testing.tiny_pack import pack_transformer_path

    return pack_transformer_path(out / "pack") if layout == "pack" else out / CHECKPOINT_NAME


def make_tiny(
    out: Path, version: str, size: str = "tiny", seed: int = 0, gemma: bool = True, layout: str = "unified"
) -> Path:
    """Write the model; return the file `--ltx2_checkpoint` takes (the unified file or the pack's transformer)."""
    from ltx2_tuner.testing import tiny_gemma
    from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint

    if layout == "pack":
        from ltx2_tuner.testing.tiny_pack import write_tiny_pack

        if version != "2.5" or size != "tiny":
            raise SystemExit("--layout pack writes the tiny LTX 2.5 split pack: pass --version 2.5 (and --size tiny)")
        return write_tiny_pack(out / "pack", version, seed=seed, text_encoder=gemma).transformer
    path = write_tiny_checkpoint(out, version, size=size, seed=seed)
    if gemma:
        write = tiny_gemma.write_tiny_gemma4 if version == "2.5" else tiny_gemma.write_tiny_gemma
        write(out / "gemma", seed=seed)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    path = make_tiny(args.out, args.version, args.size, args.seed, gemma=not args.no_gemma, layout=args.layout)
    extra = f" and {args.out / 'gemma'}" if not args.no_gemma and args.layout == "unified" else ""
    print(f"wrote {path}{extra} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
