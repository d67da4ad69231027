"""LTX 2.5's learned keyframe embedding: which video tokens are marked, and how the mark is added.

A 2.5 transformer (`use_keyframes_abs_pos_embedding` in its config) holds a learned [1, D]
`keyframes_abs_pos_embedding`, added right after the video input projection to the tokens a keyframes mask marks
(mask > 0). ltx-core's inference marks the target's first latent frame on every target (plus generated keyframe
slots; reference tokens never); the official trainer marks nothing. A mask given to a model without the embedding
is ignored, as ltx-core and diffusers' `video_keyframes_mask` do. Facts:
../shared/reference/ltx-2.5-and-conditioning-modes.md A2, A8.
"""

from __future__ import annotations

import torch


def first_frame_keyframes_mask(
    batch_size: int, tokens_per_frame: int, num_tokens: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """[B, N] bool, True on the first latent frame's tokens of every sample (frame-major layout: they come first).

    The causal VAE encodes one pixel frame into the first latent frame and 8 into each later one, which makes that
    frame the same kind of token as a keyframe; ltx-core's inference marks it on every target, image or video, with
    or without image conditioning.
    """
    mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=device)
    mask[:, :tokens_per_frame] = True
    return mask


def add_keyframes_embedding(
    hidden: torch.Tensor, keyframes_mask: torch.Tensor | None, embedding: torch.Tensor | None
) -> torch.Tensor:
    """hidden [B, N, D] plus `embedding` [1, D] on the tokens where `keyframes_mask` ([B, N] or [B, N, 1]) > 0,
    in hidden's dtype. Without a mask or an embedding (a 2.0/2.3 model) hidden is returned unchanged."""
    if keyframes_mask is None or embedding is None:
        return hidden
    shape_ok = keyframes_mask.ndim in (2, 3) and tuple(keyframes_mask.shape[:2]) == tuple(hidden.shape[:2])
    if not shape_ok or (keyframes_mask.ndim == 3 and keyframes_mask.shape[2] != 1):
        raise ValueError(
            f"keyframes_mask of shape {list(keyframes_mask.shape)} for {list(hidden.shape[:2])} video tokens: "
            "give [B, N] or [B, N, 1]"
        )
    marker = (keyframes_mask > 0).reshape(*hidden.shape[:2], 1).to(device=hidden.device, dtype=hidden.dtype)
    return hidden + marker * embedding.to(hidden.dtype)
