"""Training batches from cache files: merging, bucketing, seeded shuffling, and clear errors."""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.latent_plan import dataset_digest
from ltx2_tuner.cache.store import source_stamp, write_cache
from ltx2_tuner.data.cached_dataset import CachedBatches
from ltx2_tuner.data.config import load_dataset_config
from ltx2_tuner.errors import CacheError

CHECKPOINT = {"file": "abc", "version": "2.3", "dtype": "bfloat16"}


def _dataset(tmp_path, batch_size=2, extra=""):
    (tmp_path / "clips").mkdir(exist_ok=True)
    config = tmp_path / "dataset.toml"
    config.write_text(f'[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache"\nbatch_size = {batch_size}\n'
                      f'target_frames = [9, 17]\n{extra}')  # fmt: skip
    return config


def _cache_item(dataset, stem, window, latent_frames, fps=24.0, audio_len=None, text=True, audio_present=True):
    media = dataset.source / f"{stem}.mp4"
    if not media.exists():
        media.write_bytes(b"video")
    key = naming.item_key(stem, 0, window)
    fingerprint = {"source": source_stamp(media), "checkpoint": CHECKPOINT, "dataset": dataset_digest(dataset),
                   "bucket": [64, 32], "window": [0, window], "fps": fps}  # fmt: skip
    latents = torch.randn(128, latent_frames, 1, 2, dtype=torch.bfloat16)
    write_cache(
        naming.latent_cache_path(dataset.cache_directory, key, 640, 360),
        {naming.latents_key(latents): latents},
        fingerprint,
    )
    if audio_len is not None:
        audio = torch.randn(8, audio_len, 16) if audio_present else torch.zeros(8, 0, 16)
        lengths = torch.tensor([audio_len if audio_present else 0], dtype=torch.int32)
        write_cache(naming.audio_cache_path(dataset.cache_directory, key),
                    {naming.audio_latents_key(audio): audio, "audio_lengths_int32": lengths},
                    {**fingerprint, "audio_checkpoint": CHECKPOINT, "audio": "x"})  # fmt: skip
    if text:
        write_cache(naming.text_cache_path(dataset.cache_directory, stem), {
            "video_prompt_embeds_bfloat16": torch.randn(16, 8, dtype=torch.bfloat16),
            "audio_prompt_embeds_bfloat16": torch.randn(16, 4, dtype=torch.bfloat16),
            "prompt_attention_mask": torch.ones(16, dtype=torch.int64),
        }, {"caption": stem})  # fmt: skip
    return key


def test_batches_merge_the_three_caches_and_never_mix_shapes(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path))
    for stem in ("a", "b", "c"):
        _cache_item(dataset, stem, 9, latent_frames=2, audio_len=10)
    _cache_item(dataset, "d", 17, latent_frames=3, audio_len=18)
    batches = CachedBatches([dataset], mode="av", seed=1)
    shapes = sorted(len(batches[i]["items"]) for i in range(len(batches)))
    assert shapes == [1, 1, 2]  # 3 items of one shape in batches of 2, 1 of another shape
    for index in range(len(batches)):
        batch = batches[index]
        b = len(batch["items"])
        latents = batch["latents"]
        assert latents["latents"].shape[:2] == (b, 128) and latents["latents"].dtype == torch.bfloat16
        assert latents["num_frames"] == latents["latents"].shape[2]
        assert latents["fps"].tolist() == [24.0] * b
        assert batch["audio_latents"]["latents"].shape[0] == b and batch["audio_latents"]["lengths"].shape == (b,)
        conditions = batch["conditions"]
        assert conditions["video_prompt_embeds"].shape == (b, 16, 8)
        assert conditions["audio_prompt_embeds"].shape == (b, 16, 4)
        assert conditions["prompt_attention_mask"].shape == (b, 16)


def test_video_mode_needs_no_audio_and_shuffles_per_epoch_from_the_seed(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path, batch_size=1))
    for stem in "abcdefgh":
        _cache_item(dataset, stem, 9, latent_frames=2)
    first, again = CachedBatches([dataset], "video", seed=3), CachedBatches([dataset], "video", seed=3)
    order = [first[i]["items"][0] for i in range(len(first))]
    assert order == [again[i]["items"][0] for i in range(len(again))]
    first.set_epoch(1)
    assert [first[i]["items"][0] for i in range(len(first))] != order
    assert sorted(order) == sorted(f"{s}_00000-009" for s in "abcdefgh")
    assert "audio_latents" not in first[0] and "audio_prompt_embeds" not in first[0]["conditions"]


def test_num_repeats(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path, batch_size=1, extra="num_repeats = 3"))
    _cache_item(dataset, "a", 9, latent_frames=2)
    assert len(CachedBatches([dataset], "video")) == 3


