"""Precision names of the command line -> torch dtypes: one mapping for every command.

"no" is accelerate's name for full precision (--mixed_precision no); "fp32" is the same dtype where a file's
storage precision is chosen (--save_precision, --vae_dtype). Each flag offers the subset that makes sense for it.
"""

from __future__ import annotations

import torch

DTYPES = {"no": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# What a flag may offer, as name -> dtype views of DTYPES.
COMPUTE_DTYPES = {name: DTYPES[name] for name in ("no", "bf16", "fp16")}  # --mixed_precision
STORAGE_DTYPES = {name: DTYPES[name] for name in ("bf16", "fp16", "fp32")}  # --save_precision, --vae_dtype
