"""Official-schema metadata `config` for tiny and benchmark-sized LTX-2.0 / LTX-2.3 / LTX 2.5 checkpoints.

Field names and fixed values follow the released checkpoints' metadata (see
../shared/reference/official-ltx-trainer.md §3.3); only widths, depths and channel counts are shrunk. The latent
interface is kept exactly: 128 video latent channels at 32x32x8 compression, 8x16 audio latents at 25 per second.
"""

from __future__ import annotations

import copy

from ltx2_tuner.testing.tiny_gemma import TINY_GEMMA_HIDDEN_SIZE, TINY_GEMMA_NUM_LAYERS

SIZES = ("tiny", "small", "bench")
VERSIONS = ("2.0", "2.3", "2.5")
# (heads, video head dim, audio head dim, layers). "small" is as wide as a latent token (128) so that its outputs
# can reach any latent (training tests); "bench" gives a few hundred MB of fp32 transformer weights.
_TRANSFORMER_DIMS = {"tiny": (2, 16, 8, 2), "small": (2, 64, 64, 2), "bench": (8, 64, 32, 16)}
NUM_REGISTERS = 128  # ltx-core hard-codes 128 learnable registers per connector

# Values every LTX-2 transformer config carries (ltx-core checks them).
_TRANSFORMER_CONSTANTS = {
    "dropout": 0.0,
    "attention_bias": True,
    "num_vector_embeds": None,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "cross_attention_norm": True,
    "double_self_attention": False,
    "upcast_attention": False,
    "standardization_norm": "rms_norm",
    "norm_elementwise_affine": False,
    "qk_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "use_audio_video_cross_attention": True,
    "share_ff": False,
    "av_cross_ada_norm": True,
    "use_middle_indices_grid": True,
}


def _transformer_section(version: str, size: str) -> dict:
    heads, head_dim, audio_head_dim, layers = _TRANSFORMER_DIMS[size]
    video_dim, audio_dim = heads * head_dim, heads * audio_head_dim
    section = {
        "_class_name": "AVTransformer3DModel",
        **_TRANSFORMER_CONSTANTS,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 128,
        "out_channels": 128,
        "num_layers": layers,
        "cross_attention_dim": video_dim,
        "caption_channels": TINY_GEMMA_HIDDEN_SIZE,
        "norm_eps": 1e-6,
        "audio_num_attention_heads": heads,
        "audio_attention_head_dim": audio_head_dim,
        "audio_in_channels": 128,
        "audio_out_channels": 128,
        "audio_cross_attention_dim": audio_dim,
        "positional_embedding_theta": 10000.0,
        "positional_embedding_max_pos": [20, 2048, 2048],
        "audio_positional_embedding_max_pos": [20],
        "timestep_scale_multiplier": 1000,
        "av_ca_timestep_scale_multiplier": 1000,
        "rope_type": "split",
        "frequencies_precision": "float64",
        "connector_positional_embedding_max_pos": [4096],
    }
    if version == "2.0":
        # One connector width for both modalities: Gemma's hidden size (3840 in the real model).
        section.update(
            connector_num_attention_heads=2,
            connector_attention_head_dim=TINY_GEMMA_HIDDEN_SIZE // 2,
            connector_num_layers=1,
        )
    else:
        section.update(
            apply_gated_attention=True,
            cross_attention_adaln=True,
            caption_proj_before_connector=True,
            caption_projection_first_linear=False,
            caption_proj_input_norm=False,
            caption_projection_second_linear=False,
            connector_num_attention_heads=heads,
            connector_attention_head_dim=head_dim,
            connector_num_layers=2,
            connector_apply_gated_attention=True,
            audio_connector_num_attention_heads=heads,
            audio_connector_attention_head_dim=audio_head_dim,
            audio_connector_num_layers=2,
        )
    if version == "2.5":  # the only transformer-level deltas from 2.3 (reference A2)
        section.update(ff_bias=False, audio_ff_bias=True, use_keyframes_abs_pos_embedding=True)
    return section


