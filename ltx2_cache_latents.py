#!/usr/bin/env python
"""Cache video (and audio) latents of a dataset. See `python ltx2_cache_latents.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_latents import main

if __name__ == "__main__":
    sys.exit(run(main))
