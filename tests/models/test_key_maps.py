"""The official <-> diffusers rename tables: anchored, longest match first, invertible on real key sets."""

from __future__ import annotations

import pytest

from ltx2_tuner.models.key_maps import (
    AUDIO_VAE_KEYS,
    CONNECTOR_KEYS,
    TRANSFORMER_KEYS,
    VIDEO_VAE_KEYS,
    VOCODER_KEYS,
)
from ltx2_tuner.models.loading import KEY_MAPS


def test_transformer_names_match_diffusers_conversion_table():
    # Pairs from diffusers' scripts/convert_ltx2_to_diffusers.py (LTX_2_3_TRANSFORMER_KEYS_RENAME_DICT + adaln rules).
    pairs = {
        "model.diffusion_model.patchify_proj.weight": "proj_in.weight",
        "model.diffusion_model.audio_patchify_proj.bias": "audio_proj_in.bias",
        "model.diffusion_model.adaln_single.emb.timestep_embedder.linear_1.weight": "time_embed.emb.timestep_embedder.linear_1.weight",
        "model.diffusion_model.audio_adaln_single.linear.weight": "audio_time_embed.linear.weight",
        "model.diffusion_model.prompt_adaln_single.linear.bias": "prompt_adaln.linear.bias",
        "model.diffusion_model.audio_prompt_adaln_single.linear.bias": "audio_prompt_adaln.linear.bias",
        "model.diffusion_model.av_ca_video_scale_shift_adaln_single.linear.weight": "av_cross_attn_video_scale_shift.linear.weight",
        "model.diffusion_model.av_ca_a2v_gate_adaln_single.linear.weight": "av_cross_attn_video_a2v_gate.linear.weight",
        "model.diffusion_model.av_ca_audio_scale_shift_adaln_single.linear.weight": "av_cross_attn_audio_scale_shift.linear.weight",
        "model.diffusion_model.av_ca_v2a_gate_adaln_single.linear.weight": "av_cross_attn_audio_v2a_gate.linear.weight",
        "model.diffusion_model.transformer_blocks.3.scale_shift_table_a2v_ca_video": "transformer_blocks.3.video_a2v_cross_attn_scale_shift_table",
        "model.diffusion_model.transformer_blocks.3.scale_shift_table_a2v_ca_audio": "transformer_blocks.3.audio_a2v_cross_attn_scale_shift_table",
        "model.diffusion_model.transformer_blocks.11.audio_to_video_attn.q_norm.weight": "transformer_blocks.11.audio_to_video_attn.norm_q.weight",
        "model.diffusion_model.transformer_blocks.0.attn1.k_norm.weight": "transformer_blocks.0.attn1.norm_k.weight",
        "model.diffusion_model.transformer_blocks.0.attn1.to_out.0.weight": "transformer_blocks.0.attn1.to_out.0.weight",
        "model.diffusion_model.caption_projection.linear_1.weight": "caption_projection.linear_1.weight",
    }
    for official, diffusers in pairs.items():
        assert TRANSFORMER_KEYS.to_diffusers(official) == diffusers
        assert TRANSFORMER_KEYS.to_official(diffusers) == official


def test_rules_match_whole_segments_only():
    # `audio_proj_in` contains `proj_in`; `down_blocks.1` is a prefix of `down_blocks.10`.
    assert TRANSFORMER_KEYS.to_official("audio_proj_in.weight") == "model.diffusion_model.audio_patchify_proj.weight"
    assert TRANSFORMER_KEYS.to_official("proj_in.weight") == "model.diffusion_model.patchify_proj.weight"
    assert VIDEO_VAE_KEYS.to_diffusers("vae.encoder.down_blocks.10.x") == "encoder.down_blocks.10.x"
    assert VOCODER_KEYS.to_diffusers("vocoder.vocoder.resblocks.0.acts1.0.upsample.filter") == (
        "vocoder.resnets.0.acts1.0.upsample.filter"
    )
    assert VOCODER_KEYS.to_diffusers("vocoder.vocoder.ups.2.weight") == "vocoder.upsamplers.2.weight"


def test_vae_ladder_and_statistics():
    assert VIDEO_VAE_KEYS.to_diffusers("vae.encoder.down_blocks.7.conv.conv.weight") == (
        "encoder.down_blocks.3.downsamplers.0.conv.conv.weight"
    )
    assert VIDEO_VAE_KEYS.to_diffusers("vae.encoder.down_blocks.8.res_blocks.1.conv1.conv.bias") == (
        "encoder.mid_block.resnets.1.conv1.conv.bias"
    )
    assert VIDEO_VAE_KEYS.to_diffusers("vae.decoder.up_blocks.7.conv.conv.weight") == (
        "decoder.up_blocks.3.upsamplers.0.conv.conv.weight"
    )
    assert VIDEO_VAE_KEYS.to_official("decoder.up_blocks.0.upsamplers.0.conv.conv.weight") == (
        "vae.decoder.up_blocks.1.conv.conv.weight"
    )
    assert VIDEO_VAE_KEYS.to_diffusers("vae.per_channel_statistics.std-of-means") == "latents_std"
    assert VIDEO_VAE_KEYS.to_diffusers("vae.per_channel_statistics.mean-of-stds") is None
    assert AUDIO_VAE_KEYS.to_diffusers("audio_vae.per_channel_statistics.mean-of-means") == "latents_mean"


def test_connector_names_for_both_versions():
    assert CONNECTOR_KEYS.to_diffusers("text_embedding_projection.aggregate_embed.weight") == "text_proj_in.weight"
    assert CONNECTOR_KEYS.to_diffusers("text_embedding_projection.audio_aggregate_embed.bias") == (
        "audio_text_proj_in.bias"
    )
    official = "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.1.attn1.q_norm.weight"
    assert CONNECTOR_KEYS.to_diffusers(official) == "video_connector.transformer_blocks.1.attn1.norm_q.weight"
    assert CONNECTOR_KEYS.to_official("video_connector.transformer_blocks.1.attn1.norm_q.weight") == official


def test_lora_prefix_override():
    key = TRANSFORMER_KEYS.to_official("transformer_blocks.0.attn1.to_q.lora_A.weight", prefix="diffusion_model.")
    assert key == "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"


@pytest.mark.parametrize("component", sorted(KEY_MAPS))
def test_tables_are_bijective_on_every_tiny_key(tiny, component):
    names = tiny.modules[component].state_dict().keys()
    key_map = KEY_MAPS[component]
    official = [key_map.to_official(name) for name in names]
    assert len(set(official)) == len(official)
    assert [key_map.to_diffusers(name) for name in official] == list(names)
