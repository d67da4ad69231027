"""fp8 base weights (models/fp8.py): which layers, how they load (from bf16/fp32 files and from Lightricks' fp8 files),
that autograd keeps no upcast weight, and that loss and LoRA gradients stay close to the bf16 run's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltx2_tuner.models import load_transformer, read_checkpoint_info
from ltx2_tuner.models.fp8 import FP8_DTYPE, Fp8Linear, Fp8Storage, dequantize, is_fp8_linear, quantize, weight_bytes
from ltx2_tuner.models.safetensors_io import read_tensors
from ltx2_tuner.networks.lora_ltx2 import LoraSpec, add_lora, select_targets
from ltx2_tuner.testing.tiny_checkpoint import write_tiny_checkpoint
from ltx2_tuner.testing.transformer_inputs import make_inputs


@pytest.fixture(scope="module")
def fp8_file(tmp_path_factory):
    """A tiny LTX-2.3 checkpoint in the layout of Lightricks' -fp8 files (e4m3 weights + scalar `.weight_scale`)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("fp8"), "2.3", seed=1234, fp8=True)


def test_scaled_fp8_keeps_small_weights_that_plain_fp8_loses():
    # e4m3's subnormal step is 2^-9 ~ 0.002: a weight tensor of std 0.01 has most of its values near it.
    weight = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) * 0.01
    errors = {}
    for scaled in (False, True):
        fp8, scale = quantize(weight, scaled)
        assert fp8.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.ndim == 0
        errors[scaled] = ((dequantize(fp8, scale, torch.float32) - weight).norm() / weight.norm()).item()
    assert errors[True] < 0.03 and errors[False] > 2 * errors[True]  # measured: 0.027 scaled vs 0.057 plain


def test_out_of_range_weights_saturate_instead_of_becoming_nan():
    fp8, scale = quantize(torch.tensor([1000.0, -1000.0, 1.0]), scaled=False)
    assert dequantize(fp8, scale, torch.float32).tolist() == [448.0, -448.0, 1.0]


def test_fp8_layers_are_the_blocks_attention_and_feed_forward_only(tiny):
    model = load_transformer(tiny.path, "av", dtype=torch.bfloat16, fp8=Fp8Storage(scaled=True))
    linears = {name: m for name, m in model.backbone.named_modules() if isinstance(m, nn.Linear)}
    fp8 = {name for name, m in linears.items() if isinstance(m, Fp8Linear)}
    assert fp8 == {name for name in linears if is_fp8_linear(name)}
    assert {name.rsplit(".", 1)[-1] for name in fp8} == {"to_q", "to_k", "to_v", "0", "proj", "2"}
    assert any(".audio_ff." in name for name in fp8) and any("audio_to_video_attn" in name for name in fp8)
    for name, module in linears.items():
        if name in fp8:
            assert module.weight.dtype == FP8_DTYPE and module.weight_scale.dtype == torch.float32
            assert module.bias is None or module.bias.dtype == torch.bfloat16
        else:  # proj_in/out, AdaLN, caption projection, to_gate_logits...
            assert module.weight.dtype == torch.bfloat16, name
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if "norm" in n or "table" in n)


def test_lora_on_fp8_layers_stays_float32(tiny):
    model = load_transformer(tiny.path, "av", dtype=torch.bfloat16, fp8=Fp8Storage())
    reference = load_transformer(tiny.path, "av", dtype=torch.bfloat16)
    loras = []
    for backbone in (model.backbone, reference.backbone):
        torch.manual_seed(0)
        targets = select_targets(backbone, "av", ["preset=full"])
        loras.append(add_lora(backbone, LoraSpec(4, 4.0, 0.0, targets)))
    assert all(p.dtype == torch.float32 for p in loras[0])
    # PEFT gives the LoRA the base layer's compute dtype, not e4m3: the same initial LoRA as on a bf16 base.
    assert all(torch.equal(a, b) for a, b in zip(loras[0], loras[1], strict=True))


def test_official_fp8_file_keeps_its_weights_and_scales(fp8_file):
    info = read_checkpoint_info(fp8_file)
    name = "model.diffusion_model.transformer_blocks.0.attn1.to_q"
    (_, weight), (_, scale) = read_tensors(info.header, [f"{name}.weight", f"{name}.weight_scale"])
    assert weight.dtype == FP8_DTYPE and scale.ndim == 0
    kept = load_transformer(fp8_file, "av", dtype=torch.bfloat16, fp8=Fp8Storage())
    layer = kept.backbone.transformer_blocks[0].attn1.to_q
    assert torch.equal(layer.weight.view(torch.uint8), weight.view(torch.uint8)) and torch.equal(
        layer.weight_scale, scale
    )
    # Without --fp8_base the same file is dequantized on load.
    plain = load_transformer(fp8_file, "av", dtype=torch.float32)
    assert torch.equal(plain.backbone.transformer_blocks[0].attn1.to_q.weight, weight.float() * scale)


