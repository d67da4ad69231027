#!/usr/bin/env python
"""Generate a video (with audio) from a prompt, with LoRAs. See `python ltx2_generate_video.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.generate_video import main

if __name__ == "__main__":
    sys.exit(run(main))
