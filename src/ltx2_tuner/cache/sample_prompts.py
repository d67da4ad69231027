"""Sample-prompt files (the trainer's previews) and their precached text embeddings.

Prompt file grammar (musubi-tuner style), UTF-8, one prompt per line:

    line    := prompt { option }                 blank lines and lines starting with "#" are skipped
    option  := "--" name value                   an option starts at whitespace + "--" + a letter
    name    := w | h | f | fs | fps | d | s | g | ga | i | a | v | du | r | ra | x | src | m | n

    --w INT    width in pixels, multiple of 32              (default 768)
    --h INT    height in pixels, multiple of 32             (default 512)
    --f INT    frames, 8k+1 (1 = an image)                   (default 49)
    --fs NUM   frame rate in frames per second; --fps too   (default 24)
    --d INT    seed                                         (default 42)
    --s INT    denoising steps                              (default: the model's, 40 on LTX-2.0, 30 on LTX-2.3)
    --g NUM    video classifier-free guidance scale         (default: the model's, 3.0)
    --ga NUM   audio classifier-free guidance scale (AV)    (default: the model's, 7.0)
    --i PATH   first-frame image (image-to-video), relative to the prompt file's folder
    --a PATH   audio to make video for (A2V previews, --frozen_modality audio): its first f / fs seconds
    --v PATH   video to make sound for (V2A previews, --frozen_modality video): f frames at fs, resized to w x h
    --du NUM   length in seconds of audio-only previews (--ltx_mode audio) (default: f / fs)
    --r PATH   reference clip of a run with a video `reference` condition (IC-LoRA): read at w x h / the run's
               spatial factor, keeping frame 0 and every temporal-factor-th frame (the factors the trainer measured)
    --ra PATH  reference sound of a run with an audio `reference` condition (A2A): its first f / fs seconds
    --x PATH   the clip to extend in a run with a `prefix` (forward) or `suffix` (backward) condition: its frames
               (video condition) and/or sound (audio condition) are the kept start or end of the preview
    --src PATH the source clip of a run with a `mask` condition (inpainting, with --m) or a `spatial_crop` condition
               (outpainting: the source fills the run's crop box, the rest is generated)
    --m PATH   the inpainting mask of --src (white = keep, black = regenerate; an audio mask for an audio condition)
    --n TEXT   negative prompt: the text up to the next option (default: DEFAULT_NEGATIVE_PROMPT, the official one)

    # a comment
    a red fox runs through snow, tracking shot --w 768 --h 512 --f 49 --d 7 --n blurry, static --g 4

Unset steps and guidance scales are None here; the preview fills in the model version's official defaults
(sampling.defaults), so one prompt file serves both model families. --a and --v paths are relative to the prompt
file's folder like --i, as are --r, --ra, --x, --src and --m; --v excludes --i and --a (--i with --a is an I2V start
for A2V), --du goes without --a / --v, and --m goes with --src. Options of another mode are not errors: the previews
of a video-only run ignore --a, an audio-only run ignores --w/--h/--i, a run without the matching condition ignores
--r/--ra/--x/--src/--m (the trainer says so once).

The cache, `{prompt file stem}_ltx2_sample_te.safetensors` beside the prompt file, holds per prompt i
`video_prompt_embeds_{i}` [1024, Dv] (video and AV modes), `audio_prompt_embeds_{i}` (AV and audio modes),
`prompt_attention_mask_{i}` [1024] and the same with a `negative_` prefix, plus metadata: the parsed prompts (JSON)
and a fingerprint. The trainer's previews read it with `load_sample_prompt_cache` and never load Gemma while it matches
the prompt file; an AV cache serves every mode (`cache_serves`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ltx2_tuner.cache.store import differences, read_fingerprint, write_cache
from ltx2_tuner.cache.text_cacher import serves
from ltx2_tuner.data.text_files import read_text_file
from ltx2_tuner.errors import CacheError, DatasetError
from ltx2_tuner.roles import roles_for

SAMPLE_CACHE_SUFFIX = "_ltx2_sample_te.safetensors"
# The official trainer's default negative prompt for validation samples (ltx-trainer config.py). Defined here, in the
# lowest layer that needs it; sampling.defaults re-exports it as OFFICIAL_NEGATIVE_PROMPT.
DEFAULT_NEGATIVE_PROMPT = (
    "blurry, out of focus, overexposed, underexposed, low contrast, washed out colors, excessive noise, "
    "grainy texture, poor lighting, flickering, motion blur, distorted proportions, unnatural skin tones, "
    "deformed facial features, asymmetrical face, missing facial features, extra limbs, disfigured hands, "
    "wrong hand count, artifacts around text, inconsistent perspective, camera shake, incorrect depth of "
    "field, background too sharp, background clutter, distracting reflections, harsh shadows, inconsistent "
    "lighting direction, color banding, cartoonish rendering, 3D CGI look, unrealistic materials, uncanny "
    "valley effect, incorrect ethnicity, wrong gender, exaggerated expressions, wrong gaze direction, "
    "mismatched lip sync, silent or muted audio, distorted voice, robotic voice, echo, background noise, "
    "off-sync audio, incorrect dialogue, added dialogue, repetitive speech, jittery movement, awkward "
    "pauses, incorrect timing, unnatural transitions, inconsistent framing, tilted camera, flat lighting, "
    "inconsistent tone, cinematic oversaturation, stylized filters, or AI artifacts."
)
_OPTION_START = re.compile(r"\s+--(?=[A-Za-z])")
_PROMPTS_KEY = "prompts"
_COMMAND = "python ltx2_cache_text_encoder_outputs.py"


@dataclass(frozen=True)
class SamplePrompt:
    """One line of a prompt file, with defaults filled in. None: the model version's default, chosen at sampling."""

    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    width: int = 768
    height: int = 512
    num_frames: int = 49
    frame_rate: float = 24.0
    seed: int = 42
    steps: int | None = None
    guidance_scale: float | None = None  # video CFG
    audio_guidance_scale: float | None = None  # audio CFG (AV)
    image: str | None = None  # first-frame image (I2V), resolved against the prompt file's folder
    audio: str | None = None  # A2V: the audio the video is made for (resolved like image)
    video: str | None = None  # V2A: the video the sound is made for (resolved like image)
    duration_s: float | None = None  # T2A: seconds of audio; None = num_frames / frame_rate
    # Held-out media of a conditioned run (issue 14), resolved like image; left out of the cache digest when unset.
    reference: str | None = None  # --r: IC-LoRA reference clip
    reference_audio: str | None = None  # --ra: A2A reference sound
    extend: str | None = None  # --x: the clip to extend
    source: str | None = None  # --src: the inpainting / outpainting source
    mask: str | None = None  # --m: the inpainting mask of --src

    @property
    def audio_seconds(self) -> float:
        """The length of an audio-only preview."""
        return self.duration_s if self.duration_s is not None else self.num_frames / self.frame_rate


