"""`--debug_dataset`: the bucket plan, batches per epoch and the first batch's shapes, without loading the model."""

from __future__ import annotations

from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.train_network import main
from ltx2_tuner.testing.synthetic_caches import write_synthetic_dataset
from ltx2_tuner.training import trainer


def test_debug_dataset_prints_the_plan_and_never_loads_the_model(tiny_checkpoints, tmp_path, monkeypatch, capsys):
    config = write_synthetic_dataset(tmp_path / "data", stems=("a", "b", "c"), batch_size=2)

    def must_not_load(*args, **kwargs):
        raise AssertionError("--debug_dataset loaded the transformer")

    monkeypatch.setattr(trainer, "load_transformer", must_not_load)
    flags = ["--dataset_config", str(config), "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--ltx_mode",
             "av", "--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path / "out"), "--debug_dataset"]  # fmt: skip
    assert run(main, flags) == 0
    out = capsys.readouterr().out
    assert "[[datasets]] #1 (clips): 3 cached items x 1 repeats, batch size 2" in out
    assert "shape 3x2x2 latents (17 frames, 64x64)" in out and "3 items, 2 batches" in out
    assert "per epoch (one process): 2 batches, 1 optimizer steps with gradient accumulation 2" in out
    assert "latents.latents: [2, 128, 3, 2, 2] float32" in out or "latents.latents: [1, 128, 3, 2, 2] float32" in out
    assert "audio_latents.latents: [" in out and "conditions.video_prompt_embeds: [" in out
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_debug_dataset_stops_on_the_caches_training_would_refuse(tiny_checkpoints, tmp_path, capsys):
    config = write_synthetic_dataset(tmp_path / "data", with_audio=False)
    flags = ["--dataset_config", str(config), "--ltx2_checkpoint", str(tiny_checkpoints["2.3"].path), "--ltx_mode",
             "av", "--debug_dataset"]  # fmt: skip
    assert run(main, flags) != 0
    err = capsys.readouterr().err
    # The trainer's own report: one line per missing audio cache, then the command that writes them.
    assert err.startswith("error: 4 cache problems, nothing trained:") and "--skip_existing" in err
    assert "Traceback" not in err
