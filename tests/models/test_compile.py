"""--compile: compiled blocks give the eager outputs and LoRA gradients, one graph serves every block (with block swap
and gradient checkpointing), and new bucket shapes do not recompile.

CPU compiles are slow (dynamic shapes, AOT autograd): the fast tests use backend "aot_eager" (dynamo + AOT
autograd, the graphs inductor would get, run eagerly) and "eager" (dynamo's guards alone, which decide recompiles);
the inductor test is marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from ltx2_tuner.models import ModalityInput, audio_positions, context_dims, load_transformer, video_positions
from ltx2_tuner.models.compile import compile_counts
from ltx2_tuner.networks import lora_ltx2

NUM_BLOCKS = 3  # the tiny checkpoint's 2 blocks and a perturbed copy: "one graph for all blocks" means something


def _model(tiny_path, mode: str, preset: str):
    model = load_transformer(tiny_path, mode=mode)
    blocks = model.backbone.transformer_blocks
    extra = copy.deepcopy(blocks[0])
    for param in extra.parameters():
        param.data.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(0)) * 0.01)
    blocks.append(extra)
    targets = lora_ltx2.select_targets(model.backbone, mode, [f"preset={preset}"])
    params = lora_ltx2.add_lora(model.backbone, lora_ltx2.LoraSpec(4, 4.0, 0.0, targets))
    generator = torch.Generator().manual_seed(1)
    for param in params:  # lora_B starts at 0; random values make lora_A's gradients non-zero too
        param.data.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.train()


def _inputs(config, batch: int, frames: int, height: int, width: int, audio_len: int, first_frame_clean: bool):
    """A bucket's (video, audio) inputs; `first_frame_clean` gives per-token timesteps (first frame at 0)."""
    generator = torch.Generator().manual_seed(frames * 100 + height * 10 + width)
    video_dim, audio_dim = context_dims(config)
    sigma = torch.linspace(0.3, 0.8, batch)
    timesteps = sigma[:, None].repeat(1, frames * height * width)
    if first_frame_clean:
        timesteps[:, : height * width] = 0.0
    video = ModalityInput(
        latent=torch.randn(batch, frames * height * width, 128, generator=generator),
        sigma=sigma,
        timesteps=timesteps,
        positions=video_positions(batch, frames, height, width, fps=24.0),
        context=torch.randn(batch, 7, video_dim, generator=generator),
    )
    audio = ModalityInput(
        latent=torch.randn(batch, audio_len, 128, generator=generator),
        sigma=sigma,
        timesteps=sigma[:, None].repeat(1, audio_len),
        positions=audio_positions(batch, audio_len),
        context=torch.randn(batch, 7, audio_dim, generator=generator),
    )
    return video, audio


def _step(model, video, audio):
    model.zero_grad(set_to_none=True)
    outputs = [o for o in model(video, audio) if o is not None]
    sum((o**2).mean() for o in outputs).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return outputs, grads


def _assert_same_step(eager, compiled, video, audio, tolerance: float) -> None:
    eager_out, eager_grads = _step(eager, video, audio)
    compiled_out, compiled_grads = _step(compiled, video, audio)
    for a, b in zip(eager_out, compiled_out, strict=True):
        torch.testing.assert_close(b, a, rtol=tolerance, atol=tolerance)
    assert eager_grads.keys() == compiled_grads.keys() and len(eager_grads) > 0
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=tolerance, atol=tolerance)


@pytest.mark.slow  # ~40 s of compiling on 2 CPU cores
def test_compiled_blocks_match_eager_with_block_swap_and_checkpointing(tiny_checkpoints):
    torch._dynamo.reset()
    path = tiny_checkpoints["2.3"].path
    eager, compiled = _model(path, "video", "video_attn"), _model(path, "video", "video_attn")
    compiled.enable_block_swap(1, "cpu")  # the last block's weights move between host and "device" copies
    compiled.enable_gradient_checkpointing(True)
    compiled.compile_blocks(backend="aot_eager")
    for first_frame_clean in (False, False):  # the second step must reuse the first step's graph
        video, _ = _inputs(eager.config, 2, 3, 2, 3, 13, first_frame_clean)
        _assert_same_step(eager, compiled, video, None, tolerance=1e-5)
    # One graph for all three blocks: swapped or resident, block 0 (frozen input) or not, forward or recompute.
    assert compile_counts()["_video_block"] == 1
    with torch.no_grad():  # previews run eagerly: no new graph
        compiled(_inputs(eager.config, 1, 2, 2, 2, 13, False)[0])
    assert compile_counts()["_video_block"] == 1


@pytest.mark.slow  # ~40 s of compiling on 2 CPU cores
def test_three_bucket_shapes_compile_at_most_one_graph_per_timestep_layout(tiny_checkpoints):
    # Bound: one graph per timestep layout (shared [B, 1] or per token [B, N]) for a fixed batch size > 1, whatever
    # the token counts; a batch of 1 may add one more per layout (torch specialises sizes of 1).
    torch._dynamo.reset()
    counters.clear()  # dynamo's graph count outlives reset()
    model = _model(tiny_checkpoints["2.3"].path, "av", "av_attn")
    model.compile_blocks(backend="eager")
    buckets = [(3, 2, 3, 13), (5, 4, 3, 21), (2, 4, 4, 9)]  # (frames, height, width, audio latents)
    for first_frame_clean, expected in ((False, 1), (True, 2)):
        for bucket in buckets:
            _step(model, *_inputs(model.config, 2, *bucket, first_frame_clean))
            assert compile_counts()["_av_block"] == expected, (bucket, first_frame_clean)
    counts = compile_counts()
    assert counts["unique_graphs"] == 2  # and no graph breaks


@pytest.mark.slow
def test_inductor_compiled_blocks_match_eager(tiny_checkpoints):
    torch._dynamo.reset()
    path = tiny_checkpoints["2.3"].path
    eager, compiled = _model(path, "video", "video_attn"), _model(path, "video", "video_attn")
    compiled.compile_blocks()  # inductor: C++ kernels on the CPU
    _assert_same_step(eager, compiled, *_inputs(eager.config, 2, 3, 2, 3, 13, False)[:1], None, tolerance=1e-4)
    assert compile_counts()["_video_block"] == 1
