#!/usr/bin/env python
"""Cache Gemma text embeddings of a dataset. See `python ltx2_cache_text_encoder_outputs.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_text_encoder_outputs import main

if __name__ == "__main__":
    sys.exit(run(main))
