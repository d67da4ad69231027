"""Guidance: the pass plan, the MultiModalGuider formula, one guided step by hand, and the attention perturbations
against diffusers' own perturbed attention."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from ltx2_tuner.models import (
    ModalityInput,
    audio_latent_count,
    audio_positions,
    context_dims,
    load_transformer,
    video_positions,
)
from ltx2_tuner.sampling import GuidanceParams, Perturbation, SampleRequest, guide, perturbed, plan_passes, sample
from ltx2_tuner.sampling.guidance import COND, ISOLATED, PERTURBED, UNCOND, effective_params

CPU = torch.device("cpu")


def test_guide_is_the_multimodal_guider_formula():
    g = torch.Generator().manual_seed(0)
    cond, uncond, ptb, iso = (torch.randn(1, 7, 128, generator=g) for _ in range(4))
    params = GuidanceParams(cfg=3.0, stg=1.5, rescale=0.7, modality=2.5)
    pred = cond + 2.0 * (cond - uncond) + 1.5 * (cond - ptb) + 1.5 * (cond - iso)
    pred = pred * (0.7 * cond.std() / pred.std() + 0.3)
    out = guide({COND: cond, UNCOND: uncond, PERTURBED: ptb, ISOLATED: iso}, params)
    torch.testing.assert_close(out, pred, rtol=0, atol=1e-6)
    assert out.dtype == torch.float32


def test_guide_with_neutral_scales_or_missing_passes_returns_cond_exactly():
    cond, other = torch.randn(1, 5, 128), torch.randn(1, 5, 128)
    assert torch.equal(guide({COND: cond, UNCOND: other, PERTURBED: other, ISOLATED: other}, GuidanceParams()), cond)
    assert torch.equal(guide({COND: cond}, GuidanceParams(cfg=3.0, stg=1.0, modality=3.0)), cond)
    # rescale alone: std(pred) == std(cond), so the factor is exactly 1 up to rounding
    torch.testing.assert_close(guide({COND: cond}, GuidanceParams(rescale=0.7)), cond, rtol=0, atol=1e-6)


def _names(passes):
    return [p.name for p in passes]


def test_plan_runs_only_the_passes_that_change_the_result():
    on = GuidanceParams(cfg=3.0, stg=1.0, rescale=0.7, modality=3.0, stg_blocks=(28,))
    av = plan_passes(on, on, video_negative=True, audio_negative=True)
    assert _names(av) == [COND, UNCOND, PERTURBED, ISOLATED]
    assert av[1].negative and not av[0].negative and not av[2].negative
    assert av[2].perturbation == Perturbation(video_self_attn_blocks=(28,), audio_self_attn_blocks=(28,))
    assert av[3].perturbation == Perturbation(cross_modal=False)

    # Video only: no isolated pass (modality guidance needs both), and no audio perturbation.
    video_only = plan_passes(effective_params(on, other_modality_present=False), None, video_negative=True)
    assert _names(video_only) == [COND, UNCOND, PERTURBED]
    assert video_only[2].perturbation == Perturbation(video_self_attn_blocks=(28,))

    # No negative contexts: uncond would equal cond. CFG 1: no uncond either.
    assert UNCOND not in _names(plan_passes(on, on, video_negative=False, audio_negative=False))
    assert UNCOND not in _names(plan_passes(GuidanceParams(cfg=1.0), None, video_negative=True))
    # CFG on one modality is enough for the pass (both run in it).
    assert UNCOND in _names(plan_passes(GuidanceParams(), on, video_negative=False, audio_negative=True))
    # STG per modality, each with its own blocks; STG without blocks perturbs nothing.
    mixed = plan_passes(GuidanceParams(stg=0.0, stg_blocks=(1,)), GuidanceParams(stg=2.0, stg_blocks=(0, 3)),
                        video_negative=False)  # fmt: skip
    assert mixed[-1].perturbation == Perturbation(audio_self_attn_blocks=(0, 3))
    assert _names(plan_passes(GuidanceParams(stg=1.0), None, video_negative=False)) == [COND]
    assert _names(plan_passes(GuidanceParams(), GuidanceParams(), video_negative=True, audio_negative=True)) == [COND]


def test_a_frozen_modality_adds_no_pass_but_keeps_the_other_ones_modality_guidance():
    on = GuidanceParams(cfg=3.0, stg=1.0, rescale=0.7, modality=3.0, stg_blocks=(28,))
    a2v = plan_passes(effective_params(on, other_modality_present=True), GuidanceParams(), video_negative=True)
    assert _names(a2v) == [COND, UNCOND, PERTURBED, ISOLATED]
    assert a2v[2].perturbation == Perturbation(video_self_attn_blocks=(28,))  # no STG on the frozen audio
    v2a = plan_passes(GuidanceParams(), on, video_negative=False, audio_negative=True)
    assert _names(v2a) == [COND, UNCOND, PERTURBED, ISOLATED]
    assert v2a[2].perturbation == Perturbation(audio_self_attn_blocks=(28,))
    # Audio only (T2A): no video, so no modality pass whatever its scale.
    t2a = plan_passes(None, effective_params(on, other_modality_present=False), video_negative=False,
                      audio_negative=True)  # fmt: skip
    assert _names(t2a) == [COND, UNCOND, PERTURBED]


class PassAwareStub(nn.Module):
    """A model whose velocity shows which pass it runs: v = x/2 + mean(context)·A + [STG on this modality]·B +
    [cross-modal attention off]·C, with fixed random A, B, C per modality. It sees the per-sample perturbations
    through its own `perturbed` context manager (the hook point `sampling.perturbed` defers to)."""

    mode = "av"

    def __init__(self, num_video: int, num_audio: int):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.directions = {"video": torch.randn(3, num_video, 128, generator=g),
                           "audio": torch.randn(3, num_audio, 128, generator=g)}  # fmt: skip
        self.active: list[Perturbation] | None = None
        self.calls: list[list[Perturbation]] = []

    @contextlib.contextmanager
    def perturbed(self, perturbations):
        self.active = list(perturbations)
        try:
            yield
        finally:
            self.active = None

    def velocity(self, modality: str, x, context_mean, stg: bool, isolated: bool):
        a, b, c = self.directions[modality]
        return x / 2 + context_mean * a + float(stg) * b + float(isolated) * c

    def forward(self, video: ModalityInput, audio: ModalityInput):
        perturbations = self.active or [Perturbation()] * video.latent.shape[0]
        self.calls.append(perturbations)
        out = []
        for modality, inputs in (("video", video), ("audio", audio)):
            rows = []
            for i, p in enumerate(perturbations):
                blocks = p.video_self_attn_blocks if modality == "video" else p.audio_self_attn_blocks
                mean = inputs.context[i].mean()
                rows.append(self.velocity(modality, inputs.latent[i : i + 1], mean, bool(blocks), not p.cross_modal))
            out.append(torch.cat(rows))
        return tuple(out)


def _by_hand(stub, modality, x, sigma, sigma_next, pos_mean, neg_mean, params: GuidanceParams):
    """One Euler step of the guided flow, written out from the MultiModalGuider formula."""

    def x0(context_mean, stg=False, isolated=False):
        return x - sigma * stub.velocity(modality, x, context_mean, stg, isolated)

    cond, uncond = x0(pos_mean), x0(neg_mean)
    ptb, iso = x0(pos_mean, stg=params.stg != 0), x0(pos_mean, isolated=True)
    pred = cond + (params.cfg - 1) * (cond - uncond) + params.stg * (cond - ptb) + (params.modality - 1) * (cond - iso)
    pred = pred * (params.rescale * cond.std() / pred.std() + (1 - params.rescale))
    return x + (x - pred) / sigma * (sigma_next - sigma)


@pytest.mark.parametrize("video_stg", [1.5, 0.0])
@pytest.mark.parametrize("max_batch", [4, 1])
def test_one_guided_step_equals_the_formula_by_hand(max_batch, video_stg):
    width, height, frames, fps = 64, 32, 9, 24.0  # latent grid 2 x 1 x 2
    num_video, num_audio = 4, audio_latent_count(frames, fps)
    g = torch.Generator().manual_seed(1)
    contexts = [torch.randn(1, 5, 16, generator=g) + shift for shift in (0.3, -0.2, 0.1, 0.5)]
    video = GuidanceParams(cfg=3.0, stg=video_stg, rescale=0.7, modality=2.5, stg_blocks=(1,))
    audio = GuidanceParams(cfg=7.0, stg=0.5, rescale=0.4, modality=3.0, stg_blocks=(0,))
    request = SampleRequest(
        width=width, height=height, num_frames=frames, frame_rate=fps, seed=11, steps=1,
        video_context=contexts[0], video_context_negative=contexts[1],
        audio_context=contexts[2], audio_context_negative=contexts[3],
        video_guidance=video, audio_guidance=audio, sigmas=torch.tensor([0.8, 0.3]),
    )  # fmt: skip
    stub = PassAwareStub(num_video, num_audio)
    result = sample(stub, request, device=CPU, dtype=torch.float32, max_batch=max_batch)

    noise = torch.Generator().manual_seed(11)
    x_video, x_audio = torch.randn(1, num_video, 128, generator=noise), torch.randn(1, num_audio, 128, generator=noise)
    means = [c.mean() for c in contexts]
    expected_video = _by_hand(stub, "video", x_video, 0.8, 0.3, means[0], means[1], video)
    expected_audio = _by_hand(stub, "audio", x_audio, 0.8, 0.3, means[2], means[3], audio)
    # float32, the same operations, possibly in another order: 1e-5 (measured: bit-identical).
    torch.testing.assert_close(result.video_latents.flatten(2).transpose(1, 2), expected_video, rtol=0, atol=1e-5)
    audio_tokens = result.audio_latents.permute(0, 2, 1, 3).flatten(2)
    torch.testing.assert_close(audio_tokens, expected_audio, rtol=0, atol=1e-5)

    # The four passes ran, max_batch at a time, each sample with its own perturbation.
    ran = [p for call in stub.calls for p in call]
    stg = Perturbation(video_self_attn_blocks=(1,) if video_stg else (), audio_self_attn_blocks=(0,))
    assert ran == [Perturbation(), Perturbation(), stg, Perturbation(cross_modal=False)]
    assert [len(call) for call in stub.calls] == ([4] if max_batch == 4 else [1, 1, 1, 1])


# --- the perturbations on the real transformer, against diffusers' own perturbed attention -----------------------


@pytest.fixture(scope="module")
def tiny23(tiny_checkpoints):
    return load_transformer(tiny_checkpoints["2.3"].path, mode="av")


@pytest.mark.parametrize(("name", "field"), [("attn1", "video_self_attn_blocks"),
                                             ("audio_attn1", "audio_self_attn_blocks")])  # fmt: skip
def test_stg_bypass_equals_diffusers_perturbed_attention(tiny23, name, field):
    attn = getattr(tiny23.backbone.transformer_blocks[1], name)
    assert type(attn.processor).__name__ == "LTX2PerturbedAttnProcessor" and attn.to_gate_logits is not None
    x = torch.randn(2, 6, attn.query_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # diffusers: mask 1 = attend, 0 = value pass-through (before the per-head gate and the output projection)
        reference = attn(hidden_states=x, perturbation_mask=torch.tensor([1.0, 0.0]).view(2, 1, 1), all_perturbed=False)
        all_bypassed = attn(hidden_states=x[1:], perturbation_mask=torch.zeros(1, 1, 1), all_perturbed=True)
        plain = attn(hidden_states=x, perturbation_mask=None, all_perturbed=False)
        with perturbed(tiny23, [Perturbation(), Perturbation(**{field: (1,)})]):
            ours = attn(hidden_states=x, perturbation_mask=None, all_perturbed=False)
        with perturbed(tiny23, [Perturbation(**{field: (0,)})] * 2):  # another block: this one untouched
            untouched = attn(hidden_states=x, perturbation_mask=None, all_perturbed=False)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[1:], all_bypassed, rtol=0, atol=1e-6)
    assert torch.equal(ours[:1], plain[:1]) and torch.equal(untouched, plain)
    assert (ours[1] - plain[1]).abs().max() > 1e-3


def _block_kwargs(model) -> dict:
    """The keyword arguments the adapter gives block 0 in an AV forward (captured with a pre-hook)."""
    captured = {}
    handle = model.backbone.transformer_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    video_dim, audio_dim = context_dims(model.config)
    g = torch.Generator().manual_seed(5)
    sigma = torch.tensor([0.6])
    try:
        with torch.no_grad():
            model(
                ModalityInput(torch.randn(1, 4, 128, generator=g), sigma, sigma.expand(1, 4),
                              video_positions(1, 1, 2, 2, 24.0), torch.randn(1, 3, video_dim, generator=g)),
                ModalityInput(torch.randn(1, 5, 128, generator=g), sigma, sigma.expand(1, 5),
                              audio_positions(1, 5), torch.randn(1, 3, audio_dim, generator=g)),
            )  # fmt: skip
    finally:
        handle.remove()
    return captured


def test_isolation_equals_diffusers_block_without_cross_modal_attention(tiny23):
    kwargs = _block_kwargs(tiny23)
    block = tiny23.backbone.transformer_blocks[0]
    with torch.no_grad():
        reference = block(**kwargs, use_a2v_cross_attention=False, use_v2a_cross_attention=False)
        with perturbed(tiny23, [Perturbation(cross_modal=False)]):
            ours = block(**kwargs)
        plain = block(**kwargs)
    for mine, theirs, full in zip(ours, reference, plain, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
        assert (mine - full).abs().max() > 1e-4  # the cross-modal attention did contribute
