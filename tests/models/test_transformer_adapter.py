"""The transformer adapter: official AV semantics, video-only and audio-only builds, checkpointing, dtypes."""

from __future__ import annotations

import re

import pytest
import torch

from ltx2_tuner.models import (
    ModalityInput,
    load_transformer,
    load_transformer_backbone,
    loading,
)
from ltx2_tuner.models.checkpoint import component_of
from ltx2_tuner.testing.transformer_inputs import AUDIO_LEN, FRAMES, HEIGHT, WIDTH, diffusers_forward, make_inputs


@torch.no_grad()
def test_uniform_sigma_equals_plain_diffusers(tiny):
    ours = load_transformer(tiny.path, mode="av")
    plain = load_transformer_backbone(tiny.path)
    video, audio = make_inputs(ours.config)
    for ours_out, plain_out in zip(
        ours(video, audio), diffusers_forward(plain, video, audio, uniform=True), strict=True
    ):
        torch.testing.assert_close(ours_out, plain_out, rtol=0, atol=1e-6)


def _capture_adaln_inputs(backbone) -> dict[str, torch.Tensor]:
    captured = {}
    names = ["av_cross_attn_video_scale_shift", "av_cross_attn_video_a2v_gate", "av_cross_attn_audio_scale_shift",
             "av_cross_attn_audio_v2a_gate", "time_embed", "audio_time_embed", "prompt_adaln", "audio_prompt_adaln"]  # fmt: skip
    for name in names:
        if hasattr(backbone, name):
            getattr(backbone, name).register_forward_pre_hook(
                lambda module, args, name=name: captured.__setitem__(name, args[0].clone())
            )
    return captured


def _per_token(values: torch.Tensor, batch: int, tokens: int) -> torch.Tensor:
    """An AdaLN input as one value per token ([B] per sample or [B*N] per token)."""
    return values.view(batch, -1).expand(batch, tokens)


@torch.no_grad()
def test_av_cross_attention_adaln_inputs_follow_the_official_semantics(tiny):
    ours = load_transformer(tiny.path, mode="av")
    captured = _capture_adaln_inputs(ours.backbone)
    video, audio = make_inputs(ours.config, audio_sigma=(0.6, 0.1), first_frame_clean=True)
    ours(video, audio)
    scale = ours.config.timestep_scale_multiplier
    av_multiplier = ours.config.cross_attn_timestep_scale_multiplier
    batch, video_tokens, audio_tokens = 2, video.latent.shape[1], AUDIO_LEN

    # scale/shift: the modality's own per-token timesteps (first frame at 0)
    assert torch.equal(captured["av_cross_attn_video_scale_shift"].view(batch, -1), video.timesteps * scale)
    assert torch.equal(
        _per_token(captured["av_cross_attn_audio_scale_shift"], batch, audio_tokens), audio.timesteps * scale
    )
    # gates: the other modality's sigma x av_ca_timestep_scale_multiplier
    torch.testing.assert_close(captured["av_cross_attn_video_a2v_gate"], audio.sigma * av_multiplier, rtol=1e-6, atol=0)
    torch.testing.assert_close(captured["av_cross_attn_audio_v2a_gate"], video.sigma * av_multiplier, rtol=1e-6, atol=0)
    # the main AdaLN takes per-token timesteps; LTX-2.3's prompt AdaLN takes the sample sigma
    assert torch.equal(captured["time_embed"].view(batch, -1), video.timesteps * scale)
    if "prompt_adaln" in captured:
        assert torch.equal(captured["prompt_adaln"], video.sigma * scale)
        assert torch.equal(captured["audio_prompt_adaln"], audio.sigma * scale)
    assert video_tokens == FRAMES * HEIGHT * WIDTH


@torch.no_grad()
def test_official_semantics_differ_from_both_diffusers_modes_when_sigmas_differ(tiny):
    # The reason for the adapter: diffusers' two modes are each wrong somewhere (reference §1.3).
    ours = load_transformer(tiny.path, mode="av")
    plain = load_transformer_backbone(tiny.path)
    video, audio = make_inputs(ours.config, audio_sigma=(0.6, 0.1), first_frame_clean=True)
    ours_video, _ = ours(video, audio)
    for use_cross_timestep in (False, True):
        theirs_video, _ = diffusers_forward(plain, video, audio, use_cross_timestep=use_cross_timestep)
        assert (ours_video - theirs_video).abs().max() > 1e-4


def _excluded_by_pattern(names, mode) -> set[str]:
    # Written independently of the adapter's tables: audio-only and cross-modal names by their prefixes.
    if mode == "video":
        top, block = r"^(audio_|av_cross_attn_)", r"^transformer_blocks\.\d+\.(audio_|video_to_audio_|video_a2v_)"
    else:
        top = r"^(proj_in|caption_projection|time_embed|prompt_adaln|scale_shift_table|proj_out|av_cross_attn_)"
        block = (r"^transformer_blocks\.\d+\.(attn1|attn2|ff|scale_shift_table|prompt_scale_shift_table|"
                 r"audio_to_video_|video_to_audio_|video_a2v_|audio_a2v_)")  # fmt: skip
    return {n for n in names if re.match(top, n) or re.match(block, n)}


