"""Caption dropout in CachedBatches: the empty prompt's conditions per sample, drawn from (seed, epoch, batch index)
alone; checked at scan time; validation datasets never drop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.cached_dataset import CachedBatches, _conditions, _load
from ltx2_tuner.cache.latent_plan import dataset_digest
from ltx2_tuner.cache.store import read_fingerprint, source_stamp, write_cache
from ltx2_tuner.data.config import load_all_datasets, load_dataset_config, load_validation_datasets
from ltx2_tuner.errors import CacheError
from ltx2_tuner.roles import roles_for
from ltx2_tuner.testing.synthetic_caches import write_synthetic_text_caches

FRAMES = 9


def _datasets(tmp_path, first="", second="", clips=8, batch_size=4, validation=True):
    """Two training video datasets (`first`, `second`: extra TOML lines) and one validation dataset, each with
    `clips` clips whose latents and text caches (the empty prompt's too) are written directly; return the config."""
    tables = [("datasets", "one", first), ("datasets", "two", second)]
    if validation:
        tables.append(("validation_datasets", "held", ""))
    text = ""
    for table, folder, extra in tables:
        text += f'[[{table}]]\nvideo_directory = "{folder}"\ncache_directory = "cache/{folder}"\n'
        text += f"batch_size = {batch_size}\ntarget_frames = [{FRAMES}]\n{extra}\n"
        (tmp_path / folder).mkdir()
        for index in range(clips):
            (tmp_path / folder / f"{folder}{index}.mp4").write_bytes(f"{folder}{index}".encode())
            (tmp_path / folder / f"{folder}{index}.txt").write_text(f"clip {index} of {folder}")
    config = tmp_path / "dataset.toml"
    config.write_text(text)
    for dataset in load_all_datasets(config):
        for media in sorted(dataset.source.glob("*.mp4")):
            fingerprint = {"source": source_stamp(media), "checkpoint": {"version": "2.3"}, "fps": 24.0,
                           "dataset": dataset_digest(dataset), "bucket": [64, 32], "window": [0, FRAMES]}  # fmt: skip
            latents = torch.randn(128, 2, 1, 2)
            path = naming.latent_cache_path(dataset.cache_directory, naming.item_key(media.stem, 0, FRAMES), 64, 32)
            write_cache(path, {naming.latents_key(latents): latents}, fingerprint)
    write_synthetic_text_caches(config, "video", context_dims=(8, 4), text_tokens=16)
    return config


def _batches(batches: CachedBatches) -> list[dict]:
    return [batches[index] for index in range(len(batches))]


def _empty_conditions(dataset) -> dict[str, torch.Tensor]:
    return _conditions(_load(naming.empty_prompt_cache_path(dataset.cache_directory)), roles_for("video"), None)


def _caption_conditions(dataset, key: str) -> dict[str, torch.Tensor]:
    stem = key.rsplit("_", 1)[0]
    return _conditions(_load(naming.text_cache_path(dataset.cache_directory, stem)), roles_for("video"), None)


def _check_rows(batch: dict, dataset) -> None:
    """Each sample's conditions are the empty prompt's where it was dropped, its caption's elsewhere."""
    empty = _empty_conditions(dataset)
    for row, (key, dropped) in enumerate(zip(batch["items"], batch["caption_dropped"].tolist(), strict=True)):
        expected = empty if dropped else _caption_conditions(dataset, key)
        assert batch["conditions"].keys() == expected.keys()
        assert all(torch.equal(batch["conditions"][name][row], expected[name]) for name in expected)


def test_rate_one_gives_every_sample_exactly_the_empty_prompt(tmp_path):
    config = _datasets(tmp_path)
    datasets = load_dataset_config(config)
    batches = CachedBatches(datasets, "video", seed=5, caption_dropout_rate=1.0)
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        for batch in _batches(batches):
            dataset = datasets[0] if batch["items"][0].startswith("one") else datasets[1]
            assert batch["caption_dropped"].dtype == torch.bool and batch["caption_dropped"].all()
            empty = _empty_conditions(dataset)
            assert all(torch.equal(batch["conditions"][k], empty[k].expand_as(batch["conditions"][k])) for k in empty)
    # The empty prompt is not a caption: its embeddings differ from every caption's.
    caption = _caption_conditions(datasets[0], "one0_00000-009")["video_prompt_embeds"]
    assert not torch.equal(caption, _empty_conditions(datasets[0])["video_prompt_embeds"])


def test_rate_zero_changes_nothing_bit_for_bit(tmp_path):
    datasets = load_dataset_config(_datasets(tmp_path))
    plain, zero = CachedBatches(datasets, "video", seed=3), CachedBatches(datasets, "video", seed=3,
                                                                            caption_dropout_rate=0.0)  # fmt: skip
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        zero.set_epoch(epoch)
        for expected, batch in zip(_batches(plain), _batches(zero), strict=True):
            assert "caption_dropped" not in batch and batch["items"] == expected["items"]
            assert all(torch.equal(batch["conditions"][k], expected["conditions"][k]) for k in expected["conditions"])
            assert torch.equal(batch["latents"]["latents"], expected["latents"]["latents"])


def test_rate_half_is_a_function_of_seed_epoch_and_batch_alone(tmp_path):
    datasets = load_dataset_config(_datasets(tmp_path, clips=16))
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    batches = CachedBatches(datasets, "video", seed=7, caption_dropout_rate=0.5)
    flags = {}
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        epoch_batches = _batches(batches)
        flags[epoch] = [(batch["items"], batch["caption_dropped"].tolist()) for batch in epoch_batches]
        for batch in epoch_batches:
            _check_rows(batch, datasets[0] if batch["items"][0].startswith("one") else datasets[1])
    # No global random stream was used (the trainer's generator is not even reachable from here).
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))

    dropped = [flag for _, row in flags[0] for flag in row]
    assert 0.25 < sum(dropped) / len(dropped) < 0.75  # 32 samples at rate 0.5
    assert flags[0] != flags[1]  # another epoch, another draw
    # A fresh copy (another DataLoader worker, or a resumed run) asked for one batch of epoch 1 draws the same.
    again = CachedBatches(datasets, "video", seed=7, caption_dropout_rate=0.5)
    again.set_epoch(1)
    assert [(again[i]["items"], again[i]["caption_dropped"].tolist()) for i in (5, 2)] == [flags[1][5], flags[1][2]]
    other_seed = CachedBatches(datasets, "video", seed=8, caption_dropout_rate=0.5)
    assert [batch["caption_dropped"].tolist() for batch in _batches(other_seed)] != [row for _, row in flags[0]]


