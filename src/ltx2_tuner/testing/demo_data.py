"""The demo's datasets: short synthetic clips of a moving square with a matching tone track, and captions; for the
audio-only (T2A) demo, captioned tones (chords of a few pitches) in an audio dataset."""

from __future__ import annotations

from pathlib import Path

from ltx2_tuner.testing.synthetic_media import tone, write_audio, write_video

_CAPTIONS = (
    "a bright square glides from left to right while a tone rises in pitch",
    "a square slides across a textured background, its hum climbing as it moves right",
    "a small bright block travels left to right over a patterned backdrop with a rising tone",
    "a square moves steadily to the right as the sound sweeps upward",
)


def write_demo_dataset(root: Path, num_clips: int = 4, num_frames: int = 25, fps: float = 24.0) -> Path:
    """Write `root/clips/*.mp4` with audio, their `.txt` captions and `root/dataset.toml`; return the config."""
    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    for index in range(num_clips):
        stem = f"clip_{index:03d}"
        write_video(clips / f"{stem}.mp4", num_frames, fps, 96, 64, audio="tone", seed=index)
        (clips / f"{stem}.txt").write_text(_CAPTIONS[index % len(_CAPTIONS)] + "\n", encoding="utf-8")
    config = root / "dataset.toml"
    config.write_text(
        "[general]\n"
        "resolution = [96, 64]\n"
        'caption_extension = ".txt"\n'
        "batch_size = 1\n\n"
        "[[datasets]]\n"
        'video_directory = "clips"\n'
        'cache_directory = "cache"\n'
        f"target_frames = [{num_frames - (num_frames - 1) % 8}]\n",
        encoding="utf-8",
    )
    return config


_TONES = (  # (pitches in Hz, caption)
    ((220.0, 330.0), "a low, warm hum of two notes"),
    ((880.0,), "a single high whistle"),
    ((440.0, 554.4, 659.3), "a bright major chord held steady"),
    ((110.0, 165.0), "a deep drone, like an organ pedal"),
)


def write_demo_tones(root: Path, seconds: float = 1.6, sample_rate: int = 44100) -> Path:
    """Write `root/tones/*.wav` (stereo, `sample_rate`), their `.txt` captions and `root/dataset.toml` (an audio
    dataset in 1-second buckets, padded); return the config."""
    folder = root / "tones"
    folder.mkdir(parents=True, exist_ok=True)
    for index, (pitches, caption) in enumerate(_TONES):
        stem = f"tone_{index:03d}"
        chord = tone(seconds - 0.2 * (index % 2), sample_rate, pitches).mean(axis=0, keepdims=True)
        write_audio(folder / f"{stem}.wav", chord.repeat(2, axis=0), sample_rate)
        (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    config = root / "dataset.toml"
    config.write_text(
        '[[datasets]]\naudio_directory = "tones"\ncache_directory = "cache"\naudio_bucket_interval = 1.0\n',
        encoding="utf-8",
    )
    return config


def write_captioned_stills(root: Path, captions: dict[str, str | None]) -> Path:
    """`root/stills/{stem}.png` (40x30, red) with `{stem}.txt` holding each caption (None: no caption file), and
    `root/dataset.toml` caching them into `root/cache` at 64x32; return the config. For text-caching tests."""
    from PIL import Image

    stills = root / "stills"
    stills.mkdir(parents=True, exist_ok=True)
    for stem, caption in captions.items():
        Image.new("RGB", (40, 30), (200, 10, 10)).save(stills / f"{stem}.png")
        if caption is not None:
            (stills / f"{stem}.txt").write_text(caption, encoding="utf-8")
    config = root / "dataset.toml"
    config.write_text('[general]\nresolution = [64, 32]\n'
                      '[[datasets]]\nimage_directory = "stills"\ncache_directory = "cache"\n')  # fmt: skip
    return config
