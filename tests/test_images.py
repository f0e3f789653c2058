"""Every image mode reads as the RGB a viewer shows; bad files say what is wrong."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.platform.datasets.images import (
    ImageError,
    read_mask,
    read_rgb,
    voc_palette,
    write_palette_png,
)


def test_rgb_grey_palette_cmyk_read_as_rgb(tmp_path: Path):
    Image.new("RGB", (3, 2), (10, 20, 30)).save(tmp_path / "rgb.png")
    Image.new("L", (3, 2), 77).save(tmp_path / "grey.png")
    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert read_rgb(tmp_path / "rgb.png")[0, 0].tolist() == [10, 20, 30]
    assert read_rgb(tmp_path / "grey.png")[1, 2].tolist() == [77, 77, 77]
    assert read_rgb(tmp_path / "palette.png")[0, 0].tolist() == [200, 100, 50]
    cmyk = read_rgb(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (2, 3, 3) and cmyk.dtype == np.uint8
    assert cmyk.min() >= 250  # CMYK (0, 0, 0, 0) is white paper


def test_rgba_is_composited_on_white(tmp_path: Path):
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))
    image.save(tmp_path / "rgba.png")
    assert read_rgb(tmp_path / "rgba.png").tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path: Path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert read_rgb(tmp_path / "deep.png")[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path):
    array = np.zeros((16, 32, 3), np.uint8)
    array[:8, :8] = (255, 0, 0)  # red at the top-left of the stored pixels
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100, subsampling=0)
    shown = read_rgb(tmp_path / "rotated.jpg")
    assert shown.shape == (32, 16, 3)
    assert shown[2, 13, 0] > 200 and shown[2, 13, 1] < 60  # red is now top-right
    assert shown[2, 2, 0] < 60


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a readable image"),
    ],
)
def test_bad_files_name_the_file_and_the_reason(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as error:
        read_rgb(path)
    assert str(path) in str(error.value)


def test_truncated_jpeg_is_refused(tmp_path: Path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        tmp_path / "full.jpg"
    )
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_rgb(tmp_path / "cut.jpg")


def test_missing_file(tmp_path: Path):
    with pytest.raises(ImageError, match="does not exist"):
        read_rgb(tmp_path / "nope.png")


def test_palette_mask_round_trip_keeps_indices_and_voc_colours(tmp_path: Path):
    mask = np.array([[0, 1, 15], [255, 2, 0]], np.uint8)
    write_palette_png(tmp_path / "m.png", mask)
    assert read_mask(tmp_path / "m.png").tolist() == mask.tolist()
    palette = voc_palette()
    assert palette[3:6] == [128, 0, 0]  # VOC aeroplane
    assert palette[15 * 3 : 15 * 3 + 3] == [192, 128, 128]  # VOC person
    assert palette[255 * 3 : 255 * 3 + 3] == [224, 224, 192]  # VOC ignore border


def test_rgb_mask_is_refused(tmp_path: Path):
    Image.new("RGB", (2, 2)).save(tmp_path / "m.png")
    with pytest.raises(ImageError, match="palette"):
        read_mask(tmp_path / "m.png")