# option name -> (field, parser); --fps is an alias of --fs
_OPTIONS = {
    "w": ("width", int),
    "h": ("height", int),
    "f": ("num_frames", int),
    "fs": ("frame_rate", float),
    "fps": ("frame_rate", float),
    "d": ("seed", int),
    "s": ("steps", int),
    "g": ("guidance_scale", float),
    "ga": ("audio_guidance_scale", float),
    "i": ("image", str),
    "a": ("audio", str),
    "v": ("video", str),
    "du": ("duration_s", float),
    "r": ("reference", str),
    "ra": ("reference_audio", str),
    "x": ("extend", str),
    "src": ("source", str),
    "m": ("mask", str),
    "n": ("negative_prompt", str),
}
_MEDIA_OPTIONS = {
    "image": ("i", "image"),
    "audio": ("a", "audio file"),
    "video": ("v", "video file"),
    "reference": ("r", "reference clip"),
    "reference_audio": ("ra", "reference sound"),
    "extend": ("x", "clip to extend"),
    "source": ("src", "source clip"),
    "mask": ("m", "mask"),
}
# Options added after caches existed: written to the digest's JSON only when set, so older caches stay current.
_OPTIONAL_FIELDS = ("reference", "reference_audio", "extend", "source", "mask")
# Which stored text-cache mode serves a mode: AV embeddings hold both contexts.


