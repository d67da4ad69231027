"""musubi-tuner's LoRA layer names <-> official LTX-2 module names.

musubi names a layer `lora_unet_model_<official path with dots as underscores>`
(`lora_unet_model_transformer_blocks_0_attn1_to_out_0`). Official segment names contain underscores themselves
(`audio_attn1`, `to_gate_logits`), so the way back needs a table of the modules an LTX-2 LoRA can target.
Facts: ../shared/reference/musubi-ltx2-fork.md §3.3.
"""

from __future__ import annotations

import re

MUSUBI_PREFIX = "lora_unet_"
OFFICIAL_PREFIX = "diffusion_model."
_MODEL = "model_"  # musubi wraps the official model in `.model`; older files lack it
_ATTENTION = r"(attn1|attn2|audio_attn1|audio_attn2|audio_to_video_attn|video_to_audio_attn)"
# Official module paths in musubi's underscore form -> dotted form.
_FLAT_PATTERNS = (
    (
        re.compile(rf"^transformer_blocks_(\d+)_{_ATTENTION}_(to_q|to_k|to_v|to_gate_logits)$"),
        r"transformer_blocks.\1.\2.\3",
    ),
    (re.compile(rf"^transformer_blocks_(\d+)_{_ATTENTION}_to_out_0$"), r"transformer_blocks.\1.\2.to_out.0"),
    (re.compile(r"^transformer_blocks_(\d+)_(ff|audio_ff)_net_0_proj$"), r"transformer_blocks.\1.\2.net.0.proj"),
    (re.compile(r"^transformer_blocks_(\d+)_(ff|audio_ff)_net_2$"), r"transformer_blocks.\1.\2.net.2"),
    (re.compile(r"^(audio_caption_projection|caption_projection)_(linear_1|linear_2)$"), r"\1.\2"),
    (re.compile(r"^(patchify_proj|audio_patchify_proj|proj_out|audio_proj_out)$"), r"\1"),
)


def musubi_to_official(stem: str) -> str | None:
    """`lora_unet_model_transformer_blocks_0_attn1_to_q` -> `diffusion_model.transformer_blocks.0.attn1.to_q`;
    None for a layer outside the table."""
    flat = stem.removeprefix(MUSUBI_PREFIX).removeprefix(_MODEL)
    for pattern, replacement in _FLAT_PATTERNS:
        if pattern.match(flat):
            return OFFICIAL_PREFIX + pattern.sub(replacement, flat)
    return None


def official_to_musubi(name: str) -> str | None:
    """`diffusion_model.<path>` -> `lora_unet_model_<path with underscores>`; None unless the name reads back
    to itself (so a converted file always loads again)."""
    if not name.startswith(OFFICIAL_PREFIX):
        return None
    stem = MUSUBI_PREFIX + _MODEL + name.removeprefix(OFFICIAL_PREFIX).replace(".", "_")
    return stem if musubi_to_official(stem) == name else None
