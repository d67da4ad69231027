"""Decoding with LTX 2.5's diffusion video decoder: ltx-core's untiled decode, run on diffusers'
`LTX2VideoDiffusionDecoderModel`, with a neighborhood attention whose memory does not grow with the square of the video.

What ltx-core's `DiffusionVideoDecoder` does (video_vae/diffusion_video_decoder.py `_decode_pixels`,
`_decode_one_tile`, `_euler_step`; diffusion_tiling.py), and so what `decode_latents` does:
1. Latents below the decoder's floor (every stage's neighborhood must fit its grid: per axis, the largest
   ceil(kernel / cumulative upsample stride)) are edge-padded: time by repeating the last frame, height and width on
   both sides (the odd one after).
2. Stages 1-3 see the last latent frame repeated (stage-1 kernel_t // 2) * 2 more times: NATTEN shifts windows
   inward at a border, and these "ghost" frames move that border past the kept frames. Stage 4's context is then
   cropped back, keeping at least stage5_kernel_t frames.
3. Stage 5 denoises Gaussian pixels (drawn from the generator) at timesteps linspace(1, 1/N, N), embedded after
   scaling by `timestep_scale_multiplier`: N-1 Euler steps on the velocity (an "x0" prediction converted to
   (x - x0) / t), then the last prediction is the output ("x0") or takes one Euler step to t = 0 ("v"). Single-step
   "x0" decodes draw the noise at the stage-5 canvas, others at the video's size (last frame repeated to the canvas).
4. The pixels are cropped back to the content: 8(F-1)+1 frames of 32H x 32W.
Where no padding is needed this is what diffusers' `decoder.forward` computes (same noise draw; its loop reaches
the same values). diffusers' default attention is uncompiled flex attention, which materializes the whole score
matrix (tens of GB at video sizes); `TiledNeighborhoodAttention` computes the same windows tile by tile.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

_ATTENTION_TILE = (8, 8, 8)  # query tile (T, H, W); the key box is tile + kernel - 1 per axis


# Neighborhood attention -----------------------------------------------------------------------------------------------
class TiledNeighborhoodAttention:
    """Exact 3-D neighborhood attention (NATTEN's windows: `kernel` wide, centred, shifted inward at the borders, as
    diffusers' flex processor masks them), one query tile at a time against the box of keys that holds all of the
    tile's windows; a boolean mask keeps each query's own window. A diffusers attention processor for
    `LTX2VideoVaeNeighborhoodAttention`."""

    def __init__(self, tile: tuple[int, int, int] = _ATTENTION_TILE):
        self.tile = tile

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, block_mask=None) -> torch.Tensor:
        batch, frames, height, width, channels = hidden_states.shape
        query, key, value = attn.project_qkv(hidden_states)  # [B, T, H, W, heads, head_dim]; query pre-scaled
        out = torch.empty_like(value)
        axes = [
            _axis_tiles(length, kernel, tile, hidden_states.device)
            for length, kernel, tile in zip((frames, height, width), attn.kernel_size, self.tile, strict=True)
        ]
        for (t_q, t_k, t_mask), (h_q, h_k, h_mask), (w_q, w_k, w_mask) in itertools.product(*axes):
            mask = t_mask[:, None, None, :, None, None] & h_mask[None, :, None, None, :, None]
            mask = (mask & w_mask[None, None, :, None, None, :]).flatten(3).flatten(0, 2)  # [queries, keys]
            q, k, v = (
                x.flatten(1, 3).transpose(1, 2)
                for x in (query[:, t_q, h_q, w_q], key[:, t_k, h_k, w_k], value[:, t_k, h_k, w_k])
            )
            tile_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
            out[:, t_q, h_q, w_q] = tile_out.transpose(1, 2).reshape(out[:, t_q, h_q, w_q].shape)
        return attn.to_out[0](out.reshape(batch, frames, height, width, channels))


def _axis_tiles(length: int, kernel: int, tile: int, device: torch.device) -> list[tuple[slice, slice, torch.Tensor]]:
    """(query slice, key slice, mask [queries, keys]) of each tile along one axis. A query at q attends to
    [s, s + kernel) with s = clamp(q - kernel // 2, 0, length - kernel)."""
    kernel, tile = min(kernel, length), min(tile, length)
    box = min(length, tile + kernel - 1)
    starts = (torch.arange(length) - kernel // 2).clamp(0, length - kernel)  # on the CPU: read back per tile
    tiles = []
    for q0 in range(0, length, tile):
        q1 = min(q0 + tile, length)
        k0 = min(int(starts[q0]), length - box)  # the windows of queries q0..q1-1 lie in [k0, k0 + box)
        keys = torch.arange(k0, k0 + box)
        window = starts[q0:q1, None]
        mask = (keys >= window) & (keys < window + kernel)
        tiles.append((slice(q0, q1), slice(k0, k0 + box), mask.to(device)))
    return tiles


def use_tiled_neighborhood_attention(model: nn.Module, tile: tuple[int, int, int] = _ATTENTION_TILE) -> None:
    """Give every neighborhood attention of a diffusers diffusion decoder the `TiledNeighborhoodAttention`."""
    from diffusers.models.autoencoders.ltx2_diffusion_decoder import LTX2VideoVaeNeighborhoodAttention

    for module in model.modules():
        if isinstance(module, LTX2VideoVaeNeighborhoodAttention):
            module.set_processor(TiledNeighborhoodAttention(tile))


# Decoding -------------------------------------------------------------------------------------------------------------
def min_latent_shape(config) -> tuple[int, int, int]:
    """The smallest latent (F, H, W) every stage's neighborhood fits (ltx-core `all_stages_min_tile_size`)."""
    minimum, cumulative = [1, 1, 1], (1, 1, 1)
    kernels = [*config.decoder_stage_kernels, config.decoder_stage5_kernel]
    strides = [*config.decoder_upsample_strides, None]
    for kernel, stride in zip(kernels, strides, strict=True):
        minimum = [max(m, math.ceil(k / c)) for m, k, c in zip(minimum, kernel, cumulative, strict=True)]
        if stride is not None:
            cumulative = tuple(c * s for c, s in zip(cumulative, stride, strict=True))
    return tuple(minimum)


@torch.no_grad()
def decode_latents(
    model: nn.Module,
    latents: torch.Tensor,
    generator: torch.Generator | None = None,
    num_inference_steps: int | None = None,
    tiled: bool = False,
) -> torch.Tensor:
    """De-normalized latents [B, C, F, H, W] -> pixels [B, 3, 8(F-1)+1, 32H, 32W] (about [-1, 1]) with diffusers'
    `LTX2VideoDiffusionDecoderModel`, as ltx-core decodes (module docstring). Steps, output type and timestep
    multiplier are the model's (from the file's metadata) unless `num_inference_steps` overrides the steps.

    `tiled`: run the last upsampling stage and the diffusion stage in diffusers' overlapping tiles (768 px, 80
    frames) once the latents exceed one tile; its noise is drawn per tile, so it differs from the untiled decode.
    """
    decoder, config = model.decoder, model.config
    steps = num_inference_steps or decoder.default_num_inference_steps
    _, _, frames, height, width = latents.shape
    min_frames, min_height, min_width = min_latent_shape(config)
    padded = _repeat_last(latents, 2, max(frames, min_frames))
    padded, top = _pad_edges(padded, 3, min_height)
    padded, left = _pad_edges(padded, 4, min_width)
    if tiled:
        pixels = model.tiled_decode(padded, generator=generator, num_inference_steps=steps)
    else:
        pixels = _decode_untiled(decoder, padded, generator, steps, config.decoder_stage5_kernel[0])
    t_scale, s_scale = config.temporal_compression_ratio, config.spatial_compression_ratio
    return pixels[
        :,
        :,
        : (frames - 1) * t_scale + 1,
        top * s_scale : (top + height) * s_scale,
        left * s_scale : (left + width) * s_scale,
    ]


def _decode_untiled(decoder: nn.Module, latents: torch.Tensor, generator, steps: int, stage5_kernel_t: int):
    context = decoder.forward_stage_4(decoder.forward_stages_1_to_3(latents), crop_trailing_ghost=False)
    ghost_frames = decoder.trailing_pad_latent_frames * decoder.temporal_compression_ratio
    context = context[:, : max(context.shape[1] - ghost_frames, stage5_kernel_t, 1)]
    patch = decoder.patch_size
    canvas = (latents.shape[0], decoder.out_channels, context.shape[1], *(n * patch for n in context.shape[2:4]))
    if steps == 1 and decoder.model_output_type == "x0":
        noise = _randn(canvas, generator, latents)
    else:
        video_frames = (latents.shape[2] - 1) * decoder.temporal_compression_ratio + 1
        noise = _repeat_last(_randn((*canvas[:2], video_frames, *canvas[3:]), generator, latents), 2, canvas[2])
    return _denoise(decoder, context, noise, steps)


def _denoise(decoder: nn.Module, context: torch.Tensor, x_t: torch.Tensor, steps: int) -> torch.Tensor:
    """ltx-core `_decode_one_tile`: Euler on the velocity in float32; an "x0" decoder's last prediction is final."""
    batch = x_t.shape[0]
    timesteps = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32).to(x_t.device)
    for step in range(steps):
        t_now = timesteps[step].expand(batch)
        prediction = decoder.forward_diffusion_step(context, x_t, t_now)
        if decoder.model_output_type == "x0":
            if step == steps - 1:
                return prediction
            velocity = (x_t.float() - prediction.float()) / t_now[0]  # ltx-core `to_velocity`, in float32
        else:
            velocity = prediction
        t_next = timesteps[step + 1] if step + 1 < steps else torch.zeros((), device=x_t.device)
        x_t = (x_t.float() - (t_now[0] - t_next) * velocity.float()).to(x_t.dtype)
    return x_t


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    # Drawn where the generator lives, so a CPU generator gives the same noise on every device.
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _repeat_last(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """`x` cut or extended to `size` along `dim`, extended by repeating its last slice."""
    if x.shape[dim] >= size:
        return x.narrow(dim, 0, size)
    last = x.narrow(dim, x.shape[dim] - 1, 1)
    return torch.cat([x, last.expand(*x.shape[:dim], size - x.shape[dim], *x.shape[dim + 1 :])], dim=dim)


def _pad_edges(x: torch.Tensor, dim: int, size: int) -> tuple[torch.Tensor, int]:
    """`x` edge-padded to at least `size` along `dim`, half before (rounded down), the rest after; and the count
    before."""
    need = size - x.shape[dim]
    if need <= 0:
        return x, 0
    before = need // 2
    first = x.narrow(dim, 0, 1).expand(*x.shape[:dim], before, *x.shape[dim + 1 :])
    padded = torch.cat([first, x], dim=dim)
    return _repeat_last(padded, dim, x.shape[dim] + need), before


def is_diffusion_decoder(module: nn.Module) -> bool:
    """Whether `module` is diffusers' `LTX2VideoDiffusionDecoderModel` (else a conv VAE)."""
    from diffusers import LTX2VideoDiffusionDecoderModel

    return isinstance(module, LTX2VideoDiffusionDecoderModel)
