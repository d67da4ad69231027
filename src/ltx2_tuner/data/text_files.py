"""Reading the text files users write by hand (captions, prompt lists, dataset files) in the encodings editors use.

UTF-8 with or without a byte-order mark, and UTF-16 with one (Windows Notepad's "Unicode"), are read as such. A file
that is none of these is most often Windows-1252 from an older Windows editor (`café` as the single byte 0xE9): it
is read as Windows-1252 with a warning naming the file, so one such caption does not stop a run, and the warning
shows the text as read so a wrong guess is visible. Bytes that Windows-1252 leaves undefined are an error naming the
file. Line endings become `\\n`, so a caption's hash does not depend on the editor.
"""

from __future__ import annotations

import codecs
import warnings
from pathlib import Path

from ltx2_tuner.errors import DatasetError

_FALLBACK = "cp1252"
_RESAVE = "re-save it as UTF-8"


def read_text_file(path: Path) -> str:
    """The text of `path`; DatasetError naming the file when it cannot be decoded."""
    data = path.read_bytes()
    try:
        if data.startswith(codecs.BOM_UTF8):
            text = data[len(codecs.BOM_UTF8) :].decode("utf-8")
        elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            text = _utf8_or_fallback(path, data)
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path}: not readable text ({error.encoding} cannot decode byte {error.object[error.start]:#04x} at "
            f"position {error.start}); {_RESAVE}"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _utf8_or_fallback(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        position = error.start
    text = data.decode(_FALLBACK)  # raises for the few bytes it does not define
    preview = text.strip().replace("\n", " ")
    preview = preview if len(preview) <= 60 else preview[:57] + "..."
    warnings.warn(
        f"{path}: not UTF-8 (byte {data[position]:#04x} at position {position}); read as Windows-1252: "
        f"{preview!r}; {_RESAVE} if that is not the text",
        stacklevel=3,
    )
    return text
