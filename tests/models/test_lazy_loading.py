"""Loading a component reads its own tensors and nothing else."""

from __future__ import annotations

import pytest
import torch

from ltx2_tuner.models import COMPONENTS, load_component, loading, read_checkpoint_info
from ltx2_tuner.models.checkpoint import component_of
from ltx2_tuner.models.safetensors_io import read_header


@pytest.fixture
def requested(monkeypatch) -> list[str]:
    """The names of every tensor the loader reads from disk."""
    names_read: list[str] = []
    real_read = loading.read_tensors

    def spy(header, names, dtype=None):
        names = list(names)
        names_read.extend(names)
        return real_read(header, names, dtype)

    monkeypatch.setattr(loading, "read_tensors", spy)
    return names_read


@pytest.mark.parametrize("component", COMPONENTS)
def test_only_the_component_tensors_are_read(tiny, component, requested):
    load_component(tiny.path, component)
    assert requested and {component_of(name) for name in requested} == {component}
    unused = {
        "vae.per_channel_statistics.channel",
        "vae.per_channel_statistics.mean-of-stds",
        "vae.per_channel_statistics.mean-of-stds_over_std-of-means",
    }  # official-only statistics
    assert set(requested) == set(read_checkpoint_info(tiny.path).tensor_names[component]) - unused


def test_vae_loads_from_a_file_whose_transformer_bytes_are_garbage(tiny, tmp_path):
    # Byte-level proof: overwrite every transformer tensor with NaN patterns; the VAE must load identically.
    header = read_header(tiny.path)
    data = bytearray(tiny.path.read_bytes())
    for name, entry in header.tensors.items():
        if component_of(name) == "transformer":
            data[entry.start : entry.end] = b"\xff" * entry.nbytes
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    vae = load_component(damaged, "video_vae")
    expected = tiny.modules["video_vae"].state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in vae.state_dict().items())
    transformer = load_component(damaged, "transformer")
    assert torch.isnan(transformer.proj_in.weight).all()


def test_encoder_half_reads_no_decoder_tensor(tiny, requested):
    load_component(tiny.path, "video_vae", part="encoder")
    assert requested and not any(name.startswith("vae.decoder.") for name in requested)
    assert any(name.startswith("vae.encoder.") for name in requested)
