"""Show the state of every dataset's caches, and optionally decode a few cached latents back to media.

    python -m ltx2_tuner.cli.inspect_cache --dataset_config dataset.toml [--ltx2_checkpoint FILE] [--ltx_mode av]
        [--decode N --output_dir DIR]

A table per dataset (`[[datasets]]` and `[[validation_datasets]]`): media files, cached windows, buckets, frames,
audio coverage (AV and audio modes), text caches, the empty prompt's cache, partner caches, NaN/Inf files, and
every stale or missing cache with its reason and fix (cache.inspection: the trainer's own checks). With
`--ltx2_checkpoint` the caches are also checked against that model (latent space, connectors, text width).
`--decode N` decodes the first N usable cached windows with the checkpoint's VAEs into `--output_dir`: mp4 (with
sound when the window has audio), png for an image, wav for an audio-only item.

Exit code 0 when every cache is current, 1 when something is missing, stale or not finite, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

from ltx2_tuner.cli._common import add_dataset_flags, add_mode_flag, add_model_file_flags, resolve_device, run
from ltx2_tuner.errors import ConfigError
from ltx2_tuner.flags import AUDIO_VAE, VIDEO_VAE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ltx2_tuner.cli.inspect_cache", description=__doc__.split("\n")[0])
    add_dataset_flags(parser, checkpoint_required=False)
    add_model_file_flags(parser, VIDEO_VAE, AUDIO_VAE)
    add_mode_flag(parser, "checks the audio caches; audio checks only those (and the audio text embeddings)")
    parser.add_argument(
        "--decode", type=int, default=0, help="decode this many usable cached windows to --output_dir (default 0)"
    )
    parser.add_argument("--output_dir", type=Path, help="folder for the --decode files (created if missing)")
    parser.add_argument("--device", default=None, help="torch device for --decode (default: cuda if available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ltx2_tuner.cache.inspection import format_report, inspect_datasets
    from ltx2_tuner.data.config import load_all_datasets
    from ltx2_tuner.roles import roles_for

    args = build_parser().parse_args(argv)
    if args.decode < 0:
        raise ConfigError(f"--decode {args.decode}: must be >= 0")
    if args.decode and (args.output_dir is None or args.ltx2_checkpoint is None):
        raise ConfigError("--decode needs --output_dir (where to write) and --ltx2_checkpoint (the VAEs that decode)")
    roles = roles_for(args.ltx_mode)
    datasets = load_all_datasets(args.dataset_config)
    files, version, context_dim = _model(args)
    against = f"LTX-{version} ({args.ltx2_checkpoint.name})" if files else "no model (pass --ltx2_checkpoint)"
    print(
        f"{args.dataset_config}: mode {roles.name} ({', '.join(roles.present_modalities)}), checked against {against}"
    )
    reports = inspect_datasets(datasets, roles, args.dataset_config, version, context_dim)
    for report in reports:
        print(format_report(report))
    stale = [report for report in reports if not report.is_current]
    if stale:
        print(f"{len(stale)} of {len(reports)} dataset(s) have missing, stale or non-finite caches")
    else:
        print(f"all caches of {len(reports)} dataset(s) are current")
    if args.decode:
        items = [item for report in reports for item in report.items][: args.decode]
        for path in decode_items(items, files, resolve_device(args.device), args.output_dir):
            print(f"wrote {path}")
    return 1 if stale else 0


def _model(args):
    """(ModelFiles, version, video text width) of --ltx2_checkpoint, or (None, None, None) without one. Only
    headers are read."""
    if args.ltx2_checkpoint is None:
        return None, None, None
    from ltx2_tuner.models import context_dims
    from ltx2_tuner.models.checkpoint import CONFIG_SECTION
    from ltx2_tuner.models.configs import transformer_config
    from ltx2_tuner.models.model_files import model_files

    files = model_files(args.ltx2_checkpoint, args.video_vae, args.audio_vae)
    section = files.transformer.configs.get(CONFIG_SECTION["transformer"])
    width = context_dims(SimpleNamespace(**transformer_config(section)))[0] if section else None
    return files, files.version, width


def decode_items(items, files, device, output_dir: Path) -> list[Path]:
    """Decode each cached item with the VAEs of `files` (only those the items need are loaded) and write it to
    `output_dir` as `{dataset}_{key}`: mp4 with sound when it has audio, png for one frame, wav without video.
    Returns the paths written."""
    import torch

    from ltx2_tuner.cache.cached_latents import read_item_latents
    from ltx2_tuner.sampling.decode import Decoders
    from ltx2_tuner.sampling.media_writers import write_audio, write_media

    if not items:
        return []
    with_video = any(item.latent_path is not None for item in items)
    with_audio = any(item.audio_path is not None for item in items)
    decoders = Decoders.load(
        files.video_vae() if with_video else None,
        with_audio=with_audio,
        dtype=torch.float32,  # a look and a listen: precision over speed
        audio_info=files.audio_vae() if with_audio else None,
        with_video=with_video,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with decoders.on(device):
        for item in items:
            video, audio = read_item_latents(item)
            sound, rate = decoders.decode_audio(audio) if audio is not None else (None, None)
            table = "validation" if item.dataset.is_validation else "dataset"
            name = f"{table}{item.dataset.index}_{item.key}"  # not with_suffix: a key may hold dots
            if video is None:
                written.append(write_audio(output_dir / f"{name}.wav", sound, rate))
            else:
                frames = decoders.decode_video(video)
                written.append(write_media(output_dir / f"{name}.mp4", frames, item.fps, sound, rate))
    return written


def console_main() -> int:
    """The `ltx2-inspect-cache` console script: bad input is one line and exit code 2, as with `python -m`."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console_main())