def test_compat_text_keys_are_split(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path, batch_size=1))
    _cache_item(dataset, "a", 9, latent_frames=2, audio_len=10, text=False)
    write_cache(naming.text_cache_path(dataset.cache_directory, "a"), {
        "text_bfloat16": torch.cat([torch.zeros(16, 6), torch.ones(16, 3)], -1).bfloat16(),
        "text_mask": torch.ones(16, dtype=torch.int64)}, {})  # fmt: skip
    conditions = CachedBatches([dataset], "av", video_context_dim=6)[0]["conditions"]
    assert conditions["video_prompt_embeds"].shape == (1, 16, 6) and conditions["video_prompt_embeds"].max() == 0
    assert conditions["audio_prompt_embeds"].shape == (1, 16, 3) and conditions["audio_prompt_embeds"].min() == 1
    assert conditions["prompt_attention_mask"].shape == (1, 16)


def test_items_without_audio_are_left_out_of_av_training(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path, batch_size=1))
    _cache_item(dataset, "a", 9, latent_frames=2, audio_len=10)
    _cache_item(dataset, "silent", 9, latent_frames=2, audio_len=10, audio_present=False)
    with pytest.warns(UserWarning, match="silent_00000-009"):
        batches = CachedBatches([dataset], "av")
    assert len(batches) == 1 and batches[0]["items"] == ["a_00000-009"]
    assert len(CachedBatches([dataset], "video")) == 2  # video training keeps it


def test_missing_and_stale_caches_name_the_item_and_the_command(tmp_path):
    config = _dataset(tmp_path)
    (dataset,) = load_dataset_config(config)
    _cache_item(dataset, "a", 9, latent_frames=2)
    (dataset.source / "b.mp4").write_bytes(b"new clip")
    with pytest.raises(CacheError, match=r"b\.mp4: no latent cache in .*ltx2_cache_latents\.py --dataset_config"):
        CachedBatches([dataset], "video", dataset_config=config)
    (dataset.source / "b.mp4").unlink()

    with pytest.raises(
        CacheError, match=r"a_00000-009_ltx2_audio\.safetensors: audio latent cache missing .*--ltx_mode av"
    ):
        CachedBatches([dataset], "av")
    naming.text_cache_path(dataset.cache_directory, "a").unlink()
    with pytest.raises(
        CacheError, match=r"a_ltx2_te\.safetensors: text encoder cache missing .*ltx2_cache_text_encoder_outputs\.py"
    ):
        CachedBatches([dataset], "video")
    _cache_item(dataset, "a", 9, latent_frames=2)
    (dataset.source / "a.mp4").write_bytes(b"edited video")
    with pytest.raises(CacheError, match=r"stale cache, .*a\.mp4 changed since it was cached"):
        CachedBatches([dataset], "video")
    _cache_item(dataset, "a", 9, latent_frames=2)
    with pytest.raises(CacheError, match=r"LTX-2\.3 VAE but training uses LTX-2\.0"):
        CachedBatches([dataset], "video", model_version="2.0")


def test_caches_of_other_settings_are_ignored_not_trained(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path))
    _cache_item(dataset, "a", 9, latent_frames=2)
    (changed,) = load_dataset_config(_dataset(tmp_path, extra='frame_extraction = "chunk"'))
    _cache_item(changed, "a", 17, latent_frames=3)  # made for the new settings; the 9-frame window is now stale
    with pytest.warns(UserWarning, match="ignored 1 cache file"):
        batches = CachedBatches([changed], "video")
    assert [batches[i]["items"] for i in range(len(batches))] == [["a_00000-017"]]


def test_text_cache_must_fit_the_mode_the_model_and_the_caption(tmp_path):
    import hashlib

    (dataset,) = load_dataset_config(_dataset(tmp_path, batch_size=1))
    _cache_item(dataset, "a", 9, latent_frames=2, audio_len=10, text=False)
    (dataset.source / "a.txt").write_text("a red ball")
    text_path = naming.text_cache_path(dataset.cache_directory, "a")
    tensors = {
        "video_prompt_embeds_float32": torch.zeros(16, 8),
        "prompt_attention_mask": torch.ones(16, dtype=torch.int64),
    }

    def write_text(mode, version, caption):
        digest = hashlib.sha256(caption.encode()).hexdigest()
        write_cache(text_path, tensors, {"caption_sha256": digest, "mode": mode, "connectors": {"version": version}})

    write_text("video", "2.3", "a red ball")
    assert len(CachedBatches([dataset], "video", model_version="2.3")) == 1
    with pytest.raises(
        CacheError, match=r"made with --ltx_mode video .* training is AV; .*ltx2_cache_text_encoder_outputs"
    ):
        CachedBatches([dataset], "av")
    write_text("video", "2.0", "a red ball")
    with pytest.raises(CacheError, match=r"LTX-2\.0 connectors but training uses LTX-2\.3"):
        CachedBatches([dataset], "video", model_version="2.3")
    (dataset.source / "a.txt").write_text("a blue ball")
    with pytest.raises(CacheError, match=r"stale, the caption of a\.mp4 changed"):
        CachedBatches([dataset], "video")
