"""Small dataset trees in the MVTec AD and BTAD layouts, written by the tests that use them.

Every image is a constant colour, so what a loader returns is known exactly at any size, and every
mask is a rectangle aligned so that nearest-neighbour resizing to 32 pixels is hand-computable.
Quirks covered: grayscale, 16-bit, RGBA and palette images, JPEG and BMP files, a mask twice the
size of its image, masks with other extensions than their images (BTAD).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64  # image side in the trees
RECT = (slice(16, 32), slice(32, 48))  # defect rectangle at SIDE
RECT_AT_32 = (slice(8, 16), slice(16, 24))  # the same rectangle after resizing to 32


def rect_mask(side: int = SIDE, scale: int = 1) -> np.ndarray:
    mask = np.zeros((side * scale, side * scale), np.uint8)
    mask[RECT[0].start * scale : RECT[0].stop * scale, RECT[1].start * scale : RECT[1].stop * scale] = 255
    return mask


def expected_mask_at_32() -> np.ndarray:
    mask = np.zeros((32, 32), bool)
    mask[RECT_AT_32] = True
    return mask


def _rgb(path: Path, color: tuple[int, int, int], fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((SIDE, SIDE, 3), color, np.uint8)).save(path, format=fmt, quality=95)


def _mask(path: Path, scale: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rect_mask(scale=scale)).save(path, quality=95)


def write_mvtec_category(root: Path, category: str = "widget") -> dict[str, tuple[int, int, int]]:
    """Write one MVTec-layout category; returns the RGB colour each image file should load as."""
    base = root / category
    colors: dict[str, tuple[int, int, int]] = {}

    _rgb(base / "train/good/000.png", (10, 20, 30))
    colors["train/good/000.png"] = (10, 20, 30)
    gray = base / "train/good/001.png"
    Image.fromarray(np.full((SIDE, SIDE), 90, np.uint8)).save(gray)
    colors["train/good/001.png"] = (90, 90, 90)
    Image.fromarray(np.full((SIDE, SIDE), 257 * 200, np.uint16)).save(base / "train/good/002.png")
    colors["train/good/002.png"] = (200, 200, 200)

    (base / "test/good").mkdir(parents=True)
    Image.fromarray(np.full((SIDE, SIDE, 4), (40, 50, 60, 7), np.uint8)).save(base / "test/good/000.png")
    colors["test/good/000.png"] = (40, 50, 60)
    palette_image = Image.fromarray(np.full((SIDE, SIDE), 1, np.uint8), "P")
    palette_image.putpalette([0, 0, 0, 70, 80, 90] + [0] * (254 * 3))
    palette_image.save(base / "test/good/001.png")
    colors["test/good/001.png"] = (70, 80, 90)

    _rgb(base / "test/scratch/000.png", (100, 110, 120))
    colors["test/scratch/000.png"] = (100, 110, 120)
    _mask(base / "ground_truth/scratch/000_mask.png")
    _rgb(base / "test/scratch/001.png", (130, 140, 150))
    colors["test/scratch/001.png"] = (130, 140, 150)
    _mask(base / "ground_truth/scratch/001_mask.png", scale=2)  # twice the image's size
    _rgb(base / "test/dent/000.png", (160, 170, 180))
    colors["test/dent/000.png"] = (160, 170, 180)
    _mask(base / "ground_truth/dent/000_mask.png")
    (base / "test/dent/.hidden.png").write_bytes(b"ignored")
    (base / "test/dent/notes.txt").write_text("not an image, ignored")
    return colors


def write_btad_category(root: Path, category: str = "01") -> dict[str, tuple[int, int, int]]:
    """Write one BTAD-layout product (bmp/png/jpg images, masks matched by stem with other extensions)."""
    base = root / category
    colors: dict[str, tuple[int, int, int]] = {}
    for name, color in (("0000.bmp", (12, 34, 56)), ("0001.bmp", (21, 43, 65))):
        _rgb(base / "train/ok" / name, color)
        colors[f"train/ok/{name}"] = color
    _rgb(base / "test/ok/0005.bmp", (80, 80, 80))
    colors["test/ok/0005.bmp"] = (80, 80, 80)
    for image_name, mask_name, color in (
        ("0000.bmp", "0000.png", (200, 10, 10)),
        ("0001.png", "0001.bmp", (10, 200, 10)),
        ("0002.jpg", "0002.jpg", (120, 120, 120)),  # JPEG mask: compression noise around the edges
    ):
        _rgb(base / "test/ko" / image_name, color)
        colors[f"test/ko/{image_name}"] = color
        _mask(base / "ground_truth/ko" / mask_name)
    return colors
