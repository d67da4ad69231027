"""Videos with unusual sound through `ltx2_cache_latents.py --ltx_mode av` (docs/bad-input.md "Sound")."""

from __future__ import annotations

import pytest
import torch
from _corpus import VIDEO_TABLE, cache_names, caption_everything, write_dataset
from safetensors.torch import load_file

from ltx2_tuner.testing import bad_inputs
from ltx2_tuner.testing.synthetic_media import tone


def _audio(cache, stem) -> dict[str, torch.Tensor]:
    return load_file(cache / f"{stem}_00000-009_ltx2_audio.safetensors")


def _video(cache, stem) -> torch.Tensor:
    (latents,) = load_file(cache / f"{stem}_00000-009_0064x0064_ltx2.safetensors").values()
    return latents


def test_streams_that_start_apart_are_aligned_at_their_starts_as_the_official_preprocessing_does(
    tmp_path, cache_latents
):
    # The official preprocessing decodes the frames from the first one (PyAV) and the sound from the first sample
    # (torchaudio.load), whatever the container's start times say; so do we. The same packets remuxed with the
    # sound 0.25 s late (MPEG-TS, as broadcast recorders write) or early (MOV, as some cameras write) give the
    # latents of the file without the offset, in the same container (TS also keeps the AAC priming samples that
    # MP4 drops, so TS is compared with TS).
    config = write_dataset(tmp_path, VIDEO_TABLE)
    clips = tmp_path / "clips"
    source = bad_inputs.good_video(tmp_path / "source.mp4")
    bad_inputs.remux(source, clips / "plain.mp4")
    bad_inputs.remux(source, clips / "plain_ts.ts")
    late = bad_inputs.remux(source, clips / "late.ts", audio_delay_s=0.25)
    early = bad_inputs.remux(source, clips / "early.mov", audio_delay_s=-0.25)

    def audio_lead_s(path):  # how long after the video the sound starts, as stored
        video_start, audio_start = bad_inputs.stream_starts_s(path)
        return audio_start - video_start

    assert audio_lead_s(late) - audio_lead_s(clips / "plain_ts.ts") == pytest.approx(0.25, abs=0.002)
    assert audio_lead_s(early) - audio_lead_s(clips / "plain.mp4") == pytest.approx(-0.25, abs=0.002)
    caption_everything(clips)

    outcome = cache_latents(config, "--ltx_mode", "av")
    assert outcome.code == 0 and "done: 4 cached, 0 reused, 0 failed, 0 skipped" in outcome.out
    cache = tmp_path / "cache"
    for stem, twin in [("late", "plain_ts"), ("early", "plain")]:
        assert torch.equal(_video(cache, stem), _video(cache, "plain"))
        for key, tensor in _audio(cache, twin).items():
            assert torch.equal(_audio(cache, stem)[key], tensor), (stem, key)


def test_a_video_without_sound_in_av_mode_stops_before_work_unless_skipped(tmp_path, cache_latents):
    config = write_dataset(tmp_path, VIDEO_TABLE)
    bad_inputs.good_video(tmp_path / "clips" / "loud.mp4")
    silent = bad_inputs.good_video(tmp_path / "clips" / "silent.mp4", audio=False)
    caption_everything(tmp_path / "clips")

    outcome = cache_latents(config, "--ltx_mode", "av")
    assert outcome.code == 2 and f"no audio track: {silent}" in outcome.err
    assert "--missing_audio skip" in outcome.error_line()
    assert cache_names(tmp_path / "cache") == []  # stopped before any model loaded

    outcome = cache_latents(config, "--ltx_mode", "av", "--missing_audio", "skip")
    assert outcome.code == 0 and "2 cached, 0 reused, 0 failed, 0 skipped, 1 without audio" in outcome.out
    assert _audio(tmp_path / "cache", "silent")["audio_lengths_int32"].tolist() == [0]  # recorded as absent


def test_channel_layouts_rates_and_short_sound_are_cached(tmp_path, cache_latents):
    config = write_dataset(tmp_path, VIDEO_TABLE)
    clips = tmp_path / "clips"
    duration_s = 20 / bad_inputs.FPS
    layouts = {"mono_8k": (8000, (440.0,)), "surround_44k": (44100, (440.0,) * 6), "stereo_48k": (48000, (440.0,) * 2)}
    for stem, (rate, frequencies) in layouts.items():
        bad_inputs.good_video(clips / f"{stem}.mp4", audio=tone(duration_s, rate, frequencies), audio_rate=rate)
    # 0.2 s of sound under a 0.83 s clip: its first window (0.375 s) is padded with silence.
    short = bad_inputs.good_video(clips / "short_sound.mp4", audio=tone(0.2, 48000, (440.0, 440.0)))
    caption_everything(clips)

    with pytest.warns(UserWarning, match=rf"{short}: only 0\.\d+ s of audio in the 0\.375 s window"):
        outcome = cache_latents(config, "--ltx_mode", "av")
    assert outcome.code == 0 and "done: 4 cached, 0 reused, 0 failed, 0 skipped" in outcome.out
    cache = tmp_path / "cache"
    full = [_audio(cache, stem) for stem in layouts]
    # Every layout and rate ends up as the VAE's stereo 16 kHz: latents of one length, all of them real sound.
    lengths = {next(t.shape[1] for k, t in audio.items() if k.startswith("audio_latents")) for audio in full}
    assert len(lengths) == 1 and [audio["audio_lengths_int32"].item() for audio in full] == [*lengths] * 3
    assert 0 < _audio(cache, "short_sound")["audio_lengths_int32"].item() < lengths.pop()
