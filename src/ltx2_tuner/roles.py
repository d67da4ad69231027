"""Modality roles: the one place that says what a training or generation mode does with video and audio.

Every mode gives each modality a role, as the official trainer's flexible strategy does (reference
ltx-2.5-and-conditioning-modes.md part B; official-ltx-trainer.md §1.1):

| mode | `--ltx_mode` | `--frozen_modality` | video | audio | transformer build |
|---|---|---|---|---|---|
| t2v  | video | | generated | absent | video |
| t2av | av    | | generated | generated | av |
| t2a  | audio | | absent | generated | audio |
| a2v  | av    | audio | generated | frozen | av |
| v2a  | av    | video | frozen | generated | av |

- generated: noised with its own sigma (drawn from its own token count), in the loss;
- frozen: its clean latents go in with sigma 0 and timestep 0 on every token, never in the loss; it conditions the
  other modality through the audio <-> video cross-attention (and still reads its own text, as the official does);
- absent: not built, not cached, not loaded.

The data loader, the cachers, the trainer, the LoRA presets and the sampler ask a `ModalityRoles` instead of testing
mode strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ltx2_tuner.errors import ConfigError

GENERATED, FROZEN, ABSENT = "generated", "frozen", "absent"
MODALITIES = ("video", "audio")
LTX_MODES = ("video", "av", "audio")
_NAMES = {
    (GENERATED, ABSENT): "t2v",
    (GENERATED, GENERATED): "t2av",
    (ABSENT, GENERATED): "t2a",
    (GENERATED, FROZEN): "a2v",
    (FROZEN, GENERATED): "v2a",
}
# The LoRA preset (networks/lora_ltx2.py PRESETS) each mode trains by default, and why (docs/training.md).
_DEFAULT_PRESETS = {
    "t2v": "video_attn",
    "t2av": "av_attn",
    # The official T2A config's targets: audio self- and text attention plus the audio feed-forward, where much of a
    # voice's timbre is learned (attention alone is the `audio_attn` preset).
    "t2a": "audio",
    # Only modules on the generated side: the frozen audio stream computes exactly what the base model computes, so an
    # A2V LoRA used in joint AV generation leaves the audio alone (the official config adapts every attention: av_attn).
    "a2v": "a2v",
    # The official V2A (Foley) config: the audio list plus video-to-audio attention (Q audio, K/V video).
    "v2a": "v2a",
}


@dataclass(frozen=True)
class ModalityRoles:
    video: str
    audio: str

    def __post_init__(self) -> None:
        if (self.video, self.audio) not in _NAMES:
            raise ValueError(f"no mode has video {self.video} and audio {self.audio}")

    @property
    def name(self) -> str:
        """t2v, t2av, t2a, a2v or v2a."""
        return _NAMES[(self.video, self.audio)]

    @property
    def build(self) -> str:
        """The transformer build (models.transformer MODES) and the caching mode: video, av or audio."""
        if self.audio == ABSENT:
            return "video"
        return "audio" if self.video == ABSENT else "av"

    def role(self, modality: str) -> str:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
        return getattr(self, modality)

    def present(self, modality: str) -> bool:
        """Built and run: its latents are cached and loaded and its text embeddings are needed."""
        return self.role(modality) != ABSENT

    def generated(self, modality: str) -> bool:
        """Noised and in the loss."""
        return self.role(modality) == GENERATED

    def frozen(self, modality: str) -> bool:
        """Clean, timestep 0, no loss."""
        return self.role(modality) == FROZEN

    @property
    def present_modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if self.present(m))

    @property
    def generated_modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if self.generated(m))

    @property
    def both_present(self) -> bool:
        """Both streams run, so audio <-> video cross-attention (and modality guidance) exists."""
        return self.present("video") and self.present("audio")

    @property
    def default_preset(self) -> str:
        return _DEFAULT_PRESETS[self.name]

    def dataset_problem(self, kind: str) -> str | None:
        """Why a dataset of `kind` (image, video or audio) cannot take part in this mode, or None."""
        if kind == "audio" and self.present("video"):
            return f"audio datasets train with --ltx_mode audio; remove it from the dataset config for --ltx_mode {self.build}"
        if kind == "image" and not self.present("video"):
            return "an image dataset has no sound; remove it from the dataset config for --ltx_mode audio"
        if kind == "image" and FROZEN in (self.video, self.audio):
            return (
                f"an image dataset has no sound, and {self.name.upper()} trains on video with sound; remove it from the "
                "dataset config"
            )
        return None

    @property
    def primary(self) -> str:
        """The modality whose sigma the per-sigma loss is logged by: video when generated, else audio."""
        return "video" if self.generated("video") else "audio"


def roles_for(ltx_mode: str, frozen_modality: str | None = None) -> ModalityRoles:
    """The roles of `--ltx_mode` (video, av, audio) with an optional `--frozen_modality` (video or audio; AV only)."""
    if ltx_mode not in LTX_MODES:
        raise ConfigError(f"--ltx_mode {ltx_mode}: choose one of {', '.join(LTX_MODES)}")
    if frozen_modality is None:
        return {
            "video": ModalityRoles(GENERATED, ABSENT),
            "av": ModalityRoles(GENERATED, GENERATED),
            "audio": ModalityRoles(ABSENT, GENERATED),
        }[ltx_mode]
    if frozen_modality not in MODALITIES:
        raise ConfigError(f"--frozen_modality {frozen_modality}: choose video (V2A) or audio (A2V)")
    if ltx_mode != "av":
        raise ConfigError(
            f"--frozen_modality {frozen_modality} needs both modalities: use --ltx_mode av (A2V: --frozen_modality "
            "audio; V2A: --frozen_modality video)"
        )
    return ModalityRoles(FROZEN, GENERATED) if frozen_modality == "video" else ModalityRoles(GENERATED, FROZEN)


def roles_by_name(name: str) -> ModalityRoles:
    """t2v, t2av, t2a, a2v or v2a -> its roles."""
    for (video, audio), known in _NAMES.items():
        if known == name:
            return ModalityRoles(video, audio)
    raise ValueError(f"unknown mode {name!r}; one of {', '.join(_NAMES.values())}")
