"""Multi-modal guidance on x0 (denoised) predictions: which forward passes a step needs, and how they combine.

The combination is ltx-core's MultiModalGuider.calculate (facts: ../shared/reference/official-ltx-trainer.md §1.11),
in float32:
    pred = cond + (cfg - 1)(cond - uncond) + stg (cond - perturbed) + (modality - 1)(cond - isolated)
    if rescale != 0: pred *= rescale · std(cond) / std(pred) + (1 - rescale)      (std over the whole tensor)
A term whose scale is neutral, or whose pass did not run, is left out (it is exactly zero in ltx-core too).
Passes, as the official pipelines batch them: cond; uncond (negative prompts) when a CFG scale is on and a negative
context exists; perturbed (STG on each modality whose STG scale is on, in its own blocks); isolated (cross-modal
attention off) when a modality guidance scale is on and both modalities are present (generated, or one frozen as the
condition of the other: A2V, V2A). A frozen modality gets the neutral guider (`GuidanceParams()`): it adds no pass of
its own, and the official validation runner's frozen-modality rule (reference ltx-2.5-and-conditioning-modes.md §C1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ltx2_tuner.sampling.defaults import GuidanceParams
from ltx2_tuner.sampling.perturbations import Perturbation

COND, UNCOND, PERTURBED, ISOLATED = "cond", "uncond", "perturbed", "isolated"


@dataclass(frozen=True)
class GuidancePass:
    """One forward of a step: its name, whether it takes the negative text contexts, and its perturbation."""

    name: str
    negative: bool = False
    perturbation: Perturbation = field(default_factory=Perturbation)


def effective_params(params: GuidanceParams, other_modality_present: bool) -> GuidanceParams:
    """Modality guidance needs the other modality (generated or frozen); without it the term is off (official
    validation runner)."""
    return params if other_modality_present else dataclasses.replace(params, modality=1.0)


def plan_passes(
    video: GuidanceParams | None,
    audio: GuidanceParams | None,
    *,
    video_negative: bool,
    audio_negative: bool = False,
) -> list[GuidancePass]:
    """The passes one step needs. `audio` None = video only, `video` None = audio only; a frozen modality passes
    `GuidanceParams()`. `*_negative`: a negative context differs from the positive one (without it the uncond pass
    equals cond and is skipped). Pass `effective_params` values."""
    modalities = [(p, negative) for p, negative in ((video, video_negative), (audio, audio_negative)) if p is not None]
    passes = [GuidancePass(COND)]
    if any(params.cfg != 1.0 and negative for params, negative in modalities):
        passes.append(GuidancePass(UNCOND, negative=True))
    stg = Perturbation(
        video_self_attn_blocks=tuple(video.stg_blocks) if video is not None and video.stg != 0.0 else (),
        audio_self_attn_blocks=tuple(audio.stg_blocks) if audio is not None and audio.stg != 0.0 else (),
    )
    if not stg.is_identity:  # an STG scale without blocks perturbs nothing: that pass would equal cond
        passes.append(GuidancePass(PERTURBED, perturbation=stg))
    if video is not None and audio is not None and (video.modality != 1.0 or audio.modality != 1.0):
        passes.append(GuidancePass(ISOLATED, perturbation=Perturbation(cross_modal=False)))
    return passes


def guide(predictions: Mapping[str, torch.Tensor], params: GuidanceParams) -> torch.Tensor:
    """Guided x0 (float32) from the x0 predictions of the passes that ran, keyed by pass name (COND required)."""
    cond = predictions[COND].float()
    pred = cond
    for name, scale in ((UNCOND, params.cfg - 1.0), (PERTURBED, params.stg), (ISOLATED, params.modality - 1.0)):
        other = predictions.get(name)
        if scale != 0.0 and other is not None:
            pred = pred + scale * (cond - other.float())
    if params.rescale != 0.0:
        factor = cond.std() / pred.std()
        pred = pred * (params.rescale * factor + (1.0 - params.rescale))
    return pred
