"""The partner cache files of a latent job: a reference clip's latents (IC-LoRA), a reference audio's latents, and
inpainting masks on the target's latent grid (docs/dataset-config.md "References and masks").

| partner | file | written from | when |
|---|---|---|---|
| reference | `{key}_ltx2_ref.safetensors` | the reference at the window's frame times (every S-th), at bucket / N | video present |
| mask | `{key}_ltx2_mask.safetensors` | the mask video at the window's times, or an image on every frame | video present |
| reference_audio | `{key}_ltx2_ref_audio.safetensors` | the reference audio over the item's audio window | audio present |
| audio_mask | `{key}_ltx2_audio_mask.safetensors` | a tensor file or an audio envelope, resampled to T | audio present |

Audio datasets take the audio partners; video datasets take all four (the audio ones in AV and audio runs, over each
window's audio: AV2AV, reference ltx-2.5-and-conditioning-modes.md B2). A video dataset with references and no
reference audio of its own uses each reference clip's soundtrack, when the clip has one (data.items
.soundtrack_reference); a clip without one gets no reference audio file, and the trainer refuses an audio reference
condition on such items.

Reference scaling follows the official preprocessing (reference ltx-2.5-and-conditioning-modes.md B3): frames are
subsampled keeping frame 0 and every S-th after it, the count must stay 8k+1, and the size must stay a multiple
of 32 and divide the target's by one whole factor (the trainer infers (spatial, temporal) from the shapes).
Every problem is listed during planning, before any model loads. Each file's fingerprint holds what it is made
from (the partner file's stamp, the target's window and bucket, the factors, the VAE where one encodes it), so
`--skip_existing` re-makes exactly the files that changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.store import source_stamp, write_cache
from ltx2_tuner.data.config import BUCKET_STEP, IMAGE_EXTENSIONS
from ltx2_tuner.data.items import MediaItem, find_partner, reference_soundtrack, soundtrack_reference
from ltx2_tuner.data.masks import AUDIO_MASK_RULES, VIDEO_MASK_RULES
from ltx2_tuner.errors import CacheError, DatasetError, MediaError
from ltx2_tuner.models.safetensors_io import read_header

# A mask may differ from its target's aspect ratio by this share (odd sizes rounded to even by an encoder).
_ASPECT_TOLERANCE = 0.02
PICTURE_PARTNERS = ("reference", "mask")  # image and video datasets, video present
AUDIO_PARTNERS = ("reference_audio", "audio_mask")  # audio and video datasets, audio present
REFERENCE_FINGERPRINT_FIELDS = ("source", "checkpoint", "dataset", "target_bucket", "bucket", "window", "fps",
                                "factors")  # fmt: skip
MASK_FINGERPRINT_FIELDS = ("source", "dataset", "bucket", "window", "fps", "rules")
REFERENCE_AUDIO_FINGERPRINT_FIELDS = ("source", "dataset", "window", "audio_checkpoint", "audio_preprocessing")
AUDIO_MASK_FINGERPRINT_FIELDS = ("source", "dataset", "window", "audio_checkpoint", "rules")
FINGERPRINT_FIELDS = {"reference": REFERENCE_FINGERPRINT_FIELDS, "mask": MASK_FINGERPRINT_FIELDS,
                      "reference_audio": REFERENCE_AUDIO_FINGERPRINT_FIELDS,
                      "audio_mask": AUDIO_MASK_FINGERPRINT_FIELDS}  # fmt: skip


@dataclass(frozen=True)
class PartnerFile:
    """One partner cache file to write for a job."""

    kind: str  # reference, mask, reference_audio, audio_mask
    path: Path  # the cache file
    source: Path  # the partner media file
    fingerprint: dict = field(repr=False)
    size: tuple[int, int] | None = None  # (width, height) the reference / mask pixels are fitted to
    times_s: tuple[float, ...] = ()  # frame times read from the reference / mask video
    audio_window_s: tuple[float, float] | None = None  # (start, duration) of the reference audio


def picture_partner_kinds(kinds: tuple[str, ...], mode: str) -> tuple[str, ...]:
    return tuple(kind for kind in kinds if kind in PICTURE_PARTNERS) if mode != "audio" else ()


def audio_partner_kinds(kinds: tuple[str, ...], mode: str) -> tuple[str, ...]:
    return tuple(kind for kind in kinds if kind in AUDIO_PARTNERS) if mode != "video" else ()


def reference_size(item: MediaItem, bucket: tuple[int, int], own_size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) the reference of `item` is cached at: control_resolution, its own size floored to 32
    (no_resize_control), else the target bucket / reference_downscale_factor."""
    dataset = item.dataset
    if dataset.control_resolution is not None:
        return dataset.control_resolution
    if dataset.no_resize_control:
        return own_size[0] // BUCKET_STEP * BUCKET_STEP, own_size[1] // BUCKET_STEP * BUCKET_STEP
    factor = dataset.reference_downscale_factor
    return bucket[0] // factor, bucket[1] // factor


