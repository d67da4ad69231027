"""Caption dropout in training: at rate 1 the transformer sees only the empty prompt; at rate 0 nothing changes."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from ltx2_tuner.cache import naming
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import trainer


def _flags(checkpoint, config, output, *flags) -> list[str]:
    return ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--mixed_precision", "no",
            "--network_dim", "4", "--network_alpha", "4", "--output_dir", str(output), "--learning_rate", "1e-2",
            "--max_data_loader_n_workers", "0", "--log_with", "none", "--ltx_mode", "av", *flags]  # fmt: skip


def _record_contexts(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (video, audio) text context of every transformer call of the next run."""
    seen = []
    real_setup = trainer.setup

    def setup(args):
        state = real_setup(args)
        state.model.register_forward_pre_hook(
            lambda module, inputs: seen.append((inputs[0].context.clone(), inputs[1].context.clone()))
        )
        return state

    monkeypatch.setattr(trainer, "setup", setup)
    return seen


def test_rate_one_trains_only_on_the_empty_prompt(tiny_checkpoints, tmp_path, monkeypatch):
    config = write_synthetic_dataset(tmp_path / "data")
    seen = _record_contexts(monkeypatch)
    assert run(main, _flags(tiny_checkpoints["2.3"].path, config, tmp_path / "out", "--max_train_steps", "4",
                            "--caption_dropout_rate", "1")) == 0  # fmt: skip
    empty = load_file(naming.empty_prompt_cache_path(tmp_path / "data" / "cache"))
    captions = [load_file(naming.text_cache_path(tmp_path / "data" / "cache", stem)) for stem in ("a", "b")]
    assert len(seen) == 4
    for video, audio in seen:
        assert torch.equal(video[0], empty["video_prompt_embeds_float32"])
        assert torch.equal(audio[0], empty["audio_prompt_embeds_float32"])
        assert not any(torch.equal(video[0], c["video_prompt_embeds_float32"]) for c in captions)


def test_rate_zero_changes_nothing_bit_for_bit(tiny_checkpoints, tmp_path):
    config = write_synthetic_dataset(tmp_path / "data")
    checkpoint = tiny_checkpoints["2.3"].path
    assert run(main, _flags(checkpoint, config, tmp_path / "plain", "--max_train_steps", "3")) == 0
    assert run(main, _flags(checkpoint, config, tmp_path / "zero", "--max_train_steps", "3",
                            "--caption_dropout_rate", "0")) == 0  # fmt: skip
    # A dataset that sets 0 itself overrides a flag that would drop.
    config.write_text(config.read_text() + "caption_dropout_rate = 0.0\n")
    assert run(main, _flags(checkpoint, config, tmp_path / "override", "--max_train_steps", "3",
                            "--caption_dropout_rate", "1")) == 0  # fmt: skip
    plain = load_file(tmp_path / "plain" / "ltx2_lora.safetensors")
    for name in ("zero", "override"):
        other = load_file(tmp_path / name / "ltx2_lora.safetensors")
        assert all(torch.equal(plain[key], other[key]) for key in plain), name
