"""Independent check of our transformer renames: diffusers' own single-file converter must load the same model."""

from __future__ import annotations

import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers
from safetensors.torch import load_file

from ltx2_tuner.models import load_transformer_backbone


def _inputs(config, generator: torch.Generator) -> dict:
    context = config.caption_channels if config.use_prompt_embeddings else config.cross_attention_dim
    audio_context = config.caption_channels if config.use_prompt_embeddings else config.audio_cross_attention_dim
    return {
        "hidden_states": torch.randn(2, 2 * 3 * 4, 128, generator=generator),
        "audio_hidden_states": torch.randn(2, 13, 128, generator=generator),
        "encoder_hidden_states": torch.randn(2, 7, context, generator=generator),
        "audio_encoder_hidden_states": torch.randn(2, 7, audio_context, generator=generator),
        "timestep": torch.tensor([250.0, 800.0]),
        "sigma": torch.tensor([250.0, 800.0]),
        "num_frames": 2,
        "height": 3,
        "width": 4,
        "fps": 24.0,
        "audio_num_frames": 13,
        "return_dict": False,
    }


def _diffusers_converted(path, config, extra_renames: dict[str, str]) -> LTX2VideoTransformer3DModel:
    # What diffusers' from_single_file does internally, offline: convert the official tensors, load strictly.
    checkpoint = {k: v for k, v in load_file(str(path)).items() if k.startswith("model.diffusion_model.")}
    converted = convert_ltx2_transformer_to_diffusers(checkpoint)
    for old, new in extra_renames.items():
        converted = {k.replace(old, new) if k.startswith(old) else k: v for k, v in converted.items()}
    model = LTX2VideoTransformer3DModel.from_config(config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


@torch.no_grad()
def test_transformer_2_0_matches_diffusers_single_file_conversion(tiny_checkpoints):
    tiny = tiny_checkpoints["2.0"]
    ours = load_transformer_backbone(tiny.path)
    theirs = _diffusers_converted(tiny.path, ours.config, extra_renames={})
    inputs = _inputs(ours.config, torch.Generator().manual_seed(0))
    for ours_out, theirs_out in zip(ours(**inputs), theirs(**inputs), strict=True):
        assert torch.equal(ours_out, theirs_out)


@torch.no_grad()
def test_transformer_2_3_matches_diffusers_conversion_plus_its_missing_prompt_adaln_rename(tiny_checkpoints):
    # The 0.42.1 wheel's converter lacks the 2.3 prompt AdaLN renames that diffusers' repo script adds
    # (diffusers-ltx2-and-peers.md §2.2); with those two renames added, the result must match ours exactly.
    tiny = tiny_checkpoints["2.3"]
    ours = load_transformer_backbone(tiny.path)
    renames = {"prompt_adaln_single.": "prompt_adaln.", "audio_prompt_adaln_single.": "audio_prompt_adaln."}
    theirs = _diffusers_converted(tiny.path, ours.config, extra_renames=renames)
    inputs = _inputs(ours.config, torch.Generator().manual_seed(1))
    for ours_out, theirs_out in zip(ours(**inputs), theirs(**inputs), strict=True):
        assert torch.equal(ours_out, theirs_out)
