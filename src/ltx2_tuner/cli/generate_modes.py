"""The modality modes' and conditions' part of `ltx2_generate_video.py`'s checks (generate_plan.py): which flags fit
--ltx_mode and each other (T2A: --ltx_mode audio; A2V: --audio; V2A: --video; extension, IC-LoRA reference,
outpainting, inpainting on generated tokens: docs/generation.md), the clip length an --audio / --video file gives, and
each job's TokenConditions (the reference factors from the LoRAs' metadata).
One line per problem, before any weights load. The choice: a flag that means nothing in a mode is refused, not
ignored, so a command never silently does less than it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.sampling.conditions import largest_clip_frames

# Flags that set something audio-only generation does not have.
_VIDEO_FLAGS = ("image", "width", "height", "frames", "fps", "cfg_scale", "stg_scale", "modality_scale")


def flag_problems(args) -> list[str]:
    """Flags that do not fit --ltx_mode or each other, one line each."""
    problems = []
    mode = args.ltx_mode
    if args.duration is not None and mode != "audio":
        problems.append("--duration: sets the length of audio-only generation (--ltx_mode audio); video uses --frames")
    elif args.duration is not None and not args.duration * 25 >= 1:  # 25 audio latents per second
        problems.append(f"--duration {args.duration}: must be at least 0.04 seconds")
    for flag, what in (("audio", "audio-to-video"), ("video", "video-to-audio")):
        if getattr(args, flag) is not None and mode != "av":
            problems.append(f"--{flag}: {what} needs both modalities; use --ltx_mode av")
    if args.audio is not None and args.video is not None:
        problems.append(
            "--audio and --video together: give one (--audio: make video for a sound; --video: make sound for a video)"
        )
    if args.image is not None and args.video is not None:
        problems.append("--image: the frames come from --video (video-to-audio); drop --image")
    if mode == "audio":
        given = [flag for flag in _VIDEO_FLAGS if getattr(args, flag) is not None] + ["vae_tiling"] * args.vae_tiling
        problems += [f"--{flag}: --ltx_mode audio generates sound only; drop --{flag}" for flag in given]
    for condition, flags in (("audio", ("audio_cfg_scale", "audio_stg_scale")), ("video", ("cfg_scale", "stg_scale"))):
        if getattr(args, condition) is not None:
            problems += [
                f"--{flag}: the {condition} comes from --{condition} and is not generated; drop --{flag}"
                for flag in flags
                if getattr(args, flag) is not None
            ]
    return problems


def media_defaults(args, default_fps: float) -> dict:
    """Frames (and, for --video, the frame rate) that an --audio / --video file gives jobs without --frames /
    --fps: the clip's own rate, and the largest 8k+1 frames it covers, at most MAX_CONDITION_FRAMES. Checks that the
    file can be read and covers the frames asked for."""
    from ltx2_tuner.data.audio import probe_audio
    from ltx2_tuner.data.frames import available_frames
    from ltx2_tuner.data.video import probe_video

    if args.audio is None and args.video is None:
        return {}
    if args.audio is not None:
        flag, path = "--audio", args.audio
        _require_file(flag, path)
        fps = args.fps or default_fps
        seconds = probe_audio(path).duration_s
        available = int(seconds * fps + 1e-6)
        held = f"{seconds:.2f} s of audio"
    else:
        flag, path = "--video", args.video
        _require_file(flag, path)
        info = probe_video(path)
        fps = args.fps or info.fps
        available = available_frames(info.duration_s, info.num_frames, info.fps, fps)
        held = f"{available} frames at {fps:g} fps"
    if args.frames is not None and args.frames > available:
        raise ConfigError(f"--frames {args.frames}: {flag} {path} holds {held}; ask for at most {available}")
    frames = args.frames or largest_clip_frames(available)
    if args.frames is None and frames < 9:
        raise ConfigError(f"{flag} {path}: holds {held}, fewer than the 9 frames of the shortest clip")
    return {"frames": frames, "fps": fps}


def _require_file(flag: str, path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: file not found")


# ---------------------------------------------------------------- conditions on generated tokens
@dataclass(frozen=True)
class TokenConditions:
    """A job's extension / IC-LoRA reference / outpainting / inpainting inputs (sampling.conditions.Condition
    fields of the same names)."""

    extend: Path | None = None
    extend_frames: int = 0  # frames of the --extend clip used (8k+1)
    extend_audio: Path | None = None
    direction: str = "forward"
    reference: Path | None = None
    reference_factors: tuple[int, int] = (1, 1)  # (spatial N, temporal S)
    source: Path | None = None
    outpaint_crop: tuple[int, int, int, int] | None = None  # x, y, w, h in pixels
    mask: Path | None = None
    reference_audio: Path | None = None  # A2A / AV2AV reference sound
    audio_mask: Path | None = None  # audio inpainting of the --source sound


_VIDEO_CONDITION_FLAGS = ("extend", "reference", "reference_downscale", "source", "outpaint_crop", "mask")
_AUDIO_CONDITION_FLAGS = ("extend_audio", "reference_audio", "audio_mask")


def condition_flag_problems(args) -> list[str]:
    """Condition flags that do not fit --ltx_mode or each other, one line each."""
    given = {f for f in (*_VIDEO_CONDITION_FLAGS, *_AUDIO_CONDITION_FLAGS, "direction") if getattr(args, f) is not None}
    problems = []
    audio_source = args.ltx_mode == "audio" and "audio_mask" in given  # --source is then a sound to inpaint
    if args.ltx_mode == "audio":
        problems += [f"--{f}: conditions video; --ltx_mode audio generates sound only" for f in _VIDEO_CONDITION_FLAGS
                     if f in given and not (f == "source" and audio_source)]  # fmt: skip
    for flag, what in (("extend_audio", "extends"), ("reference_audio", "is the reference of"),
                       ("audio_mask", "inpaints")):  # fmt: skip
        if flag in given and args.ltx_mode == "video":
            problems.append(f"--{flag}: {what} generated sound; use --ltx_mode audio or av")
        elif flag in given and args.audio is not None:
            problems.append(f"--{flag}: the sound comes from --audio (audio-to-video) and is not generated; drop one")
    if {"extend_audio", "audio_mask"} <= given:
        problems.append("--extend_audio and --audio_mask: both give the kept audio tokens; use one")
    if "audio_mask" in given and "source" not in given:
        problems.append("--audio_mask: needs --source FILE, the clip (or sound) whose audio to inpaint")
    if "direction" in given and not given & {"extend", "extend_audio"}:
        problems.append("--direction: says which way --extend / --extend_audio goes; give one of them")
    if args.video is not None:
        problems += [f"--{f}: the frames come from --video (video-to-audio) and are not generated; drop --{f}"
                     for f in ("extend", "reference", "source") if f in given]  # fmt: skip
    if "source" in given and "outpaint_crop" in given and "mask" in given:
        problems.append("--source: give --outpaint_crop x,y,w,h (outpainting) or --mask FILE (inpainting), one of them")
    elif "source" in given and not given & {"outpaint_crop", "mask", "audio_mask"}:
        problems.append("--source: give --outpaint_crop x,y,w,h (outpainting), --mask FILE (inpainting) or "
                        "--audio_mask FILE (audio inpainting)")  # fmt: skip
    if "source" not in given:
        problems += [f"--{f}: needs --source FILE, the clip to {what}" for f, what in
                     (("outpaint_crop", "outpaint"), ("mask", "inpaint")) if f in given]  # fmt: skip
    if {"extend", "source"} <= given:
        problems.append("--extend and --source: both give the kept video tokens; use one")
    if args.image is not None and ("source" in given or ("extend" in given and args.direction != "backward")):
        problems.append("--image: the first frame comes from --extend / --source; drop --image")
    if "reference_downscale" in given and "reference" not in given:
        problems.append("--reference_downscale: sets how --reference is read; give --reference FILE")
    elif "reference_downscale" in given and args.reference_downscale < 1:
        problems.append(f"--reference_downscale {args.reference_downscale}: must be a whole number >= 1")
    if "outpaint_crop" in given and parse_crop(args.outpaint_crop) is None:
        problems.append(
            f"--outpaint_crop {args.outpaint_crop}: give four whole numbers x,y,w,h (pixels), e.g. 64,0,256,512"
        )
    problems += [f"--{f} {getattr(args, f)}: file not found" for f in ("extend", "extend_audio", "reference", "source",
                 "mask", "reference_audio", "audio_mask") if f in given and not getattr(args, f).is_file()]  # fmt: skip
    return problems


def parse_crop(text: str) -> tuple[int, int, int, int] | None:
    """ "x,y,w,h" -> (x, y, w, h), or None when it is not four whole numbers."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        return None
    return values if len(values) == 4 else None


