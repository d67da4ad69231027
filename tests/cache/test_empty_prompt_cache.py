"""The caching commands with [[validation_datasets]] and the empty prompt: the text cacher encodes "" once per run
into every training dataset's cache folder, reuses it with --skip_existing, re-encodes it when stale; both commands
cache validation datasets; the trainer's batches read the result."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.cache.store import read_fingerprint, write_cache
from ltx2_tuner.cli import cache_latents, cache_text_encoder_outputs
from ltx2_tuner.cli._common import run
from ltx2_tuner.data.config import load_dataset_config, load_validation_datasets
from ltx2_tuner.models import text_embeddings
from ltx2_tuner.testing.synthetic_caches import write_synthetic_text_caches
from ltx2_tuner.testing.synthetic_media import write_image

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _dataset(tmp_path: Path) -> Path:
    """Two training image datasets (one holds a media file with an empty caption) and a validation one."""
    captions = {"train": {"fox": "a red fox", "owl": ""}, "more": {"cat": "a cat"}, "held": {"dog": "a dog"}}
    for folder, stems in captions.items():
        (tmp_path / folder).mkdir()
        for stem, caption in stems.items():
            write_image(tmp_path / folder / f"{stem}.png", 40, 30)
            (tmp_path / folder / f"{stem}.txt").write_text(caption, encoding="utf-8")
    config = tmp_path / "dataset.toml"
    config.write_text('[general]\nresolution = [64, 32]\n'
                      '[[datasets]]\nimage_directory = "train"\ncache_directory = "cache/train"\n'
                      '[[datasets]]\nimage_directory = "more"\ncache_directory = "cache/more"\n'
                      '[[validation_datasets]]\nimage_directory = "held"\n'
                      'cache_directory = "cache/held"\n')  # fmt: skip
    return config


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


@pytest.fixture
def encoded(monkeypatch) -> list[list[str]]:
    """The texts of every batch that went through Gemma and the connectors."""
    calls, real = [], text_embeddings.encode_prompts

    def spy(text_encoder, embedder, texts):
        calls.append(list(texts))
        return real(text_encoder, embedder, texts)

    monkeypatch.setattr(text_embeddings, "encode_prompts", spy)
    return calls


def _cache_text(config: Path, checkpoint: Path, gemma: Path | None, *flags: str) -> int:
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--device", "cpu", *flags]
    return run(cache_text_encoder_outputs.main, argv + (["--gemma_root", str(gemma)] if gemma else []))


def test_the_empty_prompt_is_encoded_once_reused_and_re_encoded_when_stale(
    tmp_path, tiny_checkpoints, tiny_gemma_dir, encoded, capsys
):
    config, checkpoint = _dataset(tmp_path), tiny_checkpoints["2.3"].path
    assert _cache_text(config, checkpoint, tiny_gemma_dir, "--allow_empty_captions", "--batch_size", "4") == 0
    out = capsys.readouterr().out
    assert "done: 4 encoded, 0 reused, 0 failed" in out  # validation captions too
    assert "empty prompt (caption dropout): written to 2, current in 0 cache folder(s)" in out
    assert encoded == [["a red fox", "", "a cat", "a dog"], [""]]  # "" once for both training folders
    cache = tmp_path / "cache"
    assert (cache / "held" / "dog_ltx2_te.safetensors").is_file()
    assert not naming.empty_prompt_cache_path(cache / "held").exists()  # validation never drops captions

    # The same tensors as an empty caption's cache, and the same fingerprint (caption "" and this run's models).
    paths = [naming.empty_prompt_cache_path(cache / folder) for folder in ("train", "more")]
    owl = cache / "train" / "owl_ltx2_te.safetensors"
    for path in paths:
        tensors, expected = _tensors(path), _tensors(owl)
        assert tensors.keys() == expected.keys() and all(torch.equal(tensors[k], expected[k]) for k in expected)
        assert read_fingerprint(path) == read_fingerprint(owl)
        assert read_fingerprint(path)["caption_sha256"] == EMPTY_SHA256
        os.utime(path, ns=(1, 1))

    encoded.clear()
    assert _cache_text(config, checkpoint, None, "--allow_empty_captions", "--skip_existing") == 0  # no Gemma needed
    out = capsys.readouterr().out
    assert "done: 0 encoded, 4 reused" in out and "written to 0, current in 2 cache folder(s)" in out
    assert encoded == [] and all(path.stat().st_mtime_ns == 1 for path in paths)

    # Missing in one folder: a rerun with --skip_existing encodes only the empty prompt (and needs Gemma for it).
    paths[1].unlink()
    assert _cache_text(config, checkpoint, None, "--allow_empty_captions", "--skip_existing") == 2
    assert capsys.readouterr().err.strip() == (
        "error: the empty prompt needs encoding; pass --text_encoder with the Gemma 3 directory (e.g. gemma-3-12b-it)"
    )
    assert _cache_text(config, checkpoint, tiny_gemma_dir, "--allow_empty_captions", "--skip_existing") == 0
    out = capsys.readouterr().out
    assert "done: 0 encoded, 4 reused" in out and "written to 1, current in 1 cache folder(s)" in out
    assert encoded == [[""]] and paths[0].stat().st_mtime_ns == 1 and paths[1].is_file()

    # Stale (another model's fingerprint): encoded again.
    encoded.clear()
    write_cache(paths[0], _tensors(paths[0]), {**read_fingerprint(paths[0]), "connectors": {"version": "2.0"}})
    assert _cache_text(config, checkpoint, tiny_gemma_dir, "--allow_empty_captions", "--skip_existing") == 0
    assert "written to 1, current in 1 cache folder(s)" in capsys.readouterr().out
    assert encoded == [[""]] and read_fingerprint(paths[0]) == read_fingerprint(owl)


def test_latent_caching_covers_validation_datasets_and_the_trainer_reads_both(tmp_path, tiny_checkpoints, capsys):
    config = _dataset(tmp_path)
    argv = ["--dataset_config", str(config), "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--device", "cpu"]
    assert run(cache_latents.main, [*argv, "--prune_cache"]) == 0
    assert "done: 4 cached, 0 reused, 0 failed" in capsys.readouterr().out
    held = tmp_path / "cache" / "held"
    assert [path.name for path in held.glob(f"*{naming.LATENT_SUFFIX}")] == ["dog_0040x0030_ltx2.safetensors"]

    (tmp_path / "train" / "owl.txt").write_text("an owl", encoding="utf-8")  # synthetic caches need captions
    write_synthetic_text_caches(config, "video", context_dims=(32, 16))
    assert naming.empty_prompt_cache_path(tmp_path / "cache" / "train").is_file()
    training = CachedBatches(load_dataset_config(config), "video", caption_dropout_rate=1.0)
    assert sorted(key for i in range(len(training)) for key in training[i]["items"]) == ["cat", "fox", "owl"]
    assert all(training[i]["caption_dropped"].all() for i in range(len(training)))
    validation = CachedBatches(load_validation_datasets(config), "video")
    assert [validation[i]["items"] for i in range(len(validation))] == [["dog"]]
    assert run(cache_latents.main, [*argv, "--skip_existing", "--prune_cache"]) == 0
    assert "done: 0 cached, 4 reused, 0 failed" in capsys.readouterr().out  # nothing pruned, the empty prompt kept
    assert naming.empty_prompt_cache_path(tmp_path / "cache" / "train").is_file()
