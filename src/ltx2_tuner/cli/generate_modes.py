"""The modality modes' part of `ltx2_generate_video.py`'s checks (generate_plan.py): which flags fit --ltx_mode and
each other (T2A: --ltx_mode audio; A2V: --audio; V2A: --video), and the clip length an --audio / --video file gives.
One line per problem, before any weights load. The choice: a flag that means nothing in a mode is refused, not
ignored, so a command never silently does less than it says.
"""

from __future__ import annotations

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
