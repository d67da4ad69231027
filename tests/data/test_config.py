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


# ---- audio datasets


def test_audio_datasets_take_the_audio_keys_and_others_keep_the_defaults(tmp_path):
    (tmp_path / "voice").mkdir()
    (tmp_path / "voice.jsonl").write_text("")
    path = _write(
        tmp_path,
        """
[general]
audio_bucket_interval = 1
max_audio_duration = 12.5

[[datasets]]
audio_directory = "voice"
audio_bucket_strategy = "truncate"

[[datasets]]
audio_jsonl_file = "voice.jsonl"
cache_directory = "cache/jsonl"
audio_bucket_interval = 0.25

[[datasets]]
video_directory = "clips"
""",
    )
    directory, jsonl, video = load_dataset_config(path)
    assert (directory.kind, directory.source, directory.source_is_jsonl) == ("audio", tmp_path / "voice", False)
    assert (directory.audio_bucket_interval, directory.audio_bucket_strategy, directory.max_audio_duration) == (
        1.0, "truncate", 12.5,
    )  # fmt: skip
    assert isinstance(directory.audio_bucket_interval, float)  # an integer in the TOML becomes seconds as a float
    assert (jsonl.kind, jsonl.source_is_jsonl, jsonl.audio_bucket_interval) == ("audio", True, 0.25)
    assert (jsonl.audio_bucket_strategy, jsonl.max_audio_duration) == ("pad", 12.5)
    # [general] audio keys do not apply to video datasets: they keep the (unused) defaults.
    defaults = load_dataset_config(_write(tmp_path, '[[datasets]]\naudio_directory = "voice"'))[0]
    assert video.kind == "video"
    assert (video.audio_bucket_interval, video.audio_bucket_strategy, video.max_audio_duration) == (
        defaults.audio_bucket_interval, defaults.audio_bucket_strategy, defaults.max_audio_duration,
    )  # fmt: skip
    assert (defaults.audio_bucket_interval, defaults.audio_bucket_strategy, defaults.max_audio_duration) == (
        2.0, "pad", 30.0,
    )  # fmt: skip


def test_keys_of_other_kinds_are_named_in_one_error(tmp_path):
    (tmp_path / "voice").mkdir()
    path = _write(
        tmp_path,
        """
[[datasets]]
image_directory = "images"
max_audio_duration = 10

[[datasets]]
video_directory = "clips"
audio_bucket_strategy = "pad"

[[datasets]]
audio_directory = "voice"
target_frames = [9]
resolution = 256
audio_bucket_strategy = "trim"
audio_bucket_interval = 0
""",
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset_config(path)
    message = str(caught.value)
    assert '[[datasets]] #1: key "max_audio_duration" applies to audio datasets only' in message
    assert '[[datasets]] #2: key "audio_bucket_strategy" applies to audio datasets only' in message
    assert '[[datasets]] #3: key "target_frames" applies to video datasets only' in message
    assert '[[datasets]] #3: key "resolution" applies to image and video datasets only' in message
    assert 'key "audio_bucket_strategy" must be one of pad, truncate' in message
    assert 'key "audio_bucket_interval" must be positive' in message
    assert message.count(str(path)) == 6


def test_dataset_kinds_that_do_not_fit_the_mode_get_one_line_each(tmp_path):
    from ltx2_tuner.data.config import check_dataset_kinds, dataset_kind_problems

    (tmp_path / "voice").mkdir()
    text = '[[datasets]]\nimage_directory = "images"\n[[datasets]]\nvideo_directory = "clips"\n'
    text += '[[datasets]]\naudio_directory = "voice"\n'
    image, video, audio = load_dataset_config(_write(tmp_path, text))
    (problem,) = dataset_kind_problems([image, video, audio], "audio")
    assert problem.startswith(f"{image.name}: ") and "remove it from the dataset config for --ltx_mode audio" in problem
    assert "no sound" in problem
    for mode in ("video", "av"):
        (problem,) = dataset_kind_problems([image, video, audio], mode)
        assert problem.startswith(f"{audio.name}: audio datasets train with --ltx_mode audio")
    assert dataset_kind_problems([video, audio], "audio") == []
    with pytest.raises(DatasetError, match="has no sound"):
        check_dataset_kinds([image, audio], "audio")
