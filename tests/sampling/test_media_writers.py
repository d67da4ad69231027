"""write_media / write_wav: what PyAV and pillow read back from the files we write, and nothing left on failure."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ltx2_tuner.errors import MediaError
from ltx2_tuner.sampling.media_writers import write_media, write_wav

FRAMES, HEIGHT, WIDTH = 17, 64, 96


def _pattern(frames=FRAMES, height=HEIGHT, width=WIDTH, colour=True) -> torch.Tensor:
    """A smooth moving colour wave, uint8 [F, H, W, 3]."""
    t = torch.arange(frames).view(-1, 1, 1, 1).float()
    y = torch.arange(height).view(1, -1, 1, 1).float()
    x = torch.arange(width).view(1, 1, -1, 1).float()
    phase = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3) if colour else torch.zeros(1, 1, 1, 3)
    wave = 128 + 80 * torch.sin(x / 30 + y / 40 + t / 4 + phase)
    return wave.round().clamp(0, 255).to(torch.uint8).expand(frames, height, width, 3).contiguous()


def _tone(seconds: float, rate: int, channels: int = 2) -> torch.Tensor:
    time = torch.arange(round(seconds * rate)) / rate
    left = 0.5 * torch.sin(2 * torch.pi * 440 * time)
    return torch.stack([left, 0.3 * torch.sin(2 * torch.pi * 660 * time)])[:channels]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fps", [24, 23.976, 24000 / 1001, 25.0])
def test_mp4_streams_and_timing(tmp_path, fps):
    rate = 48000
    tone = _tone(FRAMES / fps, rate)
    path = write_media(tmp_path / "clip.mp4", _pattern(), fps, tone, rate)
    assert path == tmp_path / "clip.mp4" and _leftovers(tmp_path) == ["clip.mp4"]
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert (video.width, video.height) == (WIDTH, HEIGHT)
        # 23.976 is kept exactly (ltx-trainer truncates the rate to an int).
        assert video.average_rate == Fraction(fps).limit_denominator(1001)
        assert audio.codec_context.name == "aac" and audio.rate == rate and audio.codec_context.channels == 2
        audio_seconds = float(audio.duration * audio.time_base)
        frame_times = [float(frame.pts * frame.time_base) for frame in container.decode(video=0)]
        container.seek(0)
        sound = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    assert len(frame_times) == FRAMES
    assert frame_times == pytest.approx([i / fps for i in range(FRAMES)], abs=1e-3)
    assert abs(audio_seconds - FRAMES / fps) <= 1 / fps  # measured: within 1 ms
    # The sound starts at time 0 (the encoder's priming samples are cut on decode) and survives AAC. Measured RMS
    # error relative to the signal: 4.9% aligned, 8.3% one sample early or late (1.0% / 13% at 24 kHz).
    length, tone = tone.shape[1] - 200, tone.numpy()
    errors = {s: _rms(sound[:, 100 + s : 100 + s + length] - tone[:, 100 : 100 + length]) for s in range(-2, 3)}
    assert min(errors, key=errors.get) == 0 and errors[0] < 0.07 * _rms(tone), errors


def test_mp4_frames_round_trip_approximately(tmp_path):
    # CRF 18 with 4:2:0 chroma. Measured mean |error| in 0..255 levels: 1.58 for this colour wave (0.81 for its
    # grey version); frames of another time step differ by ~40 on average.
    frames = _pattern()
    path = write_media(tmp_path / "clip.mp4", frames, 24)
    with av.open(str(path)) as container:
        assert len(container.streams.audio) == 0
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    error = np.abs(decoded.astype(np.float64) - frames.numpy()).mean()
    shifted = np.abs(np.roll(decoded, 4, axis=0).astype(np.float64) - frames.numpy()).mean()
    assert error < 2.5, error
    assert shifted > 10 * error, (shifted, error)


def test_mono_audio_becomes_stereo(tmp_path):
    rate = 24000
    path = write_media(tmp_path / "clip.mp4", _pattern(), 24, _tone(FRAMES / 24, rate, channels=1)[0], rate)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.channels == 2 and audio.rate == rate
        decoded = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    # Both channels carry the mono signal (AAC codes them jointly; measured RMS of L - R: 1.2% of the signal).
    assert _rms(decoded[0] - decoded[1]) < 0.05 * _rms(decoded[0]) and _rms(decoded[0]) > 0.3


def test_single_frame_writes_an_exact_png(tmp_path):
    frame = torch.randint(0, 256, (1, HEIGHT, WIDTH, 3), generator=torch.Generator().manual_seed(0))
    path = write_media(tmp_path / "still.mp4", frame.to(torch.uint8), 24, _tone(0.1, 24000), 24000)
    assert path == tmp_path / "still.png" and _leftovers(tmp_path) == ["still.png"]
    with Image.open(path) as image:
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), frame[0].numpy())


@pytest.mark.parametrize("channels", [1, 2])
def test_wav_round_trip(tmp_path, channels):
    rate = 16000
    waveform = torch.rand(channels, 3000, generator=torch.Generator().manual_seed(channels)) * 2.4 - 1.2
    path = write_wav(tmp_path / "sound.wav", waveform, rate)
    assert _leftovers(tmp_path) == ["sound.wav"]
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "pcm_s16le" and stream.rate == rate
        assert stream.codec_context.channels == channels
        pcm = np.concatenate([f.to_ndarray().reshape(-1, channels).T for f in container.decode(audio=0)], axis=1)
    assert pcm.dtype == np.int16 and pcm.shape == (channels, 3000)
    # Clipped to [-1, 1] and scaled by 32768 (1.0 saturates at 32767): within one step of the input.
    error = np.abs(pcm / 32768 - waveform.clamp(-1, 1).numpy()).max()
    assert error <= 1 / 32768 + 1e-9, error * 32768


def test_write_audio_picks_wav_or_mp3_by_suffix(tmp_path):
    from ltx2_tuner.sampling.media_writers import write_audio

    rate, seconds = 24000, 0.5
    t = torch.arange(int(rate * seconds)) / rate
    waveform = 0.5 * torch.sin(2 * torch.pi * 880 * t).repeat(2, 1)
    wav = write_audio(tmp_path / "a.WAV", waveform, rate)
    with av.open(str(wav)) as container:
        assert container.streams.audio[0].codec_context.name == "pcm_s16le"
    mp3 = write_audio(tmp_path / "a.mp3", waveform, rate)
    with av.open(str(mp3)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name.startswith("mp3") and stream.rate == rate and stream.channels == 2
        decoded = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    assert waveform.shape[1] <= decoded.shape[1] <= waveform.shape[1] + 1152  # within one MP3 frame of padding
    spectrum = np.abs(np.fft.rfft(decoded.mean(0)))
    assert abs(np.fft.rfftfreq(decoded.shape[1], 1 / rate)[spectrum.argmax()] - 880) < 5  # the same tone
    with pytest.raises(MediaError, match=r"a\.ogg: audio is written as \.wav or \.mp3"):
        write_audio(tmp_path / "a.ogg", waveform, rate)
    assert sorted(_leftovers(tmp_path)) == ["a.WAV", "a.mp3"]


@pytest.mark.parametrize(
    ("frames", "words"),
    [
        (torch.zeros(FRAMES, 63, 96, 3, dtype=torch.uint8), "even width and height"),
        (torch.zeros(FRAMES, 64, 96, 3), "float32"),
        (torch.zeros(FRAMES, 3, 64, 96, dtype=torch.uint8), "[F, H, W, 3]"),
    ],
)
def test_bad_frames_are_refused_and_leave_nothing(tmp_path, frames, words):
    with pytest.raises(MediaError, match=r"clip\.mp4") as error:
        write_media(tmp_path / "clip.mp4", frames, 24)
    assert words in str(error.value)
    assert _leftovers(tmp_path) == []


def test_bad_audio_is_refused(tmp_path):
    with pytest.raises(MediaError, match="sample rate"):
        write_media(tmp_path / "clip.mp4", _pattern(), 24, _tone(0.5, 24000), None)
    with pytest.raises(MediaError, match="1 or 2 channels"):
        write_media(tmp_path / "clip.mp4", _pattern(), 24, torch.zeros(6, 100), 24000)
    with pytest.raises(MediaError, match="frame rate"):
        write_media(tmp_path / "clip.mp4", _pattern(), 0, None)
    assert _leftovers(tmp_path) == []


def test_failure_while_encoding_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = write_media(tmp_path / "clip.mp4", _pattern(), 24)
    before = path.read_bytes()
    calls = []
    real = av.VideoFrame.from_ndarray

    def failing(array, format):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk full")
        return real(array, format=format)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_media(path, _pattern(colour=False), 24, _tone(1.0, 24000), 24000)
    assert _leftovers(tmp_path) == ["clip.mp4"] and path.read_bytes() == before
