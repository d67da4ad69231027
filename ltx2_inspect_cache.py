#!/usr/bin/env python
"""Show the state of every dataset's caches. See `python ltx2_inspect_cache.py --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.inspect_cache import main

if __name__ == "__main__":
    sys.exit(run(main))
