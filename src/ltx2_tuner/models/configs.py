"""Translate the official metadata `config` into diffusers constructor arguments, component by component.

The official checkpoint describes itself in ltx-core's vocabulary; diffusers' classes take other names and, for
several fields, defaults that are wrong for released checkpoints (`rope_type`, the VAE compression ratios). Every
value here comes from the checkpoint (metadata or tensor shapes) or, where ltx-core hard-codes it, from ltx-core's
own default. Facts: ../shared/reference/official-ltx-trainer.md §3.3, diffusers-ltx2-and-peers.md §1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ltx2_tuner.errors import CheckpointError

# Values ltx-core asserts in every LTX-2 transformer config; anything else is a model we do not know.
_TRANSFORMER_INVARIANTS = {
    "dropout": 0.0,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
    "norm_elementwise_affine": False,
    "qk_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "use_middle_indices_grid": True,
}

# Fixed by the latent interface shared by LTX-2.0 and 2.3 (video VAE 8x32x32, audio 16 kHz / hop 160 / 4x).
VIDEO_SCALE_FACTORS = (8, 32, 32)
AUDIO_SAMPLE_RATE_HZ = 16000
AUDIO_HOP_LENGTH = 160
AUDIO_LATENT_DOWNSAMPLE = 4


def _check_invariants(config: Mapping[str, Any], invariants: Mapping[str, Any], where: str) -> None:
    for key, expected in invariants.items():
        if key in config and config[key] != expected:
            raise CheckpointError(
                f"{where}: `{key}` is {config[key]!r}, but every LTX-2 model has {expected!r}; "
                "this is not an LTX-2.0/2.3 checkpoint"
            )


def transformer_config(config: Mapping[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """diffusers `LTX2VideoTransformer3DModel` kwargs from the official `config["transformer"]` section."""
    _check_invariants(config, _TRANSFORMER_INVARIANTS, where)
    heads = config.get("num_attention_heads", 32)
    if config.get("audio_num_attention_heads", heads) != heads:
        raise CheckpointError(f"{where}: video and audio head counts differ; LTX-2 requires them equal")
    max_pos = list(config.get("positional_embedding_max_pos", [20, 2048, 2048]))
    audio_max_pos = list(config.get("audio_positional_embedding_max_pos", [20]))
    gated = bool(config.get("apply_gated_attention", False))
    prompt_adaln = bool(config.get("cross_attention_adaln", False))
    return {
        "in_channels": config.get("in_channels", 128),
        "out_channels": config.get("out_channels", 128),
        "patch_size": 1,
        "patch_size_t": 1,
        "num_attention_heads": heads,
        "attention_head_dim": config.get("attention_head_dim", 128),
        "cross_attention_dim": config.get("cross_attention_dim", 4096),
        "vae_scale_factors": VIDEO_SCALE_FACTORS,
        "pos_embed_max_pos": max_pos[0],
        "base_height": max_pos[1],
        "base_width": max_pos[2],
        "gated_attn": gated,
        "cross_attn_mod": prompt_adaln,
        "audio_in_channels": config.get("audio_in_channels", 128),
        "audio_out_channels": config.get("audio_out_channels", 128),
        "audio_patch_size": 1,
        "audio_patch_size_t": 1,
        "audio_num_attention_heads": heads,
        "audio_attention_head_dim": config.get("audio_attention_head_dim", 64),
        "audio_cross_attention_dim": config.get("audio_cross_attention_dim", 2048),
        "audio_scale_factor": AUDIO_LATENT_DOWNSAMPLE,
        "audio_pos_embed_max_pos": audio_max_pos[0],
        "audio_sampling_rate": AUDIO_SAMPLE_RATE_HZ,
        "audio_hop_length": AUDIO_HOP_LENGTH,
        "audio_gated_attn": gated,
        "audio_cross_attn_mod": prompt_adaln,
        "num_layers": config.get("num_layers", 48),
        "activation_fn": "gelu-approximate",
        "qk_norm": "rms_norm_across_heads",
        "norm_elementwise_affine": False,
        "norm_eps": config.get("norm_eps", 1e-6),
        "caption_channels": config.get("caption_channels", 3840),
        "attention_bias": True,
        "attention_out_bias": True,
        "rope_theta": float(config.get("positional_embedding_theta", 10000.0)),
        "rope_double_precision": config.get("frequencies_precision") == "float64",
        "causal_offset": 1,
        "timestep_scale_multiplier": config.get("timestep_scale_multiplier", 1000),
        # ltx-core's default is 1 when the key is absent; released checkpoints write 1000.
        "cross_attn_timestep_scale_multiplier": config.get("av_ca_timestep_scale_multiplier", 1),
        # diffusers defaults to "interleaved", which is wrong for every released checkpoint.
        "rope_type": config.get("rope_type", "split"),
        # LTX-2.0 projects captions inside the transformer; LTX-2.3 does it before the connectors.
        "use_prompt_embeddings": not config.get("caption_proj_before_connector", False),
        # STG attention processor (inference guidance); diffusers enables it for 2.3-style models. No weights.
        "perturbed_attn": prompt_adaln,
        "ff_bias": config.get("ff_bias", True),
        "audio_ff_bias": config.get("audio_ff_bias", True),
        "use_prompt_adaln_single": config.get("use_prompt_adaln_single", True),
        "use_keyframes_abs_pos_embedding": config.get("use_keyframes_abs_pos_embedding", False),
    }


def connectors_config(
    config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], where: str = "checkpoint"
) -> dict[str, Any]:
    """diffusers `LTX2TextConnectors` kwargs from `config["transformer"]` and the connector tensor shapes.

    `shapes` maps official tensor names to shapes. The projection (LTX-2.0: one shared `aggregate_embed`;
    LTX-2.3: per-modality `video_/audio_aggregate_embed` with bias) and the register count are read from the
    weights, because ltx-core infers them from the weights as well.
    """
    if config.get("connector_ff_bias", True) is not True:
        raise CheckpointError(f"{where}: `connector_ff_bias` false is not supported by this version of ltx2-tuner")
    per_modality = "text_embedding_projection.video_aggregate_embed.weight" in shapes
    if per_modality:
        video_proj = shapes["text_embedding_projection.video_aggregate_embed.weight"]
        audio_proj = shapes["text_embedding_projection.audio_aggregate_embed.weight"]
        text_encoder_dim = video_proj[1]
        proj_bias = "text_embedding_projection.video_aggregate_embed.bias" in shapes
        video_hidden_dim, audio_hidden_dim = video_proj[0], audio_proj[0]
    else:
        proj = shapes["text_embedding_projection.aggregate_embed.weight"]
        text_encoder_dim = proj[1]
        proj_bias = "text_embedding_projection.aggregate_embed.bias" in shapes
        video_hidden_dim, audio_hidden_dim = 4096, 2048  # unused without per-modality projections
    # Gemma's hidden size; the projection input is hidden size x (layers + 1) stacked hidden states.
    caption_channels = config.get("caption_channels", 3840)
    if text_encoder_dim % caption_channels:
        raise CheckpointError(
            f"{where}: the text projection takes {text_encoder_dim} inputs, not a multiple of "
            f"caption_channels={caption_channels}; the checkpoint's metadata does not match its weights"
        )

    def registers(modality: str) -> int | None:
        shape = shapes.get(f"model.diffusion_model.{modality}_embeddings_connector.learnable_registers")
        return shape[0] if shape else None

    video_heads = config.get("connector_num_attention_heads", 30)
    video_head_dim = config.get("connector_attention_head_dim", 128)
    video_layers = config.get("connector_num_layers", 2)
    gated = bool(config.get("connector_apply_gated_attention", False))
    rope_max_pos = list(config.get("connector_positional_embedding_max_pos", [1]))
    return {
        "caption_channels": caption_channels,
        "text_proj_in_factor": text_encoder_dim // caption_channels,
        "video_connector_num_attention_heads": video_heads,
        "video_connector_attention_head_dim": video_head_dim,
        "video_connector_num_layers": video_layers,
        "video_connector_num_learnable_registers": registers("video"),
        "video_gated_attn": gated,
        "audio_connector_num_attention_heads": config.get("audio_connector_num_attention_heads", video_heads),
        "audio_connector_attention_head_dim": config.get("audio_connector_attention_head_dim", video_head_dim),
        "audio_connector_num_layers": config.get("audio_connector_num_layers", video_layers),
        "audio_connector_num_learnable_registers": registers("audio"),
        "audio_gated_attn": gated,
        "connector_rope_base_seq_len": rope_max_pos[0],
        "rope_theta": float(config.get("positional_embedding_theta", 10000.0)),
        "rope_double_precision": config.get("frequencies_precision") == "float64",
        "causal_temporal_positioning": False,
        "rope_type": config.get("rope_type", "split"),
        "per_modality_projections": per_modality,
        "video_hidden_dim": video_hidden_dim,
        "audio_hidden_dim": audio_hidden_dim,
        "proj_bias": proj_bias,
    }


# Video VAE -----------------------------------------------------------------------------------------------------------
_ENCODER_DOWNSAMPLES = {
    "compress_space_res": "spatial",
    "compress_time_res": "temporal",
    "compress_all_res": "spatiotemporal",
}
_DECODER_UPSAMPLES = {"compress_space": "spatial", "compress_time": "temporal", "compress_all": "spatiotemporal"}
_SPATIAL = ("spatial", "spatiotemporal")
_TEMPORAL = ("temporal", "spatiotemporal")


def _blocks(section: Mapping[str, Any], key: str, where: str) -> list[tuple[str, dict]]:
    """Parse an official block list: `[[name, params], ...]`, params an int (= num_layers) or a dict."""
    blocks = []
    for entry in section.get(key, ()):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise CheckpointError(f"{where}: `vae.{key}` entry {entry!r} is not [name, params]")
        name, params = entry
        blocks.append((name, {"num_layers": params} if isinstance(params, int) else dict(params or {})))
    return blocks


def _split_ladder(blocks: list[tuple[str, dict]], resamplers: Mapping[str, str], key: str, where: str):
    """Split `res_x, R1, res_x, ..., RK, res_x` into res-block params and resampler (name, params)."""
    res = blocks[0::2]
    resampling = blocks[1::2]
    if not res or any(name != "res_x" for name, _ in res) or any(name not in resamplers for name, _ in resampling):
        names = [name for name, _ in blocks]
        raise CheckpointError(
            f"{where}: `vae.{key}` {names} is not a VAE layout diffusers can build (alternating res_x and "
            f"{'/'.join(resamplers)}); this is not an LTX-2.0/2.3 video VAE"
        )
    return [params for _, params in res], resampling


def video_vae_config(
    section: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], where: str = "checkpoint"
) -> dict[str, Any]:
    """diffusers `AutoencoderKLLTX2Video` kwargs from the official `config["vae"]` section.

    The block lists are written pixel side first for both halves. The encoder's width starts at
    `latent_channels` and grows by each downsampler's multiplier; the decoder's starts at `decoder_base_channels`.
    Whether the decoder is timestep-conditioned is read from the weights (ltx-core defaults it to true when the
    key is absent, but the released files carry no such weights).
    """
    if section.get("_class_name", "CausalVideoAutoencoder") != "CausalVideoAutoencoder":
        raise CheckpointError(f"{where}: video VAE class {section.get('_class_name')!r} is not supported")
    for key, expected in (("norm_layer", "pixel_norm"), ("latent_log_var", "uniform"), ("dims", 3)):
        if section.get(key, expected) != expected:
            raise CheckpointError(f"{where}: `vae.{key}` {section[key]!r} is not supported (expected {expected!r})")
    latent_channels = section.get("latent_channels", 128)
    encoder_res, encoder_down = _split_ladder(
        _blocks(section, "encoder_blocks", where), _ENCODER_DOWNSAMPLES, "encoder_blocks", where
    )
    decoder_res, decoder_up = _split_ladder(
        _blocks(section, "decoder_blocks", where), _DECODER_UPSAMPLES, "decoder_blocks", where
    )

    block_out_channels, width = [], latent_channels
    for _, params in encoder_down:
        width *= params.get("multiplier", 2)
        block_out_channels.append(width)
    decoder_block_out_channels, width = [], section.get("decoder_base_channels", 128)
    for _, params in decoder_up:
        width *= params.get("multiplier", 1)
        decoder_block_out_channels.append(width)

    down_types = [_ENCODER_DOWNSAMPLES[name] for name, _ in encoder_down]
    up_types = [_DECODER_UPSAMPLES[name] for name, _ in decoder_up]
    patch_size = section.get("patch_size", 4)
    padding = section.get("spatial_padding_mode")
    return {
        "in_channels": section.get("in_channels", 3),
        "out_channels": section.get("out_channels", 3),
        "latent_channels": latent_channels,
        "block_out_channels": tuple(block_out_channels),
        "down_block_types": ("LTX2VideoDownBlock3D",) * len(encoder_down),
        "decoder_block_out_channels": tuple(decoder_block_out_channels),
        "layers_per_block": tuple(p.get("num_layers", 1) for p in encoder_res),
        "decoder_layers_per_block": tuple(p.get("num_layers", 1) for p in decoder_res),
        "spatio_temporal_scaling": (True,) * len(encoder_down),
        "decoder_spatio_temporal_scaling": (True,) * len(decoder_up),
        "decoder_inject_noise": tuple(bool(p.get("inject_noise", False)) for p in decoder_res),
        "downsample_type": tuple(down_types),
        # diffusers reverses every decoder list argument except this one.
        "upsample_type": tuple(reversed(up_types)),
        "upsample_residual": tuple(bool(p.get("residual", False)) for _, p in decoder_up),
        "upsample_factor": tuple(p.get("multiplier", 1) for _, p in decoder_up),
        "timestep_conditioning": any(".last_time_embedder." in name for name in shapes),
        "patch_size": patch_size,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-6,
        "scaling_factor": section.get("scaling_factor", 1.0),
        "encoder_causal": True,
        "decoder_causal": section.get("causal_decoder", False),
        "encoder_spatial_padding_mode": padding or section.get("encoder_spatial_padding_mode", "zeros"),
        "decoder_spatial_padding_mode": padding or "reflect",
        # diffusers computes wrong ratios (64/16) when these are left unset.
        "spatial_compression_ratio": patch_size * 2 ** sum(t in _SPATIAL for t in down_types),
        "temporal_compression_ratio": 2 ** sum(t in _TEMPORAL for t in down_types),
    }


# Audio VAE -----------------------------------------------------------------------------------------------------------
def audio_vae_config(section: Mapping[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """diffusers `AutoencoderKLLTX2Audio` kwargs from the official `config["audio_vae"]` section.

    Missing fields take ltx-core's defaults, some of which differ from the released files (attention), so the
    released values only ever come from the metadata.
    """
    params = section.get("model", {}).get("params", {})
    ddconfig = params.get("ddconfig")
    if not isinstance(ddconfig, Mapping):
        raise CheckpointError(f"{where}: `audio_vae.model.params.ddconfig` is missing; not an official LTX-2 audio VAE")
    preprocessing = section.get("preprocessing", {})
    stft = preprocessing.get("stft", {})
    mel_bins = ddconfig.get("mel_bins") or preprocessing.get("mel", {}).get("n_mel_channels") or 64
    attn_resolutions = ddconfig.get("attn_resolutions", (8, 16, 32))
    return {
        "base_channels": ddconfig.get("ch", 128),
        "output_channels": ddconfig.get("out_ch", 2),
        "ch_mult": tuple(ddconfig.get("ch_mult", (1, 2, 4))),
        "num_res_blocks": ddconfig.get("num_res_blocks", 2),
        "attn_resolutions": tuple(attn_resolutions) or None,
        "in_channels": ddconfig.get("in_channels", 2),
        "resolution": ddconfig.get("resolution", 256),
        "latent_channels": ddconfig.get("z_channels", 8),
        "norm_type": ddconfig.get("norm_type", "pixel"),
        "causality_axis": ddconfig.get("causality_axis", "height"),
        "dropout": ddconfig.get("dropout", 0.0),
        "mid_block_add_attention": ddconfig.get("mid_block_add_attention", True),
        "sample_rate": params.get("sampling_rate", AUDIO_SAMPLE_RATE_HZ),
        "mel_hop_length": stft.get("hop_length", AUDIO_HOP_LENGTH),
        "is_causal": stft.get("causal", True),
        "mel_bins": mel_bins,
        "double_z": ddconfig.get("double_z", True),
    }


# Vocoder -------------------------------------------------------------------------------------------------------------
def _final_activation(config: Mapping[str, Any], apply_default: bool) -> str | None:
    # ltx-core: a final activation is applied unless disabled; it is tanh, or a clamp to [-1, 1] without tanh.
    if not config.get("apply_final_activation", apply_default):
        return None
    return "tanh" if config.get("use_tanh_at_final", True) else "clamp"


def _generator_kwargs(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    snake = config.get("activation") == "snakebeta"
    return {
        f"{prefix}hidden_channels": config["upsample_initial_channel"],
        f"{prefix}upsample_kernel_sizes": list(config["upsample_kernel_sizes"]),
        f"{prefix}upsample_factors": list(config["upsample_rates"]),
        f"{prefix}resnet_kernel_sizes": list(config["resblock_kernel_sizes"]),
        f"{prefix}resnet_dilations": [list(d) for d in config["resblock_dilation_sizes"]],
        f"{prefix}act_fn": "snakebeta" if snake else "leaky_relu",
        f"{prefix}leaky_relu_negative_slope": 0.1,
        f"{prefix}antialias": snake,  # the AMP1 (BigVGAN) blocks are anti-aliased
        f"{prefix}final_bias": config.get("use_bias_at_final", True),
    }


def vocoder_config(section: Mapping[str, Any], where: str = "checkpoint") -> tuple[bool, dict[str, Any]]:
    """(with_bwe, kwargs) for diffusers `LTX2VocoderWithBWE` (LTX-2.3) or `LTX2Vocoder` (LTX-2.0).

    ltx-core clamps the 2.3 first-stage waveform (final activation on, tanh off); diffusers' own 2.3 config does
    not. We follow ltx-core.
    """
    try:
        if "bwe" not in section:
            if section.get("resblock", "1") != "1":
                raise CheckpointError(f"{where}: vocoder resblock {section['resblock']!r} is not supported")
            return False, {
                "in_channels": 128,
                "out_channels": 2,
                **_generator_kwargs(section),
                "final_act_fn": _final_activation(section, apply_default=True),
                "output_sampling_rate": section.get("output_sampling_rate", 24000),
            }
        main, bwe = section["vocoder"], section["bwe"]
        for part in (main, bwe):
            if part.get("resblock") != "AMP1" or part.get("activation") != "snakebeta":
                raise CheckpointError(f"{where}: only AMP1/snakebeta BWE vocoders are supported")
        return True, {
            "in_channels": 128,
            "out_channels": 2,
            **_generator_kwargs(main),
            "antialias_ratio": 2,
            "antialias_kernel_size": 12,
            "final_act_fn": _final_activation(main, apply_default=True),
            "bwe_in_channels": 128,
            "bwe_out_channels": 2,
            **_generator_kwargs(bwe, prefix="bwe_"),
            "bwe_antialias_ratio": 2,
            "bwe_antialias_kernel_size": 12,
            "bwe_final_act_fn": _final_activation(bwe, apply_default=False),
            "filter_length": bwe["n_fft"],
            "hop_length": bwe["hop_length"],
            "window_length": bwe["n_fft"],  # ltx-core windows with n_fft, not win_size
            "num_mel_channels": bwe["num_mels"],
            "input_sampling_rate": bwe["input_sampling_rate"],
            "output_sampling_rate": bwe["output_sampling_rate"],
        }
    except KeyError as missing:
        raise CheckpointError(f"{where}: vocoder config lacks {missing}; not an official LTX-2 vocoder") from None