def token_conditions(args, job, factors) -> tuple[TokenConditions, list[str]]:
    """A job's TokenConditions and the problems with its size and length (the files exist: condition_flag_problems).
    `factors`: the LoRAs' networks.lora_files.ReferenceFactors; --reference_downscale overrides the spatial one."""
    problems, fields = [], {"direction": args.direction or "forward"}
    if job.frames == 1 and (args.extend or args.reference or (args.source and args.ltx_mode != "audio")):
        return TokenConditions(), ["--frames 1: extension, references and in/outpainting condition clips; use 9+"]
    if args.extend is not None:
        fields["extend"] = args.extend
        fields["extend_frames"] = _extend_frames(args, job, problems)
    if args.reference is not None:
        spatial = args.reference_downscale or factors.spatial
        fields.update(reference=args.reference, reference_factors=(spatial, factors.temporal))
        problems += _reference_problems(args, job, spatial, factors.temporal, factors.source)
    if args.source is not None:
        fields.update(source=args.source, mask=args.mask, audio_mask=args.audio_mask)
        if args.mask is not None or args.outpaint_crop is not None:
            problems += _held_frames_problems("--source", args.source, job)
        if args.outpaint_crop is not None:
            fields["outpaint_crop"] = parse_crop(args.outpaint_crop)
            problems += _crop_problems(fields["outpaint_crop"], job)
        if args.audio_mask is not None:
            problems += _sound_problems("--source", args.source, job)
    if args.reference_audio is not None:
        fields["reference_audio"] = args.reference_audio
        problems += _sound_problems("--reference_audio", args.reference_audio, job)
    if args.extend_audio is not None:
        fields["extend_audio"] = args.extend_audio
        problems += _extend_audio_problems(args, job)
    return TokenConditions(**fields), problems


