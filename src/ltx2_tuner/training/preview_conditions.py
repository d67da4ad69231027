"""What one preview prompt is conditioned on in a run: its --i / --a / --v media by the run's modality roles, and
(issue 14) the held-out media of the run's `[[conditions]]`, as a `sampling.conditions.Condition` that
`encode_conditions` turns into the tokens generation uses.

The official validation runner conditions its samples as the strategy trains (reference
ltx-2.5-and-conditioning-modes.md §C1 and part B; official-ltx-trainer.md §1.1): a prefix / suffix run extends a clip
forward / backward by the trained number of latent frames, a reference run reads its reference at the output size /
the spatial factor keeping every temporal-factor-th frame (factors the trainer measures on the cache,
`training.conditioned.reference_metadata`), an inpainting run keeps the source where the mask is white, an outpainting
run keeps the source inside the trained crop box. A prompt without the condition's media is sampled without it.
"""

from __future__ import annotations

from pathlib import Path

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import audio_latent_count
from ltx2_tuner.roles import ModalityRoles
from ltx2_tuner.sampling.conditions import Condition

# A run condition type -> the prompt option that gives its media (first_frame predates issue 14: --i).
_OPTION = {"first_frame": "i", "prefix": "x", "suffix": "x", "reference": "r", "mask": "src", "spatial_crop": "src"}
_FIELD = {"i": "image", "x": "extend", "r": "reference", "ra": "reference_audio", "src": "source"}


def preview_condition(prompt, roles: ModalityRoles, trained: tuple = (), where: str = "") -> Condition:
    """The media `prompt`'s preview is conditioned on in its mode `roles`, with the run's `trained` conditions
    (conditioning.spec.Condition). The video reference is left out: its factors are measured later
    (`with_reference`). ConfigError naming `where` when the prompt cannot hold the kept tokens."""
    video, audio = roles.generated("video"), roles.generated("audio")
    fields: dict = {
        "image": Path(prompt.image) if prompt.image and video else None,
        "audio": Path(prompt.audio) if roles.frozen("audio") else None,
        "video": Path(prompt.video) if roles.frozen("video") else None,
    }
    if audio:
        fields["audio_latents"] = (
            round(prompt.audio_seconds * 25) if not video and not roles.frozen("video")
            else audio_latent_count(prompt.num_frames, prompt.frame_rate)
        )  # fmt: skip
    kinds = {(c.modality, c.type): c for c in trained if roles.generated(c.modality)}
    if prompt.extend:
        fields.update(_extension(prompt, kinds, where))
    if prompt.source:
        fields.update(_in_or_outpainting(prompt, kinds, where))
    if prompt.reference_audio and ("audio", "reference") in kinds:
        fields["reference_audio"] = Path(prompt.reference_audio)
    return Condition(prompt.width, prompt.height, prompt.num_frames, prompt.frame_rate, **fields)


def _extension(prompt, kinds: dict, where: str) -> dict:
    """--x: the clip's frames as the trained prefix (forward) / suffix (backward) latent frames, its sound as the
    audio's kept start / end (encoded whole, as generation's --extend_audio)."""
    fields: dict = {}
    for modality in ("audio", "video"):  # the video's direction wins when both are trained
        condition = kinds.get((modality, "prefix")) or kinds.get((modality, "suffix"))
        if condition is None:
            continue
        fields["direction"] = "forward" if condition.type == "prefix" else "backward"
        if modality == "audio":
            fields["extend_audio"] = Path(prompt.extend)
            continue
        boundary, latent_frames = condition.temporal_boundary, (prompt.num_frames - 1) // 8 + 1
        if boundary >= latent_frames:
            raise ConfigError(
                f"{where}: --x keeps the run's {boundary} latent frame(s) ({8 * boundary - 7}+ frames) of a "
                f"{condition.type}; the preview has {latent_frames}: use --f {8 * boundary + 1} or more"
            )
        # forward: the clip's first 8(B-1)+1 frames give B latent frames; backward: the clip is encoded whole and
        # the B latent frames after its first are kept (sampling.conditions).
        frames = 8 * (boundary - 1) + 1 if condition.type == "prefix" else 8 * boundary + 1
        fields.update(extend=Path(prompt.extend), extend_frames=frames)
    return fields


