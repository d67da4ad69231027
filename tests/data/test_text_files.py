"""Captions, prompt files and dataset files in the encodings editors write: UTF-8 (BOM or not), UTF-16 with a BOM,
Windows-1252 with a warning, anything else one error naming the file."""

from __future__ import annotations

import codecs
import warnings

import pytest

from ltx2_tuner.data.config import load_dataset_config
from ltx2_tuner.data.items import caption_problems, list_media, read_caption
from ltx2_tuner.data.text_files import read_text_file
from ltx2_tuner.errors import DatasetError


@pytest.mark.parametrize(("encoded", "name"), [
    ("café au lait".encode(), "utf-8"),
    (codecs.BOM_UTF8 + "café au lait".encode(), "utf-8 with BOM"),
    ("café au lait".encode("utf-16"), "utf-16 with BOM"),  # Python writes the BOM (Notepad's "Unicode")
    (codecs.BOM_UTF16_BE + "café au lait".encode("utf-16-be"), "utf-16-be with BOM"),
])  # fmt: skip
def test_unicode_files_read_without_a_warning(tmp_path, encoded, name):
    path = tmp_path / "caption.txt"
    path.write_bytes(encoded)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_text_file(path) == "café au lait", name


def test_windows_1252_is_read_with_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "caption.txt"
    path.write_bytes("un café, s’il vous plaît".encode("cp1252"))
    with pytest.warns(UserWarning, match=r"caption\.txt: not UTF-8 \(byte 0xe9 at position 6\); read as Windows-1252: "
                                         r"'un café, s’il vous plaît'; re-save it as UTF-8"):  # fmt: skip
        assert read_text_file(path) == "un café, s’il vous plaît"


def test_undecodable_bytes_are_one_error_naming_the_file(tmp_path):
    path = tmp_path / "caption.txt"
    path.write_bytes(b"caf\xe9 \x81")  # 0x81 is not UTF-8 here and not defined in Windows-1252
    with pytest.raises(DatasetError, match=r"caption\.txt: not readable text \(.* byte 0x81 .*\); re-save it as UTF-8"):
        read_text_file(path)
    path.write_bytes(codecs.BOM_UTF8 + b"caf\xe9")  # says UTF-8, is not
    with pytest.raises(DatasetError, match=r"caption\.txt: not readable text"):
        read_text_file(path)


def test_line_endings_are_normalized(tmp_path):
    path = tmp_path / "caption.txt"
    path.write_bytes(b"first line\r\nsecond line\rthird\n")
    assert read_text_file(path) == "first line\nsecond line\nthird\n"


def _image_dataset(tmp_path, captions: dict[str, bytes | None]):
    from ltx2_tuner.testing.synthetic_media import write_image

    stills = tmp_path / "stills"
    stills.mkdir()
    for stem, caption in captions.items():
        write_image(stills / f"{stem}.png", 40, 30)
        if caption is not None:
            (stills / f"{stem}.txt").write_bytes(caption)
    config = tmp_path / "dataset.toml"
    config.write_text('[[datasets]]\nimage_directory = "stills"\ncache_directory = "cache"\nresolution = [32, 32]\n')
    return load_dataset_config(config)


def test_captions_of_every_kind_are_read_and_problems_listed_one_per_file(tmp_path):
    datasets = _image_dataset(tmp_path, {
        "bom": codecs.BOM_UTF8 + b"a red fox", "crlf": b"a blue owl\r\n", "windows": "caf\xe9".encode("latin-1"),
        "missing": None, "broken": b"\x81\x8d", "empty": b"  \r\n",
    })  # fmt: skip
    items = {item.stem: item for item in list_media(datasets[0])}
    assert read_caption(items["bom"]) == "a red fox" and read_caption(items["crlf"]) == "a blue owl"
    with pytest.warns(UserWarning, match=r"windows\.txt: not UTF-8"):
        assert read_caption(items["windows"]) == "café"
    with pytest.warns(UserWarning):
        problems = caption_problems(datasets)
    assert [line.split(":")[0].rsplit("/", 1)[-1] for line in problems] == ["broken.txt", "empty.txt", "missing.txt"]
    with pytest.warns(UserWarning):
        assert len(caption_problems(datasets, allow_empty=True)) == 2  # an empty caption may be allowed


def test_jsonl_and_toml_with_a_bom_read(tmp_path):
    from ltx2_tuner.testing.synthetic_media import write_image

    write_image(tmp_path / "a.png", 40, 30)
    (tmp_path / "items.jsonl").write_bytes(codecs.BOM_UTF8 + '{"image_path": "a.png", "caption": "thé"}\r\n'.encode())
    (tmp_path / "dataset.toml").write_bytes(
        codecs.BOM_UTF8 + b'[[datasets]]\r\nimage_jsonl_file = "items.jsonl"\r\ncache_directory = "cache"\r\n'
        b"resolution = [32, 32]\r\n"
    )
    (dataset,) = load_dataset_config(tmp_path / "dataset.toml")
    (item,) = list_media(dataset)
    assert read_caption(item) == "thé"
