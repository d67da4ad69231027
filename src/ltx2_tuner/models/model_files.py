"""The files one model is made of: a unified checkpoint, or the files of a split pack, found and checked.

A split pack (ComfyUI folders, as Lightricks ships LTX 2.5; reference A5) keeps one file per role:

    <pack>/diffusion_models/ltx-2.5-22b-dev-transformer-bf16.safetensors  transformer + text connectors
    <pack>/text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors    Gemma 4 + the text projections
    <pack>/vae/ltx-2.5-video-vae-bf16.safetensors                         video VAE (diffusion decoder)
    <pack>/vae/ltx-2.5-video-vae-conv-bf16.safetensors                    video VAE (conv decoder), optional
    <pack>/vae/ltx-2.5-audio-vae-bf16.safetensors                         audio VAE + vocoder

`--ltx2_checkpoint` names the unified file or the split transformer; `--video_vae`, `--audio_vae` and
`--text_encoder` name the others, and default to the files beside it when the pack's folders are intact. Files
are found and opened only when a command asks for them (a video-only run never opens the audio VAE), as
Lightricks' trainer resolves them lazily (`model_loader.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models.checkpoint import CheckpointInfo, read_checkpoint_info
from ltx2_tuner.models.safetensors_io import merge_headers, read_header

VIDEO_VAE_FLAG, AUDIO_VAE_FLAG, TEXT_ENCODER_FLAG = "--video_vae", "--audio_vae", "--text_encoder"
PROJECTION_PREFIX = "text_embedding_projection."
# VAE files are interchangeable within a latent space: LTX 2.5 kept 2.3's video encoder and audio VAE.
_LATENT_SPACES = {"2.0": "2.0", "2.3": "2.3", "2.5": "2.3"}


def latent_space(version: str) -> str:
    """The latent space a model family's VAEs encode to ("2.0" or "2.3"; LTX 2.5 shares 2.3's)."""
    return _LATENT_SPACES.get(version, version)


# What an encoder's output depends on: its weights and the latent statistics that normalize it.
_ENCODER_PREFIXES = {
    "video_vae": ("vae.encoder.", "vae.per_channel_statistics."),
    "audio_vae": ("audio_vae.encoder.", "audio_vae.per_channel_statistics."),
}


def encoder_fingerprint(info: CheckpointInfo, component: str) -> str:
    """A hash of the bytes of `component`'s encoder and latent statistics: the same for any file that encodes the
    same latents (LTX 2.5's video VAE has 2.3's encoder), so latent caches survive a change of file. Reads the
    encoder's tensors once (~1 s per GB)."""
    prefixes = _ENCODER_PREFIXES[component]
    digest = hashlib.sha256()
    for name in sorted(n for n in info.tensor_names.get(component, ()) if n.startswith(prefixes)):
        entry = info.header.tensors[name]
        digest.update(f"{name}:{entry.dtype}:{entry.shape}".encode())
        with (entry.file or info.header.path).open("rb") as f:
            f.seek(entry.start)
            remaining = entry.nbytes
            while remaining:
                chunk = f.read(min(remaining, 2**24))
                if not chunk:
                    raise CheckpointError(f"{info.path}: file is truncated inside tensor {name}; download it again")
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()[:16]


