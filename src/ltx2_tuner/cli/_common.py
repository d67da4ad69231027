"""What every command shares: turning our user-facing errors into one line and an exit code."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from ltx2_tuner.errors import Ltx2TunerError
from ltx2_tuner.flags import DATASET_CONFIG, LTX2_CHECKPOINT, LTX_MODE, add_flag, with_help

EXIT_USER_ERROR = 2


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call `main`; an Ltx2TunerError becomes `error: <message>` on stderr and exit code 2, no traceback."""
    try:
        return main(argv)
    except Ltx2TunerError as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _message(error: Ltx2TunerError) -> str:
    """The error's own message. One raised in a DataLoader worker (a cache that changed or holds NaN) comes back from
    torch with the worker's traceback pasted in front of it; only the message after it is ours."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    lines = text.splitlines()
    last = max(i for i, line in enumerate(lines) if re.match(r"[\w.]+: ", line))  # `ltx2_tuner.errors.X: message`
    return "\n".join([lines[last].split(": ", 1)[1], *lines[last + 1 :]])


# Flags that several commands share, defined once in ltx2_tuner.flags (same name, type, default and help everywhere).
def add_dataset_flags(parser: argparse.ArgumentParser, checkpoint_required: bool) -> None:
    """--dataset_config and --ltx2_checkpoint."""
    add_flag(parser, DATASET_CONFIG, required=True)
    add_flag(parser, LTX2_CHECKPOINT, required=checkpoint_required)


def add_model_file_flags(parser: argparse.ArgumentParser, *flags) -> None:
    """The split-pack file flags a command reads (VIDEO_VAE, AUDIO_VAE, TEXT_ENCODER from ltx2_tuner.flags)."""
    for flag in flags:
        add_flag(parser, flag)


def add_mode_flag(parser: argparse.ArgumentParser, what_av_adds: str) -> None:
    add_flag(parser, with_help(LTX_MODE, f"; av also {what_av_adds}"))


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """--device and --skip_existing, as the caching commands use them."""
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--skip_existing", action="store_true", help="reuse caches whose fingerprint matches")


def resolve_device(name: str | None):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
