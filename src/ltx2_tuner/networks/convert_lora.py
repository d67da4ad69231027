"""Convert LTX-2 LoRA files between the official/ComfyUI format and musubi-tuner's format.

official: `diffusion_model.<official module path>.lora_A.weight` / `.lora_B.weight`, alpha folded into B.
musubi:   `lora_unet_model_<official path, dots as underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`
          (written with alpha = rank, so B is unchanged).

The command line is `python -m ltx2_tuner.cli.convert_lora` (docs/commands.md); this module is the library part.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ltx2_tuner.models.safetensors_io import save_atomically
from ltx2_tuner.networks.lora_files import LoraFile, LoraFileError, read_lora_file
from ltx2_tuner.networks.musubi_names import official_to_musubi


def to_official(lora: LoraFile) -> dict[str, torch.Tensor]:
    """Official tensors, alpha folded into B, in the file's own dtypes."""
    tensors = {}
    for name, layer in lora.layers.items():
        tensors[f"{name}.lora_A.weight"] = layer.down
        tensors[f"{name}.lora_B.weight"] = layer.folded_up(layer.up.dtype)
    return tensors


def to_musubi(lora: LoraFile) -> dict[str, torch.Tensor]:
    """musubi tensors with alpha = rank, so the folded scale stays in the up weight."""
    tensors = {}
    for name, layer in lora.layers.items():
        stem = official_to_musubi(name)
        if stem is None:
            raise LoraFileError(
                f"{lora.path}: layer {name} has no musubi name (musubi covers the transformer's attention, "
                "feed-forward and projection layers); keep this file in the official format"
            )
        tensors[f"{stem}.lora_down.weight"] = layer.down
        tensors[f"{stem}.lora_up.weight"] = layer.folded_up(layer.up.dtype)
        tensors[f"{stem}.alpha"] = torch.tensor(float(layer.rank))
    return tensors


CONVERTERS = {"official": to_official, "musubi": to_musubi}


def convert_lora_file(source: Path, target: Path, to: str) -> int:
    """Read `source` (either format), write `target` in the format `to` atomically; return its tensor count."""
    tensors = CONVERTERS[to](read_lora_file(source))
    save_atomically(tensors, target, {"format": f"ltx2-lora-{to}", "converted_from": Path(source).name})
    return len(tensors)