def parse_prompt_line(line: str, where: str, folder: Path | None = None) -> SamplePrompt:
    """Parse one non-comment line; DatasetError naming `where` (file:line) for anything invalid.

    folder: where a relative `--i` / `--a` / `--v` path starts (the prompt file's folder; default the working
    directory).
    """
    prompt, *segments = _OPTION_START.split(line.strip())
    prompt = prompt.strip()
    if not prompt or prompt.startswith("--"):
        raise DatasetError(f"{where}: the line has options but no prompt; write the prompt first")
    values: dict[str, object] = {}
    given: dict[str, str] = {}  # field -> the option that set it (for --fs / --fps)
    for segment in segments:
        name, *rest = segment.strip().split(maxsplit=1)
        value = rest[0].strip() if rest else ""
        if name not in _OPTIONS:
            known = " ".join(f"--{k}" for k in _OPTIONS)
            raise DatasetError(f"{where}: unknown option --{name}; the options are {known}")
        field_name, parse = _OPTIONS[name]
        if field_name in values:
            also = "" if given[field_name] == name else f" (as --{given[field_name]})"
            raise DatasetError(f"{where}: --{name} is given twice{also}")
        try:
            values[field_name] = parse(value)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise DatasetError(f"{where}: --{name} needs {kind}, not {value!r}") from None
        given[field_name] = name
    for field_name in _MEDIA_OPTIONS:
        if field_name in values:
            values[field_name] = _media_path(field_name, str(values[field_name]), where, folder)
    sample = SamplePrompt(prompt=prompt, **values)
    _check(sample, where)
    return sample


def _media_path(field_name: str, value: str, where: str, folder: Path | None) -> str:
    option, what = _MEDIA_OPTIONS[field_name]
    if not value:
        raise DatasetError(f"{where}: --{option} needs a path to the {what} (relative to the prompt file's folder)")
    path = Path(value).expanduser()
    if not path.is_absolute() and folder is not None:
        path = folder / path
    if not path.is_file():
        raise DatasetError(
            f"{where}: --{option} {value}: {what} not found at {path}; fix the path (relative to the prompt file)"
        )
    return str(path)


def _check(sample: SamplePrompt, where: str) -> None:
    for name, size in (("w", sample.width), ("h", sample.height)):
        if size < 32 or size % 32:
            raise DatasetError(f"{where}: --{name} {size} must be a positive multiple of 32 (the VAE's factor)")
    if sample.num_frames < 1 or (sample.num_frames - 1) % 8:
        nearest = max(1, round((sample.num_frames - 1) / 8) * 8 + 1)
        raise DatasetError(f"{where}: --f {sample.num_frames} must be 8k+1 (1, 9, 17, ...); e.g. {nearest}")
    if sample.frame_rate <= 0 or (sample.steps is not None and sample.steps < 1):
        raise DatasetError(f"{where}: --fs and --s must be positive")
    for name, scale in (("g", sample.guidance_scale), ("ga", sample.audio_guidance_scale)):
        if scale is not None and not scale >= 0:  # `not >=` also refuses nan
            raise DatasetError(f"{where}: --{name} {scale} must not be negative")
    for other, option in (("image", "i"), ("audio", "a")):
        if sample.video is not None and getattr(sample, other) is not None:
            raise DatasetError(
                f"{where}: --{option} and --v together; --v gives the whole video (video-to-audio), so it takes "
                f"no --{option}"
            )
    if sample.mask is not None and sample.source is None:
        raise DatasetError(f"{where}: --m is the inpainting mask of a source clip; give --src PATH too")
    if sample.extend is not None and sample.source is not None:
        raise DatasetError(f"{where}: --x and --src together; both give the kept frames of the preview, use one")
    if sample.duration_s is not None:
        if not sample.duration_s * 25 >= 1:  # 25 audio latents per second; `not >=` also refuses nan
            raise DatasetError(f"{where}: --du {sample.duration_s} must be at least 0.04 seconds")
        if sample.audio is not None or sample.video is not None:
            raise DatasetError(
                f"{where}: --du sets the length of audio-only previews; with --a / --v the length is --f / --fs"
            )


