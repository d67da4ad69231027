"""The tiny official-format factory: offline Gemma that fits the projection, size and time limits, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from ltx2_tuner.models import load_text_connectors, read_checkpoint_info
from ltx2_tuner.models.safetensors_io import read_header


def test_gemma_loads_offline_and_fits_the_projection(tiny, tiny_gemma_dir):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_gemma_dir, local_files_only=True)
    assert config.model_type == "gemma3"  # what LTX-2.0/2.3 require of a Gemma directory
    connectors = load_text_connectors(tiny.path)
    text = config.text_config
    assert connectors.config.caption_channels == text.hidden_size
    assert connectors.config.text_proj_in_factor == text.num_hidden_layers + 1

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_gemma_dir, local_files_only=True).eval()
    batch = tokenizer(
        ["a red ball", "x" * 1500],
        padding="max_length",
        max_length=1024,
        truncation=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert batch.input_ids.shape == (2, 1024)
    length = len(tokenizer("a red ball")["input_ids"])
    assert length == 11  # BOS + one token per character
    assert batch.input_ids[0, -length].item() == tokenizer.bos_token_id  # left padded, BOS first
    assert batch.attention_mask[0].sum() == length and batch.attention_mask[0, 0] == 0
    assert batch.input_ids[1, 0].item() == tokenizer.bos_token_id and batch.attention_mask[1].all()  # truncated
    with torch.no_grad():
        hidden = model.model(input_ids=batch.input_ids[:, -16:], output_hidden_states=True).hidden_states
    features = torch.stack(hidden, dim=-1).flatten(2)  # the pipeline's packing: [B, T, hidden x (layers + 1)]
    assert features.shape[-1] == connectors.config.caption_channels * connectors.config.text_proj_in_factor


def test_tokenizer_handles_any_text(tiny_gemma_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir, local_files_only=True)
    ids = tokenizer("Ünïcödé — 日本 🎬")["input_ids"]
    assert tokenizer.unk_token_id not in ids  # byte fallback, like Gemma's own tokenizer
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Ünïcödé — 日本 🎬"


def test_metadata_is_the_official_schema(tiny):
    header = read_header(tiny.path)
    assert set(header.metadata) == {"config", "model_version"}
    config = json.loads(header.metadata["config"])
    assert config["vae"]["_class_name"] == "CausalVideoAutoencoder"
    assert "ddconfig" in config["audio_vae"]["model"]["params"]
    assert ("bwe" in config["vocoder"]) == (tiny.version == "2.3")
    assert config["transformer"]["qk_norm"] == "rms_norm"
    assert all(
        name.startswith(("model.diffusion_model.", "text_embedding_projection.", "vae.", "audio_vae.", "vocoder."))
        for name in header.tensors
    )


def test_seed_changes_weights_and_is_reproducible(tmp_path):
    from safetensors.torch import load_file

    from ltx2_tuner.testing import write_tiny_checkpoint

    a, b, c = (load_file(write_tiny_checkpoint(tmp_path / d, "2.0", seed=s)) for d, s in (("a", 1), ("b", 1), ("c", 2)))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.diffusion_model.patchify_proj.weight"], c["model.diffusion_model.patchify_proj.weight"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.0", "2.3"])
def test_make_tiny_cli_is_small_and_fast(tmp_path, version):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "ltx2_tuner.testing.make_tiny", "--out", str(tmp_path), "--version", version],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    total_bytes = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total_bytes < 20 * 2**20, total_bytes
    assert elapsed < 20, elapsed
    assert read_checkpoint_info(tmp_path / "ltx2_tiny.safetensors").version == version
    assert (tmp_path / "gemma" / "config.json").exists() and (tmp_path / "gemma" / "tokenizer.json").exists()
