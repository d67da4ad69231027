"""The dataset TOML: musubi-style schema, [general] fallbacks, every problem named with file, table and key."""

from __future__ import annotations

import pytest

from ltx2_tuner.data.config import load_all_datasets, load_dataset_config, load_validation_datasets, snap_frame_count
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


# ---- caption_dropout_rate and [[validation_datasets]]

_TRAIN_AND_VALIDATION = """
[general]
resolution = [512, 288]
caption_dropout_rate = 0.2

[[datasets]]
video_directory = "clips"
cache_directory = "cache/clips"
caption_dropout_rate = 1

[[datasets]]
image_directory = "images"
cache_directory = "cache/images"

[[validation_datasets]]
image_directory = "held_out"
cache_directory = "cache/held_out"
batch_size = 2
"""


def test_caption_dropout_rate_falls_back_to_general_and_validation_datasets_load_apart(tmp_path):
    (tmp_path / "held_out").mkdir()
    path = _write(tmp_path, _TRAIN_AND_VALIDATION)
    video, image = load_dataset_config(path)
    assert (video.caption_dropout_rate, image.caption_dropout_rate) == (1.0, 0.2)
    assert not video.is_validation and video.name == "[[datasets]] #1 (clips)"

    (held_out,) = load_validation_datasets(path)
    assert held_out.is_validation and held_out.name == "[[validation_datasets]] #1 (held_out)"
    assert held_out.kind == "image" and held_out.batch_size == 2
    assert held_out.resolution == (512, 288)  # [general] applies to validation datasets
    assert held_out.caption_dropout_rate == 0.0  # ... except the dropout rate: validation never drops captions
    assert held_out.cache_directory == tmp_path / "cache" / "held_out"
    assert load_all_datasets(path) == [video, image, held_out]  # what the caching commands cache


def test_without_the_keys_the_rate_is_unset_and_there_are_no_validation_datasets(tmp_path):
    (image,) = load_dataset_config(_write(tmp_path, '[[datasets]]\nimage_directory = "images"'))
    assert image.caption_dropout_rate is None  # the trainer's --caption_dropout_rate decides
    assert load_validation_datasets(tmp_path / "dataset.toml") == []


def test_dropout_and_validation_problems_are_named_together(tmp_path):
    (tmp_path / "held_out").mkdir()
    path = _write(
        tmp_path,
        """
[general]
caption_dropout_rate = 1.5

[[datasets]]
image_directory = "images"
caption_dropout_rate = "often"

[[validation_datasets]]
image_directory = "held_out"
caption_dropout_rate = 0.1
resolutoin = 256
""",
    )
    with pytest.raises(DatasetError) as caught:
        load_validation_datasets(path)
    message = str(caught.value)
    assert f'{path} [general]: key "caption_dropout_rate" must be between 0 and 1 (got 1.5)' in message
    assert '[[datasets]] #1: key "caption_dropout_rate" must be int or number, not str' in message
    assert (
        '[[validation_datasets]] #1: key "caption_dropout_rate" is for [[datasets]]: validation never drops captions'
        in message
    )
    assert '[[validation_datasets]] #1: unknown key "resolutoin" (did you mean "resolution"?)' in message
    with pytest.raises(DatasetError, match=r"must be between 0 and 1"):
        load_dataset_config(path)  # the training datasets' loader checks the whole file too

    path.write_text('[[datasets]]\nimage_directory = "images"\n[[validation_datasets]]\nvideo_directory = "clips"\n'
                    'cache_directory = "images"\n')  # fmt: skip
    shared = r"\[\[validation_datasets\]\] #1 \(clips\): cache_directory .*images is also used by \[\[datasets\]\] #1"
    with pytest.raises(DatasetError, match=shared + r" \(images\); give every dataset its own"):
        load_dataset_config(path)
    path.write_text('[[datasets]]\nimage_directory = "images"\nvalidation_datasets = 3\n')
    with pytest.raises(DatasetError, match=r"\[\[datasets\]\] #1: unknown key \"validation_datasets\""):
        load_dataset_config(path)
    path.write_text('validation_datasets = 3\n[[datasets]]\nimage_directory = "images"\n')
    with pytest.raises(DatasetError, match=r"top level: \"validation_datasets\" must be \[\[validation_datasets\]\]"):
        load_dataset_config(path)