def test_fp8_model_uses_less_than_55_percent_of_the_bf16_weight_bytes(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "2.3", size="bench", dtype=torch.bfloat16)
    bf16 = weight_bytes(load_transformer(path, "video", dtype=torch.bfloat16))
    fp8 = weight_bytes(load_transformer(path, "video", dtype=torch.bfloat16, fp8=Fp8Storage(scaled=True)))
    assert fp8 / bf16 <= 0.55  # measured 0.53 on the bench model (0.51 on LTX-2.3 22B's shapes)


def _saved_upcast_weights(model, video, audio) -> int:
    """How many tensors autograd saves for backward that are an fp8 layer's weight in a float dtype (or its .t())."""
    upcasts = [dequantize(m.weight, m.weight_scale, torch.float32) for m in model.modules() if isinstance(m, Fp8Linear)]
    upcasts += [w.t() for w in upcasts]
    saved = []

    def pack(tensor):
        if tensor.dtype == torch.float32 and any(tensor.shape == w.shape and torch.equal(tensor, w) for w in upcasts):
            saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        velocities = model(video, audio)
    sum(v.float().square().mean() for v in velocities).backward()
    return len(saved)


def test_autograd_saves_the_fp8_weights_not_their_upcasts(tiny):
    model = load_transformer(tiny.path, "av", dtype=torch.float32, fp8=Fp8Storage())
    add_lora(model.backbone, LoraSpec(4, 4.0, 0.0, select_targets(model.backbone, "av")))
    video, audio = make_inputs(model.config)
    assert _saved_upcast_weights(model, video, audio) == 0
    # The check would see them: the same model with plain upcasting Linears saves every one.
    for module in model.modules():
        if isinstance(module, Fp8Linear):
            module.forward = lambda x, m=module: nn.functional.linear(
                x, dequantize(m.weight, m.weight_scale, x.dtype), m.bias
            )
    assert _saved_upcast_weights(model, video, audio) > 0


def _loss_and_grads(path, mode, fp8, checkpointing, dtype):
    model = load_transformer(path, mode, dtype=dtype, fp8=fp8, gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    params = add_lora(model.backbone, LoraSpec(4, 4.0, 0.0, select_targets(model.backbone, mode, ["preset=full"])))
    for param in params:  # a trained LoRA: B = 0 would hide most of the base from the gradients of A
        param.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(param.numel()))
    video, audio = make_inputs(model.config, dtype=dtype)
    if mode == "video":
        audio = None
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        velocities = [v for v in model(video, audio) if v is not None]
        targets = [torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for v in velocities]
        loss = sum((v.float() - t).square().mean() for v, t in zip(velocities, targets, strict=True))
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in params])


@pytest.mark.parametrize("mode", ["video", "av"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_fp8_loss_and_lora_gradients_are_close_to_the_bf16_run(tiny_checkpoints, mode, checkpointing):
    """Tolerance, stated: loss within 1% and LoRA gradients within 10% (relative L2) of the bf16 run, i.e. an error
    of the size of bf16's own against fp32 (e4m3 keeps 3 mantissa bits, bf16 7: per weight 16x coarser, but the
    rounding averages out over each matmul's sum)."""
    path = tiny_checkpoints["2.3"].path
    _, fp32_grads = _loss_and_grads(path, mode, None, checkpointing, torch.float32)
    bf16_loss, bf16_grads = _loss_and_grads(path, mode, None, checkpointing, torch.bfloat16)
    fp8_loss, fp8_grads = _loss_and_grads(path, mode, Fp8Storage(scaled=True), checkpointing, torch.bfloat16)
    assert abs(fp8_loss - bf16_loss) <= 0.01 * abs(bf16_loss)
    assert (fp8_grads - bf16_grads).norm() <= 0.10 * bf16_grads.norm()
    # bf16's own error against fp32, for scale: the same order.
    assert (bf16_grads - fp32_grads).norm() <= 0.10 * fp32_grads.norm()
    assert fp8_grads.abs().sum() > 0 and torch.isfinite(fp8_grads).all()