def read_sample_prompts(path: str | Path) -> list[SamplePrompt]:
    """Every prompt of a prompt file, in order; DatasetError (file:line) for a bad line or an empty file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: sample prompt file not found")
    prompts = []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            prompts.append(parse_prompt_line(line, f"{path}:{number}", path.parent))
    if not prompts:
        raise DatasetError(f"{path}: no prompts (one per line; '#' starts a comment)")
    return prompts


def sample_cache_path(prompts_file: str | Path) -> Path:
    prompts_file = Path(prompts_file)
    return prompts_file.with_name(f"{prompts_file.stem}{SAMPLE_CACHE_SUFFIX}")


def prompts_digest(prompts: list[SamplePrompt]) -> str:
    """Identifies the parsed prompts (comments and spacing do not count)."""
    return hashlib.sha256(_prompts_json(prompts).encode()).hexdigest()


def _prompts_json(prompts: list[SamplePrompt]) -> str:
    return json.dumps([_prompt_fields(p) for p in prompts], sort_keys=True)


def _prompt_fields(prompt: SamplePrompt) -> dict:
    fields = dataclasses.asdict(prompt)
    for name in _OPTIONAL_FIELDS:
        if fields[name] is None:
            del fields[name]
    return fields


def write_sample_prompt_cache(
    path: Path,
    prompts: list[SamplePrompt],
    embeddings: dict[str, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]],
    fingerprint: dict,
) -> None:
    """Write the cache. embeddings: text -> (video [T, Dv] or None (audio mode), audio [T, Da] or None (video mode),
    mask [T]) for every prompt and negative prompt; fingerprint: the text cache stamp's fields (connectors, Gemma,
    mode, dtype)."""
    tensors: dict[str, torch.Tensor] = {}
    for index, sample in enumerate(prompts):
        for prefix, text in (("", sample.prompt), ("negative_", sample.negative_prompt)):
            video, audio, mask = embeddings[text]
            # Clones: prompts may share a negative prompt, and safetensors refuses shared memory.
            if video is not None:
                tensors[f"{prefix}video_prompt_embeds_{index}"] = video.clone()
            if audio is not None:
                tensors[f"{prefix}audio_prompt_embeds_{index}"] = audio.clone()
            tensors[f"{prefix}prompt_attention_mask_{index}"] = mask.to(torch.int64).clone()
    full = {**fingerprint, "prompts_sha256": prompts_digest(prompts)}
    write_cache(path, tensors, full, **{_PROMPTS_KEY: _prompts_json(prompts)})


def sample_cache_is_current(path: Path, prompts: list[SamplePrompt], fingerprint: dict) -> bool:
    return not differences(read_fingerprint(path), {**fingerprint, "prompts_sha256": prompts_digest(prompts)})


@dataclass(frozen=True)
class SamplePromptEmbeds:
    """A parsed prompt with its cached text context (shapes [1024, D]; audio None in video mode, video None in
    audio mode)."""

    sample: SamplePrompt
    video: torch.Tensor | None
    audio: torch.Tensor | None
    mask: torch.Tensor
    negative_video: torch.Tensor | None
    negative_audio: torch.Tensor | None
    negative_mask: torch.Tensor


def load_sample_prompt_cache(
    path: str | Path, prompts_file: str | Path, mode: str | None = None, version: str | None = None
) -> list[SamplePromptEmbeds]:
    """The cached embeddings of `prompts_file`'s prompts, after checking the cache was made from that file.

    `mode` (the embeddings a "video", "av" or "audio" run needs, `cache_serves`) and `version` (the model family of
    the connectors) are checked when given. CacheError naming the command to run when the cache is missing, stale
    or does not fit.
    """
    path, prompts_file = Path(path), Path(prompts_file)
    prompts = read_sample_prompts(prompts_file)
    rerun = f"run `{_COMMAND} ... --sample_prompts {prompts_file}`" + (f" with --ltx_mode {mode}" if mode else "")
    stored = read_fingerprint(path)
    if stored is None:
        raise CacheError(f"{path}: no sample prompt embeddings for {prompts_file}; {rerun}")
    if stored.get("prompts_sha256") != prompts_digest(prompts):
        raise CacheError(f"{path}: stale, {prompts_file} changed since its prompts were encoded; {rerun}")
    if mode is not None and not cache_serves(stored.get("mode"), mode):
        raise CacheError(
            f"{path}: was encoded in {stored.get('mode')} mode; {mode}-mode previews need "
            f"{' and '.join(roles_for(mode).present_modalities)} embeddings; {rerun}"
        )
    cached_version = (stored.get("connectors") or {}).get("version")
    if version is not None and cached_version != version:
        raise CacheError(f"{path}: was encoded with LTX-{cached_version} connectors, not LTX-{version}; {rerun}")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not iterable)
    except (OSError, SafetensorError) as error:
        raise CacheError(f"{path}: cannot be read ({error}); {rerun}") from None
    return [_embeds(sample, index, tensors) for index, sample in enumerate(prompts)]


def cache_serves(stored_mode: str | None, mode: str) -> bool:
    """Whether a text cache encoded in `stored_mode` holds the embeddings `mode` ("video", "av", "audio") needs."""
    return serves(stored_mode, mode)


def _embeds(sample: SamplePrompt, index: int, tensors: dict[str, torch.Tensor]) -> SamplePromptEmbeds:
    return SamplePromptEmbeds(
        sample=sample,
        video=tensors.get(f"video_prompt_embeds_{index}"),
        audio=tensors.get(f"audio_prompt_embeds_{index}"),
        mask=tensors[f"prompt_attention_mask_{index}"],
        negative_video=tensors.get(f"negative_video_prompt_embeds_{index}"),
        negative_audio=tensors.get(f"negative_audio_prompt_embeds_{index}"),
        negative_mask=tensors[f"negative_prompt_attention_mask_{index}"],
    )


def encode_sample_prompts(
    prompts: list[SamplePrompt], encode, batch_size: int = 1
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Each distinct prompt and negative prompt encoded once with `encode` (a `text_cacher.PromptEncoder`):
    text -> (video [T, Dv] or None, audio [T, Da] or None, mask [T])."""
    texts = list(dict.fromkeys(text for p in prompts for text in (p.prompt, p.negative_prompt)))
    embeddings = {}
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        video, audio, mask = encode(batch)
        for index, text in enumerate(batch):
            embeddings[text] = (
                None if video is None else video[index],
                None if audio is None else audio[index],
                mask[index],
            )
    return embeddings


def sample_prompt_embeds(
    prompts: list[SamplePrompt], embeddings: dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]
) -> list[SamplePromptEmbeds]:
    """What `load_sample_prompt_cache` returns, from freshly encoded `embeddings` (see `encode_sample_prompts`)."""
    result = []
    for sample in prompts:
        video, audio, mask = embeddings[sample.prompt]
        negative_video, negative_audio, negative_mask = embeddings[sample.negative_prompt]
        result.append(SamplePromptEmbeds(sample, video, audio, mask, negative_video, negative_audio, negative_mask))
    return result


def cache_sample_prompts(
    path: Path,
    prompts: list[SamplePrompt],
    encode,
    fingerprint: dict,
    batch_size: int = 1,
) -> None:
    """Encode each distinct prompt and negative prompt once with `encode` (a `text_cacher.PromptEncoder`) and write
    the cache."""
    write_sample_prompt_cache(path, prompts, encode_sample_prompts(prompts, encode, batch_size), fingerprint)
