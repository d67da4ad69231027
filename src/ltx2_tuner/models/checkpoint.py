"""Official LTX-2 checkpoint files: what is in one, which version it is, where each component's tensors are.

A unified file (`ltx-2-19b-dev.safetensors`, `ltx-2.3-22b-dev.safetensors`, `ltx-2.5-22b-dev.safetensors`) holds the
transformer, the text connectors and projections, the video VAE, the audio VAE and the vocoder, plus safetensors
metadata: `config` (JSON with sections `transformer`, `vae`, `audio_vae`, `vocoder`, `scheduler`) and `model_version`
(LTX 2.5 adds `gemma_source_checkpoint`). A split pack has one file per role, each with its own `config` section;
`models/model_files.py` puts a pack together.
Facts: ../shared/reference/official-ltx-trainer.md §3.1-3.3, ltx-2.5-and-conditioning-modes.md A5-A6.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models.key_maps import (
    AUDIO_VAE_KEYS,
    CONNECTOR_PREFIXES,
    TRANSFORMER_KEYS,
    VIDEO_VAE_KEYS,
    VOCODER_KEYS,
)
from ltx2_tuner.models.safetensors_io import SafetensorsHeader, read_header, rename_tensors

COMPONENTS = ("transformer", "text_connectors", "video_vae", "audio_vae", "vocoder")
SUPPORTED_VERSIONS = ("2.0", "2.3", "2.5")

# Which metadata `config` section describes each component.
CONFIG_SECTION = {
    "transformer": "transformer",
    "text_connectors": "transformer",
    "video_vae": "vae",
    "audio_vae": "audio_vae",
    "vocoder": "vocoder",
}

_OFFICIAL_HINT = (
    "pass an official checkpoint (e.g. ltx-2.3-22b-dev.safetensors, or a split pack's "
    "diffusion_models/ltx-2.5-22b-dev-transformer-bf16.safetensors)"
)
# Top-level names of diffusers-format LTX-2 component files (transformer, VAEs, connectors, vocoder).
_DIFFUSERS_ROOTS = (
    "proj_in.",
    "audio_proj_in.",
    "time_embed.",
    "transformer_blocks.",
    "video_connector.",
    "text_proj_in.",
    "video_text_proj_in.",
    "latents_mean",
    "conv_in.",
    "upsamplers.",
    "bwe_generator.",
)


def component_of(official_key: str) -> str | None:
    """The component an official tensor name belongs to, or None for tensors we do not use."""
    if official_key.startswith(CONNECTOR_PREFIXES):
        return "text_connectors"
    for component, key_map in (
        ("transformer", TRANSFORMER_KEYS),
        ("video_vae", VIDEO_VAE_KEYS),
        ("audio_vae", AUDIO_VAE_KEYS),
        ("vocoder", VOCODER_KEYS),
    ):
        if key_map.owns(official_key):
            return component
    return None


@dataclass(frozen=True)
class CheckpointInfo:
    """What `read_checkpoint_info` found. `configs` holds the official metadata sections, untranslated."""

    path: Path
    version: str  # "2.0", "2.3" or "2.5": the model family ("unknown" for a VAE file that does not say)
    model_version: str | None  # the metadata string as written, e.g. "2.3.0"
    components: tuple[str, ...]
    configs: dict[str, dict]
    tensor_names: dict[str, tuple[str, ...]] = field(repr=False)
    header: SafetensorsHeader = field(repr=False)
    kind: str = "unified"  # or a split-pack file's role: "transformer", "video_vae", "audio_vae"
    gemma_source: dict | None = None  # LTX 2.5: `gemma_source_checkpoint` ({"gemma_version": ...})

    def component_bytes(self, component: str) -> int:
        return sum(self.header.tensors[name].nbytes for name in self.tensor_names.get(component, ()))

    @property
    def fingerprint(self) -> str:
        """Identifies the file's content layout and metadata cheaply (header hash + size), for cache stamps."""
        digest = hashlib.sha256(self.header.header_bytes)
        digest.update(str(self.path.stat().st_size).encode())
        return digest.hexdigest()[:16]

    def require(self, component: str) -> None:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; choose one of {COMPONENTS}")
        if component not in self.components:
            prefixes = _prefixes_text(component)
            raise CheckpointError(
                f"{self.path}: has no {component.replace('_', ' ')} weights ({prefixes}); {_OFFICIAL_HINT} "
                "or the file that holds this component"
            )
        section = CONFIG_SECTION[component]
        if section not in self.configs:
            raise CheckpointError(
                f"{self.path}: metadata `config` has no `{section}` section for the {component.replace('_', ' ')}; "
                f"{_OFFICIAL_HINT}"
            )


