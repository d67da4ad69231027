"""Encode planned jobs with the video VAE (images, video windows) and the audio VAE (AV and audio modes) and write
the cache files.

Media decoding runs ahead in worker threads (PyAV and the resizer release the GIL) while the main thread encodes.
Each file is written atomically. With `skip_existing` each file whose fingerprint matches the plan is reused on its
own: an AV run after an audio-mode run makes only the video latents of each window. A job's partner files
(references, masks: cache.partner_jobs) are decoded with it and written after its own files.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import torch
from tqdm import tqdm

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.latent_plan import LatentJob
from ltx2_tuner.cache.partner_jobs import PartnerFile, decode_partner, write_partner
from ltx2_tuner.cache.store import differences, read_fingerprint, write_cache
from ltx2_tuner.errors import ConfigError, Ltx2TunerError
from ltx2_tuner.models.latent_layout import (
    AUDIO_HOP_LENGTH,
    AUDIO_LATENT_DOWNSAMPLE,
    patchify_audio,
    unpatchify_audio,
)


@dataclass(frozen=True)
class VaeTiling:
    """Memory options of the video VAE encoder (diffusers' tiled encode; results differ slightly at seams)."""

    spatial_tile_px: int = 0  # 0: off; else tiles of this many pixels (a multiple of 32, >= 64), overlapping by 1/8
    temporal_tile_frames: int = 0  # 0: off; else chunks of this many frames (a multiple of 8, >= 16), half overlap

    def __post_init__(self) -> None:
        if self.spatial_tile_px and (self.spatial_tile_px % 32 or self.spatial_tile_px < 64):
            raise ConfigError(f"--vae_tile_size {self.spatial_tile_px}: use a multiple of 32 of at least 64 (e.g. 512)")
        if self.temporal_tile_frames and (self.temporal_tile_frames % 8 or self.temporal_tile_frames < 16):
            raise ConfigError(f"--vae_tile_frames {self.temporal_tile_frames}: use a multiple of 8 of at least 16")


@dataclass
class CacheSummary:
    cached: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    audio_absent: int = 0


def vae_compute_dtype(device: torch.device, requested: torch.dtype) -> torch.dtype:
    """The dtype the video VAE runs in: the requested one, except float32 on a CPU. PyTorch's CPU Conv3d in bf16 is
    ~200x slower than in fp32 (the tiny VAE: 230 s instead of 1 s for 9 frames at 192x192); fp32 there costs
    nothing in quality, and the latents are still stored in the requested dtype."""
    return torch.float32 if device.type == "cpu" else requested


class LatentEncoder:
    """The VAE encoders of one caching run; a checkpoint of None loads no such VAE (audio mode loads no video VAE).
    Video in `vae_dtype` (computed in fp32 on a CPU, see `vae_compute_dtype`); audio always in float32 (as the
    reference)."""

    def __init__(
        self, video_checkpoint, audio_checkpoint, device: torch.device, vae_dtype: torch.dtype, tiling: VaeTiling
    ):
        from ltx2_tuner.models import load_audio_vae

        self.device, self.vae_dtype = device, vae_dtype
        self.compute_dtype = vae_compute_dtype(device, vae_dtype)
        self.video_vae = None
        if video_checkpoint is not None:
            self._load_video_vae(video_checkpoint, tiling)
        self.audio_vae = None
        if audio_checkpoint is not None:
            self.audio_vae = load_audio_vae(audio_checkpoint, part="encoder", dtype=torch.float32, device=device)

    def _load_video_vae(self, video_checkpoint, tiling: VaeTiling) -> None:
        from ltx2_tuner.models import load_video_vae

        vae_dtype, device = self.vae_dtype, self.device
        if self.compute_dtype != vae_dtype:
            print(
                f"note: the video VAE runs in float32 on the CPU ({naming.dtype_name(vae_dtype)} convolutions are "
                f"~200x slower there); latents are stored in {naming.dtype_name(vae_dtype)}",
                flush=True,
            )
        self.video_vae = load_video_vae(video_checkpoint, part="encoder", dtype=self.compute_dtype, device=device)
        if tiling.spatial_tile_px:
            # Tiles start every `stride` pixels; both must be multiples of 32 so that every tile, the edge ones
            # included, is a whole number of latents. Overlap 1/8 of a tile (64 px for 512-px tiles, as diffusers).
            size = tiling.spatial_tile_px
            stride = size - max(32, size // 8 // 32 * 32)
            self.video_vae.enable_tiling(size, size, tile_sample_stride_height=stride, tile_sample_stride_width=stride)
        if tiling.temporal_tile_frames:
            # diffusers reads the temporal-tiling switch from `use_framewise_decoding`, for encoding too.
            self.video_vae.use_framewise_decoding = True
            self.video_vae.tile_sample_min_num_frames = tiling.temporal_tile_frames
            self.video_vae.tile_sample_stride_num_frames = tiling.temporal_tile_frames // 2 // 8 * 8 or 8

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> normalized latent means [B, 128, 1 + (F-1)/8, H/32, W/32]."""
        vae = self.video_vae
        means = vae.encode(frames.to(self.device, self.compute_dtype)).latent_dist.mode()
        shape = (1, -1, 1, 1, 1)
        mean, std = vae.latents_mean.view(shape), vae.latents_std.view(shape)
        return ((means - mean) * vae.config.scaling_factor / std).to(self.vae_dtype)

    @torch.no_grad()
    def encode_audio(self, log_mel: torch.Tensor) -> torch.Tensor:
        """[2, T_mel, 64] log-mel -> normalized latents [8, T, 16] (float32)."""
        vae = self.audio_vae
        means = vae.encode(log_mel[None].to(self.device, torch.float32)).latent_dist.mode()
        tokens = (patchify_audio(means) - vae.latents_mean) / vae.latents_std  # statistics are per packed channel
        return unpatchify_audio(tokens, means.shape[1], means.shape[3])[0]


@dataclass(frozen=True)
class _Task:
    """A job and which of its files this run writes (the others are current and reused)."""

    job: LatentJob
    video: bool  # write job.latent_path
    audio: bool  # write job.audio_path
    partners: tuple[PartnerFile, ...] = ()  # partner files to write


@dataclass
class _Decoded:
    task: _Task
    frames: torch.Tensor | None = None  # [3, F, H, W]
    log_mel: torch.Tensor | None = None  # [2, T_mel, 64]; None when the source has no audio
    audio_valid_samples: int = 0
    partners: list = field(default_factory=list)  # (PartnerFile, its decoded input)
    error: str | None = None


def _decode(task: _Task, sample_rate: int) -> _Decoded:
    from ltx2_tuner.data.audio import load_audio_clip
    from ltx2_tuner.data.images import load_image
    from ltx2_tuner.data.mel import log_mel_spectrogram
    from ltx2_tuner.data.transforms import frames_to_model_input
    from ltx2_tuner.data.video import read_video_frames

    job = task.job
    decoded = _Decoded(task)
    try:
        if task.video:
            if job.item.dataset.kind == "image":
                pixels = load_image(job.item.path, size=job.bucket)[None]
            else:
                pixels = read_video_frames(job.item.path, job.window.times_s(), size=job.bucket)
            decoded.frames = frames_to_model_input(pixels)
        if task.audio and job.audio_source is not None:
            start_s, duration_s = job.audio_window_s
            # Audio items are padded up to their duration bucket by design: no warning for that.
            warn = job.item.dataset.kind != "audio"
            clip = load_audio_clip(job.audio_source, start_s, duration_s, sample_rate, warn_padding=warn)
            decoded.log_mel = log_mel_spectrogram(clip.waveform, sample_rate)
            decoded.audio_valid_samples = clip.valid_samples
        decoded.partners = [(partner, decode_partner(partner, sample_rate)) for partner in task.partners]
        return decoded
    except Ltx2TunerError as error:
        return _Decoded(task, error=str(error))


def valid_audio_latents(valid_samples: int) -> int:
    """Audio latents that cover real (not zero-padded) samples; latent 0 covers the first mel frame alone."""
    if valid_samples <= 0:
        return 0
    mel_frames = valid_samples // AUDIO_HOP_LENGTH + 1
    return (mel_frames - 1) // AUDIO_LATENT_DOWNSAMPLE + 1


def _current(path: Path | None, fingerprint: dict | None) -> bool:
    """No file to write, or it exists with the fingerprint this run would write."""
    return path is None or not differences(read_fingerprint(path), fingerprint)


def is_current(job: LatentJob) -> bool:
    """Whether every file of `job` exists with the fingerprint this run would write."""
    files = [(job.latent_path, job.fingerprint), (job.audio_path, job.audio_fingerprint)]
    return all(
        _current(path, fingerprint) for path, fingerprint in files + [(p.path, p.fingerprint) for p in job.partners]
    )


def _tasks(jobs: list[LatentJob], skip_existing: bool) -> list[_Task]:
    """The jobs with something to write: every file, or with `skip_existing` the files that are not current."""
    tasks = []
    for job in jobs:
        video = job.latent_path is not None and not (skip_existing and _current(job.latent_path, job.fingerprint))
        audio = job.audio_path is not None and not (skip_existing and _current(job.audio_path, job.audio_fingerprint))
        partners = tuple(p for p in job.partners if not (skip_existing and _current(p.path, p.fingerprint)))
        if video or audio or partners:
            tasks.append(_Task(job, video, audio, partners))
    return tasks


def _batches(tasks: list[_Task], batch_size: int) -> Iterator[list[_Task]]:
    """Consecutive tasks of equal frame tensor shape, at most `batch_size` each (the VAE takes one shape); tasks
    without frames (audio only) batch among themselves."""

    def shape(task: _Task):
        return (1, task.job.bucket, task.job.window.num_frames) if task.video else (0,)

    for _, group in groupby(sorted(tasks, key=shape), key=shape):
        group = list(group)
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def cache_latents(
    jobs: list[LatentJob],
    encoder: LatentEncoder,
    skip_existing: bool,
    batch_size: int = 1,
    num_workers: int = 2,
    mode: str = "video",
) -> CacheSummary:
    """Encode and write every job (reusing current files with `skip_existing`); return what happened."""
    summary = CacheSummary()
    pending = _tasks(jobs, skip_existing)
    summary.reused = len(jobs) - len(pending)
    if any(task.audio for task in pending) and encoder.audio_vae is None:
        raise ValueError("jobs with audio sidecars need an encoder with the audio VAE")
    if any(task.video for task in pending) and encoder.video_vae is None:
        raise ValueError("jobs with video latents need an encoder with the video VAE")
    kinds = {partner.kind for task in pending for partner in task.partners}
    if ("reference" in kinds and encoder.video_vae is None) or (
        "reference_audio" in kinds and encoder.audio_vae is None
    ):
        raise ValueError("jobs with reference latents need an encoder with that modality's VAE")
    sample_rate = encoder.audio_vae.config.sample_rate if encoder.audio_vae is not None else 0
    with (
        ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool,
        tqdm(total=len(pending), unit="item", desc="caching latents", dynamic_ncols=True) as progress,
    ):
        decode_batch = lambda batch: [_decode(task, sample_rate) for task in batch]  # noqa: E731
        for decoded in pool.map(decode_batch, _batches(pending, batch_size)):
            good = [d for d in decoded if d.error is None]
            summary.failed.extend(d.error for d in decoded if d.error is not None)
            with_frames = [d for d in good if d.frames is not None]
            latents = encoder.encode_video(torch.stack([d.frames for d in with_frames])) if with_frames else []
            latents_of = {id(d): item_latents.cpu() for d, item_latents in zip(with_frames, latents, strict=True)}
            for item in good:
                _write(item, latents_of.get(id(item)), encoder, mode, summary)
            progress.update(len(decoded))
    return summary


def _write(
    decoded: _Decoded, latents: torch.Tensor | None, encoder: LatentEncoder, mode: str, summary: CacheSummary
) -> None:
    job = decoded.task.job
    with_sound = decoded.task.audio and decoded.log_mel is not None
    audio = encoder.encode_audio(decoded.log_mel).cpu() if with_sound else None
    # A VAE that overflows (e.g. fp16) gives NaN latents; a cache holding them would only show up as a NaN loss.
    fixes = {"video": "rerun with --vae_dtype fp32 (or bf16)", "audio": "check this file's audio for NaN samples"}
    for name, tensor in (("video", latents), ("audio", audio)):
        if tensor is not None and not torch.isfinite(tensor.float()).all():
            problem = f"the {name} VAE gave NaN or Inf latents, nothing was written"
            summary.failed.append(f"{job.item.path} ({job.key}): {problem}; {fixes[name]}")
            return
    if decoded.task.video:
        write_cache(job.latent_path, {naming.latents_key(latents): latents}, job.fingerprint, mode=mode)
    if decoded.task.audio:
        if audio is None:  # the source has no audio: the sidecar records it, so training can drop it
            audio = torch.zeros(8, 0, 16)
            length = 0
            summary.audio_absent += 1
        else:
            length = min(audio.shape[1], valid_audio_latents(decoded.audio_valid_samples))
        tensors = {
            naming.audio_latents_key(audio): audio,
            "audio_lengths_int32": torch.tensor([length], dtype=torch.int32),
        }
        write_cache(job.audio_path, tensors, job.audio_fingerprint, mode=mode)
    for partner, partner_input in decoded.partners:
        try:
            write_partner(partner, partner_input, encoder, job.audio_path, mode)
        except Ltx2TunerError as error:  # e.g. an audio mask whose item has no audio cache to fit it to
            summary.failed.append(str(error))
    summary.cached += 1
