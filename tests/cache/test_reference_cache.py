"""References and masks: dataset keys, ltx2_cache_latents.py's partner files, and their batch keys."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ltx2_tuner.cache import naming
from ltx2_tuner.cache.cached_dataset import CachedBatches
from ltx2_tuner.cache.latent_plan import AudioSource, plan_latent_jobs
from ltx2_tuner.cache.store import write_cache
from ltx2_tuner.cli._common import run
from ltx2_tuner.cli.cache_latents import main
from ltx2_tuner.data.config import load_dataset_config
from ltx2_tuner.errors import CacheError, DatasetError
from ltx2_tuner.testing.synthetic_media import write_audio, write_video

FPS = 24.0
WIDTH, HEIGHT = 128, 64  # the bucket: latent grid 4 x 2


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


def _write_mask_video(path: Path, num_frames: int, square_frames: range, box: tuple[int, int, int, int]) -> None:
    """Black frames with a white box (x1, y1, x2, y2) on `square_frames`, encoded losslessly."""
    x1, y1, x2, y2 = box
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
        stream.options = {"qp": "0"}
        for k in range(num_frames):
            pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            if k in square_frames:
                pixels[y1:y2, x1:x2] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, "rgb24")))
        container.mux(stream.encode(None))


def _pair_dataset(tmp_path: Path, a_extra: str = "", b_extra: str = "") -> Path:
    """Two datasets over one clip and its reference: A at N=1, S=1 with a mask image, B at N=2, S=2 with a mask
    video."""
    clips, refs, masks_a, masks_b = (tmp_path / name for name in ("clips", "refs", "masks_a", "masks_b"))
    for folder in (clips, refs, masks_a, masks_b):
        folder.mkdir(exist_ok=True)
    if not (clips / "clip.mp4").exists():
        write_video(clips / "clip.mp4", num_frames=30, fps=FPS, width=WIDTH, height=HEIGHT, seed=0)
        (clips / "clip.txt").write_text("a clip")
        write_video(refs / "clip.mkv", num_frames=30, fps=FPS, width=WIDTH, height=HEIGHT, seed=7)  # any extension
        picture = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        picture[0:32, 32:64] = 255
        Image.fromarray(picture).save(masks_a / "clip.png")
        _write_mask_video(masks_b / "clip.mp4", 30, range(9, 13), (64, 32, 96, 64))
    config = tmp_path / "dataset.toml"
    common = f'video_directory = "clips"\nresolution = [{WIDTH}, {HEIGHT}]\ntarget_frames = [17]\n'
    config.write_text(
        f'[[datasets]]\n{common}cache_directory = "cache/a"\nreference_directory = "refs"\n'
        f'mask_directory = "masks_a"\n{a_extra}\n'
        f'[[datasets]]\n{common}cache_directory = "cache/b"\ncontrol_directory = "refs"\nmask_directory = "masks_b"\n'
        f"reference_downscale_factor = 2\nreference_temporal_scale_factor = 2\n{b_extra}\n"
    )
    return config


def _cache(config: Path, checkpoint: Path, *flags: str) -> int:
    return run(main, ["--dataset_config", str(config), "--ltx2_checkpoint", str(checkpoint), "--device", "cpu",
                      "--vae_dtype", "fp32", *flags])  # fmt: skip


@pytest.fixture
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["2.3"].path


def _independent_encode(checkpoint: Path, video: Path, frame_indices: range, size: tuple[int, int]) -> torch.Tensor:
    from ltx2_tuner.cache.latent_cacher import LatentEncoder, VaeTiling
    from ltx2_tuner.data.transforms import frames_to_model_input
    from ltx2_tuner.data.video import read_video_frames
    from ltx2_tuner.models import read_checkpoint_info

    encoder = LatentEncoder(read_checkpoint_info(checkpoint), None, torch.device("cpu"), torch.float32, VaeTiling())
    pixels = read_video_frames(video, [k / FPS for k in frame_indices], size=size)
    return encoder.encode_video(frames_to_model_input(pixels)[None])[0]


def _expected_video_mask(latent_frames: int, square_frames: range, box_latent: tuple[int, int]) -> torch.Tensor:
    """Hand-computed: latent frame 0 is pixel frame 0, latent k covers frames 8k-7..8k (the VAE's causal groups);
    a latent cell is kept when the box covers it in any of its frames."""
    expected = torch.zeros(latent_frames, HEIGHT // 32, WIDTH // 32)
    for k in range(latent_frames):
        group = [0] if k == 0 else range(8 * k - 7, 8 * k + 1)
        if any(frame in square_frames for frame in group):
            expected[k, box_latent[0], box_latent[1]] = 1.0
    return expected


def test_reference_and_mask_files_at_both_scales(tmp_path, checkpoint, capsys):
    config = _pair_dataset(tmp_path)
    assert _cache(config, checkpoint) == 0
    assert "done: 2 cached, 0 reused, 0 failed" in capsys.readouterr().out
    a, b = tmp_path / "cache" / "a", tmp_path / "cache" / "b"
    key = naming.item_key("clip", 0, 17)
    assert sorted(p.name for p in a.iterdir()) == sorted([
        f"{key}_0128x0064_ltx2.safetensors", f"{key}_ltx2_ref.safetensors", f"{key}_ltx2_mask.safetensors",
    ])  # fmt: skip

    ref_a = _tensors(a / f"{key}_ltx2_ref.safetensors")
    assert list(ref_a) == ["latents_3x2x4_float32"]  # N=1, S=1: the target's grid
    expected = _independent_encode(checkpoint, tmp_path / "refs" / "clip.mkv", range(17), (WIDTH, HEIGHT))
    torch.testing.assert_close(ref_a["latents_3x2x4_float32"], expected, atol=1e-5, rtol=1e-5)
    ref_b = _tensors(b / f"{key}_ltx2_ref.safetensors")
    assert list(ref_b) == ["latents_2x1x2_float32"]  # N=2: 64x32 pixels; S=2: frames 0, 2, ..., 16 (9 frames)
    expected = _independent_encode(checkpoint, tmp_path / "refs" / "clip.mkv", range(0, 17, 2), (64, 32))
    torch.testing.assert_close(ref_b["latents_2x1x2_float32"], expected, atol=1e-5, rtol=1e-5)
    target = _tensors(a / f"{key}_0128x0064_ltx2.safetensors")["latents_3x2x4_float32"]
    assert not torch.allclose(target, ref_a["latents_3x2x4_float32"])  # the reference is its own clip

    # Mask image: a white 32x32 square at x 32..64, y 0..32 -> latent cell (row 0, column 1) on every frame.
    mask_a = _tensors(a / f"{key}_ltx2_mask.safetensors")
    torch.testing.assert_close(mask_a["mask_3x2x4"], _expected_video_mask(3, range(30), (0, 1)))
    # Mask video: the square only on frames 9..12 at x 64..96, y 32..64 -> latent frame 2 (frames 9..16) only.
    mask_b = _tensors(b / f"{key}_ltx2_mask.safetensors")
    expected_b = _expected_video_mask(3, range(9, 13), (1, 2))
    assert expected_b[2, 1, 2] == 1 and expected_b.sum() == 1
    torch.testing.assert_close(mask_b["mask_3x2x4"], expected_b)


def _text_cache(dataset, stem: str) -> None:
    caption = (dataset.source / f"{stem}.txt").read_text().strip()
    fingerprint = {"caption_sha256": hashlib.sha256(caption.encode()).hexdigest(), "mode": "video",
                   "connectors": {"version": "2.3"}}  # fmt: skip
    tensors = {"video_prompt_embeds_float32": torch.randn(8, 16), "prompt_attention_mask": torch.ones(8)}
    write_cache(naming.text_cache_path(dataset.cache_directory, stem), tensors, fingerprint)


def test_batches_carry_references_and_masks_and_stale_files_are_named(tmp_path, checkpoint):
    config = _pair_dataset(tmp_path)
    assert _cache(config, checkpoint) == 0
    datasets = load_dataset_config(config)
    for dataset in datasets:
        _text_cache(dataset, "clip")
    batches = CachedBatches(datasets, "video", seed=0)
    by_dataset = {batches[i]["items"][0]: batches[i] for i in range(len(batches))}
    assert len(by_dataset) == 1 and len(batches) == 2  # one key per dataset
    shapes = sorted((tuple(batches[i]["reference_latents"]["latents"].shape), float(batches[i]["reference_latents"]["fps"][0]))
                    for i in range(len(batches)))  # fmt: skip
    assert shapes == [((1, 128, 2, 1, 2), FPS / 2), ((1, 128, 3, 2, 4), FPS)]  # the reference fps = fps / S
    for i in range(len(batches)):
        batch = batches[i]
        assert batch["video_mask"].shape == (1, *batch["latents"]["latents"].shape[2:])
        assert set(batch["video_mask"].unique().tolist()) <= {0.0, 1.0}
        assert "audio_mask" not in batch and "reference_audio_latents" not in batch

    os.utime(tmp_path / "refs" / "clip.mkv", ns=(1, 1))  # the reference changed: both caches are stale
    with pytest.raises(CacheError) as error:
        CachedBatches(datasets, "video", seed=0)
    message = str(error.value)
    assert "2 cache problems" in message and message.count("_ltx2_ref.safetensors: stale reference cache") == 2
    assert "ltx2_cache_latents.py" in message

    # --skip_existing re-makes exactly the two references; then a dropped mask_directory leaves A's mask unusable.
    mask_a = tmp_path / "cache" / "a" / f"{naming.item_key('clip', 0, 17)}_ltx2_mask.safetensors"
    mask_stamp = mask_a.stat().st_mtime_ns
    assert _cache(config, checkpoint, "--skip_existing") == 0
    assert mask_a.stat().st_mtime_ns == mask_stamp
    CachedBatches(datasets, "video", seed=0)  # current again
    text = config.read_text().replace('mask_directory = "masks_a"\n', "", 1)
    config.write_text(text)
    assert _cache(config, checkpoint, "--skip_existing", "--prune_cache") == 0
    assert not mask_a.exists()
    assert (tmp_path / "cache" / "b" / mask_a.name).exists()


def test_audio_references_and_masks_from_a_tensor_and_an_envelope(tmp_path, checkpoint):
    voices, refs, masks = (tmp_path / name for name in ("voices", "refs", "masks"))
    for folder in (voices, refs, masks):
        folder.mkdir()
    rate = 16000
    for stem in ("a", "b"):
        write_audio(voices / f"{stem}.wav", np.repeat(np.sin(np.arange(rate) / 9.0)[None] * 0.5, 2, 0), rate)
        (voices / f"{stem}.txt").write_text(f"voice {stem}")
        write_audio(refs / f"{stem}.flac", np.repeat(np.cos(np.arange(rate) / 5.0)[None] * 0.5, 2, 0), rate)
    signal = torch.cat([torch.zeros(30), torch.ones(70)])
    torch.save(signal, masks / "a.pt")
    # An envelope: |x| = 0.9 for the first 40% of the file, 0.1 after (alternating signs keep |x| constant).
    samples = 8000
    signs = np.where(np.arange(samples) % 2, -1.0, 1.0)
    envelope = np.where(np.arange(samples) < 0.4 * samples, 0.9, 0.1)
    write_audio(masks / "b.wav", np.repeat((signs * envelope)[None], 2, 0), rate)
    config = tmp_path / "dataset.toml"
    config.write_text('[[datasets]]\naudio_directory = "voices"\ncache_directory = "cache"\n'
                      'audio_bucket_interval = 1.0\nreference_audio_directory = "refs"\n'
                      'audio_mask_directory = "masks"\n')  # fmt: skip
    assert _cache(config, checkpoint, "--ltx_mode", "audio") == 0
    cache = tmp_path / "cache"
    for stem, source in (("a", signal.numpy()), ("b", np.abs(envelope))):
        target = _tensors(cache / f"{stem}_ltx2_audio.safetensors")
        (steps,) = {t.shape[1] for k, t in target.items() if k.startswith("audio_latents")}
        reference = _tensors(cache / f"{stem}_ltx2_ref_audio.safetensors")
        assert {k: t.shape for k, t in reference.items() if k.startswith("audio_latents")} == {
            f"audio_latents_{steps}x16x8_float32": (8, steps, 16)
        }
        mask = _tensors(cache / f"{stem}_ltx2_audio_mask.safetensors")[f"audio_mask_{steps}"]
        # Nearest resampling over the whole signal: step i takes sample floor(i * L / T); kept where > 0.5.
        expected = [float(source[math.floor(i * (len(source) / steps))] > 0.5) for i in range(steps)]
        assert mask.tolist() == expected and 0 < sum(expected) < steps


def _jsonl_dataset(tmp_path: Path, lines: list[str], extra: str = "") -> Path:
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    config = tmp_path / "dataset.toml"
    config.write_text(f'[[datasets]]\nvideo_jsonl_file = "items.jsonl"\ncache_directory = "cache"\n'
                      f"resolution = [{WIDTH}, {HEIGHT}]\ntarget_frames = [17]\n{extra}")  # fmt: skip
    return config


def test_jsonl_and_musubi_keys_plan_the_same_files(tmp_path):
    _pair_dataset(tmp_path)
    line = '{"video_path": "clips/clip.mp4", "caption": "c", "control_path": "refs/clip.mkv", "mask_path": "masks_a/clip.png"}'
    config = _jsonl_dataset(tmp_path, [line], "control_resolution = [64, 32]\n")
    plan = plan_latent_jobs(load_dataset_config(config), "video", None, None, AudioSource("video"))
    assert plan.partner_problems == []
    (job,) = plan.jobs
    reference, mask = job.partners
    assert (reference.kind, reference.source.name, reference.size) == ("reference", "clip.mkv", (64, 32))
    assert reference.fingerprint["factors"] == [2, 1] and len(reference.times_s) == 17
    assert (mask.kind, mask.path.name, mask.size) == ("mask", f"{job.key}_ltx2_mask.safetensors", (WIDTH, HEIGHT))
    # In audio mode no picture partner is planned (no video VAE is loaded there).
    assert all(not j.partners for j in plan_latent_jobs(load_dataset_config(config), "audio", None, None,
                                                        AudioSource("video")).jobs if j.bucket is None)  # fmt: skip


def test_missing_partners_are_listed_together_before_any_model_loads(tmp_path, checkpoint, capsys):
    config = _pair_dataset(tmp_path)
    write_video(tmp_path / "clips" / "second.mp4", num_frames=20, fps=FPS, width=WIDTH, height=HEIGHT)
    (tmp_path / "clips" / "second.txt").write_text("another clip")
    (tmp_path / "masks_b" / "clip.mp4").unlink()
    assert _cache(config, checkpoint) != 0
    captured = capsys.readouterr()
    assert "caching" not in captured.out  # stopped at planning
    assert "4 reference/mask file problems" in captured.err
    # A and B share the reference folder (B by musubi's control_directory): the same line is listed once.
    assert captured.err.count("refs: no reference file for second.mp4") == 1
    assert "no mask file for second.mp4" in captured.err and "no mask file for clip.mp4" in captured.err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('control_directory = "refs"\n', "mean the same"),
        ("reference_downscale_factor = 0\n", "must be an integer >= 1"),
        ("control_resolution = [100, 32]\n", "multiples of 32"),
        ("audio_bucket_interval = 1.0\n", "audio datasets only"),  # video datasets take audio partners, not these
    ],
)
def test_dataset_key_mistakes_are_one_line_each(tmp_path, extra, words):
    config = _pair_dataset(tmp_path, a_extra=extra)
    with pytest.raises(DatasetError, match=words):
        load_dataset_config(config)


def test_reference_scaling_that_does_not_fit_is_a_planning_problem(tmp_path):
    config = _pair_dataset(tmp_path, b_extra="")
    text = config.read_text().replace("reference_temporal_scale_factor = 2", "reference_temporal_scale_factor = 3")
    config.write_text(text.replace("reference_downscale_factor = 2", "reference_downscale_factor = 4"))
    plan = plan_latent_jobs(load_dataset_config(config), "video", None, None, AudioSource("video"))
    (problem,) = plan.partner_problems  # the temporal factor is checked first, one line per item
    assert "reference_temporal_scale_factor 3" in problem and "8k+1" in problem
    jsonl = _jsonl_dataset(tmp_path / "clips", ['{"video_path": "clip.mp4", "reference_path": "../refs/clip.mkv"}'],
                           "reference_downscale_factor = 4\n")  # fmt: skip
    plan = plan_latent_jobs(load_dataset_config(jsonl), "video", None, None, AudioSource("video"))
    assert len(plan.partner_problems) == 1 and "32x16" in plan.partner_problems[0]  # 128x64 / 4: not a multiple of 32


def _av_clips(tmp_path: Path) -> tuple[Path, Path]:
    """Clips a and b with tone soundtracks; refs/a is a copy of clip a (so its soundtrack is a's own), refs/b is
    silent (no audio stream)."""
    clips, refs = tmp_path / "clips", tmp_path / "refs"
    for folder in (clips, refs):
        folder.mkdir()
    for index, stem in enumerate(("a", "b")):
        write_video(clips / f"{stem}.mp4", 17, FPS, WIDTH, HEIGHT, audio="tone", seed=index)
        (clips / f"{stem}.txt").write_text(f"clip {stem}")
    (refs / "a.mp4").write_bytes((clips / "a.mp4").read_bytes())
    write_video(refs / "b.mp4", 17, FPS, WIDTH, HEIGHT, seed=5)
    return clips, refs


def _av_config(tmp_path: Path, extra: str) -> Path:
    config = tmp_path / "dataset.toml"
    config.write_text(f'[[datasets]]\nvideo_directory = "clips"\ncache_directory = "cache"\nresolution = [{WIDTH}, '
                      f"{HEIGHT}]\ntarget_frames = [17]\n{extra}")  # fmt: skip
    return config


def test_video_windows_get_reference_audio_and_audio_masks_in_av_runs(tmp_path, checkpoint):
    from ltx2_tuner.testing.synthetic_caches import write_synthetic_text_caches

    _, refs = _av_clips(tmp_path)
    write_audio(refs / "b.wav", np.repeat(np.sin(np.arange(16000) / 7.0)[None] * 0.5, 2, 0), 16000)
    (refs / "b.mp4").unlink()
    (refs / "a.mp4").rename(refs / "a.m4v")
    masks = tmp_path / "amasks"
    masks.mkdir()
    signal = torch.cat([torch.ones(40), torch.zeros(60)])  # the first 40% kept
    for stem in ("a", "b"):
        torch.save(signal, masks / f"{stem}.pt")
    config = _av_config(tmp_path, 'reference_audio_directory = "refs"\naudio_mask_directory = "amasks"\n')
    assert _cache(config, checkpoint, "--ltx_mode", "av") == 0
    cache = tmp_path / "cache"
    key = naming.item_key("a", 0, 17)
    target = _tensors(cache / f"{key}_ltx2_audio.safetensors")
    reference = _tensors(cache / f"{key}_ltx2_ref_audio.safetensors")
    (audio_key,) = [k for k in target if k.startswith("audio_latents")]
    steps = target[audio_key].shape[1]
    # refs/a is clip a itself: the same window of the same soundtrack encodes to the same latents.
    torch.testing.assert_close(reference[audio_key], target[audio_key])
    expected = [float(signal[math.floor(i * (len(signal) / steps))] > 0.5) for i in range(steps)]
    assert _tensors(cache / f"{key}_ltx2_audio_mask.safetensors")[f"audio_mask_{steps}"].tolist() == expected

    write_synthetic_text_caches(config, "av", context_dims=(128, 128))
    batches = CachedBatches(load_dataset_config(config), "av", seed=0)
    for index in range(len(batches)):
        batch = batches[index]
        assert batch["reference_audio_latents"]["latents"].shape == batch["audio_latents"]["latents"].shape
        assert batch["audio_mask"].tolist() == [expected]
        assert "reference_latents" not in batch and "video_mask" not in batch
    # A video-only run has no audio: the audio partners are neither needed nor in its batches.
    batches = CachedBatches(load_dataset_config(config), "video", seed=0)
    assert all("audio_mask" not in batches[i] for i in range(len(batches)))

    os.utime(masks / "b.pt", ns=(1, 1))
    with pytest.raises(CacheError, match=r"_ltx2_audio_mask.safetensors: stale audio mask cache"):
        CachedBatches(load_dataset_config(config), "av", seed=0)


def test_a_reference_clips_soundtrack_is_its_reference_audio_when_it_has_one(tmp_path, checkpoint):
    from ltx2_tuner.testing.synthetic_caches import write_synthetic_text_caches

    _av_clips(tmp_path)
    config = _av_config(tmp_path, 'reference_directory = "refs"\n')
    assert _cache(config, checkpoint, "--ltx_mode", "av") == 0
    cache = tmp_path / "cache"
    key_a, key_b = naming.item_key("a", 0, 17), naming.item_key("b", 0, 17)
    target = _tensors(cache / f"{key_a}_ltx2_audio.safetensors")
    reference = _tensors(cache / f"{key_a}_ltx2_ref_audio.safetensors")
    assert reference.keys() == target.keys()
    for name in target:
        torch.testing.assert_close(reference[name], target[name])
    assert not (cache / f"{key_b}_ltx2_ref_audio.safetensors").exists()  # refs/b has no soundtrack
    assert (cache / f"{key_b}_ltx2_ref.safetensors").exists()

    write_synthetic_text_caches(config, "av", context_dims=(128, 128))
    batches = CachedBatches(load_dataset_config(config), "av", seed=0)
    has_audio_reference = {batches[i]["items"][0]: "reference_audio_latents" in batches[i] for i in range(len(batches))}
    assert has_audio_reference == {key_a: True, key_b: False}
    # An audio reference condition on these items: b lacks its file, one line naming it; a video one is satisfied.
    from ltx2_tuner.conditioning.spec import Condition
    from ltx2_tuner.training.conditioned import condition_partner_problems

    problems = condition_partner_problems(batches.items, [Condition("reference"), Condition("reference", "audio")])
    assert len(problems) == 1 and f"1 item(s) have none ({key_b})" in problems[0]
    assert "reference_audio_directory" in problems[0]
    # Pruning keeps the soundtrack reference: the dataset still has references.
    assert _cache(config, checkpoint, "--ltx_mode", "av", "--skip_existing", "--prune_cache") == 0
    assert (cache / f"{key_a}_ltx2_ref_audio.safetensors").exists()


def test_audio_partner_keys_are_refused_on_image_datasets(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "refs").mkdir()
    config = tmp_path / "dataset.toml"
    config.write_text('[[datasets]]\nimage_directory = "pics"\ncache_directory = "cache"\n'
                      'reference_audio_directory = "refs"\n')  # fmt: skip
    with pytest.raises(DatasetError, match=r"reference_audio_directory.*audio and video datasets only"):
        load_dataset_config(config)
