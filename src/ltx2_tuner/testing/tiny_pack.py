"""A tiny random model as a split pack, in the folders and per-file formats Lightricks ships LTX 2.5 in.

    <root>/diffusion_models/ltx-2.5-tiny-dev-transformer.safetensors  model.diffusion_model.* (+ connectors);
                                                                       config {transformer, scheduler}
    <root>/text_encoders/gemma4-tiny-with-proj-ltx-2.5.safetensors     packed Gemma 4 + text_embedding_projection.*
    <root>/vae/ltx-2.5-tiny-video-vae.safetensors                      the same encoder, a diffusion decoder
    <root>/vae/ltx-2.5-tiny-video-vae-conv.safetensors                 bare encoder.*, decoder.*,
                                                                       per_channel_statistics.*; config {vae}
    <root>/vae/ltx-2.5-tiny-audio-vae.safetensors                      audio_vae.*, vocoder.*; config {audio_vae, vocoder}

Same weights as `write_tiny_checkpoint` with the same seed, so a pack and the unified file of one seed are the same
model (tests compare them). Facts: ../shared/reference/ltx-2.5-and-conditioning-modes.md A5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ltx2_tuner.models.model_files import PROJECTION_PREFIX
from ltx2_tuner.models.safetensors_io import save_atomically
from ltx2_tuner.testing.tiny_checkpoint import build_diffusers_modules, checkpoint_metadata, official_state_dict
from ltx2_tuner.testing.tiny_configs import official_config

_TRANSFORMER_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class TinyPack:
    root: Path
    transformer: Path
    text_encoder: Path | None
    video_vae: Path  # the conv-decoder file (`-conv-`)
    audio_vae: Path
    diffusion_vae: Path | None = None  # LTX 2.5's default video VAE file: the same encoder, a diffusion decoder


def pack_transformer_path(root: str | Path, version: str = "2.5") -> Path:
    """Where `write_tiny_pack(root, version)` puts the transformer (the file --ltx2_checkpoint takes)."""
    return Path(root) / "diffusion_models" / f"ltx-{version}-tiny-dev-transformer.safetensors"


def write_tiny_pack(
    root: str | Path, version: str = "2.5", seed: int = 0, text_encoder: bool = True, diffusion_vae: bool = True
) -> TinyPack:
    """Write the split files of a tiny `version` model under `root` and return their paths.

    text_encoder: write the packed Gemma 4 with the projections (LTX 2.5); without it (or for 2.0/2.3, whose text
    encoder is a Gemma 3 directory) the projections stay in the transformer file.
    diffusion_vae (LTX 2.5): also write the diffusion-decoder video VAE file, the one the pack's commands pick by
    default; its encoder and latent statistics are the conv file's, byte for byte, as in the released pair."""
    root = Path(root)
    config = official_config(version)
    tensors = official_state_dict(build_diffusers_modules(version, seed=seed))
    packed_gemma = text_encoder and version == "2.5"
    projections = {k: v for k, v in tensors.items() if k.startswith(PROJECTION_PREFIX)}
    stem = f"ltx-{version}-tiny"

    def write(folder: str, name: str, part: dict[str, torch.Tensor], sections: tuple[str, ...]) -> Path:
        metadata = checkpoint_metadata(version, {s: config[s] for s in sections})
        if "transformer" not in sections:
            metadata.pop("gemma_source_checkpoint", None)  # only the transformer names its Gemma
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(part, path, metadata)
        return path

    transformer = {
        k: v for k, v in tensors.items() if k.startswith(_TRANSFORMER_PREFIX) or (k in projections and not packed_gemma)
    }
    video_vae = {k.removeprefix("vae."): v for k, v in tensors.items() if k.startswith("vae.")}
    audio_vae = {k: v for k, v in tensors.items() if k.startswith(("audio_vae.", "vocoder."))}
    pack = TinyPack(
        root=root,
        transformer=write(
            "diffusion_models", pack_transformer_path(root, version).name, transformer, ("transformer", "scheduler")
        ),
        text_encoder=None,
        video_vae=write("vae", f"{stem}-video-vae-conv.safetensors", video_vae, ("vae",)),
        audio_vae=write("vae", f"{stem}-audio-vae.safetensors", audio_vae, ("audio_vae", "vocoder")),
    )
    if diffusion_vae and version == "2.5":
        from ltx2_tuner.testing.tiny_diffusion_vae import tiny_diffusion_vae

        shared = {k: v for k, v in tensors.items() if k.startswith(("vae.encoder.", "vae.per_channel_statistics."))}
        section, diffusion = tiny_diffusion_vae(seed=seed, encoder_tensors=shared)
        config = {**config, "vae": section}
        bare = {k.removeprefix("vae."): v for k, v in diffusion.items()}
        pack = dataclasses.replace(pack, diffusion_vae=write("vae", f"{stem}-video-vae.safetensors", bare, ("vae",)))
    if packed_gemma:
        from ltx2_tuner.testing.tiny_gemma import write_tiny_gemma4_packed

        path = root / "text_encoders" / f"gemma4-tiny-with-proj-ltx-{version}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tiny_gemma4_packed(path, projections, seed=seed)
        pack = dataclasses.replace(pack, text_encoder=path)
    return pack
