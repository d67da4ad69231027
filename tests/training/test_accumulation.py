"""Gradient accumulation: 2 accumulated batches of 1 make the same optimizer step as 1 batch of 2 (fp32, CPU).

Each item's noise, sigmas and first-frame draw are made independent of how items are batched (`_per_item_noise`),
so both ways optimize the same per-sample losses. Plain SGD without clipping: its update is proportional to the
gradient, so any error in the scale of the accumulated gradient shows (AdamW's first step would hide a factor 2).
"""

from __future__ import annotations

import json

import pytest
import torch
from _per_item_noise import CALLS, _item, patch_trainer, prepare_inputs_per_item
from safetensors.torch import load_file

from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.data.config import load_dataset_config
from ltx2_tuner.models import load_transformer
from ltx2_tuner.networks import lora_ltx2
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training.step import FlowSettings, compute_loss

# Measured (fp32, CPU): the two ways differ by at most 3e-8 in the LoRA after one SGD step that moved the weights by
# up to 0.12, and by 9e-8 after 2 trainer steps that moved lora_B (from 0) to 0.4. A gradient off by a factor 2 (a
# sum instead of a mean) or a dropped batch would be off by about the update itself, 5 orders above this bound.
TOLERANCE = 1e-6
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["2.3"].path


def _model_with_lora(checkpoint):
    """The tiny transformer with a rank-4 LoRA on every layer, lora_A and lora_B random (B = 0 would leave A
    without gradient in the first step), the same for every call."""
    model = load_transformer(checkpoint, mode="av")
    targets = lora_ltx2.select_targets(model.backbone, "av", ["preset=full"])
    params = lora_ltx2.add_lora(model.backbone, lora_ltx2.LoraSpec(4, 4.0, 0.0, targets))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in params:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.train()
    return model, params


def test_accumulated_gradient_is_the_batch_gradient(checkpoint, tmp_path):
    config = write_synthetic_dataset(tmp_path / "data", stems=("a", "b"), batch_size=2)
    batch = CachedBatches(load_dataset_config(config), "av")[0]
    assert len(batch["items"]) == 2
    flow = FlowSettings(first_frame_p=0.5)
    inputs = prepare_inputs_per_item(batch, "av", flow, None, CPU, torch.float32)
    singles = [prepare_inputs_per_item(_item(batch, i), "av", flow, None, CPU, torch.float32) for i in range(2)]
    assert inputs.video_loss_mask is not None  # the per-item draw conditioned at least one item's first frame

    # One step on the batch of 2.
    model, params = _model_with_lora(checkpoint)
    before = [p.detach().clone() for p in params]
    loss, parts = compute_loss(model(inputs.video, inputs.audio), inputs, flow)
    loss.backward()
    torch.optim.SGD(params, lr=1.0).step()
    batched = [p.detach().clone() for p in params]

    # The same samples as two accumulated batches of 1.
    accumulated_model, accumulated_params = _model_with_lora(checkpoint)
    losses = []
    for single in singles:  # as the trainer: each batch's loss divided by the group size, gradients summed
        single_loss = compute_loss(accumulated_model(single.video, single.audio), single, flow)[0]
        (single_loss / 2).backward()
        losses.append(single_loss.detach())
    torch.optim.SGD(accumulated_params, lr=1.0).step()
    # The loss of a batch is the mean of its samples' losses (equal-size samples), video and audio parts alike.
    torch.testing.assert_close(loss.detach(), torch.stack(losses).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(parts["video"].mean() + parts["audio"].mean(), loss.detach(), rtol=1e-6, atol=0)

    difference = max((a - b).abs().max().item() for a, b in zip(batched, accumulated_params, strict=True))
    update = max((a - b).abs().max().item() for a, b in zip(batched, before, strict=True))
    assert difference < TOLERANCE, difference
    assert update > 1e3 * TOLERANCE, update  # the step moved the weights far more than the bound


def _train(checkpoint, config, output, *flags) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--ltx_mode", "av",
                      "--mixed_precision", "no", "--network_dim", "4", "--network_alpha", "4", "--network_args",
                      "preset=full", "--optimizer_type", "torch.optim.SGD", "--learning_rate", "2.0",
                      "--max_grad_norm", "0", "--ltx2_first_frame_conditioning_p", "0.5", "--save_precision", "fp32",
                      "--output_dir", str(output), "--max_data_loader_n_workers", "0", "--log_with", "none", *flags])  # fmt: skip


@pytest.mark.slow  # two training runs end to end
def test_trainer_accumulating_two_batches_of_one_equals_one_batch_of_two(checkpoint, tmp_path, monkeypatch):
    patch_trainer(monkeypatch)
    steps = 2  # one epoch of the two items per optimizer step
    accumulated = write_synthetic_dataset(tmp_path / "acc", stems=("a", "b"), batch_size=1)
    batched = write_synthetic_dataset(tmp_path / "batch", stems=("a", "b"), batch_size=2)
    CALLS["items"] = 0
    assert _train(checkpoint, accumulated, tmp_path / "acc_out", "--max_train_steps", str(steps),
                  "--gradient_accumulation_steps", "2") == 0  # fmt: skip
    assert CALLS["items"] == 2 * steps  # the patch is in effect: every item's inputs came from its own draw
    assert _train(checkpoint, batched, tmp_path / "batch_out", "--max_train_steps", str(steps)) == 0

    lora_acc = load_file(tmp_path / "acc_out" / "ltx2_lora.safetensors")
    lora_batch = load_file(tmp_path / "batch_out" / "ltx2_lora.safetensors")
    assert lora_acc.keys() == lora_batch.keys()
    difference = max((lora_acc[k] - lora_batch[k]).abs().max().item() for k in lora_acc)
    moved = max(lora_batch[k].abs().max().item() for k in lora_batch if "lora_B" in k)  # B starts at 0
    assert difference < TOLERANCE, difference
    assert moved > 1e3 * TOLERANCE, moved

    def metrics(output):
        lines = (output / "logs" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    # One record per optimizer step; the logged loss of an accumulated step is the mean over its batches.
    acc_metrics, batch_metrics = metrics(tmp_path / "acc_out"), metrics(tmp_path / "batch_out")
    assert [m["step"] for m in acc_metrics] == [m["step"] for m in batch_metrics] == list(range(1, steps + 1))
    for a, b in zip(acc_metrics, batch_metrics, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
