"""Guidance settings and the official per-version sampling defaults.

Values from ltx-pipelines' `utils/constants.py` (facts: ../shared/reference/official-ltx-trainer.md §1.11,
ltx-2.5-and-conditioning-modes.md A7): LTX-2.0 40 steps with STG on block 29; LTX-2.3 and LTX 2.5 (`LTX_2_4_PARAMS`,
"2.4 continues the 2.3 lineage") 30 steps with STG on block 28; all CFG 3 (video) / 7 (audio), STG 1.0, rescale 0.7,
modality guidance 3.0. The negative prompt is the official trainer's, defined once in
cache/sample_prompts.py (the lowest layer that needs it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ltx2_tuner.cache.sample_prompts import DEFAULT_NEGATIVE_PROMPT
from ltx2_tuner.errors import ConfigError

OFFICIAL_NEGATIVE_PROMPT: str = DEFAULT_NEGATIVE_PROMPT


@dataclass(frozen=True)
class GuidanceParams:
    """One modality's guidance (ltx-core MultiModalGuiderParams). Neutral values turn a term, and its pass, off.

    cfg: classifier-free guidance scale (1 = off). stg: spatio-temporal guidance scale (0 = off): self-attention of
    this modality skipped in `stg_blocks`. rescale: 0 = off; r pulls the guided prediction's std back towards the
    conditional one's. modality: audio <-> video cross-attention guidance (1 = off; only when both are generated).
    """

    cfg: float = 1.0
    stg: float = 0.0
    rescale: float = 0.0
    modality: float = 1.0
    stg_blocks: tuple[int, ...] = ()


@dataclass(frozen=True)
class SamplingDefaults:
    steps: int
    video: GuidanceParams
    audio: GuidanceParams


_STEPS_AND_STG_BLOCK = {"2.0": (40, 29), "2.3": (30, 28), "2.5": (30, 28)}


def sampling_defaults(version: str) -> SamplingDefaults:
    """The official pipelines' defaults for a checkpoint version ("2.0", "2.3" or "2.5")."""
    if version not in _STEPS_AND_STG_BLOCK:
        raise ConfigError(
            f"no sampling defaults for LTX-{version}; supported versions: {', '.join(_STEPS_AND_STG_BLOCK)}"
        )
    steps, block = _STEPS_AND_STG_BLOCK[version]
    shared = {"stg": 1.0, "rescale": 0.7, "modality": 3.0, "stg_blocks": (block,)}
    return SamplingDefaults(
        steps=steps, video=GuidanceParams(cfg=3.0, **shared), audio=GuidanceParams(cfg=7.0, **shared)
    )