def _in_or_outpainting(prompt, kinds: dict, where: str) -> dict:
    """--src with --m: inpainting (video or audio mask condition); without: outpainting in the trained crop box."""
    if prompt.mask and ("video", "mask") in kinds:
        return {"source": Path(prompt.source), "mask": Path(prompt.mask)}
    if prompt.mask and ("audio", "mask") in kinds:
        return {"source": Path(prompt.source), "audio_mask": Path(prompt.mask)}
    crop = kinds.get(("video", "spatial_crop"))
    if prompt.mask or crop is None:
        return {}
    y1, x1, y2, x2 = crop.region
    width, height = min(x2, prompt.width) - x1, min(y2, prompt.height) - y1
    if width <= 0 or height <= 0:
        raise ConfigError(
            f"{where}: --src: the run's spatial_crop region {list(crop.region)} lies outside the "
            f"{prompt.width}x{prompt.height} preview; use a larger --w / --h"
        )
    return {"source": Path(prompt.source), "outpaint_crop": (x1, y1, width, height)}


def with_reference(
    prompt, roles: ModalityRoles, trained: tuple, factors: tuple[int, int], where: str
) -> Condition | None:
    """The video reference of `prompt` (--r) at the measured (spatial, temporal) `factors`, or None when the prompt
    or the run has none. ConfigError naming `where` when the preview's size does not divide by the factors."""
    if not prompt.reference or not any(c.type == "reference" and c.modality == "video" for c in trained):
        return None
    if not roles.generated("video"):
        return None
    spatial, temporal = factors
    if prompt.width % (32 * spatial) or prompt.height % (32 * spatial):
        raise ConfigError(
            f"{where}: --r is read at 1/{spatial} of {prompt.width}x{prompt.height} (the run's reference factor), "
            f"which must stay a multiple of 32; use --w and --h that are multiples of {32 * spatial}"
        )
    if (prompt.num_frames - 1) % (8 * temporal):
        raise ConfigError(
            f"{where}: the run's reference keeps every {temporal}th frame, so --f must be {8 * temporal}k+1"
        )
    return Condition(prompt.width, prompt.height, prompt.num_frames, prompt.frame_rate,
                     reference=Path(prompt.reference), reference_factors=factors)  # fmt: skip


def measured_factors(metadata: dict) -> tuple[int, int]:
    """(spatial, temporal) from the trainer's `reference_metadata` (absent keys: 1)."""
    return int(metadata.get("reference_spatial_scale_factor", 1)), int(
        metadata.get("reference_temporal_scale_factor", 1)
    )


def missing_media_note(prompts: list, prompt_roles: list, trained: tuple) -> str | None:
    """One line naming the prompts sampled without a trained condition's media (None when every prompt has it)."""
    lines = []
    for index, (prompt, roles) in enumerate(zip(prompts, prompt_roles, strict=True)):
        wanted = {_OPTION[c.type] for c in trained if roles.generated(c.modality) and c.modality == "video"}
        wanted |= {"ra" if c.type == "reference" else _OPTION[c.type] for c in trained
                   if roles.generated(c.modality) and c.modality == "audio" and c.type != "first_frame"}  # fmt: skip
        missing = sorted(f"--{o}" for o in wanted if getattr(prompt, _FIELD[o]) is None)
        if missing:
            lines.append(f"{index} (no {' '.join(missing)})")
    if not lines:
        return None
    kinds = ", ".join(dict.fromkeys(f"{c.modality}:{c.type}" for c in trained))
    return f"previews: prompt(s) {', '.join(lines)} lack the media of this run's conditions ({kinds}); they are sampled without them"
