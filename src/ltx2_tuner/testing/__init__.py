"""Tiny official-format LTX-2 checkpoints and Gemma directories for tests and the demo (no downloads)."""

from ltx2_tuner.testing.tiny_checkpoint import CHECKPOINT_NAME, build_diffusers_modules, write_tiny_checkpoint
from ltx2_tuner.testing.tiny_gemma import write_tiny_gemma

__all__ = ["CHECKPOINT_NAME", "build_diffusers_modules", "write_tiny_checkpoint", "write_tiny_gemma"]
