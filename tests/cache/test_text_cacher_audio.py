"""Audio-only text caching (`--ltx_mode audio`, T2A): the audio half of an AV cache, with no video tensor read,
kept or written, and no compatibility keys (other tools read `text_*` as video)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import ltx2_tuner.models.loading as loading
from ltx2_tuner.cache import text_cacher
from ltx2_tuner.cache.cached_dataset import _conditions, _load
from ltx2_tuner.cache.store import read_fingerprint
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_text_encoder_outputs import main
from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models.text_embeddings import connector_checkpoint, connector_input, load_text_embedder
from ltx2_tuner.roles import roles_for
from ltx2_tuner.testing.demo_data import write_captioned_stills
from ltx2_tuner.testing.tiny_checkpoint import copy_without

CAPTIONS = {"fox": "A red fox barks twice in the snow.", "cat": "a cat purrs"}
# Official names of the video side of the text path: audio mode must never read them.
VIDEO_NAMES = (
    "model.diffusion_model.video_embeddings_connector.",
    "text_embedding_projection.video_aggregate_embed.",
)


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every tensor name the component loader reads from a checkpoint, in order."""
    names: list[str] = []
    original = loading.read_tensors

    def recording(header, wanted, *args, **kwargs):
        wanted = list(wanted)
        names.extend(wanted)
        return original(header, wanted, *args, **kwargs)

    monkeypatch.setattr(loading, "read_tensors", recording)
    return names