def _prefixes_text(component: str) -> str:
    return {
        "transformer": "model.diffusion_model.*",
        "text_connectors": "model.diffusion_model.video_embeddings_connector.*, "
        "model.diffusion_model.audio_embeddings_connector.*, text_embedding_projection.*",
        "video_vae": "vae.*",
        "audio_vae": "audio_vae.*",
        "vocoder": "vocoder.*",
    }[component]


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Open an official LTX-2 checkpoint file lazily (header only) and describe it.

    Accepted: the unified file (every component), and the files of a split pack (ComfyUI folders): the transformer
    (with the text connectors; `config` has only `transformer`), the video VAE (bare `encoder.*`, `decoder.*`,
    `per_channel_statistics.*`, seen here under the unified file's `vae.` names) and the audio VAE + vocoder.
    Raises CheckpointError, with the file, the problem and the fix, for anything else.
    """
    path = Path(path)
    if path.is_dir() and ((path / "model_index.json").exists() or (path / "transformer").is_dir()):
        raise CheckpointError(f"{path}: is a diffusers-format model directory; {_OFFICIAL_HINT}")
    header = read_header(path)
    config = _read_config(path, header)
    kind = _file_kind(config)
    if kind == "video_vae" and not any(name.startswith("vae.") for name in header.tensors):
        header = rename_tensors(header, lambda name: f"vae.{name}" if name.startswith(_BARE_VAE_ROOTS) else name)

    tensor_names = _tensor_names(header)
    model_version = header.metadata.get("model_version")
    gemma_source = _gemma_source(path, header.metadata)
    if "transformer" in config:
        version = _detect_version(path, config, model_version, gemma_source)
    else:
        version = _component_file_version(model_version)
    components = tuple(c for c in COMPONENTS if tensor_names.get(c) and c in _KIND_COMPONENTS[kind])
    if not components:
        raise CheckpointError(_explain_missing_config(path, header, tensor_names))
    return CheckpointInfo(
        path=path,
        version=version,
        model_version=model_version,
        components=components,
        configs={k: v for k, v in config.items() if isinstance(v, dict)},
        tensor_names={k: tuple(v) for k, v in tensor_names.items()},
        header=header,
        kind=kind,
        gemma_source=gemma_source,
    )


def _tensor_names(header: SafetensorsHeader) -> dict[str, list[str]]:
    """Official tensor names by the component they belong to (tensors we do not use are left out)."""
    names: dict[str, list[str]] = {}
    for name in header.tensors:
        if (component := component_of(name)) is not None:
            names.setdefault(component, []).append(name)
    return names


def _read_config(path: Path, header: SafetensorsHeader) -> dict:
    raw_config = header.metadata.get("config")
    if raw_config is None:
        raise CheckpointError(_explain_missing_config(path, header, _tensor_names(header)))
    try:
        config = json.loads(raw_config)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: metadata `config` is not valid JSON; {_OFFICIAL_HINT}") from None
    if not isinstance(config, dict) or not any(isinstance(config.get(s), dict) for s in _FILE_SECTIONS):
        raise CheckpointError(
            f"{path}: metadata `config` has no `transformer`, `vae`, `audio_vae` or `vocoder` section; {_OFFICIAL_HINT}"
        )
    return config


# The unified file has the transformer and a VAE section; a split pack has one file per role.
_FILE_SECTIONS = ("transformer", "vae", "audio_vae", "vocoder")
_KIND_COMPONENTS = {
    "unified": COMPONENTS,
    "transformer": ("transformer", "text_connectors"),
    "video_vae": ("video_vae",),
    "audio_vae": ("audio_vae", "vocoder"),
}
_BARE_VAE_ROOTS = ("encoder.", "decoder.", "per_channel_statistics.")


def _file_kind(config: dict) -> str:
    """ "unified", or the role of one split-pack file: "transformer", "video_vae" or "audio_vae"."""
    sections = [section for section in _FILE_SECTIONS if isinstance(config.get(section), dict)]
    if "transformer" in sections:
        return "unified" if len(sections) > 1 else "transformer"
    if "vae" in sections:
        return "video_vae"
    return "audio_vae"


def _gemma_source(path: Path, metadata: dict[str, str]) -> dict | None:
    """The `gemma_source_checkpoint` metadata (LTX 2.5: which Gemma the model was trained with), parsed."""
    raw = metadata.get("gemma_source_checkpoint")
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path}: metadata `gemma_source_checkpoint` is not a JSON object; the file is damaged, download it again"
        )
    return value


def _explain_missing_config(path: Path, header: SafetensorsHeader, tensor_names: dict[str, list[str]]) -> str:
    names = list(header.tensors)
    if names and all(not component_of(n) for n in names) and any(n.startswith(_DIFFUSERS_ROOTS) for n in names):
        return (
            f"{path}: is a diffusers-format component file (tensor names like {names[0]!r}), not an official "
            f"checkpoint; {_OFFICIAL_HINT}"
        )
    present = [c for c in COMPONENTS if tensor_names.get(c)]
    if present and len(present) < len(COMPONENTS):
        return (
            f"{path}: is a split/ComfyUI component file (only {', '.join(present)} weights and no `config` "
            f"metadata); {_OFFICIAL_HINT}"
        )
    return (
        f"{path}: has no `config` metadata, so it is not an official LTX-2 checkpoint (or was re-saved without "
        f"its metadata); {_OFFICIAL_HINT}"
    )


def _parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from a model_version string; pre-release tags ("2.3.rc1", "2.4-rc2") keep their numbers."""
    match = re.match(r"\s*(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def version_family(model_version: str | None) -> str | None:
    """The model family a `model_version` string names ("2.0", "2.3", "2.5"), or None when it names none.

    As ltx-core: from 2.4 on (pre-release builds included) it is the LTX 2.5 generation."""
    parsed = _parse_version(model_version) if model_version else None
    if parsed is None or parsed[0] != 2:
        return None
    if parsed >= (2, 4):
        return "2.5"
    return "2.3" if parsed >= (2, 3) else "2.0"


def _component_file_version(model_version: str | None) -> str:
    # VAE files carry no architecture that tells the family apart; "unknown" files take the transformer's.
    return version_family(model_version) or "unknown"


def _detect_version(path: Path, config: dict, model_version: str | None, gemma_source: dict | None) -> str:
    transformer = config["transformer"]
    parsed = _parse_version(model_version) if model_version else None
    if parsed and parsed >= (2, 6):
        raise CheckpointError(
            f"{path}: is LTX {model_version}, newer than this ltx2-tuner knows (2.0, 2.3, 2.5); update "
            "ltx2-tuner or use an LTX 2.0 / 2.3 / 2.5 checkpoint"
        )
    if (parsed and parsed[0] < 2) or "audio_num_attention_heads" not in transformer:
        raise CheckpointError(
            f"{path}: is an LTX-Video 0.9 checkpoint (no audio stream; model_version {model_version}); "
            "ltx2-tuner trains LTX-2, LTX-2.3 and LTX 2.5 only"
        )
    # The architecture, not the version string, decides 2.0 vs 2.3: LTX-2.3 moved the caption projection before the
    # connectors and added prompt AdaLN and gated attention. LTX 2.5 keeps that architecture and says so in its
    # metadata (model_version 2.4+ and the Gemma it was trained with).
    is_2_3 = bool(transformer.get("caption_proj_before_connector") or transformer.get("cross_attention_adaln"))
    if version_family(model_version) == "2.5" or gemma_source is not None:
        if not is_2_3:
            raise CheckpointError(
                f"{path}: model_version says {model_version} (LTX 2.5) but its `config` describes an LTX-2.0 "
                "transformer; the metadata is inconsistent, download the checkpoint again"
            )
        return "2.5"
    version = "2.3" if is_2_3 else "2.0"
    if parsed and parsed == (2, 3) and version != "2.3":
        raise CheckpointError(
            f"{path}: model_version says {model_version} but its `config` describes an LTX-2.0 transformer; "
            "the metadata is inconsistent, download the checkpoint again"
        )
    return version
