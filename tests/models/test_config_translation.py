"""Our official -> diffusers config translation on the released checkpoints' real metadata.

Expected values are diffusers' own configs for LTX-2.0 / 2.3 (scripts/convert_ltx2_to_diffusers.py at diffusers
main 58eb52c, the configs of its published Lightricks/LTX-2 conversion), except where the official reference
differs and wins (pinned below).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import configs

OFFICIAL = json.loads((Path(__file__).parent / "data" / "official_configs.json").read_text())

_TRANSFORMER_COMMON = {
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 128,
    "cross_attention_dim": 4096,
    "vae_scale_factors": (8, 32, 32),
    "pos_embed_max_pos": 20,
    "base_height": 2048,
    "base_width": 2048,
    "audio_in_channels": 128,
    "audio_out_channels": 128,
    "audio_patch_size": 1,
    "audio_patch_size_t": 1,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "audio_cross_attention_dim": 2048,
    "audio_scale_factor": 4,
    "audio_pos_embed_max_pos": 20,
    "audio_sampling_rate": 16000,
    "audio_hop_length": 160,
    "num_layers": 48,
    "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 3840,
    "attention_bias": True,
    "attention_out_bias": True,
    "rope_theta": 10000.0,
    "rope_double_precision": True,
    "causal_offset": 1,
    "timestep_scale_multiplier": 1000,
    "cross_attn_timestep_scale_multiplier": 1000,
    "rope_type": "split",
}
DIFFUSERS_TRANSFORMER = {
    "2.0": {
        **_TRANSFORMER_COMMON,
        "gated_attn": False,
        "cross_attn_mod": False,
        "audio_gated_attn": False,
        "audio_cross_attn_mod": False,
        "use_prompt_embeddings": True,
        "perturbed_attn": False,
    },
    "2.3": {
        **_TRANSFORMER_COMMON,
        "gated_attn": True,
        "cross_attn_mod": True,
        "audio_gated_attn": True,
        "audio_cross_attn_mod": True,
        "use_prompt_embeddings": False,
        "perturbed_attn": True,
    },
}
DIFFUSERS_CONNECTORS = {
    "2.0": {
        "caption_channels": 3840,
        "text_proj_in_factor": 49,
        "video_connector_num_attention_heads": 30,
        "video_connector_attention_head_dim": 128,
        "video_connector_num_layers": 2,
        "video_connector_num_learnable_registers": 128,
        "video_gated_attn": False,
        "audio_connector_num_attention_heads": 30,
        "audio_connector_attention_head_dim": 128,
        "audio_connector_num_layers": 2,
        "audio_connector_num_learnable_registers": 128,
        "audio_gated_attn": False,
        "connector_rope_base_seq_len": 4096,
        "rope_theta": 10000.0,
        "rope_double_precision": True,
        "causal_temporal_positioning": False,
        "rope_type": "split",
        "per_modality_projections": False,
        "proj_bias": False,
    },
    "2.3": {
        "caption_channels": 3840,
        "text_proj_in_factor": 49,
        "video_connector_num_attention_heads": 32,
        "video_connector_attention_head_dim": 128,
        "video_connector_num_layers": 8,
        "video_connector_num_learnable_registers": 128,
        "video_gated_attn": True,
        "audio_connector_num_attention_heads": 32,
        "audio_connector_attention_head_dim": 64,
        "audio_connector_num_layers": 8,
        "audio_connector_num_learnable_registers": 128,
        "audio_gated_attn": True,
        "connector_rope_base_seq_len": 4096,
        "rope_theta": 10000.0,
        "rope_double_precision": True,
        "causal_temporal_positioning": False,
        "rope_type": "split",
        "per_modality_projections": True,
        "video_hidden_dim": 4096,
        "audio_hidden_dim": 2048,
        "proj_bias": True,
    },
}
_VAE_COMMON = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "down_block_types": ("LTX2VideoDownBlock3D",) * 4,
    "spatio_temporal_scaling": (True,) * 4,
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "timestep_conditioning": False,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "encoder_causal": True,
    "decoder_causal": False,
    "encoder_spatial_padding_mode": "zeros",
    "spatial_compression_ratio": 32,
    "temporal_compression_ratio": 8,
}
DIFFUSERS_VAE = {
    "2.0": {
        **_VAE_COMMON,
        "block_out_channels": (256, 512, 1024, 2048),
        "decoder_block_out_channels": (256, 512, 1024),
        "layers_per_block": (4, 6, 6, 2, 2),
        "decoder_layers_per_block": (5, 5, 5, 5),
        "decoder_spatio_temporal_scaling": (True,) * 3,
        "decoder_inject_noise": (False,) * 4,
        "upsample_type": ("spatiotemporal",) * 3,
        "upsample_residual": (True,) * 3,
        "upsample_factor": (2, 2, 2),
        "decoder_spatial_padding_mode": "reflect",
    },
    "2.3": {
        **_VAE_COMMON,
        "block_out_channels": (256, 512, 1024, 1024),
        "decoder_block_out_channels": (256, 512, 512, 1024),
        "layers_per_block": (4, 6, 4, 2, 2),
        "decoder_layers_per_block": (4, 6, 4, 2, 2),
        "decoder_spatio_temporal_scaling": (True,) * 4,
        "decoder_inject_noise": (False,) * 5,
        "upsample_type": ("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
        "upsample_residual": (False,) * 4,
        "upsample_factor": (2, 2, 1, 2),
        "decoder_spatial_padding_mode": "zeros",
    },
}
DIFFUSERS_AUDIO_VAE = {
    "base_channels": 128,
    "output_channels": 2,
    "ch_mult": (1, 2, 4),
    "num_res_blocks": 2,
    "attn_resolutions": None,
    "in_channels": 2,
    "resolution": 256,
    "latent_channels": 8,
    "norm_type": "pixel",
    "causality_axis": "height",
    "dropout": 0.0,
    "mid_block_add_attention": False,
    "sample_rate": 16000,
    "mel_hop_length": 160,
    "is_causal": True,
    "mel_bins": 64,
    "double_z": True,
}
_RES = {"resnet_kernel_sizes": [3, 7, 11], "resnet_dilations": [[1, 3, 5], [1, 3, 5], [1, 3, 5]]}
DIFFUSERS_VOCODER = {
    "2.0": (
        False,
        {
            "in_channels": 128,
            "hidden_channels": 1024,
            "out_channels": 2,
            "upsample_kernel_sizes": [16, 15, 8, 4, 4],
            "upsample_factors": [6, 5, 2, 2, 2],
            **_RES,
            "act_fn": "leaky_relu",
            "leaky_relu_negative_slope": 0.1,
            "antialias": False,
            "final_act_fn": "tanh",
            "final_bias": True,
            "output_sampling_rate": 24000,
        },
    ),
    "2.3": (
        True,
        {
            "in_channels": 128,
            "hidden_channels": 1536,
            "out_channels": 2,
            "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
            "upsample_factors": [5, 2, 2, 2, 2, 2],
            **_RES,
            "act_fn": "snakebeta",
            "leaky_relu_negative_slope": 0.1,
            "antialias": True,
            "antialias_ratio": 2,
            "antialias_kernel_size": 12,
            "final_act_fn": "clamp",
            "final_bias": False,
            "bwe_in_channels": 128,
            "bwe_hidden_channels": 512,
            "bwe_out_channels": 2,
            "bwe_upsample_kernel_sizes": [12, 11, 4, 4, 4],
            "bwe_upsample_factors": [6, 5, 2, 2, 2],
            "bwe_resnet_kernel_sizes": [3, 7, 11],
            "bwe_resnet_dilations": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "bwe_act_fn": "snakebeta",
            "bwe_leaky_relu_negative_slope": 0.1,
            "bwe_antialias": True,
            "bwe_antialias_ratio": 2,
            "bwe_antialias_kernel_size": 12,
            "bwe_final_act_fn": None,
            "bwe_final_bias": False,
            "filter_length": 512,
            "hop_length": 80,
            "window_length": 512,
            "num_mel_channels": 64,
            "input_sampling_rate": 16000,
            "output_sampling_rate": 48000,
        },
    ),
}


def _connector_shapes(version: str) -> dict[str, tuple[int, ...]]:
    gemma_features = 3840 * 49
    if version == "2.0":
        shapes = {"text_embedding_projection.aggregate_embed.weight": (3840, gemma_features)}
        widths = (3840, 3840)
    else:
        shapes = {
            "text_embedding_projection.video_aggregate_embed.weight": (4096, gemma_features),
            "text_embedding_projection.video_aggregate_embed.bias": (4096,),
            "text_embedding_projection.audio_aggregate_embed.weight": (2048, gemma_features),
            "text_embedding_projection.audio_aggregate_embed.bias": (2048,),
        }
        widths = (4096, 2048)
    for modality, width in zip(("video", "audio"), widths, strict=True):
        shapes[f"model.diffusion_model.{modality}_embeddings_connector.learnable_registers"] = (128, width)
    return shapes


def _subset(actual: dict, expected: dict) -> dict:
    return {key: actual[key] for key in expected}


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_transformer_config_matches_diffusers(version):
    translated = configs.transformer_config(OFFICIAL[version]["transformer"])
    assert _subset(translated, DIFFUSERS_TRANSFORMER[version]) == DIFFUSERS_TRANSFORMER[version]


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_connectors_config_matches_diffusers(version):
    translated = configs.connectors_config(OFFICIAL[version]["transformer"], _connector_shapes(version))
    assert _subset(translated, DIFFUSERS_CONNECTORS[version]) == DIFFUSERS_CONNECTORS[version]


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_video_vae_config_matches_diffusers(version):
    translated = configs.video_vae_config(OFFICIAL[version]["vae"], shapes={})
    assert _subset(translated, DIFFUSERS_VAE[version]) == DIFFUSERS_VAE[version]


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_audio_vae_config_matches_diffusers(version):
    assert configs.audio_vae_config(OFFICIAL[version]["audio_vae"]) == DIFFUSERS_AUDIO_VAE


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_vocoder_config_matches_diffusers_except_the_official_clamp(version):
    with_bwe, kwargs = configs.vocoder_config(OFFICIAL[version]["vocoder"])
    expected_bwe, expected = DIFFUSERS_VOCODER[version]
    assert with_bwe is expected_bwe
    assert _subset(kwargs, expected) == expected


def test_vocoder_2_3_clamps_its_first_stage_like_ltx_core():
    # ltx-core applies its default final activation (tanh off -> clamp to [-1, 1]) to the 16 kHz BigVGAN stage;
    # diffusers' 2.3 conversion uses final_act_fn=None. The official reference wins.
    _, kwargs = configs.vocoder_config(OFFICIAL["2.3"]["vocoder"])
    assert kwargs["final_act_fn"] == "clamp" and kwargs["bwe_final_act_fn"] is None


def test_ltx_core_defaults_apply_to_missing_fields():
    section = dict(OFFICIAL["2.0"]["transformer"])
    del section["av_ca_timestep_scale_multiplier"], section["rope_type"]
    translated = configs.transformer_config(section)
    assert translated["cross_attn_timestep_scale_multiplier"] == 1  # ltx-core's default, not diffusers' 1000
    assert translated["rope_type"] == "split"  # ltx-core's default, not diffusers' "interleaved"


def test_unknown_architecture_values_are_refused():
    section = dict(OFFICIAL["2.3"]["transformer"], qk_norm="layer_norm")
    with pytest.raises(CheckpointError, match="qk_norm"):
        configs.transformer_config(section, where="x.safetensors")
    vae = dict(OFFICIAL["2.3"]["vae"], encoder_blocks=[["res_x_y", {"multiplier": 2}]])
    with pytest.raises(CheckpointError, match="encoder_blocks"):
        configs.video_vae_config(vae, shapes={}, where="x.safetensors")


@pytest.mark.parametrize(("version", "billions"), [("2.0", 18.88), ("2.3", 18.99)])
def test_full_size_transformer_parameter_count(version, billions):
    from diffusers import LTX2VideoTransformer3DModel

    with init_empty_weights():
        model = LTX2VideoTransformer3DModel.from_config(configs.transformer_config(OFFICIAL[version]["transformer"]))
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e9, 2) == billions  # diffusers-ltx2-and-peers.md §1.1


@pytest.mark.parametrize(("version", "decoder_out", "upsampler_out"), [("2.0", 1024, 4096), ("2.3", 1024, 4096)])
def test_full_size_vae_shapes(version, decoder_out, upsampler_out):
    from diffusers import AutoencoderKLLTX2Video

    with init_empty_weights():
        vae = AutoencoderKLLTX2Video.from_config(configs.video_vae_config(OFFICIAL[version]["vae"], shapes={}))
    assert vae.decoder.conv_in.conv.weight.shape[:2] == (decoder_out, 128)
    assert vae.decoder.up_blocks[0].upsamplers[0].conv.conv.weight.shape[0] == upsampler_out
    assert vae.encoder.conv_out.conv.weight.shape[0] == 129  # 128 means + 1 shared log-variance ("uniform")
    assert torch.Size([128]) == vae.latents_mean.shape
