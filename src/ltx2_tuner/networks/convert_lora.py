"""Convert LTX-2 LoRA files between the official/ComfyUI format and musubi-tuner's format.

    python -m ltx2_tuner.networks.convert_lora IN.safetensors OUT.safetensors --to official|musubi

official: `diffusion_model.<official module path>.lora_A.weight` / `.lora_B.weight`, alpha folded into B.
musubi:   `lora_unet_model_<official path, dots as underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`
          (written with alpha = rank, so B is unchanged).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ltx2_tuner.cli._common import run
from ltx2_tuner.models.safetensors_io import save_atomically
from ltx2_tuner.networks.lora_ltx2 import OFFICIAL_PREFIX, LoraFileError

_MUSUBI_PREFIX = "lora_unet_"
# Official LTX-2 module paths a LoRA may target, in musubi's underscore form -> dotted form.
_ATTENTION = r"(attn1|attn2|audio_attn1|audio_attn2|audio_to_video_attn|video_to_audio_attn)"
_FLAT_PATTERNS = [
    (
        re.compile(rf"^transformer_blocks_(\d+)_{_ATTENTION}_(to_q|to_k|to_v|to_gate_logits)$"),
        r"transformer_blocks.\1.\2.\3",
    ),
    (re.compile(rf"^transformer_blocks_(\d+)_{_ATTENTION}_to_out_0$"), r"transformer_blocks.\1.\2.to_out.0"),
    (re.compile(r"^transformer_blocks_(\d+)_(ff|audio_ff)_net_0_proj$"), r"transformer_blocks.\1.\2.net.0.proj"),
    (re.compile(r"^transformer_blocks_(\d+)_(ff|audio_ff)_net_2$"), r"transformer_blocks.\1.\2.net.2"),
    (re.compile(r"^(audio_caption_projection|caption_projection)_(linear_1|linear_2)$"), r"\1.\2"),
    (re.compile(r"^(patchify_proj|audio_patchify_proj|proj_out|audio_proj_out)$"), r"\1"),
]


def flat_to_official(flat: str) -> str:
    for pattern, replacement in _FLAT_PATTERNS:
        if pattern.match(flat):
            return pattern.sub(replacement, flat)
    raise LoraFileError(f"musubi LoRA layer {flat!r} is not an LTX-2 transformer module this converter knows")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise LoraFileError(f"{path}: not a readable LoRA safetensors file ({error})") from None


def to_official(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """musubi (or official with `.alpha`) tensors -> official tensors with alpha folded into B."""
    out = {}
    for key, down in tensors.items():
        for down_suffix, up_suffix, prefix in ((".lora_down.weight", ".lora_up.weight", _MUSUBI_PREFIX),
                                               (".lora_A.weight", ".lora_B.weight", OFFICIAL_PREFIX)):  # fmt: skip
            if key.endswith(down_suffix) and key.startswith(prefix):
                stem = key[: -len(down_suffix)]
                up = tensors[stem + up_suffix]
                alpha = tensors.get(stem + ".alpha")
                scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
                if prefix == _MUSUBI_PREFIX:
                    path = flat_to_official(stem.removeprefix(_MUSUBI_PREFIX).removeprefix("model_"))
                else:
                    path = stem.removeprefix(OFFICIAL_PREFIX)
                out[f"{OFFICIAL_PREFIX}{path}.lora_A.weight"] = down
                out[f"{OFFICIAL_PREFIX}{path}.lora_B.weight"] = (up.float() * scale).to(up.dtype)
    if not out:
        raise LoraFileError("no lora_down/lora_up or lora_A/lora_B pairs found")
    return out


def to_musubi(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (or musubi) tensors -> musubi tensors, alpha = rank so the folded scale stays in the up weight."""
    official = to_official(tensors)
    out = {}
    for key, down in official.items():
        if key.endswith(".lora_A.weight"):
            path = key.removeprefix(OFFICIAL_PREFIX).removesuffix(".lora_A.weight")
            stem = f"{_MUSUBI_PREFIX}model_{path.replace('.', '_')}"
            out[f"{stem}.lora_down.weight"] = down
            out[f"{stem}.lora_up.weight"] = official[key.replace(".lora_A.", ".lora_B.")]
            out[f"{stem}.alpha"] = torch.tensor(float(down.shape[0]))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ltx2_tuner.networks.convert_lora", description=__doc__.split("\n")[0]
    )
    parser.add_argument("input", type=Path, help="LoRA file (official/ComfyUI or musubi format)")
    parser.add_argument("output", type=Path, help="converted file to write")
    parser.add_argument(
        "--to", choices=("official", "musubi"), default="official", help="target format (default official)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tensors = _read(args.input)
    try:
        converted = to_official(tensors) if args.to == "official" else to_musubi(tensors)
    except LoraFileError as error:
        raise LoraFileError(f"{args.input}: {error}") from None
    save_atomically(converted, args.output, {"format": f"ltx2-lora-{args.to}", "converted_from": args.input.name})
    print(f"wrote {args.output} ({len(converted)} tensors, {args.to} format)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
