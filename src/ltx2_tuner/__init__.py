"""ltx2-tuner: LoRA training for Lightricks' LTX-2 family (LTX-2 19B, LTX-2.3 22B)."""

__version__ = "0.1.0"
