"""Shared fixtures: tiny official-format checkpoints (LTX-2.0, 2.3 and 2.5), written once per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn

# Tests never touch the network: transformers and huggingface_hub must resolve everything locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class TinyCheckpoint:
    version: str
    path: Path
    modules: dict[str, nn.Module]  # the diffusers modules the file was written from


_SEED = 1234


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, TinyCheckpoint]:
    from ltx2_tuner.testing.tiny_checkpoint import build_diffusers_modules, write_tiny_checkpoint
    from ltx2_tuner.testing.tiny_configs import VERSIONS

    result = {}
    for version in VERSIONS:
        out = tmp_path_factory.mktemp(f"tiny{version}")
        path = write_tiny_checkpoint(out, version, seed=_SEED)
        result[version] = TinyCheckpoint(version, path, build_diffusers_modules(version, seed=_SEED))
    return result


@pytest.fixture(params=["2.0", "2.3"])
def tiny(request, tiny_checkpoints) -> TinyCheckpoint:
    return tiny_checkpoints[request.param]


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory) -> Path:
    from ltx2_tuner.testing.tiny_gemma import write_tiny_gemma

    return write_tiny_gemma(tmp_path_factory.mktemp("gemma") / "gemma")


@pytest.fixture
def loaded_decoders(monkeypatch) -> list[tuple[str, str]]:
    """(component, part) of every VAE / vocoder loaded while the test runs (load_video_vae, load_audio_vae,
    load_vocoder of ltx2_tuner.models)."""
    from ltx2_tuner import models

    calls = []
    for name in ("load_video_vae", "load_audio_vae", "load_vocoder"):
        real = getattr(models, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, kwargs.get("part", "")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(models, name, spy)
    return calls
