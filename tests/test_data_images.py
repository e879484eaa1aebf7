"""Single-file readers and resizing: every file kind becomes RGB uint8 / bool, bad files name themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subspace_jax.data import load_images, read_image, read_mask, resize_image, resize_mask
from subspace_jax.data.images import center_crop


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    image = read_image(_save(gray, tmp_path / "g.png"))
    assert image.dtype == np.uint8 and image.shape == (6, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    image = read_image(_save(rgba, tmp_path / "a.png"))
    np.testing.assert_array_equal(image, rgba[..., :3])


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 10, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # the file really is 16-bit
    image = read_image(path)
    np.testing.assert_array_equal(image[0, :, 0], [0, 10, 100, 255])
    assert image.dtype == np.uint8


def test_palette_image_uses_its_palette(tmp_path):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette = [10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    pil = Image.fromarray(indices, "P")
    pil.putpalette(palette)
    pil.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(image[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(image[0, 1], [200, 100, 0])
    np.testing.assert_array_equal(image[1, 0], [0, 0, 255])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_an_error_naming_it(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"cut{suffix}"):
        read_image(path)


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png"):
        read_image(tmp_path / "text.png")
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        read_mask(tmp_path / "nothere.png")


def test_mask_thresholds(tmp_path):
    gray = np.array([[0, 100, 127, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(read_mask(_save(gray, tmp_path / "m.png")), [[0, 0, 0, 1, 1]])
    zero_one = np.array([[0, 1, 1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(read_mask(_save(zero_one, tmp_path / "z.png")), [[0, 1, 1, 0]])
    color = np.zeros((1, 3, 3), np.uint8)
    color[0, 1] = (200, 0, 0)
    color[0, 2] = (0, 60, 0)
    np.testing.assert_array_equal(read_mask(_save(color, tmp_path / "c.png")), [[0, 1, 0]])
    deep = np.array([[0, 1000, 40000]], dtype=np.uint16)
    np.testing.assert_array_equal(read_mask(_save(deep, tmp_path / "d.png")), [[0, 0, 1]])
    binary = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    binary.save(tmp_path / "b.bmp")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.bmp"), [[0, 1]])
    assert read_mask(tmp_path / "b.bmp").dtype == bool


def test_resize_mask_nearest_hand_computed():
    mask = np.zeros((64, 64), bool)
    mask[16:32, 40:48] = True
    expected = np.zeros((32, 32), bool)
    expected[8:16, 20:24] = True
    np.testing.assert_array_equal(resize_mask(mask, 32), expected)
    np.testing.assert_array_equal(resize_mask(mask, 32, crop=16), expected[8:24, 8:24])


def _triangle_downscale_2x(image: np.ndarray) -> np.ndarray:
    def along(values: np.ndarray, axis: int) -> np.ndarray:
        values = np.moveaxis(values, axis, 0)
        out = []
        for i in range(values.shape[0] // 2):
            taps = [
                (j, w) for j, w in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1)) if 0 <= j < values.shape[0]
            ]
            out.append(sum(w * values[j] for j, w in taps) / sum(w for _, w in taps))
        return np.moveaxis(np.stack(out), 0, axis)

    return along(along(image.astype(np.float64), 1), 0)


def test_resize_image_bilinear_properties():
    constant = np.full((37, 53, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_image(constant, 16), np.full((16, 16, 3), 77, np.uint8))
    # Exact 2x downscale: antialiased bilinear is a triangle filter of half-width 2 input pixels, so
    # output i weighs inputs 2i-1 .. 2i+2 by 1, 3, 3, 1 (renormalised at the borders).
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    np.testing.assert_allclose(resize_image(image, 8), _triangle_downscale_2x(image), atol=1.0)
    # Upscaling a horizontal ramp keeps it monotone along the ramp.
    ramp = np.tile(np.linspace(0, 255, 10).astype(np.uint8)[None, :, None], (4, 1, 3))
    resized = resize_image(ramp, 40)
    assert resized.shape == (40, 40, 3)
    assert np.all(np.diff(resized[20, :, 0].astype(int)) >= 0)


def test_center_crop_offsets_match_torchvision_rounding():
    array = np.arange(7 * 7).reshape(7, 7)
    # torchvision CenterCrop: top = round((7 - 4) / 2) = round(1.5) = 2 (banker's rounding)
    np.testing.assert_array_equal(center_crop(array, 4), array[2:6, 2:6])
    array = np.arange(256 * 256).reshape(256, 256)
    np.testing.assert_array_equal(center_crop(array, 224), array[16:240, 16:240])


def test_size_arguments_are_checked():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="crop"):
        resize_image(image, 16, crop=32)
    with pytest.raises(ValueError, match="image_size"):
        resize_image(image, 0)
    with pytest.raises(ValueError, match="uint8"):
        resize_image(image.astype(np.float32), 8)


def test_load_images_keeps_order_and_crops(tmp_path):
    paths = []
    for value in (10, 200, 90):
        paths.append(_save(np.full((20, 30, 3), value, np.uint8), tmp_path / f"{value}.png"))
    images = load_images(paths, image_size=16, crop=8, progress=False)
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 0, 0, 0], [10, 200, 90])
    with pytest.raises(ValueError, match="paths"):
        load_images([], 16)
