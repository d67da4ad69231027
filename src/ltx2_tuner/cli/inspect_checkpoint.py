"""Describe an official LTX-2 checkpoint and, optionally, load its components and run each once.

python -m ltx2_tuner.cli.inspect_checkpoint ltx-2-19b-dev.safetensors [--check]

Any file of an LTX 2.5 split pack is named by its role: the transformer (diffusion_models/), the video VAE and the
audio VAE + vocoder (vae/), and the packed Gemma 4 text encoder with the LTX text projections (text_encoders/).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ltx2_tuner.cli._common import run
from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import COMPONENTS, CheckpointInfo, context_dims, load_component, read_checkpoint_info
from ltx2_tuner.models.gemma_packed import ASSET_TENSOR_PREFIX, GEMMA_CONFIG_KEY, TOKENIZER_TENSOR, language_model_name
from ltx2_tuner.models.safetensors_io import read_header


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ltx2_tuner.cli.inspect_checkpoint", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="official .safetensors file: a unified checkpoint (LTX-2, 2.3, 2.5) or a split pack's file",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="load every component (fp32, CPU) and run it once on random inputs; meant for small checkpoints",
    )
    return parser


_KINDS = {
    "unified": "unified checkpoint",
    "transformer": "split pack: transformer",
    "video_vae": "split pack: video VAE",
    "audio_vae": "split pack: audio VAE + vocoder",
}


def describe(info: CheckpointInfo) -> str:
    head = (
        f"{info.path}: LTX-{info.version} (model_version {info.model_version or 'not recorded'}), {_KINDS[info.kind]}"
    )
    if info.gemma_source is not None:
        head += f"; text encoder {info.gemma_source.get('gemma_version')!r}"
    lines = [head]
    for component in COMPONENTS:
        if component in info.components:
            size_mb = info.component_bytes(component) / 2**20
            lines.append(f"  {component:<16} {len(info.tensor_names[component]):>6} tensors {size_mb:>10.1f} MiB")
        else:
            lines.append(f"  {component:<16} absent")
    return "\n".join(lines)


@torch.no_grad()
def check_component(info: CheckpointInfo, component: str) -> str:
    """Load one component and run it once on random inputs; return a line with the shapes it produced."""
    module = load_component(info, component, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    if component == "video_vae":
        frames = torch.rand(1, 3, 9, 64, 64, generator=generator) * 2 - 1  # [B, C, F, H, W] in [-1, 1]
        latents = module.encode(frames).latent_dist.mode()
        decoded = module.decode(latents).sample
        return f"frames {list(frames.shape)} -> latents {list(latents.shape)} -> frames {list(decoded.shape)}"
    if component == "audio_vae":
        mel = torch.randn(1, 2, 101, 64, generator=generator)  # [B, stereo, mel frames, mel bins]: ~1 s
        latents = module.encode(mel).latent_dist.mode()
        return f"log-mel {list(mel.shape)} -> latents {list(latents.shape)} -> mel {list(module.decode(latents).sample.shape)}"
    if component == "vocoder":
        mel = torch.randn(1, 2, 25, 64, generator=generator)
        return f"mel {list(mel.shape)} -> waveform {list(module(mel).shape)} at {module.config.output_sampling_rate} Hz"
    if component == "text_connectors":
        features = module.config.caption_channels * module.config.text_proj_in_factor
        hidden = torch.randn(1, 256, features, generator=generator)
        mask = torch.ones(1, 256, dtype=torch.long)
        mask[:, :200] = 0  # left padding
        video, audio, _ = module(hidden, mask)
        return f"Gemma features {list(hidden.shape)} -> video context {list(video.shape)}, audio {list(audio.shape)}"
    # transformer: 2 latent frames of 2x2 at 24 fps, 1 s of audio latents
    config = module.config
    context_dim, audio_context_dim = context_dims(config)
    video_v, audio_v = module(
        hidden_states=torch.randn(1, 8, config.in_channels, generator=generator),
        audio_hidden_states=torch.randn(1, 25, config.audio_in_channels, generator=generator),
        encoder_hidden_states=torch.randn(1, 16, context_dim, generator=generator),
        audio_encoder_hidden_states=torch.randn(1, 16, audio_context_dim, generator=generator),
        timestep=torch.tensor([500.0]),  # sigma 0.5, scaled by 1000 as diffusers expects
        sigma=torch.tensor([500.0]),
        num_frames=2,
        height=2,
        width=2,
        fps=24.0,
        audio_num_frames=25,
        return_dict=False,
    )
    return f"video tokens [1, 8, 128] -> velocity {list(video_v.shape)}; audio [1, 25, 128] -> {list(audio_v.shape)}"


def _has_projections(info: CheckpointInfo) -> bool:
    return any(name.startswith("text_embedding_projection.") for name in info.tensor_names["text_connectors"])


def describe_text_encoder(path: Path) -> str:
    """A split pack's packed text encoder: its Gemma, its LTX text projections and its tokenizer, by tensor group."""
    from ltx2_tuner.models.text_encoder import inspect_text_encoder

    gemma = inspect_text_encoder(path)  # checks the file; one line naming the problem otherwise
    header = read_header(path)
    groups: dict[str, list[int]] = {}
    for name, entry in header.tensors.items():
        if name.startswith("text_embedding_projection."):
            group = "text_projections"
        elif name == TOKENIZER_TENSOR or name.startswith(ASSET_TENSOR_PREFIX):
            group = "tokenizer_assets"
        elif language_model_name(name) is not None:
            group = "gemma_language"
        else:
            group = "vision_audio (unused)"  # Gemma 4's vision and audio towers: LTX reads text only
        groups.setdefault(group, []).append(entry.nbytes)
    lines = [
        f"{path}: split pack: text encoder, packed {gemma.family} {gemma.gemma_version or ''!s} ({gemma.num_layers} "
        f"layers, hidden size {gemma.hidden_size}) with the LTX text projections".replace("  ", " ")
    ]
    for group in ("gemma_language", "text_projections", "tokenizer_assets", "vision_audio (unused)"):
        sizes = groups.get(group)
        if sizes:
            lines.append(f"  {group:<16} {len(sizes):>6} tensors {sum(sizes) / 2**20:>10.1f} MiB")
        elif group != "vision_audio (unused)":
            lines.append(f"  {group:<16} absent")
    return "\n".join(lines)


def _is_packed_text_encoder(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return GEMMA_CONFIG_KEY in read_header(path).metadata
    except CheckpointError:  # read_checkpoint_info reports it, with the checkpoint's wording
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if _is_packed_text_encoder(args.checkpoint):  # a pack's text_encoders/ file
        print(describe_text_encoder(args.checkpoint))
        return 0
    info = read_checkpoint_info(args.checkpoint)
    print(describe(info))
    if args.check:
        for component in info.components:
            if component == "text_connectors" and not _has_projections(info):
                print(f"  check {component:<16} skipped: the text projections are in the pack's text encoder file")
                continue
            start = time.perf_counter()
            line = check_component(info, component)
            print(f"  check {component:<16} {line} ({time.perf_counter() - start:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
