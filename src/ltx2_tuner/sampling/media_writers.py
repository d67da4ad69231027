"""Write decoded samples: mp4 (H.264 + stereo AAC), png for a single frame, 16-bit wav or mp3 for audio only
(`write_audio`). PyAV and pillow only.

Encoding follows ltx-trainer's `video_utils.save_video`: libx264, yuv420p, CRF 18, AAC stereo at the vocoder's
rate. Unlike it, a fractional frame rate (23.976) is kept exactly rather than truncated to an integer, and the
audio is interleaved with the video by time. Every file is written under a temporary name in the target folder
and renamed when complete, so a reader never sees a partial file and a failure leaves nothing behind (what a killed
process leaves is removed by the next write of the same file); a full disk is one MediaError line.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ltx2_tuner.errors import MediaError
from ltx2_tuner.models.safetensors_io import is_disk_full, process_is_gone

CRF = "18"  # ltx-trainer's validation videos


def write_media(
    path: Path,
    frames: torch.Tensor,
    fps: float,
    audio: torch.Tensor | None = None,
    audio_rate: int | None = None,
) -> Path:
    """Write uint8 frames [F, H, W, 3] as `path` (mp4), or as a png (suffix replaced) when F == 1, in which case
    `audio` is not written. `audio`: float waveform [C, S] or [S] in [-1, 1] (mono is duplicated to stereo) at
    `audio_rate` Hz. Returns the path written."""
    path = Path(path)
    array = _check_frames(path, frames)
    if array.shape[0] == 1:
        png = path.with_suffix(".png")
        _atomic_write(png, lambda tmp: _write_png(tmp, array[0]))
        return png
    if array.shape[1] % 2 or array.shape[2] % 2:
        raise MediaError(
            f"{path}: frames are {array.shape[2]}x{array.shape[1]}; H.264 in yuv420p needs an even width and "
            f"height (use sizes that are multiples of 32)"
        )
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise MediaError(f"{path}: frame rate {fps!r} is not a positive number; pass the video's fps (e.g. 24)")
    stereo = None if audio is None else _check_audio(path, audio, audio_rate, max_channels=2)
    if stereo is not None and stereo.shape[0] == 1:
        stereo = np.repeat(stereo, 2, axis=0)
    _atomic_write(path, lambda tmp: _write_mp4(tmp, array, _rate(fps), stereo, audio_rate))
    return path


AUDIO_SUFFIXES = (".wav", ".mp3")
MP3_BITRATE = 192_000  # bits per second; transparent for speech and most music


def write_audio(path: Path, waveform: torch.Tensor, rate: int) -> Path:
    """Write a float waveform [C, S] or [S] (1 or 2 channels) at `rate` Hz as `path`: 16-bit PCM for .wav (the
    official trainer's audio-only output), MP3 (LAME, 192 kbit/s) for .mp3."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".wav":
        return write_wav(path, waveform, rate)
    if suffix != ".mp3":
        raise MediaError(f"{path}: audio is written as .wav or .mp3; rename the output")
    samples = _check_audio(path, waveform, rate, max_channels=2)
    _atomic_write(path, lambda tmp: _write_mp3(tmp, samples, rate))
    return path


def write_wav(path: Path, waveform: torch.Tensor, rate: int) -> Path:
    """Write a float waveform [C, S] or [S] (1 or 2 channels) as 16-bit PCM WAV, clipped to [-1, 1]."""
    path = Path(path)
    samples = _check_audio(path, waveform, rate, max_channels=2)
    _atomic_write(path, lambda tmp: _write_wav(tmp, samples, rate))
    return path


# Checks -------------------------------------------------------------------------------------------------------------
def _check_frames(path: Path, frames) -> np.ndarray:
    if not isinstance(frames, torch.Tensor | np.ndarray):
        raise MediaError(f"{path}: frames must be a uint8 tensor [F, H, W, 3], not {type(frames).__name__}")
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else frames
    if array.dtype != np.uint8:
        raise MediaError(f"{path}: frames are {array.dtype}; convert them to uint8 [F, H, W, 3] in 0..255 first")
    if array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise MediaError(f"{path}: frames have shape {tuple(array.shape)}; expected a non-empty [F, H, W, 3]")
    return np.ascontiguousarray(array)


def _check_audio(path: Path, audio, rate, max_channels: int) -> np.ndarray:
    """float32 [C, S] clipped to [-1, 1]."""
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise MediaError(f"{path}: audio sample rate {rate!r} is not a positive integer; pass the rate in Hz")
    if not isinstance(audio, torch.Tensor | np.ndarray):
        raise MediaError(f"{path}: audio must be a float waveform [C, S], not {type(audio).__name__}")
    array = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else audio.astype(np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or not 1 <= array.shape[0] <= max_channels or array.shape[1] == 0:
        raise MediaError(
            f"{path}: audio has shape {tuple(audio.shape)}; expected a non-empty waveform [C, S] with 1 or "
            f"{max_channels} channels"
        )
    if not np.isfinite(array).all():
        raise MediaError(f"{path}: the audio holds NaN or infinite samples")
    return np.ascontiguousarray(np.clip(array, -1.0, 1.0), dtype=np.float32)


def _rate(fps: float) -> Fraction:
    """Exact for integer and decimal rates (23.976 -> 2997/125) and for NTSC floats (24000/1001)."""
    return Fraction(fps).limit_denominator(1001)


# Writers ------------------------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """PyAV and pillow write to a path, not a file object, hence this twin of `write_atomically` for media files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:  # PyAV's errors are OSErrors with the errno too
        tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise MediaError(f"{path}: not written, the disk is full; free space on that drive and run again") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_abandoned_temporaries(path: Path) -> None:
    """.STEM.PID.tmpSUFFIX files that a process killed while writing `path` left behind."""
    prefix, suffix = f".{path.stem}.", f".tmp{path.suffix}"
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid = leftover.name.removeprefix(prefix).removesuffix(suffix)
        if pid.isdigit() and int(pid) != os.getpid() and process_is_gone(int(pid)):
            leftover.unlink(missing_ok=True)


def _write_png(tmp: Path, frame: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(frame, mode="RGB").save(tmp, format="PNG")


def _write_mp4(tmp: Path, frames: np.ndarray, rate: Fraction, audio: np.ndarray | None, audio_rate) -> None:
    import av

    num_frames, height, width, _ = frames.shape
    with av.open(str(tmp), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=rate, options={"crf": CRF})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=audio_rate, layout="stereo")
        sent = 0  # audio samples handed to the encoder so far
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(video.encode(frame))
            if sound is not None:  # keep the audio up with the video: samples up to the end of this frame
                until = min(audio.shape[1], round((index + 1) / rate * audio_rate))
                _encode_audio(container, sound, audio, sent, until, audio_rate)
                sent = max(sent, until)
        container.mux(video.encode(None))
        if sound is not None:
            _encode_audio(container, sound, audio, sent, audio.shape[1], audio_rate)
            container.mux(sound.encode(None))


def _encode_audio(container, stream, audio: np.ndarray, start: int, stop: int, rate: int) -> None:
    import av

    if stop <= start:
        return
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:stop]), format="fltp", layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
    container.mux(stream.encode(frame))


def _write_wav(tmp: Path, samples: np.ndarray, rate: int) -> None:
    import av

    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(str(tmp), mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _write_mp3(tmp: Path, samples: np.ndarray, rate: int) -> None:
    import av

    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(str(tmp), mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout=layout)
        stream.bit_rate = MP3_BITRATE
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
