"""Image loading with Pillow: upright (EXIF orientation), 8-bit RGB, optionally fitted to a bucket."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from PIL.TiffImagePlugin import IMAGELENGTH, IMAGEWIDTH

from ltx2_tuner.data.transforms import center_crop_box, cover_size
from ltx2_tuner.errors import MediaError

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_FIX = "check that the file opens in an image viewer, or re-save it as PNG or JPEG"


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed, after EXIF orientation; reads the header only, not the pixels."""
    try:
        with _open(path) as image:
            width, height = image.size
            transposed = _header_orientation(image) in _TRANSPOSED_ORIENTATIONS
            # Pillow's TIFF reader applies the orientation itself and reports the turned size from the start.
            if image.format == "TIFF":
                transposed = transposed and (width, height) == (
                    image.tag_v2.get(IMAGEWIDTH),
                    image.tag_v2.get(IMAGELENGTH),
                )
    except (OSError, SyntaxError, ValueError) as error:
        raise MediaError(f"{path}: cannot read the image header ({_one_line(error)}); {_FIX}") from error
    return (height, width) if transposed else (width, height)


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 RGB [H, W, 3], upright; with `size` = (width, height), scaled to cover it and centre-cropped.

    Transparent pixels are composited over white, 16-bit images scaled (not clipped) to 8 bits, and
    grayscale, palette and CMYK images converted to RGB.
    """
    try:
        with _open(path) as source:
            image = _to_rgb(ImageOps.exif_transpose(source))
            if size is not None:
                width, height = size
                image = image.resize(cover_size(*image.size, width, height), Image.Resampling.BICUBIC)
                image = image.crop(center_crop_box(*image.size, width, height))
            return np.array(image, dtype=np.uint8)  # a writable copy: Pillow's own buffer is read-only
    except (OSError, SyntaxError, ValueError) as error:  # Pillow reports truncated or corrupt data like this
        raise MediaError(f"{path}: cannot decode image ({_one_line(error)}); {_FIX}") from error


def _header_orientation(image: Image.Image) -> int | None:
    # Pillow's PNG `getexif()` decodes the whole image when no eXIf chunk came before the pixel data, to look
    # for one after it; such files are rare, and for them the size here ignores the orientation.
    if image.format == "PNG" and "exif" not in image.info:
        return None
    return image.getexif().get(_EXIF_ORIENTATION)


def _open(path: str | Path) -> Image.Image:
    if not Path(path).is_file():
        raise MediaError(f"{path}: image file not found; fix the path or remove the item from the dataset")
    try:
        return Image.open(path)
    except (OSError, Image.DecompressionBombError) as error:
        raise MediaError(f"{path}: not a readable image ({_one_line(error)}); {_FIX}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion of 16-bit data to "L" clips at 255, turning most of the range white.
        # "I" (32-bit) holds 16-bit sources such as 16-bit PNGs, so it is read as 0..65535 too.
        values = np.asarray(image, dtype=np.float32).clip(0, 65535)
        image = Image.fromarray(np.round(values * (255 / 65535)).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