@dataclass
class ModelFiles:
    """The transformer's file and, found on first use, the VAE and text encoder files that go with it."""

    transformer: CheckpointInfo
    video_vae_path: Path | None = None
    audio_vae_path: Path | None = None
    text_encoder_path: Path | None = None
    _opened: dict[str, CheckpointInfo] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        return self.transformer.version

    @property
    def pack_root(self) -> Path:
        """The folder that holds diffusion_models/, vae/ and text_encoders/ when the file is in a pack."""
        return self.transformer.path.parent.parent

    def video_vae(self) -> CheckpointInfo:
        """The file with the video VAE: --video_vae, the unified checkpoint, or the pack's vae/*video-vae*."""
        return self._component_file("video_vae", self.video_vae_path, VIDEO_VAE_FLAG, "video-vae")

    def audio_vae(self) -> CheckpointInfo:
        """The file with the audio VAE and the vocoder: --audio_vae, the unified checkpoint, or vae/*audio-vae*."""
        return self._component_file("audio_vae", self.audio_vae_path, AUDIO_VAE_FLAG, "audio-vae")

    def text_encoder(self, required: bool = True) -> Path | None:
        """The Gemma directory or packed text-encoder file: --text_encoder / --gemma_root, or the pack's own.
        When there is none: CheckpointError naming the flag, or None if not `required`."""
        if self.text_encoder_path is not None:
            return self.text_encoder_path
        if self.transformer.kind == "transformer":
            found = self._find("text_encoders", ("gemma",), prefer="with-proj")
            if found is not None:
                return found
        if not required:
            return None
        raise CheckpointError(
            f"{self.transformer.path}: no text encoder given; pass {TEXT_ENCODER_FLAG} with "
            f"{_text_encoder_hint(self.version)}"
        )

    def connectors(self) -> CheckpointInfo:
        """The connectors and the text projections as one CheckpointInfo. A split pack keeps the projections in the
        packed text-encoder file (`text_embedding_projection.*`); they are read from there."""
        info = self.transformer
        names = info.tensor_names.get("text_connectors", ())
        if any(name.startswith(PROJECTION_PREFIX) for name in names) or info.kind == "unified":
            return info
        source = self.text_encoder()
        if source.is_dir():
            raise CheckpointError(
                f"{source}: is a Gemma directory, but the split transformer {info.path.name} keeps its text "
                f"projections in the pack's packed text encoder; pass {TEXT_ENCODER_FLAG} "
                f"text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors"
            )
        header = read_header(source)
        projections = [name for name in header.tensors if name.startswith(PROJECTION_PREFIX)]
        if not projections:
            raise CheckpointError(
                f"{source}: has no text projections ({PROJECTION_PREFIX}*), which the split transformer "
                f"{info.path.name} needs; pass the pack's gemma4-...-with-proj-... file with {TEXT_ENCODER_FLAG}"
            )
        return dataclasses.replace(
            info,
            header=merge_headers(info.header, header, projections),
            tensor_names={**info.tensor_names, "text_connectors": (*names, *projections)},
        )

    def _component_file(self, component: str, given: Path | None, flag: str, name_part: str) -> CheckpointInfo:
        if component in self._opened:
            return self._opened[component]
        if given is None and component in self.transformer.components:
            return self.transformer
        path = given
        if path is None and self.transformer.kind == "transformer":
            path = self._find("vae", (name_part, name_part.replace("-", "_")), avoid="conv")
        if path is None:
            what = component.replace("_", " ")
            raise CheckpointError(
                f"{self.transformer.path}: has no {what} and none was found beside it (vae/*{name_part}*."
                f"safetensors in {self.pack_root}); pass the {what} file with {flag}"
            )
        info = read_checkpoint_info(path)
        if component not in info.components:
            raise CheckpointError(
                f"{path}: holds {', '.join(info.components) or 'no LTX weights'}, not the "
                f"{component.replace('_', ' ')}; pass the pack's vae/*{name_part}*.safetensors with {flag}"
            )
        if info.version == "unknown":
            info = dataclasses.replace(info, version=self.version)
        elif latent_space(info.version) != latent_space(self.version):
            raise CheckpointError(
                f"{path}: is an LTX-{info.version} {component.replace('_', ' ')}, but {self.transformer.path.name} "
                f"is LTX-{self.version} and their latents differ; pass the LTX-{self.version} file with {flag}"
            )
        self._opened[component] = info
        return info

    def _find(self, folder: str, name_parts: tuple[str, ...], avoid: str = "", prefer: str = "") -> Path | None:
        """The .safetensors file in <pack>/<folder> whose name has one of `name_parts`; of several, the ones naming
        this version, then those without `avoid` (the conv decoder is the alternative, the diffusion one the
        default), then those with `prefer`. None when there is none; CheckpointError when still ambiguous."""
        directory = self.pack_root / folder
        if not directory.is_dir():
            return None
        candidates = sorted(
            path for path in directory.glob("*.safetensors") if any(part in path.name.lower() for part in name_parts)
        )
        for keep in (
            lambda name: f"ltx-{self.version}" in name,
            lambda name: not avoid or avoid not in name,
            lambda name: not prefer or prefer in name,
        ):
            narrowed = [path for path in candidates if keep(path.name.lower())]
            if len(candidates) > 1 and narrowed:
                candidates = narrowed
        if len(candidates) > 1:
            names = ", ".join(path.name for path in candidates)
            raise CheckpointError(f"{directory}: several candidate files ({names}); pass the one to use")
        return candidates[0] if candidates else None


