"""The demo: the main job on the embedded default, no downloads.

Until the trainer lands, the demo writes a tiny random LTX-2 checkpoint in the official format plus a tiny Gemma
directory, then inspects the checkpoint and loads and runs every component, printing each command a user would run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ltx2_tuner.cli import inspect_checkpoint
from ltx2_tuner.cli._common import run
from ltx2_tuner.testing import make_tiny


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="./demo.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="work directory (default outputs/demo)")
    parser.add_argument("--version", choices=("2.0", "2.3"), default="2.3", help="model family (default 2.3)")
    return parser


def _step(module: str, argv: list[str], entry) -> None:
    print(f"\n$ python -m {module} {shlex.join(argv)}", flush=True)
    code = entry(argv)
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checkpoint = args.out / "ltx2_tiny.safetensors"
    _step("ltx2_tuner.testing.make_tiny", ["--out", str(args.out), "--version", args.version], make_tiny.main)
    _step("ltx2_tuner.cli.inspect_checkpoint", [str(checkpoint), "--check"], inspect_checkpoint.main)
    print(f"\ndemo: done; checkpoint {checkpoint}, Gemma {args.out / 'gemma'}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
