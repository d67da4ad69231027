"""Image loading (orientation, modes, bucket fitting) and the cover/crop geometry shared with video."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from ltx2_tuner.data.images import image_size, load_image
from ltx2_tuner.data.transforms import center_crop_box, cover_size
from ltx2_tuner.errors import MediaError
from ltx2_tuner.testing.synthetic_media import image_pattern, write_image

W, H = 45, 30


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ((1280, 720), (768, 448), (796, 448)),  # 16:9 into a wider-than-tall bucket: height decides
        ((720, 1280), (448, 768), (448, 796)),
        ((1920, 1080), (960, 544), (967, 544)),
        ((33, 100), (32, 32), (32, 97)),
        ((40, 30), (96, 64), (96, 72)),  # upscaling
        ((64, 32), (64, 32), (64, 32)),  # already the bucket
    ],
)
def test_cover_size_is_the_smallest_covering_size_with_the_aspect_kept(source, target, expected):
    assert cover_size(*source, *target) == expected


def test_cover_size_always_covers_and_keeps_the_aspect_within_a_pixel():
    rng = np.random.default_rng(0)
    for src_w, src_h, dst_w, dst_h in rng.integers(1, 2000, (500, 4)).tolist():
        w, h = cover_size(src_w, src_h, dst_w, dst_h)
        assert w >= dst_w and h >= dst_h
        assert w == dst_w or h == dst_h  # no larger than needed
        assert abs(w - h * src_w / src_h) <= 1 + src_w / src_h  # rounding h by 0.5 moves w by up to that


def test_center_crop_box_centres_and_leaves_the_odd_pixel_right_and_bottom():
    assert center_crop_box(10, 7, 4, 4) == (3, 1, 7, 5)
    assert center_crop_box(796, 448, 768, 448) == (14, 0, 782, 448)
    assert center_crop_box(8, 8, 8, 8) == (0, 0, 8, 8)
    with pytest.raises(ValueError, match=r"cannot crop"):
        center_crop_box(8, 8, 9, 8)


def test_rgb_png_loads_exactly(tmp_path):
    image = load_image(write_image(tmp_path / "a.png", W, H))
    assert image.dtype == np.uint8 and image.shape == (H, W, 3) and image.flags.writeable
    assert np.array_equal(image, image_pattern(W, H))


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    path = write_image(tmp_path / "photo.png", W, H, exif_orientation=orientation)
    assert image_size(path) == (W, H)
    assert np.array_equal(load_image(path), image_pattern(W, H))  # the white marker is back in the top-left


def test_image_size_reads_the_header_only(tmp_path, monkeypatch):
    paths = [write_image(tmp_path / f"a{suffix}", W, H, exif_orientation=6) for suffix in (".png", ".jpg")]
    paths.append(write_image(tmp_path / "plain.png", W, H))

    def no_decoding(self):
        raise AssertionError("image_size decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert [image_size(path) for path in paths] == [(W, H), (W, H), (W, H)]


def test_exif_orientation_6_on_jpeg_and_tiff(tmp_path):
    for suffix in (".jpg", ".tiff"):  # Pillow's TIFF reader turns TIFFs itself, at open: no double turn
        path = write_image(tmp_path / f"phone{suffix}", W, H, exif_orientation=6)
        with Image.open(path) as raw:
            assert raw.getexif().get(0x0112) == 6
        assert image_size(path) == (W, H)
        image = load_image(path)
        assert image.shape == (H, W, 3)
        assert np.abs(image.astype(int) - image_pattern(W, H)).mean() < 3
    with Image.open(tmp_path / "phone.jpg") as raw:
        assert raw.size == (H, W)  # stored turned


def test_transparency_is_composited_over_white(tmp_path):
    image = load_image(write_image(tmp_path / "logo.png", W, H, mode="RGBA"))
    assert np.array_equal(image[:, : W // 2], image_pattern(W, H)[:, : W // 2])  # opaque half unchanged
    assert (image[:, W // 2 :] == 255).all()  # transparent half is white, not black

    palette = Image.new("P", (4, 2))
    palette.putpalette([0, 0, 0, 200, 10, 10])
    palette.putdata([0, 1, 0, 1, 1, 1, 1, 0])
    palette.save(tmp_path / "sprite.png", transparency=0)  # palette entry 0 is transparent
    loaded = load_image(tmp_path / "sprite.png")
    assert loaded[0].tolist() == [[255, 255, 255], [200, 10, 10], [255, 255, 255], [200, 10, 10]]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    image = load_image(write_image(tmp_path / "depth.png", W, H, mode="I;16"))
    luminance = np.asarray(Image.fromarray(image_pattern(W, H)).convert("L"))
    assert image[0, 0].tolist() == [255, 255, 255]  # 65535
    assert np.array_equal(image[..., 0], luminance)  # v * 257 -> v, not min(v * 257, 255)
    assert (image[..., 0] == image[..., 2]).all()


@pytest.mark.parametrize(("mode", "suffix", "tolerance"), [("L", ".png", 0), ("P", ".png", 8), ("CMYK", ".jpg", 4)])
def test_other_modes_become_rgb(tmp_path, mode, suffix, tolerance):
    path = write_image(tmp_path / f"image{suffix}", W, H, mode=mode)
    with Image.open(path) as raw:
        assert raw.mode == mode
    image = load_image(path)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    reference = Image.fromarray(image_pattern(W, H))
    expected = np.asarray(reference.convert("L").convert("RGB") if mode == "L" else reference)
    assert np.abs(image.astype(int) - expected).mean() <= tolerance


@pytest.mark.parametrize(("size", "source"), [((32, 64), (W, H)), ((64, 32), (W, H)), ((32, 32), (33, 100))])
def test_resize_covers_the_bucket_and_crops_the_centre(tmp_path, size, source):
    path = write_image(tmp_path / "a.png", *source)
    image = load_image(path, size=size)
    assert image.shape == (size[1], size[0], 3)
    scaled = Image.fromarray(image_pattern(*source)).resize(cover_size(*source, *size), Image.Resampling.BICUBIC)
    assert np.array_equal(image, np.asarray(scaled.crop(center_crop_box(*scaled.size, *size))))


def test_unreadable_images_raise_media_error(tmp_path):
    with pytest.raises(MediaError, match=r"missing\.png: image file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(MediaError, match=r"missing\.png: image file not found"):
        image_size(tmp_path / "missing.png")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"definitely not a jpeg" * 50)
    for call in (load_image, image_size):
        with pytest.raises(MediaError, match=r"garbage\.jpg: not a readable image .*re-save it as PNG or JPEG"):
            call(garbage)
    truncated = tmp_path / "truncated.png"
    whole = write_image(tmp_path / "whole.png", 64, 64).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MediaError, match=r"truncated\.png: cannot decode image") as caught:
        load_image(truncated)
    assert "\n" not in str(caught.value)