def check_gemma_pair(transformer: CheckpointInfo, gemma) -> None:
    """The text encoder is the one the transformer was trained with, as ltx-core checks it: a transformer that
    names its Gemma (`gemma_source_checkpoint`, LTX 2.5) needs a Gemma config with the same `gemma_version`;
    one that does not needs Gemma 3. `gemma` is a text_encoder.GemmaInfo."""
    expected = (transformer.gemma_source or {}).get("gemma_version")
    actual = getattr(gemma, "gemma_version", None)
    family = getattr(gemma, "family", "gemma3")
    found = f"Gemma 4 ({actual or 'no gemma_version'})" if family == "gemma4" else "Gemma 3"
    hint = _text_encoder_hint(transformer.version)
    if expected is not None and actual != expected:
        raise CheckpointError(
            f"{gemma.root}: is {found}, but {transformer.path.name} (LTX-{transformer.version}) was trained with "
            f"the text encoder {expected!r}; pass {hint} with {TEXT_ENCODER_FLAG}"
        )
    if expected is None and transformer.version == "2.5":
        raise CheckpointError(
            f"{transformer.path}: is LTX 2.5 (model_version {transformer.model_version}) but does not name its Gemma "
            "(metadata `gemma_source_checkpoint`); the file is damaged or re-saved without metadata, download it again"
        )
    if expected is None and family != "gemma3":
        raise CheckpointError(
            f"{gemma.root}: is {found}, but {transformer.path.name} (LTX-{transformer.version}) was trained with "
            f"Gemma 3; pass {hint}"
        )


_TEXT_ENCODER_HINT = {
    "2.0": "the Gemma 3 directory (gemma-3-12b-it)",
    "2.3": "the Gemma 3 directory (gemma-3-12b-it)",
    "2.5": "the LTX Gemma 4 (text_encoders/gemma4-12b-with-proj-ltx-2.5-bf16.safetensors or a gemma4-12b-ltx-v1 "
    "directory)",
}


def _text_encoder_hint(version: str) -> str:
    return _TEXT_ENCODER_HINT.get(version, _TEXT_ENCODER_HINT["2.3"])


def model_files(
    checkpoint: str | os.PathLike | CheckpointInfo,
    video_vae: str | os.PathLike | None = None,
    audio_vae: str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
) -> ModelFiles:
    """Open `checkpoint` (header only) and note the other files; they are found and read on first use."""
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else read_checkpoint_info(checkpoint)
    if info.kind not in ("unified", "transformer"):
        raise CheckpointError(
            f"{info.path}: is a split pack's {info.kind.replace('_', ' ')} file, not the transformer; pass the "
            "unified checkpoint or diffusion_models/*-transformer-*.safetensors as --ltx2_checkpoint"
        )

    def path(value):
        return None if value is None else Path(value)

    return ModelFiles(info, path(video_vae), path(audio_vae), path(text_encoder))
