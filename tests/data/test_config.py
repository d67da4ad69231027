"""The dataset TOML: musubi-style schema, [general] fallbacks, every problem named with file, table and key."""

from __future__ import annotations

import pytest

from ltx2_tuner.data.config import load_dataset_config, snap_frame_count
from ltx2_tuner.errors import DatasetError


def _write(tmp_path, text: str):
    (tmp_path / "clips").mkdir(exist_ok=True)
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "dataset.toml"
    path.write_text(text)
    return path


def test_general_values_fall_back_and_dataset_values_win(tmp_path):
    path = _write(
        tmp_path,
        """
[general]
resolution = [512, 288]
batch_size = 2
enable_bucket = true

[[datasets]]
video_directory = "clips"
cache_directory = "cache/clips"
target_frames = [1, 25, 50]
frame_extraction = "slide"
frame_stride = 4

[[datasets]]
image_directory = "images"
batch_size = 4
resolution = 256
""",
    )
    with pytest.warns(UserWarning, match=r"snapped down to \[1, 25, 49\]"):
        video, image = load_dataset_config(path)
    assert video.kind == "video" and video.source == tmp_path / "clips"
    assert video.resolution == (512, 288) and video.batch_size == 2 and video.enable_bucket
    assert video.target_frames == (1, 25, 49) and video.frame_extraction == "slide" and video.frame_stride == 4
    assert video.cache_directory == tmp_path / "cache" / "clips"
    assert image.kind == "image" and image.resolution == (256, 256) and image.batch_size == 4
    assert image.cache_directory == tmp_path / "images"  # default: beside the media
    assert image.target_frames == (1,)


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(
        tmp_path,
        """
[general]
resolutin = 512

[[datasets]]
video_directory = "clips"
batch_size = "2"
frame_extraction = "middle"
num_repeats = 0
enable_bucket = 1

[[datasets]]
image_directory = "nowhere"
""",
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset_config(path)
    message = str(caught.value)
    assert message.count(str(path)) == 6
    assert '[general]: unknown key "resolutin" (did you mean "resolution"?)' in message
    assert '[[datasets]] #1: key "batch_size" must be int, not str' in message
    assert 'key "frame_extraction" must be one of head, chunk, slide, uniform, full' in message
    assert 'key "num_repeats" must be positive' in message
    assert 'key "enable_bucket" must be bool' in message
    assert "[[datasets]] #2: image_directory" in message and "does not exist" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[datasets]]\nvideo_directory = "clips"\nimage_directory = "images"', "needs exactly one of"),
        ('[[datasets]]\nvideo_jsonl_file = "list.jsonl"', "does not exist"),
        ('[[datasets]]\nimage_directory = "images"\ntarget_frames = [9]', "applies to video datasets only"),
        ('[[datasets]]\nimage_directory = "images"\nresolution = [500, 300]', "must be a multiple of 32"),
        ('[[datasets]]\nvideo_directory = "clips"\ntarget_frames = []', "list of positive integers"),
        ("[general]\nbatch_size = 1", "no [[datasets]] table"),
        ("[[dataset]]\nimage_directory = 'images'", 'unknown table "dataset" (did you mean "datasets"?)'),
        ("[[datasets]\n", "not valid TOML"),
    ],
)
def test_bad_configs(tmp_path, text, problem):
    with pytest.raises(DatasetError, match=r"dataset\.toml") as caught:
        load_dataset_config(_write(tmp_path, text))
    assert problem in str(caught.value)


def test_jsonl_needs_a_cache_directory_and_caches_must_be_distinct(tmp_path):
    (tmp_path / "list.jsonl").write_text("")
    with pytest.raises(DatasetError, match="cache_directory is required"):
        load_dataset_config(_write(tmp_path, '[[datasets]]\nvideo_jsonl_file = "list.jsonl"'))
    text = '[[datasets]]\nimage_directory = "images"\n[[datasets]]\nimage_directory = "images"'
    with pytest.raises(DatasetError, match="give every dataset its own cache_directory"):
        load_dataset_config(_write(tmp_path, text))


def test_general_video_keys_do_not_trouble_image_datasets(tmp_path):
    (image,) = load_dataset_config(
        _write(tmp_path, '[general]\ntarget_frames = [9]\n[[datasets]]\nimage_directory = "images"')
    )
    assert image.target_frames == (1,)


def test_snap_frame_count():
    assert [snap_frame_count(n) for n in (1, 8, 9, 16, 17, 50, 121)] == [1, 1, 9, 9, 17, 49, 121]
