"""Tensor-name maps between the official LTX-2 checkpoint and the diffusers model classes, both ways.

Official names are what ltx-core, ComfyUI and Lightricks' trainer use (`model.diffusion_model.patchify_proj.weight`);
diffusers names are what `LTX2VideoTransformer3DModel` and friends expect (`proj_in.weight`). We load with
official -> diffusers and save LoRAs and checkpoints with diffusers -> official.

Every rule renames whole dot-separated segments (or runs of segments), and all rules of a table are applied in one
pass, longest match first. That keeps `audio_proj_in` from being caught by the `proj_in` rule and `down_blocks.1`
from touching `down_blocks.10`, and makes each table invertible by swapping its pairs.
Facts: ../shared/reference/diffusers-ltx2-and-peers.md §2.3-2.4 (diffusers' conversion script, ltx-core SDOps).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# Official body name -> diffusers name, after the official prefix is stripped.
_TRANSFORMER_RULES = (
    ("adaln_single", "time_embed"),
    ("audio_adaln_single", "audio_time_embed"),
    ("prompt_adaln_single", "prompt_adaln"),  # LTX-2.3+
    ("audio_prompt_adaln_single", "audio_prompt_adaln"),  # LTX-2.3+
    ("patchify_proj", "proj_in"),
    ("audio_patchify_proj", "audio_proj_in"),
    ("av_ca_video_scale_shift_adaln_single", "av_cross_attn_video_scale_shift"),
    ("av_ca_audio_scale_shift_adaln_single", "av_cross_attn_audio_scale_shift"),
    ("av_ca_a2v_gate_adaln_single", "av_cross_attn_video_a2v_gate"),
    ("av_ca_v2a_gate_adaln_single", "av_cross_attn_audio_v2a_gate"),
    ("scale_shift_table_a2v_ca_video", "video_a2v_cross_attn_scale_shift_table"),
    ("scale_shift_table_a2v_ca_audio", "audio_a2v_cross_attn_scale_shift_table"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
)

# The connectors live in two official places: under the transformer prefix and as `text_embedding_projection.*`.
_CONNECTOR_RULES = (
    ("model.diffusion_model.video_embeddings_connector", "video_connector"),
    ("model.diffusion_model.audio_embeddings_connector", "audio_connector"),
    ("transformer_1d_blocks", "transformer_blocks"),
    ("text_embedding_projection.aggregate_embed", "text_proj_in"),  # LTX-2.0: one shared projection
    ("text_embedding_projection.video_aggregate_embed", "video_text_proj_in"),  # LTX-2.3+: per modality
    ("text_embedding_projection.audio_aggregate_embed", "audio_text_proj_in"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
)

# The official VAE numbers every encoder/decoder stage (res blocks and resamplers alike) in one flat list;
# diffusers nests each resampler inside the block before it.
_VIDEO_VAE_RULES = (
    ("encoder.down_blocks.0", "encoder.down_blocks.0"),
    ("encoder.down_blocks.1", "encoder.down_blocks.0.downsamplers.0"),
    ("encoder.down_blocks.2", "encoder.down_blocks.1"),
    ("encoder.down_blocks.3", "encoder.down_blocks.1.downsamplers.0"),
    ("encoder.down_blocks.4", "encoder.down_blocks.2"),
    ("encoder.down_blocks.5", "encoder.down_blocks.2.downsamplers.0"),
    ("encoder.down_blocks.6", "encoder.down_blocks.3"),
    ("encoder.down_blocks.7", "encoder.down_blocks.3.downsamplers.0"),
    ("encoder.down_blocks.8", "encoder.mid_block"),
    ("decoder.up_blocks.0", "decoder.mid_block"),
    ("decoder.up_blocks.1", "decoder.up_blocks.0.upsamplers.0"),
    ("decoder.up_blocks.2", "decoder.up_blocks.0"),
    ("decoder.up_blocks.3", "decoder.up_blocks.1.upsamplers.0"),
    ("decoder.up_blocks.4", "decoder.up_blocks.1"),
    ("decoder.up_blocks.5", "decoder.up_blocks.2.upsamplers.0"),
    ("decoder.up_blocks.6", "decoder.up_blocks.2"),
    ("decoder.up_blocks.7", "decoder.up_blocks.3.upsamplers.0"),  # LTX-2.3 decoder has a fourth stage
    ("decoder.up_blocks.8", "decoder.up_blocks.3"),
    ("res_blocks", "resnets"),
    ("last_time_embedder", "time_embedder"),
    ("last_scale_shift_table", "scale_shift_table"),
    ("per_channel_statistics.mean-of-means", "latents_mean"),
    ("per_channel_statistics.std-of-means", "latents_std"),
)

_AUDIO_VAE_RULES = (
    ("per_channel_statistics.mean-of-means", "latents_mean"),
    ("per_channel_statistics.std-of-means", "latents_std"),
)

_VOCODER_RULES = (
    ("ups", "upsamplers"),
    ("resblocks", "resnets"),
    ("conv_pre", "conv_in"),
    ("conv_post", "conv_out"),
    ("act_post", "act_out"),  # LTX-2.3+ (BigVGAN)
    ("downsample.lowpass", "downsample"),  # LTX-2.3+ anti-aliased activations
)


@dataclass(frozen=True)
class KeyMap:
    """Renames between official and diffusers tensor names of one component.

    `prefix` is the official prefix of the component (`vae.`); `rules` pairs official and diffusers names of
    whole segments; `official_only` lists official body names that diffusers has no place for (dropped on load).
    """

    prefix: str
    rules: tuple[tuple[str, str], ...]
    official_only: tuple[str, ...] = ()
    _to_diffusers: re.Pattern = field(init=False, repr=False, compare=False)
    _to_official: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_to_diffusers", _segment_pattern(old for old, _ in self.rules))
        object.__setattr__(self, "_to_official", _segment_pattern(new for _, new in self.rules))

    def owns(self, official_key: str) -> bool:
        return official_key.startswith(self.prefix)

    def to_diffusers(self, official_key: str) -> str | None:
        """The diffusers name of an official key, or None for a tensor diffusers does not keep."""
        body = official_key[len(self.prefix) :] if official_key.startswith(self.prefix) else official_key
        if body in self.official_only:
            return None
        table = dict(self.rules)
        return self._to_diffusers.sub(lambda m: m.group(1) + table[m.group(2)], body)

    def to_official(self, diffusers_key: str, prefix: str | None = None) -> str:
        """The official name of a diffusers key; `prefix` overrides the component prefix (LoRA files)."""
        table = {new: old for old, new in self.rules}
        body = self._to_official.sub(lambda m: m.group(1) + table[m.group(2)], diffusers_key)
        return (self.prefix if prefix is None else prefix) + body


def _segment_pattern(names: Iterable[str]) -> re.Pattern:
    # Longest first: at one position the regex takes the first alternative that matches.
    alternatives = "|".join(re.escape(name) for name in sorted(set(names), key=len, reverse=True))
    return re.compile(rf"(^|\.)({alternatives})(?=\.|$)")


TRANSFORMER_KEYS = KeyMap(prefix="model.diffusion_model.", rules=_TRANSFORMER_RULES)
CONNECTOR_KEYS = KeyMap(prefix="", rules=_CONNECTOR_RULES)
VIDEO_VAE_KEYS = KeyMap(
    prefix="vae.",
    rules=_VIDEO_VAE_RULES,
    official_only=(
        "per_channel_statistics.channel",
        "per_channel_statistics.mean-of-stds",
        "per_channel_statistics.mean-of-stds_over_std-of-means",
    ),
)
AUDIO_VAE_KEYS = KeyMap(prefix="audio_vae.", rules=_AUDIO_VAE_RULES)
VOCODER_KEYS = KeyMap(prefix="vocoder.", rules=_VOCODER_RULES)

# Official prefixes of the text connectors inside `model.diffusion_model.`: the transformer must not claim them.
CONNECTOR_PREFIXES = (
    "model.diffusion_model.video_embeddings_connector.",
    "model.diffusion_model.audio_embeddings_connector.",
    "text_embedding_projection.",
)