def test_a_datasets_own_rate_overrides_the_argument(tmp_path):
    config = _datasets(tmp_path, first="caption_dropout_rate = 1.0", second="caption_dropout_rate = 0")
    datasets = load_dataset_config(config)
    for argument in (0.0, 0.5):
        for batch in _batches(CachedBatches(datasets, "video", caption_dropout_rate=argument)):
            if batch["items"][0].startswith("one"):
                assert batch["caption_dropped"].all()
            else:
                assert "caption_dropped" not in batch  # rate 0: nothing drawn


def test_a_missing_or_stale_empty_prompt_cache_stops_at_scan_time(tmp_path):
    config = _datasets(tmp_path, first="caption_dropout_rate = 0.1", validation=False)
    datasets = load_dataset_config(config)
    empty = naming.empty_prompt_cache_path(datasets[0].cache_directory)
    fingerprint = read_fingerprint(empty)
    empty.unlink()
    with pytest.raises(CacheError) as caught:
        CachedBatches(datasets, "video", dataset_config=config)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"{empty}: empty prompt cache missing ([[datasets]] #1 (one) drops captions at rate 0.1);"
    )
    assert f"run `python ltx2_cache_text_encoder_outputs.py --dataset_config {config} --ltx2_checkpoint ..." in message
    assert "--skip_existing` (current captions are reused: only the empty prompt is encoded)" in message
    assert len(CachedBatches(datasets[1:], "video", caption_dropout_rate=1.0)) == 2  # dataset two has its file

    tensors = _load(naming.text_cache_path(datasets[1].cache_directory, "two0"))
    write_cache(empty, {f"{k}_float32" if "embeds" in k else k: v for k, v in tensors.items()},
                {**fingerprint, "connectors": {"version": "2.0"}})  # fmt: skip
    stale = r"ltx2_empty_prompt_te\.safetensors: stale empty prompt cache, its connectors differ from the caption"
    with pytest.raises(CacheError, match=stale + r" caches' \(one\d_ltx2_te\.safetensors\)"):
        CachedBatches(datasets, "video")
    write_cache(empty, {"video_prompt_embeds_float32": torch.zeros(16, 8), "prompt_attention_mask": torch.ones(16)},
                {**fingerprint, "caption_sha256": "0" * 64})  # fmt: skip
    with pytest.raises(CacheError, match=r"not the empty prompt's cache"):
        CachedBatches(datasets, "video")
    write_cache(empty, {"video_prompt_embeds_float32": torch.zeros(12, 8), "prompt_attention_mask": torch.ones(16)},
                fingerprint)  # fmt: skip
    with pytest.raises(CacheError, match=r"video_prompt_embeds is \[12, 8\], the caption caches' is \[16, 8\]"):
        CachedBatches(datasets, "video")


def test_validation_datasets_batch_alone_and_never_drop(tmp_path):
    config = _datasets(tmp_path, first="caption_dropout_rate = 1.0")
    (held_out,) = load_validation_datasets(config)
    assert not naming.empty_prompt_cache_path(held_out.cache_directory).exists()  # it never needs one
    batches = CachedBatches([held_out], "video", seed=0, caption_dropout_rate=1.0)
    assert sorted(key for batch in _batches(batches) for key in batch["items"]) == sorted(
        f"held{i}_00000-009" for i in range(8)
    )
    assert all("caption_dropped" not in batch for batch in _batches(batches))
    # Training and validation datasets are numbered apart; in one CachedBatches they still never share a batch.
    mixed = CachedBatches([*load_dataset_config(config), held_out], "video")
    assert all(len({key[:3] for key in batch["items"]}) == 1 for batch in _batches(mixed))


def test_the_empty_prompt_file_is_no_items_cache_name():
    name = naming.EMPTY_PROMPT_NAME
    suffixes = (naming.LATENT_SUFFIX, naming.AUDIO_SUFFIX, naming.TEXT_SUFFIX, *naming.PARTNER_SUFFIXES.values())
    assert not any(name.endswith(suffix) for suffix in suffixes)
    assert naming.parse_latent_name(naming.empty_prompt_cache_path(naming.Path("cache"))) is None