def _extend_frames(args, job, problems: list[str]) -> int:
    from ltx2_tuner.data.frames import available_frames
    from ltx2_tuner.data.video import probe_video

    info = probe_video(args.extend)
    frames = largest_clip_frames(available_frames(info.duration_s, info.num_frames, info.fps, job.fps))
    least = 1 if args.direction != "backward" else 9  # backward keeps the latents after the clip's first
    if frames < least:
        problems.append(f"--extend {args.extend}: holds fewer than {least} frames at {job.fps:g} fps")
    elif job.frames <= frames:
        problems.append(
            f"--frames {job.frames}: the --extend clip gives {frames} frames (8k+1) at {job.fps:g} fps; generate "
            f"more, e.g. --frames {frames + 8 * ((frames - 1) // 8 or 1)}"
        )
    return frames


def _reference_problems(args, job, spatial: int, temporal: int, source) -> list[str]:
    said = f" (from the LoRA metadata of {source})" if source and not args.reference_downscale else ""
    problems = []
    if job.width % (32 * spatial) or job.height % (32 * spatial):
        problems.append(
            f"--reference: read at 1/{spatial} of {job.width}x{job.height}{said}, which must stay a multiple of 32; "
            f"use --width and --height that are multiples of {32 * spatial}"
        )
    if (job.frames - 1) % (8 * temporal):
        problems.append(
            f"--frames {job.frames}: the reference keeps every {temporal}th frame{said}, so --frames must be "
            f"{8 * temporal}k+1"
        )
    return problems + _held_frames_problems("--reference", args.reference, job)


def _held_frames_problems(flag: str, path: Path, job) -> list[str]:
    from ltx2_tuner.data.frames import available_frames
    from ltx2_tuner.data.video import probe_video

    info = probe_video(path)
    held = available_frames(info.duration_s, info.num_frames, info.fps, job.fps)
    if held < job.frames:
        return [f"{flag} {path}: holds {held} frames at {job.fps:g} fps, the output {job.frames}; use a longer clip"]
    return []


def _sound_problems(flag: str, path: Path, job) -> list[str]:
    """A file read like --audio for the output's length: it needs a sound track at least that long."""
    from ltx2_tuner.data.audio import has_audio_stream, probe_audio

    if not has_audio_stream(path):
        return [f"{flag} {path}: has no sound; give a file with an audio track"]
    seconds = probe_audio(path).duration_s
    needed = job.duration_s if job.duration_s is not None else job.frames / job.fps
    if seconds + 1e-3 < needed:
        return [f"{flag} {path}: {seconds:.2f} s of sound, the output {needed:.2f} s; use a longer file"]
    return []


def _crop_problems(crop: tuple[int, int, int, int], job) -> list[str]:
    x, y, w, h = crop
    if any(value % 32 for value in crop) or w <= 0 or h <= 0 or x < 0 or y < 0:
        return [f"--outpaint_crop {x},{y},{w},{h}: x, y, w, h must be multiples of 32 (whole latent tokens), w, h > 0"]
    if x + w > job.width or y + h > job.height or (w, h) == (job.width, job.height):
        return [
            f"--outpaint_crop {x},{y},{w},{h}: the box must lie inside the {job.width}x{job.height} output and "
            "leave some of it to generate"
        ]
    return []


def _extend_audio_problems(args, job) -> list[str]:
    from ltx2_tuner.data.audio import probe_audio
    from ltx2_tuner.models import audio_latent_count

    seconds = probe_audio(args.extend_audio).duration_s
    total = round(job.duration_s * 25) if job.duration_s is not None else audio_latent_count(job.frames, job.fps)
    if round(seconds * 25) >= total:
        return [
            f"--extend_audio {args.extend_audio}: {seconds:.2f} s, as long as the {total / 25:.2f} s output; "
            "generate longer (--duration, or more --frames)"
        ]
    return []