@pytest.mark.parametrize("mode", ["video", "audio"])
def test_single_modality_build_leaves_out_exactly_the_other_stream(tiny, mode):
    av = dict(load_transformer(tiny.path, mode="av").backbone.named_parameters())
    single = dict(load_transformer(tiny.path, mode=mode).backbone.named_parameters())
    excluded = set(av) - set(single)
    assert set(single) <= set(av)
    assert excluded == _excluded_by_pattern(av, mode)
    assert sum(p.numel() for p in single.values()) == sum(av[n].numel() for n in av if n not in excluded)
    assert all(torch.equal(single[n], av[n]) for n in single)


@pytest.mark.parametrize("mode", ["video", "audio"])
def test_single_modality_build_reads_no_tensor_of_the_other_stream(tiny, mode, monkeypatch):
    requested = []
    real_read = loading.read_tensors
    monkeypatch.setattr(
        loading, "read_tensors", lambda h, names, d=None: real_read(h, requested.extend(names) or names, d)
    )
    load_transformer(tiny.path, mode=mode)
    assert requested and {component_of(n) for n in requested} == {"transformer"}
    if mode == "video":
        assert not any(
            re.search(r"\.(audio_|av_ca_|video_to_audio|scale_shift_table_a2v)", "." + n.split(".", 2)[2])
            for n in requested
        )
    else:
        assert not any(re.search(r"\.(attn1|attn2|ff)\.", n) and ".audio_" not in n for n in requested)


@torch.no_grad()
@pytest.mark.parametrize("first_frame_clean", [False, True])
def test_video_mode_equals_isolated_av_video_bit_for_bit(tiny, first_frame_clean):
    video_only = load_transformer(tiny.path, mode="video")
    plain = load_transformer_backbone(tiny.path)
    video, audio = make_inputs(plain.config, first_frame_clean=first_frame_clean)
    dummy_audio = ModalityInput(
        audio.latent[:, :1], audio.sigma, audio.timesteps[:, :1], audio.positions[:, :, :1], audio.context
    )
    # Same timestep layout as ours (one per sample when uniform) so the same kernels run.
    expected, _ = diffusers_forward(plain, video, dummy_audio, uniform=not first_frame_clean, isolate_modalities=True)
    ours, no_audio = video_only(video, None)
    assert no_audio is None
    assert torch.equal(ours, expected)


@torch.no_grad()
def test_audio_mode_equals_isolated_av_audio_bit_for_bit(tiny):
    audio_only = load_transformer(tiny.path, mode="audio")
    plain = load_transformer_backbone(tiny.path)
    video, audio = make_inputs(plain.config, audio_sigma=(0.5, 0.2))
    one_token = ModalityInput(
        video.latent[:, :1], video.sigma, video.timesteps[:, :1], video.positions[:, :, :1], video.context
    )
    _, expected = diffusers_forward(plain, one_token, audio, uniform=True, isolate_modalities=True)
    no_video, ours = audio_only(None, audio)
    assert no_video is None
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("mode", ["av", "video", "audio"])
def test_gradient_checkpointing_changes_neither_outputs_nor_gradients(tiny, mode):
    model = load_transformer(tiny.path, mode=mode).requires_grad_(True)
    video, audio = make_inputs(model.config, audio_sigma=(0.6, 0.1), first_frame_clean=True)
    inputs = {"video": video if mode != "audio" else None, "audio": audio if mode != "video" else None}

    def run(checkpointing: bool):
        model.zero_grad()
        model.enable_gradient_checkpointing(checkpointing)
        outputs = [o for o in model(**inputs) if o is not None]
        sum((o.float() ** 2).mean() for o in outputs).backward()
        return outputs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_out, plain_grads = run(False)
    ckpt_out, ckpt_grads = run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain_out, ckpt_out, strict=True))
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 0
    assert all(torch.equal(plain_grads[n], ckpt_grads[n]) for n in plain_grads)


@torch.no_grad()
def test_bf16_runs_close_to_fp32(tiny):
    fp32 = load_transformer(tiny.path, mode="av")
    bf16 = load_transformer(tiny.path, mode="av", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    video, audio = make_inputs(fp32.config)
    video16, audio16 = make_inputs(fp32.config, dtype=torch.bfloat16)
    for low, high in zip(bf16(video16, audio16), fp32(video, audio), strict=True):
        assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
        assert (low.float() - high).abs().mean() < 0.05 * high.abs().mean()


def test_attention_backend_and_bad_mode(tiny):
    from ltx2_tuner.errors import ConfigError

    with pytest.raises(ConfigError, match="not one of"):
        load_transformer(tiny.path, mode="both")
    with pytest.raises(ConfigError, match="attention backend"):
        load_transformer(tiny.path, mode="video", attention_backend="no_such_backend")
    model = load_transformer(tiny.path, mode="video", attention_backend="_native_math")
    video, _ = make_inputs(model.config)
    with torch.no_grad():
        reference, _ = load_transformer(tiny.path, mode="video")(video)
        torch.testing.assert_close(model(video)[0], reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no audio stream"):
        model(video, video)