def _same_shape(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether (width, height) `a` and `b` have one aspect ratio: both are scaled to cover the bucket and
    centre-cropped, so only then does a mask cover the pixels of its target."""
    return abs(a[0] * b[1] - a[1] * b[0]) <= _ASPECT_TOLERANCE * max(a[0] * b[1], a[1] * b[0])


def spatial_factor(target: tuple[int, int], reference: tuple[int, int]) -> int | None:
    """target / reference when both sides divide by the same whole number, else None."""
    if min(reference) <= 0 or target[0] % reference[0] or target[1] % reference[1]:
        return None
    factor = target[0] // reference[0]
    return factor if target[1] // reference[1] == factor else None


class PartnerPlanner:
    """Plans the partner files of each job, collecting every problem (one line each) in `problems`."""

    def __init__(self, mode: str, video_checkpoint: dict | None, audio_checkpoint: dict | None):
        self.mode, self.video_checkpoint, self.audio_checkpoint = mode, video_checkpoint, audio_checkpoint
        self.problems: list[str] = []
        self._probed: dict[Path, tuple[tuple[int, int], float] | None] = {}
        self._soundtracks: dict[Path, Path | None] = {}

    def files_for(self, job, kinds: tuple[str, ...], digest: str) -> tuple[PartnerFile, ...]:
        """The partner files of a LatentJob, given its dataset's declared partner kinds."""
        soundtrack = soundtrack_reference(job.item.dataset, kinds) and job.audio_window_s is not None
        wanted = picture_partner_kinds(kinds, self.mode) if job.bucket is not None else ()
        wanted += audio_partner_kinds(kinds, self.mode) if job.audio_window_s is not None else ()
        files = []
        for kind in wanted + (("soundtrack",) if soundtrack else ()):
            try:
                if kind == "soundtrack":  # the reference clip's own audio, when it has some
                    source = self._soundtrack(job.item)
                    if source is not None:
                        files.append(self._reference_audio(job, source, digest))
                    continue
                source = find_partner(job.item, kind)
                files.append(getattr(self, f"_{kind}")(job, source, digest))
            except (DatasetError, MediaError) as error:
                message = str(error)
                if message not in self.problems:  # one line per item, not per window
                    self.problems.append(message)
        return tuple(files)

    def _soundtrack(self, item: MediaItem) -> Path | None:
        if item.path not in self._soundtracks:
            self._soundtracks[item.path] = reference_soundtrack(item)
        return self._soundtracks[item.path]

    @staticmethod
    def _audio_window(job) -> list:
        """The fingerprint "window" of an audio partner: the item's own audio cache's (frames of a video window,
        seconds of an audio item), so the trainer can match the two."""
        return [job.window.start, job.window.num_frames] if job.window is not None else list(job.audio_window_s)

    def _probe(self, source: Path) -> tuple[tuple[int, int], float]:
        """((width, height), duration in seconds; inf for an image) of a partner picture file."""
        if source not in self._probed:
            from ltx2_tuner.data.images import image_size
            from ltx2_tuner.data.video import probe_video

            if source.suffix.lower() in IMAGE_EXTENSIONS:
                self._probed[source] = (image_size(source), float("inf"))
            else:
                info = probe_video(source)
                self._probed[source] = ((info.width, info.height), info.duration_s)
        return self._probed[source]

    def _covers(self, job, source: Path, times: list[float], what: str) -> tuple[int, int]:
        size, duration_s = self._probe(source)
        if duration_s == float("inf") and len(times) > 1:
            raise DatasetError(f"{source}: an image {what} serves single-frame items only, {job.item.path.name} has "
                               f"{job.window.num_frames}-frame windows; use a video")  # fmt: skip
        if times[-1] >= duration_s:
            raise DatasetError(f"{source}: the {what} of {job.item.path.name} ends at {duration_s:.3f} s, its window "
                               f"{job.key} needs frames up to {times[-1]:.3f} s; make it as long as its clip")  # fmt: skip
        return size

    def _reference(self, job, source: Path, digest: str) -> PartnerFile:
        dataset, window = job.item.dataset, job.window
        step = dataset.reference_temporal_scale_factor
        if (window.num_frames - 1) % step or (window.num_frames - 1) // step % 8:
            raise DatasetError(
                f"{dataset.name}: reference_temporal_scale_factor {step} turns {window.num_frames}-frame windows "
                f"into {(window.num_frames - 1) / step + 1:g} reference frames, not 8k+1; use target_frames "
                f"with (frames - 1) / {step} a multiple of 8"
            )
        times = window.times_s()[::step]
        own_size = self._covers(job, source, times, "reference")
        size = reference_size(job.item, job.bucket, own_size)
        factor = spatial_factor(job.bucket, size)
        if size[0] % BUCKET_STEP or size[1] % BUCKET_STEP or min(size) < BUCKET_STEP or factor is None:
            raise DatasetError(
                f"{dataset.name}: the reference of {job.item.path.name} would be {size[0]}x{size[1]} for the "
                f"{job.bucket[0]}x{job.bucket[1]} bucket; it must be a multiple of {BUCKET_STEP} that divides the "
                "bucket by one whole factor (fix reference_downscale_factor / control_resolution or resolution)"
            )
        fingerprint = {
            "source": source_stamp(source),
            "checkpoint": self.video_checkpoint,
            "dataset": digest,
            "target_bucket": job.bucket,
            "bucket": size,
            "window": [window.start, window.num_frames],
            "fps": window.fps,
            "factors": [factor, step],
        }
        path = naming.partner_cache_path(dataset.cache_directory, job.key, "reference")
        return PartnerFile("reference", path, source, fingerprint, size, tuple(times))

    def _mask(self, job, source: Path, digest: str) -> PartnerFile:
        window = job.window
        times = window.times_s()
        is_image = source.suffix.lower() in IMAGE_EXTENSIONS
        mask_size = self._covers(job, source, times[:1] if is_image else times, "mask")
        target_size, _ = self._probe(job.item.path)
        if not _same_shape(mask_size, target_size):
            raise DatasetError(
                f"{source}: the mask is {mask_size[0]}x{mask_size[1]} but {job.item.path.name} is "
                f"{target_size[0]}x{target_size[1]}, so it would mark other pixels than it shows; make the mask "
                "the shape of its clip"
            )
        fingerprint = {
            "source": source_stamp(source),
            "dataset": digest,
            "bucket": job.bucket,
            "window": [window.start, window.num_frames],
            "fps": window.fps,
            "rules": VIDEO_MASK_RULES,
        }
        path = naming.partner_cache_path(job.item.dataset.cache_directory, job.key, "mask")
        return PartnerFile("mask", path, source, fingerprint, job.bucket, tuple(times))

    def _reference_audio(self, job, source: Path, digest: str) -> PartnerFile:
        from ltx2_tuner.data.audio import AUDIO_PREPROCESSING, probe_audio

        probe_audio(source)  # a file without audio fails here, before any model loads
        fingerprint = {
            "source": source_stamp(source),
            "dataset": digest,
            "window": self._audio_window(job),
            "audio_checkpoint": self.audio_checkpoint,
            "audio_preprocessing": AUDIO_PREPROCESSING,
        }
        path = naming.partner_cache_path(job.item.dataset.cache_directory, job.key, "reference_audio")
        return PartnerFile("reference_audio", path, source, fingerprint, audio_window_s=job.audio_window_s)

    def _audio_mask(self, job, source: Path, digest: str) -> PartnerFile:
        fingerprint = {
            "source": source_stamp(source),
            "dataset": digest,
            "window": self._audio_window(job),
            "audio_checkpoint": self.audio_checkpoint,
            "rules": AUDIO_MASK_RULES,
        }
        path = naming.partner_cache_path(job.item.dataset.cache_directory, job.key, "audio_mask")
        return PartnerFile("audio_mask", path, source, fingerprint)


def decode_partner(partner: PartnerFile, sample_rate: int):
    """The decoded input of a partner file (runs in a decoding thread): reference frames [3, F, H, W] in [-1, 1],
    a video mask [F', H', W'], (log-mel [2, T_mel, 64], valid samples) of a reference audio, or an audio mask's raw
    signal [L]."""
    from ltx2_tuner.data import masks

    if partner.kind == "reference":
        from ltx2_tuner.data.images import load_image
        from ltx2_tuner.data.transforms import frames_to_model_input
        from ltx2_tuner.data.video import read_video_frames

        if partner.source.suffix.lower() in IMAGE_EXTENSIONS:
            pixels = load_image(partner.source, size=partner.size)[None]
        else:
            pixels = read_video_frames(partner.source, partner.times_s, size=partner.size)
        return frames_to_model_input(pixels)
    if partner.kind == "mask":
        return masks.load_video_mask(partner.source, partner.times_s, partner.size)
    if partner.kind == "reference_audio":
        from ltx2_tuner.data.audio import load_audio_clip
        from ltx2_tuner.data.mel import log_mel_spectrogram

        start_s, duration_s = partner.audio_window_s
        clip = load_audio_clip(partner.source, start_s, duration_s, sample_rate, warn_padding=False)
        return log_mel_spectrogram(clip.waveform, sample_rate), clip.valid_samples
    return masks.read_audio_mask_signal(partner.source)


def audio_steps(audio_cache: Path) -> int:
    """T of the audio latents in an audio cache file (the grid an audio mask is resampled to)."""
    for key, entry in read_header(audio_cache).tensors.items():
        if key.startswith("audio_latents_"):
            return entry.shape[1]
    raise CacheError(f"{audio_cache}: no audio latents to fit the audio mask to; cache the item again")


def write_partner(partner: PartnerFile, decoded, encoder, audio_cache: Path | None, mode: str) -> None:
    """Encode (references) or resample (audio masks) a decoded partner and write its cache file."""
    from ltx2_tuner.cache.latent_cacher import valid_audio_latents
    from ltx2_tuner.data.masks import resample_audio_mask

    if partner.kind == "reference":
        latents = encoder.encode_video(decoded[None])[0].cpu()
        tensors = {naming.latents_key(latents): latents}
    elif partner.kind == "reference_audio":
        log_mel, valid_samples = decoded
        audio = encoder.encode_audio(log_mel).cpu()
        length = min(audio.shape[1], valid_audio_latents(valid_samples))
        tensors = {
            naming.audio_latents_key(audio): audio,
            "audio_lengths_int32": torch.tensor([length], dtype=torch.int32),
        }
    else:
        mask = decoded if partner.kind == "mask" else resample_audio_mask(decoded, audio_steps(audio_cache))
        tensors = {naming.mask_key(mask): mask.contiguous()}
    write_cache(partner.path, tensors, partner.fingerprint, mode=mode)
