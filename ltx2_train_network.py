#!/usr/bin/env python
"""Train an LTX-2 LoRA. See `python ltx2_train_network.py --help` and docs/training.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main

if __name__ == "__main__":
    sys.exit(run(main))
