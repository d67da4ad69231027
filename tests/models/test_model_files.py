"""Split packs: the files beside the transformer are found, each is the same model as the unified file, and every
wrong or missing file is one line naming it and the flag that fixes it."""

from __future__ import annotations

import shutil

import pytest
import torch

from ltx2_tuner.errors import CheckpointError
from ltx2_tuner.models import load_component
from ltx2_tuner.models.model_files import model_files
from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint
from ltx2_tuner.testing.tiny_pack import write_tiny_pack


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return write_tiny_pack(tmp_path_factory.mktemp("pack"), "2.5", seed=3, text_encoder=False, diffusion_vae=False)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for name, tensor in a_state.items():
        assert torch.equal(tensor, b_state[name]), name


def test_a_pack_is_the_same_model_as_the_unified_file(pack, tmp_path):
    unified = model_files(write_tiny_checkpoint(tmp_path, "2.5", seed=3))
    files = model_files(pack.transformer)
    assert (files.transformer.kind, files.version) == ("transformer", "2.5")
    assert files.video_vae().path == pack.video_vae and files.audio_vae().path == pack.audio_vae
    for component, split, whole in (
        ("transformer", files.transformer, unified.transformer),
        ("text_connectors", files.connectors(), unified.connectors()),
        ("video_vae", files.video_vae(), unified.video_vae()),
        ("audio_vae", files.audio_vae(), unified.audio_vae()),
        ("vocoder", files.audio_vae(), unified.audio_vae()),
    ):
        _same_weights(load_component(split, component), load_component(whole, component))


def test_a_video_only_run_never_needs_the_audio_file(pack, tmp_path):
    copy = shutil.copytree(pack.root, tmp_path / "pack")
    (copy / "vae" / pack.audio_vae.name).unlink()
    files = model_files(copy / "diffusion_models" / pack.transformer.name)
    assert files.video_vae().components == ("video_vae",)
    with pytest.raises(CheckpointError, match=r"has no audio vae and none was found beside it .*--audio_vae$"):
        files.audio_vae()


def test_missing_and_wrong_files_are_one_line_each(pack, tmp_path):
    lone = tmp_path / "lone" / pack.transformer.name
    lone.parent.mkdir()
    shutil.copy(pack.transformer, lone)
    files = model_files(lone)
    with pytest.raises(CheckpointError, match=r"has no video vae .*pass the video vae file with --video_vae"):
        files.video_vae()
    with pytest.raises(CheckpointError, match=r"no text encoder given; pass --text_encoder with the LTX Gemma 4"):
        files.text_encoder()
    with pytest.raises(CheckpointError, match=r"holds audio_vae, vocoder, not the video vae"):
        model_files(lone, video_vae=pack.audio_vae).video_vae()
    with pytest.raises(CheckpointError, match=r"is a split pack's video vae file, not the transformer"):
        model_files(pack.video_vae)
    old = write_tiny_checkpoint(tmp_path, "2.0")
    with pytest.raises(CheckpointError, match=r"is an LTX-2\.0 video vae, but .* is LTX-2\.5 and their latents differ"):
        model_files(lone, video_vae=old).video_vae()
    with pytest.raises(CheckpointError) as caught:
        model_files(lone).video_vae()
    assert "\n" not in str(caught.value) and str(lone) in str(caught.value)


def test_a_2_3_video_vae_serves_2_5(pack, tmp_path):
    """LTX 2.5 kept 2.3's video encoder and audio VAE: their files are interchangeable."""
    vae_2_3 = write_tiny_checkpoint(tmp_path, "2.3")
    files = model_files(pack.transformer, video_vae=vae_2_3, audio_vae=vae_2_3)
    assert files.video_vae().version == "2.3" and files.audio_vae().path == vae_2_3


def test_several_candidates_prefer_the_diffusion_decoder_then_ask(pack, tmp_path):
    copy = shutil.copytree(pack.root, tmp_path / "pack")
    conv = copy / "vae" / pack.video_vae.name
    default = conv.with_name(conv.name.replace("-conv", ""))
    shutil.copy(conv, default)
    files = model_files(copy / "diffusion_models" / pack.transformer.name)
    assert files.video_vae().path == default
    shutil.copy(conv, conv.with_name(conv.name.replace("-conv", "-other")))
    with pytest.raises(CheckpointError, match=r"several candidate files .*; pass the one to use"):
        model_files(copy / "diffusion_models" / pack.transformer.name).video_vae()
