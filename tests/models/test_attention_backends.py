"""--attention_backend: one line for an unknown name, a missing GPU or package, a backend without backward when
training, a mask it cannot apply; the native backends run and match."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ltx2_tuner.errors import ConfigError
from ltx2_tuner.models import load_transformer
from ltx2_tuner.models.attention_backends import ATTENTION_BACKENDS, BACKENDS, backend_problem, check_backend
from ltx2_tuner.testing.transformer_inputs import make_inputs
from ltx2_tuner.training.config import parse_args


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="--attention_backend flash2: unknown attention backend; use one of") as error:
        check_backend("flash2", training=True)
    assert all(name in str(error.value) for name in ATTENTION_BACKENDS)
    assert "\n" not in str(error.value)


def test_sage_is_refused_for_training_before_anything_else(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the backward check does not depend on the machine
    with pytest.raises(ConfigError, match="sage: has no backward pass, so it serves previews and generation only"):
        check_backend("sage", training=True)


@pytest.mark.parametrize("name", ["flash", "flash3", "xformers", "sage", "cudnn"])
def test_gpu_backends_need_a_cuda_gpu(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=f"--attention_backend {name}: needs a CUDA GPU .*; use native"):
        check_backend(name, training=False)


@pytest.mark.parametrize(
    ("name", "package"), [("flash", "flash-attn"), ("xformers", "xformers"), ("sage", "sageattention")]
)
def test_a_missing_package_is_named_with_its_install_command(monkeypatch, name, package):
    from diffusers.models import attention_dispatch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for flag in ("_CAN_USE_FLASH_ATTN", "_CAN_USE_XFORMERS_ATTN", "_CAN_USE_SAGE_ATTN"):  # as on a GPU without them
        monkeypatch.setattr(attention_dispatch, flag, False)
    problem = backend_problem(name, training=False)
    assert problem is not None and f"pip install {package}" in problem and "missing or too old" in problem


def test_half_precision_kernels_refuse_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "bf16 or fp16 only, not float32" in backend_problem("cudnn", training=True, dtype=torch.float32)
    assert backend_problem("cudnn", training=True, dtype=torch.bfloat16) is None


def test_training_flag_is_checked_before_any_model_loads():
    with pytest.raises(ConfigError, match="--attention_backend sage: has no backward pass"):
        parse_args(["--dataset_config", "d.toml", "--ltx2_checkpoint", "c.safetensors", "--attention_backend", "sage"])
    with pytest.raises(SystemExit):  # argparse lists the choices
        parse_args(["--dataset_config", "d.toml", "--ltx2_checkpoint", "c.safetensors", "--attention_backend", "nope"])


@torch.no_grad()
def test_native_backends_run_and_agree(tiny_checkpoints):
    path = tiny_checkpoints["2.3"].path
    reference = load_transformer(path, mode="video")
    video, _ = make_inputs(reference.config)
    expected, _ = reference(video)
    for name in ("native", "math"):
        model = load_transformer(path, mode="video", attention_backend=name)
        assert model.attention_backend is BACKENDS[name]
        torch.testing.assert_close(model(video)[0], expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_padding_mask_is_refused_by_a_backend_that_cannot_apply_it(tiny_checkpoints):
    model = load_transformer(tiny_checkpoints["2.3"].path, mode="video")
    video, _ = make_inputs(model.config)
    mask = torch.ones(video.context.shape[:2], dtype=torch.int64)
    mask[:, -2:] = 0
    masked = dataclasses.replace(video, context_mask=mask)
    model(masked)  # native applies it
    model.attention_backend = BACKENDS["flash"]  # as set on a GPU; the refusal comes before any kernel runs
    with pytest.raises(ConfigError, match="--attention_backend flash: cannot apply the text padding mask"):
        model(masked)
    model(video)  # no mask (the connectors' registers fill the padding): fine


def test_generate_checks_the_backend_before_reading_anything(monkeypatch, capsys):
    from ltx2_tuner.cli import generate_video
    from ltx2_tuner.cli._common import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--ltx2_checkpoint", "missing.safetensors", "--prompt", "a fox", "--attention_backend", "sage"]
    assert run(generate_video.main, [*argv, "--device", "cpu"]) != 0
    assert "--attention_backend sage: needs a CUDA GPU" in capsys.readouterr().err  # not "has no backward pass"
