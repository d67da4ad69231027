"""Training batches from cache files: merging, bucketing, seeded shuffling, and clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.cache.latent_plan import dataset_digest
from ltx2_tuner.cache.store import read_fingerprint, source_stamp, write_cache
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
                    {**fingerprint, "audio_checkpoint": CHECKPOINT, "audio": "x", "audio_preprocessing": "x"})  # fmt: skip
    if text:
        write_cache(naming.text_cache_path(dataset.cache_directory, stem), {
            "video_prompt_embeds_bfloat16": torch.randn(16, 8, dtype=torch.bfloat16),
            "audio_prompt_embeds_bfloat16": torch.randn(16, 4, dtype=torch.bfloat16),
            "prompt_attention_mask": torch.ones(16, dtype=torch.int64),
        }, _text_fingerprint(dataset, stem))  # fmt: skip
    return key


def _text_fingerprint(dataset, stem, mode="av", version="2.3"):
    """What the text cacher records; writes the caption file it was made from if there is none."""
    caption_file = dataset.source / f"{stem}.txt"
    if not caption_file.exists():
        caption_file.write_text(f"caption of {stem}")
    digest = hashlib.sha256(caption_file.read_text().strip().encode()).hexdigest()
    return {"caption_sha256": digest, "mode": mode, "connectors": {"version": version}}


def test_batches_merge_the_three_caches_and_never_mix_shapes(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path))
    for stem in ("a", "b", "c"):
        _cache_item(dataset, stem, 9, latent_frames=2, audio_len=10)
    _cache_item(dataset, "d", 17, latent_frames=3, audio_len=18)
    batches = CachedBatches([dataset], "av", seed=1)
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
        "text_mask": torch.ones(16, dtype=torch.int64)}, _text_fingerprint(dataset, "a"))  # fmt: skip
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
        CacheError,
        match=r"made with --ltx_mode video \(no audio embeddings\) but training needs them \(--ltx_mode av\); .*ltx2_cache_text_encoder_outputs",
    ):
        CachedBatches([dataset], "av")
    write_text("video", "2.0", "a red ball")
    with pytest.raises(CacheError, match=r"LTX-2\.0 connectors but training uses LTX-2\.3"):
        CachedBatches([dataset], "video", model_version="2.3")
    (dataset.source / "a.txt").write_text("a blue ball")
    with pytest.raises(CacheError, match=r"stale, the caption of a\.mp4 changed"):
        CachedBatches([dataset], "video")


# ---- every cache file is checked before training, all problems in one error


def _truncate(path, keep_fraction=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def _rewrite(path, drop=(), add=None, fingerprint_update=None):
    """Rewrite a cache file without some tensors / with others, keeping (or updating) its fingerprint."""
    fingerprint = read_fingerprint(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys() if key not in drop}  # noqa: SIM118
    tensors.update(add or {})
    write_cache(path, tensors, {**fingerprint, **(fingerprint_update or {})})


def test_truncated_latent_cache_is_an_error_naming_it_not_an_ignored_file(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path))
    _cache_item(dataset, "a", 9, latent_frames=2)
    path = naming.latent_cache_path(dataset.cache_directory, "a_00000-009", 640, 360)
    _truncate(path)
    with pytest.raises(CacheError, match=r"a_00000-009_0640x0360_ltx2\.safetensors: unreadable cache file \(file is "
                                         r"truncated .*\); run `python ltx2_cache_latents\.py"):  # fmt: skip
        CachedBatches([dataset], "video")


def test_truncated_text_cache_is_caught_by_the_scan(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path))
    _cache_item(dataset, "a", 9, latent_frames=2)
    text_path = naming.text_cache_path(dataset.cache_directory, "a")
    _truncate(text_path, 0.9)  # the header survives, the tensors do not
    with pytest.raises(CacheError, match=r"a_ltx2_te\.safetensors: unreadable cache file .*ltx2_cache_text_encoder"):
        CachedBatches([dataset], "video")


def test_missing_tensors_and_fields_are_reported_together_one_line_per_file(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path, batch_size=1))
    for stem in ("a", "b", "c", "d", "e"):
        _cache_item(dataset, stem, 9, latent_frames=2, audio_len=10)
    cache = dataset.cache_directory
    _rewrite(naming.latent_cache_path(cache, "a_00000-009", 640, 360), drop=["latents_2x1x2_bfloat16"],
             add={"something_else": torch.zeros(2)})  # fmt: skip
    _rewrite(naming.audio_cache_path(cache, "b_00000-009"), drop=["audio_lengths_int32"])
    _rewrite(naming.text_cache_path(cache, "c"), drop=["prompt_attention_mask"])
    _rewrite(naming.text_cache_path(cache, "d"), drop=["audio_prompt_embeds_bfloat16"])
    latent_e = naming.latent_cache_path(cache, "e_00000-009", 640, 360)
    fingerprint = read_fingerprint(latent_e)
    del fingerprint["fps"]
    write_cache(latent_e, {"latents_2x1x2_float32": torch.zeros(128, 2, 1, 2)}, fingerprint)

    with pytest.raises(CacheError) as caught:
        CachedBatches([dataset], "av")
    lines = str(caught.value).splitlines()
    assert lines[0] == "5 cache problems, nothing trained:"
    problems = dict(line.strip().split(": ", 1) for line in lines[1:])
    by_name = {Path(path).name: problem for path, problem in problems.items()}
    assert by_name["a_00000-009_0640x0360_ltx2.safetensors"].startswith("no latents_{F}x{H}x{W}_{dtype} tensor;")
    assert by_name["b_00000-009_ltx2_audio.safetensors"].startswith("no audio_lengths_int32 tensor of one int32;")
    assert by_name["c_ltx2_te.safetensors"].startswith("no prompt_attention_mask tensor (its mask);")
    assert by_name["d_ltx2_te.safetensors"].startswith("no audio_prompt_embeds tensor (the audio embeddings")
    assert by_name["e_00000-009_0640x0360_ltx2.safetensors"].startswith("fingerprint lacks fps")
    assert all("--skip_existing`" in problem for problem in by_name.values())


def test_text_cache_of_another_model_width_is_named(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path))
    _cache_item(dataset, "a", 9, latent_frames=2)
    with pytest.raises(CacheError, match=r"a_ltx2_te\.safetensors: text embeddings are 8 wide, this model's video "
                                         r"text context is 32"):  # fmt: skip
        CachedBatches([dataset], "video", video_context_dim=32)
    assert len(CachedBatches([dataset], "video", video_context_dim=8)) == 1


def test_audio_tensor_whose_shape_contradicts_its_name_is_named(tmp_path):
    (dataset,) = load_dataset_config(_dataset(tmp_path))
    _cache_item(dataset, "a", 9, latent_frames=2, audio_len=10)
    audio_path = naming.audio_cache_path(dataset.cache_directory, "a_00000-009")
    _rewrite(
        audio_path,
        drop=["audio_latents_10x16x8_float32"],
        add={"audio_latents_10x16x8_float32": torch.zeros(8, 12, 16)},
    )
    with pytest.raises(CacheError, match=r"a_00000-009_ltx2_audio\.safetensors: tensor audio_latents_10x16x8_float32 "
                                         r"has shape \[8, 12, 16\], its name says \[8, 10, 16\]"):  # fmt: skip
        CachedBatches([dataset], "av")
