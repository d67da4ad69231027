"""Conditions on a generated modality in a training step: which tokens stay clean, and the reference tokens.

Official flexible strategy (reference ltx-2.5-and-conditioning-modes.md B1-B2): each intrinsic condition (prefix,
suffix, spatial_crop, mask) is drawn per sample with its probability and makes its tokens clean (timestep 0, out of
the loss); a reference is drawn once per batch (it changes the sequence length) and prepends the reference clip's
clean tokens, with their own positions, to the target's. The token construction is conditioning/tokens.py, which the
sampler uses too, so a LoRA meets at inference exactly the tokens it trained on. First-frame conditioning keeps its own
draw (training/flow_matching.py), made before these.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ltx2_tuner.conditioning.spec import Condition
from ltx2_tuner.conditioning.tokens import (
    TokenGrid,
    audio_reference_positions,
    condition_token_mask,
    prepend_reference,
    reference_positions,
    reference_scale_factors,
)
from ltx2_tuner.models import ModalityInput, patchify_audio, patchify_video

INTRINSIC = ("prefix", "suffix", "spatial_crop", "mask")
_MASK_KEYS = {"video": "video_mask", "audio": "audio_mask"}


def intrinsic_clean_mask(
    conditions: tuple[Condition, ...],
    modality: str,
    grid: TokenGrid,
    batch: dict,
    batch_size: int,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """[B, N] bool: tokens made clean by the modality's intrinsic conditions, each drawn per sample (None: none)."""
    clean = None
    for condition in conditions:
        if condition.modality != modality or condition.type not in INTRINSIC:
            continue
        if condition.type in ("prefix", "suffix") and grid.frames <= condition.temporal_boundary:
            continue  # the whole window would be clean: nothing left to learn (e.g. an image batch)
        drawn = torch.rand(batch_size, generator=generator) < condition.probability
        if condition.type == "mask":
            stored = batch[_MASK_KEYS[modality]]
            tokens = torch.stack([condition_token_mask(condition, grid, stored[i]) for i in range(batch_size)])
        else:
            tokens = condition_token_mask(condition, grid)[None].expand(batch_size, -1)
        chosen = drawn[:, None] & tokens
        clean = chosen if clean is None else clean | chosen
    return clean


def with_reference(
    conditions: tuple[Condition, ...],
    modality: str,
    inputs: ModalityInput,
    target_grid: TokenGrid,
    batch: dict,
    generator: torch.Generator,
) -> ModalityInput:
    """`inputs` with the batch's reference tokens prepended when the modality has a reference condition and the
    batch-wide draw takes it; unchanged otherwise. Scale factors come from the cached shapes, every batch."""
    reference = next((c for c in conditions if c.modality == modality and c.type == "reference"), None)
    if reference is None:
        return inputs
    if not bool(torch.rand((), generator=generator) < reference.probability):
        return inputs
    device, dtype = inputs.latent.device, inputs.latent.dtype
    batch_size = inputs.latent.shape[0]
    if modality == "video":
        cached = batch["reference_latents"]
        latents = cached["latents"]
        ref_grid = TokenGrid(*latents.shape[2:])
        spatial, temporal = reference_scale_factors(target_grid, ref_grid, ", ".join(batch["items"]))
        tokens = patchify_video(latents)
        positions = reference_positions(ref_grid, cached["fps"], batch["latents"]["fps"], spatial, temporal,
                                        batch_size=batch_size, device=device)  # fmt: skip
    else:
        tokens = patchify_audio(batch["reference_audio_latents"]["latents"])
        positions = audio_reference_positions(tokens.shape[1], batch_size=batch_size, device=device)
    return prepend_reference(inputs, tokens.to(device=device, dtype=dtype), positions)


def reference_metadata(batches, conditions: tuple[Condition, ...]) -> dict[str, str]:
    """The LoRA metadata inference needs, in the official naming: the trained condition types, and for a video
    reference its spatial and temporal scale factors (written only when != 1, as the official trainer; its pipelines
    read `reference_downscale_factor`). The factors are measured on the cached shapes of one item per batch shape (the
    official trainer peeks a path relative to the working directory and may silently record none); references scaled
    differently in different buckets cannot be described by one file and are refused."""
    import json

    from ltx2_tuner.errors import ConfigError

    metadata = {}
    if conditions:
        metadata["trained_conditions"] = json.dumps([f"{c.modality}:{c.type}" for c in conditions])
    if not any(c.type == "reference" and c.modality == "video" for c in conditions):
        return metadata
    seen, shapes = set(), set()  # the (spatial, temporal) factors found; the batch shapes measured
    for items in batches.epoch_batches:
        if items[0].shape in shapes:
            continue
        shapes.add(items[0].shape)
        batch = batches.collate(items[:1])
        latents = batch["latents"]["latents"]
        factors = reference_scale_factors(
            TokenGrid(*latents.shape[2:]), TokenGrid(*batch["reference_latents"]["latents"].shape[2:]), items[0].key
        )
        seen.add(factors)
    if len(seen) > 1:
        raise ConfigError(
            f"the references are scaled differently in different buckets ({sorted(seen)} as (spatial, temporal)); a "
            "LoRA file records one factor: cache every reference with one reference_downscale_factor / "
            "reference_temporal_scale_factor"
        )
    ((spatial, temporal),) = seen
    if spatial != 1:
        metadata["reference_spatial_scale_factor"] = metadata["reference_downscale_factor"] = str(spatial)
    if temporal != 1:
        metadata["reference_temporal_scale_factor"] = str(temporal)
    return metadata


# The CachedItem field each condition on a partner file reads ((modality, type) -> field, what it is).
_CONDITION_PARTNERS = {
    ("video", "reference"): ("reference_path", "reference clip"),
    ("video", "mask"): ("mask_path", "mask"),
    ("audio", "reference"): ("reference_audio_path", "reference audio"),
    ("audio", "mask"): ("audio_mask_path", "audio mask"),
}


def condition_partner_problems(items: list, conditions: tuple[Condition, ...]) -> list[str]:
    """One line per dataset whose cached items lack a partner file a condition reads (conditioning.spec.Condition:
    an audio `reference` on a video dataset whose reference clips have no soundtrack, a `mask` on a dataset without
    masks, ...). Items without that modality (image items in an AV run, for audio conditions) are not counted."""
    problems = []
    for condition in conditions:
        found = _CONDITION_PARTNERS.get((condition.modality, condition.type))
        if found is None:
            continue
        field, what = found
        lacking: dict[str, list[str]] = defaultdict(list)
        for item in items:
            has_modality = (
                item.latent_path is not None if condition.modality == "video" else item.audio_path is not None
            )
            if has_modality and getattr(item, field) is None:
                lacking[item.dataset.name].append(item.key)
        for name, keys in lacking.items():
            fix = (
                "give the reference clips sound, or set reference_audio_directory"
                if field == "reference_audio_path"
                else f'give the dataset a {what} per item (docs/dataset-config.md "References and masks")'
            )
            problems.append(
                f'{name}: the {condition.modality} "{condition.type}" condition needs a {what} cache per item, '
                f"{len(keys)} item(s) have none ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}); {fix}"
            )
    return problems