def _packed(info, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random Gemma features of the width the connectors take, with a short, a mid and a full row."""
    channels, factor = connector_input(info)
    generator = torch.Generator().manual_seed(seed)
    packed = torch.randn(3, 1024, channels * factor, generator=generator) * 5
    mask = torch.zeros(3, 1024, dtype=torch.int64)
    for row, length in enumerate((1, 300, 1024)):
        mask[row, 1024 - length :] = 1
    return packed, mask


@pytest.mark.parametrize("version", ["2.0", "2.3", "2.5"])
def test_audio_embedder_equals_the_audio_half_of_the_av_call_and_reads_no_video_weight(
    tiny_checkpoints, reads, version
):
    info = connector_checkpoint(tiny_checkpoints[version].path)
    packed, mask = _packed(info, seed=7)
    _, av_audio, av_mask = load_text_embedder(info, "av", torch.float32)(packed, mask)
    reads.clear()
    embedder = load_text_embedder(info, "audio", torch.float32)
    video, audio, audio_mask = embedder(packed, mask)

    assert video is None and torch.equal(audio, av_audio), (audio - av_audio).abs().max().item()
    assert torch.equal(audio_mask, av_mask) and audio_mask.eq(1).all()
    connectors = embedder.connectors
    assert connectors.video_connector is None
    assert getattr(connectors, "video_text_proj_in", None) is None  # 2.0 has none; 2.3/2.5 dropped it
    assert not any("video" in name for name, _ in connectors.named_parameters())
    assert all(p.device.type == "cpu" for p in connectors.parameters())  # everything kept was loaded
    assert reads and not [name for name in reads if name.startswith(VIDEO_NAMES)]
    assert any(name.startswith("model.diffusion_model.audio_embeddings_connector.") for name in reads)


def test_audio_mode_needs_only_the_audio_connector(tiny_checkpoints, tmp_path):
    full = tiny_checkpoints["2.3"].path
    no_video = copy_without(full, tmp_path / "no_video.safetensors", VIDEO_NAMES[0])
    no_video = copy_without(no_video, tmp_path / "no_video_at_all.safetensors", VIDEO_NAMES[1])
    packed, mask = _packed(connector_checkpoint(full), seed=8)
    expected = load_text_embedder(connector_checkpoint(full), "av", torch.float32)(packed, mask)[1]
    assert torch.equal(load_text_embedder(connector_checkpoint(no_video), "audio", torch.float32)(packed, mask)[1],
                       expected)  # fmt: skip

    no_audio = copy_without(
        full, tmp_path / "no_audio.safetensors", "model.diffusion_model.audio_embeddings_connector."
    )
    with pytest.raises(CheckpointError) as error:
        load_text_embedder(connector_checkpoint(no_audio), "audio")
    message = str(error.value)
    assert "audio_embeddings_connector.*" in message and "--ltx_mode audio" in message
    assert "video_embeddings_connector" not in message and "--ltx2_text_encoder_checkpoint" in message


def _cache(config: Path, checkpoint: Path, *flags: str) -> int:
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--device", "cpu"]
    return run(main, [*argv, "--mixed_precision", "no", *flags])


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


def _compare_with_av(root: Path, checkpoint: Path, reads: list[str], *flags: str) -> None:
    """Cache the same captions in av mode and (recording the reads) in audio mode; compare per caption."""
    av_config = write_captioned_stills(root / "av", CAPTIONS)
    audio_config = write_captioned_stills(root / "audio", CAPTIONS)
    assert _cache(av_config, checkpoint, "--ltx_mode", "av", *flags) == 0
    reads.clear()
    assert _cache(audio_config, checkpoint, "--ltx_mode", "audio", *flags) == 0  # compat keys not refused
    assert reads and not [name for name in reads if name.startswith(VIDEO_NAMES)]

    for stem in CAPTIONS:
        av_path, path = (root / mode / "cache" / f"{stem}_ltx2_te.safetensors" for mode in ("av", "audio"))
        av = _tensors(av_path)
        audio = _tensors(path)
        assert set(audio) == {"audio_prompt_embeds_float32", "prompt_attention_mask"}  # no video, no text_*
        diff = (audio["audio_prompt_embeds_float32"] - av["audio_prompt_embeds_float32"]).abs().max().item()
        assert diff == 0.0, (stem, diff)
        assert audio["audio_prompt_embeds_float32"].shape == av["audio_prompt_embeds_float32"].shape
        assert torch.equal(audio["prompt_attention_mask"], av["prompt_attention_mask"])
        fingerprint = read_fingerprint(path)
        assert fingerprint["mode"] == "audio" and fingerprint["compat_keys"] is False
        assert read_fingerprint(av_path)["mode"] == "av"
        # The trainer's T2A batches read the same context from either file.
        from_audio, from_av = (_conditions(_load(p), roles_for("audio"), None) for p in (path, av_path))
        assert from_audio.keys() == from_av.keys() == {"audio_prompt_embeds", "prompt_attention_mask"}
        assert all(torch.equal(from_audio[k], from_av[k]) for k in from_audio)


@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_audio_cache_is_the_audio_half_of_an_av_cache(tmp_path, tiny_checkpoints, tiny_gemma_dir, reads, version):
    _compare_with_av(tmp_path, tiny_checkpoints[version].path, reads, "--gemma_root", str(tiny_gemma_dir))


def test_audio_cache_from_an_ltx_2_5_split_pack(tmp_path, reads):
    from ltx2_tuner.testing.tiny_pack import write_tiny_pack

    # The pack keeps the projections in its packed Gemma 4 file, found beside the transformer.
    pack = write_tiny_pack(tmp_path / "pack", "2.5", seed=4, diffusion_vae=False)
    _compare_with_av(tmp_path, pack.transformer, reads)


def test_skip_existing_treats_another_mode_as_stale(tmp_path, tiny_checkpoints, tiny_gemma_dir, capsys):
    config = write_captioned_stills(tmp_path, CAPTIONS)
    flags = ("--gemma_root", str(tiny_gemma_dir), "--skip_existing")
    checkpoint = tiny_checkpoints["2.0"].path
    assert _cache(config, checkpoint, "--ltx_mode", "av", *flags) == 0
    capsys.readouterr()
    assert _cache(config, checkpoint, "--ltx_mode", "audio", *flags) == 0
    assert "done: 2 encoded, 0 reused, 0 failed" in capsys.readouterr().out
    assert _cache(config, checkpoint, "--ltx_mode", "audio", *flags) == 0
    assert "done: 0 encoded, 2 reused, 0 failed" in capsys.readouterr().out


def test_which_cache_serves_which_training_mode():
    # Each training build reads the modalities it runs; a cache serves it when it holds every one of them.
    needs = {"video": {"video"}, "av": {"video", "audio"}, "audio": {"audio"}}
    for cache_mode, held in needs.items():
        for training_mode, needed in needs.items():
            assert text_cacher.serves(cache_mode, training_mode) == (needed <= held), (cache_mode, training_mode)


def test_no_compatibility_keys_without_video():
    audio, mask = torch.randn(1024, 16), torch.ones(1024, dtype=torch.int64)
    assert set(text_cacher.cache_tensors(None, audio, mask, compat_keys=False)) == {
        "audio_prompt_embeds_float32",
        "prompt_attention_mask",
    }
    with pytest.raises(ValueError, match="audio-only"):
        text_cacher.cache_tensors(None, audio, mask, compat_keys=True)
    assert [m for m in ("video", "av", "audio") if text_cacher.compat_keys_allowed(m)] == ["video", "av"]
    stamp = dict(connectors={"file": "f", "version": "2.3"}, gemma=None, dtype=torch.float32)
    with pytest.raises(ValueError, match="no compatibility keys"):
        text_cacher.TextStamp(mode="audio", compat_keys=True, **stamp)
    fields = text_cacher.TextStamp(mode="audio", compat_keys=False, **stamp).fingerprint("a cat")
    assert json.loads(json.dumps(fields))["mode"] == "audio"
