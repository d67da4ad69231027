"""What the transformer adds to the video tokens between the input projection and the first block: LTX 2.5's keyframe
embedding on marked tokens, nothing elsewhere. Measured with hooks on diffusers' own modules (`proj_in` output, the
first block's `norm1` input), so it does not depend on the adapter code it checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def keyframe_probe(backbone: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives, per transformer forward, [B, N, D] = first block's video input - proj_in output."""
    projected: list[torch.Tensor] = []
    added: list[torch.Tensor] = []

    def on_projection(module, args, output):
        projected.append(output.detach().float().clone())

    def on_first_block(module, args):
        if len(added) < len(projected):  # skips a recompute in backward (gradient checkpointing)
            added.append(args[0].detach().float() - projected[len(added)])

    handles = [
        backbone.proj_in.register_forward_hook(on_projection),
        backbone.transformer_blocks[0].norm1.register_forward_pre_hook(on_first_block),
    ]
    try:
        yield added
    finally:
        for handle in handles:
            handle.remove()


def expected_addition(keyframes_mask: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """[B, N, D]: `embedding` [1, D] on the tokens where `keyframes_mask` [B, N] is set, 0 elsewhere."""
    return keyframes_mask.bool()[..., None].float() * embedding.detach().float().reshape(1, 1, -1)
