"""Text encoder caches: one file per media stem with the final text context the transformer reads.

    {cache_directory}/{stem}_ltx2_te.safetensors
      video_prompt_embeds_{dtype}   [1024, Dv]   modes video and av (Dv = 3840 for LTX-2.0, 4096 for LTX-2.3/2.5)
      audio_prompt_embeds_{dtype}   [1024, Da]   modes av and audio (Da = 3840 / 2048)
      prompt_attention_mask         [1024]       int64; the connectors' mask: all ones (registers fill padding)
      text_{dtype}, text_mask                    compatibility copies: video, or cat([video, audio], -1) in AV;
                                                 never in audio mode (see `compat_keys_allowed`)

Which training modes a file serves (`serves`): video (t2v) needs the video embeddings (a video or av cache), av,
A2V and V2A need both (an av cache), audio (t2a) needs the audio embeddings (an audio or av cache).

The fingerprint records the caption (sha256), the connectors (file fingerprint + model family), Gemma (directory
identity + quantization), the mode, the dtype and whether compatibility keys are written. With `skip_existing` a
file is reused only when every field matches, so editing one caption re-encodes exactly that item.
Every caption is read and checked before any model loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.store import differences, read_fingerprint, write_cache
from ltx2_tuner.data.config import DatasetConfig
from ltx2_tuner.data.items import MediaItem, list_media, raise_caption_problems, read_caption
from ltx2_tuner.errors import ConfigError, DatasetError
from ltx2_tuner.roles import LTX_MODES, roles_for

# captions -> (video [B, T, Dv] or None (audio mode), audio [B, T, Da] or None (video mode), mask [B, T]), on the
# CPU (text_embeddings.encode_prompts)
PromptEncoder = Callable[[list[str]], tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]]


@dataclass(frozen=True)
class TextStamp:
    """Everything besides the caption that a text cache depends on."""

    connectors: dict  # {"file": checkpoint fingerprint, "version": "2.0" | "2.3"}
    gemma: dict | None  # {"identity", "quantization"}; None: unknown (no --gemma_root), not compared
    mode: str  # "video", "av" or "audio" (roles.ModalityRoles.build)
    dtype: torch.dtype  # the connectors' (and the stored embeddings') dtype
    compat_keys: bool

    def __post_init__(self) -> None:
        if self.compat_keys and not compat_keys_allowed(self.mode):
            raise ValueError(f"mode {self.mode} writes no compatibility keys (compat_keys_allowed)")

    def models(self) -> dict:
        """The fields that say how text became embeddings (shared with the sample-prompt cache)."""
        fields = {"connectors": self.connectors, "mode": self.mode, "dtype": naming.dtype_name(self.dtype)}
        if self.gemma is not None:
            fields["gemma"] = self.gemma
        return fields

    def fingerprint(self, text: str) -> dict:
        """The fingerprint of the cache file of a caption."""
        caption = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return {"caption_sha256": caption, **self.models(), "compat_keys": self.compat_keys}


# The modality embeddings each caching mode writes, and the caching modes whose files a training mode can read.
def cached_modalities(cache_mode: str | None) -> tuple[str, ...]:
    """The modalities whose embeddings a text cache written with `--ltx_mode cache_mode` holds (none for an unknown
    mode): those its build runs."""
    return roles_for(cache_mode).present_modalities if cache_mode in LTX_MODES else ()


def serves(cache_mode: str | None, training_mode: str) -> bool:
    """Whether a text cache written in `cache_mode` has the embeddings `training_mode` (a build: video, av, audio)
    reads: every modality the training mode runs (a frozen one still reads its own text) is in the file."""
    return set(roles_for(training_mode).present_modalities) <= set(cached_modalities(cache_mode))


def compat_keys_allowed(mode: str) -> bool:
    """The compatibility keys `text_{dtype}` mean the video context (or video and audio joined): other tools read
    them as video. An audio-only cache has no video, so it writes none rather than a tensor they would misread."""
    return mode != "audio"


@dataclass(frozen=True)
class TextJob:
    item: MediaItem
    caption: str
    path: Path


@dataclass
class TextCacheSummary:
    encoded: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)


def plan_text_jobs(datasets: list[DatasetConfig], allow_empty: bool = False) -> list[TextJob]:
    """One job per media stem, caption read and checked now; one DatasetError listing every bad caption file."""
    jobs, problems = [], []
    for dataset in datasets:
        for item in list_media(dataset):
            try:
                caption = read_caption(item, allow_empty=allow_empty)
            except DatasetError as error:
                empty = "caption is empty" in str(error)
                problems.append(f"{error} (--allow_empty_captions)" if empty else str(error))
                continue
            jobs.append(TextJob(item, caption, naming.text_cache_path(dataset.cache_directory, item.stem)))
    raise_caption_problems(problems)
    return jobs


def is_current(path: Path, fingerprint: dict) -> bool:
    return not differences(read_fingerprint(path), fingerprint)


def pending_jobs(jobs: list[TextJob], stamp: TextStamp, skip_existing: bool) -> list[TextJob]:
    """The jobs to encode: all, or with `skip_existing` those whose file is missing or stale."""
    if not skip_existing:
        return list(jobs)
    return [job for job in jobs if not is_current(job.path, stamp.fingerprint(job.caption))]


def cache_tensors(
    video: torch.Tensor | None, audio: torch.Tensor | None, mask: torch.Tensor, compat_keys: bool
) -> dict[str, torch.Tensor]:
    """The tensors of one text cache file. video [T, Dv] or None (audio mode), audio [T, Da] or None (video mode),
    mask [T]. `compat_keys` needs the video context (see `compat_keys_allowed`)."""
    if video is None and audio is None:
        raise ValueError("a text cache needs video or audio embeddings")
    if compat_keys and video is None:
        raise ValueError("compatibility keys hold the video context; an audio-only cache has none")
    dtype = naming.dtype_name((video if video is not None else audio).dtype)
    mask = mask.to(torch.int64)
    tensors = {"prompt_attention_mask": mask}
    if video is not None:
        tensors[f"video_prompt_embeds_{dtype}"] = video
    if audio is not None:
        tensors[f"audio_prompt_embeds_{dtype}"] = audio
    if compat_keys:
        # Copies, because safetensors refuses tensors that share memory.
        text = video.clone() if audio is None else torch.cat([video, audio], dim=-1)
        tensors[f"text_{dtype}"] = text
        tensors["text_mask"] = mask.clone()
    return tensors


def check_finite(video: torch.Tensor | None, audio: torch.Tensor | None, dtype: torch.dtype) -> None:
    """ConfigError when fp16 overflowed (Gemma 3's hidden states reach magnitudes fp16 cannot hold)."""
    finite = all(bool(torch.isfinite(t).all()) for t in (video, audio) if t is not None)
    if not finite:
        raise ConfigError(
            f"the text embeddings overflowed in {naming.dtype_name(dtype)} (Gemma's activations are large); "
            "use --mixed_precision bf16 or no"
        )


def _batches(jobs: list[TextJob], batch_size: int) -> Iterator[list[TextJob]]:
    for start in range(0, len(jobs), batch_size):
        yield jobs[start : start + batch_size]


def cache_text(
    pending: list[TextJob], encode: PromptEncoder, stamp: TextStamp, batch_size: int = 1
) -> TextCacheSummary:
    """Encode `pending` in batches and write each file atomically; return what happened."""
    summary = TextCacheSummary()
    with tqdm(total=len(pending), unit="caption", desc="encoding captions", dynamic_ncols=True) as progress:
        for batch in _batches(pending, batch_size):
            video, audio, mask = encode([job.caption for job in batch])
            for index, job in enumerate(batch):
                tensors = cache_tensors(
                    None if video is None else video[index],
                    None if audio is None else audio[index],
                    mask[index],
                    stamp.compat_keys,
                )
                try:
                    write_cache(job.path, tensors, stamp.fingerprint(job.caption), mode=stamp.mode)
                except OSError as error:  # e.g. a full disk: report it, keep going with the others
                    summary.failed.append(f"{job.path}: {error}")
                    continue
                summary.encoded += 1
            progress.update(len(batch))
    return summary
