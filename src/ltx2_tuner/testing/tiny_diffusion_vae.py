"""A tiny LTX 2.5 diffusion video VAE in the official format: the `vae` metadata section and the `vae.*` tensors.

Like `vae/ltx-2.5-video-vae-bf16.safetensors`: `_class_name` "CausalDiffusionVAE", the nested `encoder` / `decoder`
sections with the released field names (values shrunk: narrow stages, 3^3 and 5^3 neighborhoods), 2.3's conv encoder,
and the decoder's official tensors: fused `attn.qkv`, `t_embedder.mlp.{0,2}`, the static gates of a distilled decoder
(`gate_msa`, `gate_mlp`, `gate_ctx`), a bundled `coarse_head` and the unused `type_emb`, which the loader drops.
Weights are seeded random values. The caller writes them into a unified file (tensors as returned, `config.vae` =
the section) or a split VAE file (the `vae.` prefix stripped). Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md
A4; a released decoder section as quoted in third-party loader tests (field names and full-size values).
"""

from __future__ import annotations

import torch

from ltx2_tuner.models.diffusion_vae import DIFFUSION_VAE_CLASS, build_decoder, build_encoder, official_decoder_name
from ltx2_tuner.models.key_maps import VIDEO_VAE_KEYS
from ltx2_tuner.testing.tiny_configs import official_config

# Released: stage_channels [2048, 1024, 512, 512, 256], head_dim 64, t_emb_dim 384, stage_kernels 3x7x7 / 3x5x5,
# stage5_kernel [11, 11, 11], depths [4, 6, 4, 2, 8]. Same ratios between stages, so the same upsampling ladder.
TINY_DECODER = {
    "_class_name": "NADiffusionDecoder",
    "in_channels": 128,
    "out_channels": 3,
    "patch_size": 4,
    "head_dim": 8,
    "stage_channels": [128, 64, 32, 32, 16],
    "stage_depths": [1, 1, 1, 1, 2],
    "stage_kernels": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [5, 5, 5]],
    "upsamples": [[[1, 2, 2], 2], [[2, 1, 1], 2], [[2, 2, 2], 1], [[2, 2, 2], 2]],
    "spatial_padding_mode": "zeros",
    "resampler_kind": "linear",
    "stage5_kernel": [5, 5, 5],
    "t_emb_dim": 16,
    "timestep_scale_multiplier": 1000.0,
    "default_num_inference_steps": 1,
}


def tiny_diffusion_vae_section() -> dict:
    """The official `config["vae"]` section of the tiny diffusion VAE (encoder: the tiny 2.3 conv encoder)."""
    conv = official_config("2.3")["vae"]
    encoder = {
        "_class_name": "Encoder",
        "dims": conv["dims"],
        "in_channels": conv["in_channels"],
        "out_channels": conv["latent_channels"],
        "blocks": conv["encoder_blocks"],
        "patch_size": conv["patch_size"],
        "norm_layer": conv["norm_layer"],
        "latent_log_var": conv["latent_log_var"],
        "spatial_padding_mode": conv["spatial_padding_mode"],
    }
    return {
        "_class_name": DIFFUSION_VAE_CLASS,
        "encoder": encoder,
        "decoder": dict(TINY_DECODER),
        "model_output_type": "x0",
    }


def tiny_diffusion_vae(
    seed: int = 0, gated: bool = True, encoder_tensors: dict[str, torch.Tensor] | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(vae section, official tensors named `vae.*`) of a tiny diffusion VAE with seeded random weights.

    gated: store the decoder as a distilled one (a random positive gate beside every diffusion block's
    `attn.proj`, `mlp.w_down` and `context_proj`; the model is then those Linears scaled by their gates), plus a
    `coarse_head` to be dropped. encoder_tensors: official `vae.encoder.*` and `vae.per_channel_statistics.*`
    tensors to use (e.g. a tiny 2.3 checkpoint's, as the released 2.5 encoder is 2.3's) instead of drawing them.
    """
    section = tiny_diffusion_vae_section()
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    if encoder_tensors is None:
        encoder = build_encoder(section, empty=False)
        for name, tensor in encoder.state_dict().items():
            tensors[VIDEO_VAE_KEYS.to_official(name)] = _random_like(tensor, name, generator)
        mean = tensors["vae.per_channel_statistics.mean-of-means"]
        tensors["vae.per_channel_statistics.channel"] = torch.arange(mean.numel(), dtype=torch.int64)
        tensors["vae.per_channel_statistics.mean-of-stds"] = torch.ones_like(mean)
        tensors["vae.per_channel_statistics.mean-of-stds_over_std-of-means"] = torch.ones_like(mean)
    else:
        tensors.update({k: v.clone() for k, v in encoder_tensors.items()})

    decoder = build_decoder(section, empty=False)
    for name, tensor in decoder.state_dict().items():
        if name in ("latents_mean", "latents_std"):
            continue  # the per-channel statistics are the encoder's
        official = official_decoder_name(name)
        value = _random_like(tensor, name, generator)
        if ".attn.qkv." in official:  # one fused Linear(dim, 3 dim) in the file: q, k, v stacked
            tensors[official] = torch.cat([tensors.get(official, value.new_empty((0, *value.shape[1:]))), value])
        else:
            tensors[official] = value
    if gated:
        for index in range(len(decoder.decoder.diff_blocks)):
            width = decoder.decoder.diff_blocks[index].norm1.weight.numel()
            for gate in ("gate_msa", "gate_mlp", "gate_ctx"):
                tensors[f"vae.decoder.diff_blocks.{index}.{gate}"] = 0.5 + torch.rand(width, generator=generator)
        tensors["vae.decoder.coarse_head.weight"] = torch.randn(48, 16, generator=generator)
        tensors["vae.decoder.coarse_head.bias"] = torch.randn(48, generator=generator)
    tensors["vae.decoder.type_emb"] = torch.zeros(128)
    return section, tensors


def _random_like(tensor: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    # Default inits leave AdaLN tables and norms at constants; random values make every weight matter.
    if name.endswith("latents_mean"):
        return torch.randn(tensor.shape, generator=generator) * 0.1
    if name.endswith("latents_std"):
        return 0.5 + torch.rand(tensor.shape, generator=generator)
    fan_in = tensor[0].numel() if tensor.dim() >= 2 else tensor.numel()
    return torch.randn(tensor.shape, generator=generator) / max(fan_in, 1) ** 0.5
