"""Cache VAE latents of a dataset (and audio latents in AV and audio modes): `ltx2_cache_latents.py`.

    python ltx2_cache_latents.py --dataset_config dataset.toml --ltx2_checkpoint ltx-2.3-22b-dev.safetensors \\
        [--ltx_mode av|audio] [--skip_existing]

`--ltx_mode audio` caches only audio latents (audio datasets, and the soundtracks of video datasets' windows) and
never opens the video VAE. Datasets with references or masks (`reference_directory`, `mask_directory`, ...) also get
their `_ltx2_ref`, `_ltx2_mask`, `_ltx2_ref_audio` and `_ltx2_audio_mask` files (docs/dataset-config.md).
Validation datasets (`[[validation_datasets]]`) are cached like training datasets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.latent_plan import AudioSource, LatentPlan, plan_latent_jobs, unusable_cache_files
from ltx2_tuner.cache.store import remove_interrupted_writes
from ltx2_tuner.cli._common import (
    add_dataset_flags,
    add_device_flags,
    add_mode_flag,
    add_model_file_flags,
    resolve_device,
    run,
)
from ltx2_tuner.dtypes import STORAGE_DTYPES
from ltx2_tuner.errors import ConfigError, MediaError
from ltx2_tuner.flags import AUDIO_VAE, VIDEO_VAE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltx2_cache_latents.py", description=__doc__.split("\n")[0])
    add_dataset_flags(parser, checkpoint_required=False)
    add_model_file_flags(parser, VIDEO_VAE, AUDIO_VAE)
    parser.add_argument("--vae", type=Path, help="same as --video_vae (musubi's name)")
    parser.add_argument(
        "--vae_dtype", choices=tuple(STORAGE_DTYPES), default="bf16", help="video VAE precision (default bf16)"
    )
    add_mode_flag(parser, "caches audio latents; audio caches only audio latents and loads no video VAE")
    parser.add_argument("--batch_size", type=int, default=1, help="clips per VAE call, same bucket only (default 1)")
    parser.add_argument("--num_workers", type=int, default=2, help="media decoding threads (default 2)")
    add_device_flags(parser)
    parser.add_argument(
        "--prune_cache",
        action="store_true",
        help="delete latent, audio, reference and mask caches in the cache folders that no item of these datasets "
        "can use (in any mode: a video-mode run keeps the audio caches of its windows, an audio-mode run their video "
        "latents)",
    )
    parser.add_argument(
        "--missing_audio",
        choices=("error", "skip"),
        default="error",
        help="AV and audio modes, a video without audio: error (default: list them and stop) or skip (list them; "
        "training leaves them out)",
    )
    parser.add_argument(
        "--ltx2_audio_source",
        choices=("video", "audio_files"),
        default="video",
        help="the audio of videos: from the video file (default) or from sidecar files (audio datasets read "
        "their own files)",
    )
    parser.add_argument("--ltx2_audio_dir", type=Path, help="folder of the audio sidecar files (default: the video's)")
    parser.add_argument("--ltx2_audio_ext", default=".wav", help="extension of the audio sidecar files (default .wav)")
    parser.add_argument(
        "--vae_tile_size", type=int, default=0, help="encode in spatial tiles of this many pixels (0: off; e.g. 512)"
    )
    parser.add_argument(
        "--vae_tile_frames", type=int, default=0, help="encode long clips in chunks of this many frames (0: off)"
    )
    return parser


def _checkpoint_stamp(info, component: str, dtype: torch.dtype) -> dict:
    # The encoder's bytes, not the file: a cache made with LTX-2.3's VAE serves LTX 2.5, whose encoder is the same.
    from ltx2_tuner.models.model_files import encoder_fingerprint, latent_space

    return {
        "file": encoder_fingerprint(info, component),
        "version": latent_space(info.version),
        "dtype": naming.dtype_name(dtype),
    }


def _vae_files(args):
    """(video VAE file or None, audio VAE file or None) as CheckpointInfos, each only when the mode encodes that
    modality (audio mode never opens the video VAE): from --ltx2_checkpoint and its pack, or from --video_vae /
    --audio_vae alone."""
    from ltx2_tuner.models import read_checkpoint_info
    from ltx2_tuner.models.model_files import model_files

    with_video, with_audio = args.ltx_mode != "audio", args.ltx_mode != "video"
    video_vae = args.video_vae or args.vae
    if args.ltx2_checkpoint is not None:
        files = model_files(args.ltx2_checkpoint, video_vae, args.audio_vae)
        return files.video_vae() if with_video else None, files.audio_vae() if with_audio else None
    if not with_video:
        if (args.audio_vae or video_vae) is None:
            raise ConfigError(
                "no checkpoint: pass --ltx2_checkpoint (or --audio_vae) with the official .safetensors file"
            )
        audio_info = read_checkpoint_info(args.audio_vae or video_vae)
        audio_info.require("audio_vae")
        return None, audio_info
    if video_vae is None:
        raise ConfigError("no checkpoint: pass --ltx2_checkpoint (or --video_vae) with the official .safetensors file")
    video_info = read_checkpoint_info(video_vae)
    video_info.require("video_vae")
    if not with_audio:
        return video_info, None
    audio_info = read_checkpoint_info(args.audio_vae or video_vae)
    audio_info.require("audio_vae")
    return video_info, audio_info


def _report_plan_problems(plan: LatentPlan, args) -> None:
    from ltx2_tuner.data.items import raise_partner_problems

    raise_partner_problems(plan.partner_problems)
    for line in plan.unreadable:
        print(f"warning: skipped unreadable media: {line}", file=sys.stderr)
    for line in plan.too_short:
        print(f"warning: skipped, shorter than every target_frames: {line}", file=sys.stderr)
    if plan.missing_audio:
        for path in plan.missing_audio:
            print(f"no audio track: {path}", file=sys.stderr)
        if args.missing_audio == "error":
            raise MediaError(
                f"{len(plan.missing_audio)} video(s) listed above have no audio ({args.ltx2_audio_source}) for "
                f"--ltx_mode {args.ltx_mode}; add audio, use --ltx2_audio_source audio_files, or pass --missing_audio skip to "
                "train them without audio"
            )


def main(argv: list[str] | None = None) -> int:
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling, cache_latents
    from ltx2_tuner.data.config import check_dataset_kinds, load_all_datasets
    from ltx2_tuner.data.items import caption_problems, raise_caption_problems

    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0:
        raise ConfigError("--batch_size must be >= 1 and --num_workers >= 0")
    tiling = VaeTiling(args.vae_tile_size, args.vae_tile_frames)  # checks the values before any work
    datasets = load_all_datasets(args.dataset_config)  # training and validation datasets
    check_dataset_kinds(datasets, args.ltx_mode)
    # A media file without a readable caption would fail text caching later: say so now, as that command does
    # (whether an empty caption is allowed is the text cacher's --allow_empty_captions).
    raise_caption_problems(caption_problems(datasets, allow_empty=True))
    vae_dtype = STORAGE_DTYPES[args.vae_dtype]
    video_info, audio_info = _vae_files(args)

    audio_source = AudioSource(args.ltx2_audio_source, args.ltx2_audio_dir, args.ltx2_audio_ext)
    plan = plan_latent_jobs(
        datasets,
        args.ltx_mode,
        _checkpoint_stamp(video_info, "video_vae", vae_dtype) if video_info else None,
        _checkpoint_stamp(audio_info, "audio_vae", torch.float32) if audio_info else None,
        audio_source,
    )
    _report_plan_problems(plan, args)
    for dataset in datasets:
        suffixes = (naming.LATENT_SUFFIX, naming.AUDIO_SUFFIX, *naming.PARTNER_SUFFIXES.values())
        remove_interrupted_writes(dataset.cache_directory, suffixes)

    device = resolve_device(args.device)
    info = video_info or audio_info
    print(f"caching {len(plan.jobs)} item(s) with {info.path.name} (LTX-{info.version}) on {device}", flush=True)
    encoder = LatentEncoder(video_info, audio_info, device, vae_dtype, tiling)
    summary = cache_latents(plan.jobs, encoder, args.skip_existing, args.batch_size, args.num_workers, args.ltx_mode)

    stale = unusable_cache_files(plan, datasets)
    if args.prune_cache:
        for path in stale:
            path.unlink(missing_ok=True)
    print(
        f"done: {summary.cached} cached, {summary.reused} reused, {len(summary.failed)} failed, "
        f"{len(plan.unreadable) + len(plan.too_short)} skipped"
        + (f", {summary.audio_absent} without audio" if summary.audio_absent else "")
    )
    for reason in summary.failed:
        print(f"  failed: {reason}", file=sys.stderr)
    if stale:
        action = "deleted" if args.prune_cache else "left in the cache folders; --prune_cache deletes them"
        print(f"{len(stale)} stale cache file(s) {action}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(run(main))