def official_config(version: str, size: str = "tiny") -> dict:
    """The metadata `config` (sections transformer, vae, audio_vae, vocoder, scheduler) of a small checkpoint."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    return copy.deepcopy(
        {
            "transformer": _transformer_section(version, size),
            "vae": _video_vae_section(version),
            "audio_vae": _audio_vae_section(),
            "vocoder": _vocoder_section(version),
            "scheduler": {
                "_class_name": "RectifiedFlowScheduler",
                "num_train_timesteps": 1000,
                "sampler": "LinearQuadratic",
            },
        }
    )


def tensor_shape_hints(version: str, size: str = "tiny") -> dict[str, tuple[int, ...]]:
    """Official tensor shapes that configure a module beyond its metadata (the loader reads them from the file)."""
    heads, head_dim, audio_head_dim, _ = _TRANSFORMER_DIMS[size]
    gemma_features = TINY_GEMMA_HIDDEN_SIZE * (TINY_GEMMA_NUM_LAYERS + 1)
    hints: dict[str, tuple[int, ...]] = {"audio_vae.per_channel_statistics.mean-of-means": (128,)}
    if version == "2.0":
        hints["text_embedding_projection.aggregate_embed.weight"] = (TINY_GEMMA_HIDDEN_SIZE, gemma_features)
        video_width = audio_width = TINY_GEMMA_HIDDEN_SIZE
    else:
        video_width, audio_width = heads * head_dim, heads * audio_head_dim
        for modality, width in (("video", video_width), ("audio", audio_width)):
            hints[f"text_embedding_projection.{modality}_aggregate_embed.weight"] = (width, gemma_features)
            hints[f"text_embedding_projection.{modality}_aggregate_embed.bias"] = (width,)
    for modality, width in (("video", video_width), ("audio", audio_width)):
        hints[f"model.diffusion_model.{modality}_embeddings_connector.learnable_registers"] = (NUM_REGISTERS, width)
    return hints


def _video_vae_section(version: str) -> dict:
    # Same block ladder as the released VAEs (so 32x spatial, 8x temporal, and the same tensor names), with few
    # layers, channel multipliers of 1 and a narrow decoder. The encoder's width is `latent_channels` (128) by
    # construction, so it keeps a single res block.
    encoder_blocks = [
        ["res_x", {"num_layers": 1}],
        ["compress_space_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 0}],
        ["compress_time_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 0}],
        ["compress_all_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 0}],
        ["compress_all_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 0}],
    ]
    if version == "2.0":
        decoder_blocks = [
            ["res_x", {"num_layers": 1, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
        ]
    else:  # LTX-2.3: four decoder stages, separate space/time upsamplers, no residual upsampling
        decoder_blocks = [
            ["res_x", {"num_layers": 1}],
            ["compress_space", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
            ["compress_time", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
            ["compress_all", {"multiplier": 1}],
            ["res_x", {"num_layers": 1}],
            ["compress_all", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
        ]
    section = {
        "_class_name": "CausalVideoAutoencoder",
        "dims": 3,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 128,
        "encoder_blocks": encoder_blocks,
        "decoder_blocks": decoder_blocks,
        "scaling_factor": 1.0,
        "norm_layer": "pixel_norm",
        "patch_size": 4,
        "latent_log_var": "uniform",
        "use_quant_conv": False,
        "causal_decoder": False,
        "timestep_conditioning": False,
        "normalize_latent_channels": False,
        "decoder_base_channels": 4,
    }
    if version != "2.0":
        section.update(encoder_base_channels=128, spatial_padding_mode="zeros")
    return section


def _audio_vae_section() -> dict:
    ddconfig = {
        "double_z": True,
        "mel_bins": 64,
        "z_channels": 8,
        "resolution": 256,
        "downsample_time": False,
        "in_channels": 2,
        "out_ch": 2,
        "ch": 8,
        "ch_mult": [1, 2, 4],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
        "mid_block_add_attention": False,
        "norm_type": "pixel",
        "causality_axis": "height",
    }
    return {
        "model": {"params": {"ddconfig": ddconfig, "sampling_rate": 16000}},
        "preprocessing": {
            "audio": {
                "sampling_rate": 16000,
                "max_wav_value": 32768.0,
                "duration": 5.12,
                "stereo": True,
                "causal_padding": 3,
            },
            "stft": {"filter_length": 1024, "hop_length": 160, "win_length": 1024, "causal": True},
            "mel": {"n_mel_channels": 64, "mel_fmin": 0, "mel_fmax": 8000},
        },
    }


def _vocoder_section(version: str) -> dict:
    if version == "2.0":  # HiFi-GAN, 16 kHz mel -> 24 kHz stereo (x240)
        return {
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "stereo": True,
            "upsample_rates": [6, 5, 2, 2, 2],
            "resblock_kernel_sizes": [3, 7, 11],
            "upsample_kernel_sizes": [16, 15, 8, 4, 4],
            "resblock": "1",
            "upsample_initial_channel": 32,
        }
    generator = {
        "resblock": "AMP1",
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "stereo": True,
        "use_tanh_at_final": False,
        "activation": "snakebeta",
        "use_bias_at_final": False,
    }
    return {  # BigVGAN at 16 kHz (x160) + bandwidth extension to 48 kHz (x240 from its own mel)
        "vocoder": {
            **generator,
            "upsample_initial_channel": 64,
            "upsample_rates": [5, 2, 2, 2, 2, 2],
            "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
        },
        "bwe": {
            **generator,
            "upsample_initial_channel": 32,
            "upsample_rates": [6, 5, 2, 2, 2],
            "upsample_kernel_sizes": [12, 11, 4, 4, 4],
            "apply_final_activation": False,
            "input_sampling_rate": 16000,
            "output_sampling_rate": 48000,
            "hop_length": 80,
            "n_fft": 512,
            "win_size": 512,
            "num_mels": 64,
        },
    }
