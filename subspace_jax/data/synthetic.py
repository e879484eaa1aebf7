"""A seeded procedural anomaly-detection dataset: textures and objects with painted-in defects.

Small and fast (20 + 20 images of 128 px in a few tens of milliseconds), for the demo and the tests.
Each category renders a "product" with realistic nominal variation (texture phase and orientation,
object position, rotation and scale, illumination gradient, colour cast, sensor noise); defective test
images get one defect whose mask is exactly the set of pixels it changed (before sensor noise, which is
nominal and covers every pixel).

    train, test = generate("weave", n_train=20, n_test=20, image_size=128, seed=0)
    root = write_mvtec_tree("/tmp/synthetic", categories=("weave", "shape"), n_train=20, n_test=20)
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.ndimage
from PIL import Image

from subspace_jax._io import atomic_directory
from subspace_jax.data.split import Split

__all__ = [
    "CATEGORIES",
    "DEFECT_TYPES",
    "OBJECT_CATEGORIES",
    "TEXTURE_CATEGORIES",
    "generate",
    "write_mvtec_tree",
]

TEXTURE_CATEGORIES = ("weave", "stripes", "grain")
OBJECT_CATEGORIES = ("shape", "ring")
CATEGORIES = TEXTURE_CATEGORIES + OBJECT_CATEGORIES
DEFECT_TYPES = ("blob", "color_spot", "missing", "scratch")
GOOD = "good"
MIN_IMAGE_SIZE = 32
# Written at the root of every generated category so that a rewrite never replaces a folder it did not make.
MARKER_FILE = ".subspace_jax_synthetic.json"

_SPOT_COLOURS = np.array(
    [[0.85, 0.15, 0.10], [0.15, 0.30, 0.90], [0.15, 0.70, 0.25], [0.80, 0.20, 0.75]], dtype=np.float32
)


@dataclasses.dataclass(frozen=True)
class _Render:
    """A clean (noise-free) product image and what defects need to know about it.

    image: float32 (S, S, 3) in [0, 1]; material: bool (S, S), where the product is (defects only change
    these pixels); backdrop: float32 (S, S, 3), what shows through where material is missing.
    """

    image: np.ndarray
    material: np.ndarray
    backdrop: np.ndarray


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x, y in [0, 1], each float32 (S, S)."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(centres, centres, indexing="xy")


def _rotate(x: np.ndarray, y: np.ndarray, angle: float, cx: float = 0.5, cy: float = 0.5):
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _mix(dark, light, weight: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two RGB colours: (S, S) weights in [0, 1] -> (S, S, 3)."""
    dark, light = np.asarray(dark, np.float32), np.asarray(light, np.float32)
    return dark + (light - dark) * weight[..., None]


def _coverage(signed_distance: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance in image units (negative inside), (S, S)."""
    return np.clip(0.5 - signed_distance * size, 0.0, 1.0)


def _texture(image: np.ndarray) -> _Render:
    size = image.shape[0]
    # Through a hole in a texture one sees a dark backing (sensor noise is added later, as everywhere).
    backing = np.full_like(image, 0.06)
    return _Render(image=image, material=np.ones((size, size), dtype=bool), backdrop=backing)


def _render_weave(rng: np.random.Generator, size: int) -> _Render:
    x, y = _grid(size)
    xr, yr = _rotate(x, y, rng.uniform(-0.06, 0.06))
    xr, yr = xr + rng.uniform(0, 1), yr + rng.uniform(0, 1)
    cell = 0.125 * rng.uniform(0.97, 1.03)
    threads_per_cell = 4
    parity = (np.floor(xr / cell) + np.floor(yr / cell)) % 2
    along_x = 0.5 + 0.5 * np.cos(2 * np.pi * threads_per_cell * yr / cell)
    along_y = 0.5 + 0.5 * np.cos(2 * np.pi * threads_per_cell * xr / cell)
    weight = np.where(parity == 0, along_x, along_y) ** 0.6
    return _texture(_mix((0.33, 0.26, 0.17), (0.82, 0.74, 0.56), weight))


def _render_stripes(rng: np.random.Generator, size: int) -> _Render:
    x, y = _grid(size)
    xr, yr = _rotate(x, y, rng.uniform(-0.05, 0.05))
    period = 0.07 * rng.uniform(0.97, 1.03)
    wobble = 0.006 * np.sin(2 * np.pi * (yr * rng.uniform(1.5, 2.5) + rng.uniform(0, 1)))
    phase = (xr + wobble) / period + rng.uniform(0, 1)
    weight = (0.5 + 0.5 * np.sin(2 * np.pi * phase)) ** 1.5
    return _texture(_mix((0.10, 0.13, 0.26), (0.38, 0.45, 0.66), weight))


def _render_grain(rng: np.random.Generator, size: int) -> _Render:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    # Long along x, short along y: wood-like grain; a fresh random field for every image.
    field = scipy.ndimage.gaussian_filter(noise, sigma=(0.012 * size, 0.08 * size), mode="wrap")
    field /= field.std() + 1e-6
    _, y = _grid(size)
    rings = np.sin(2 * np.pi * (y * 9.0 + 0.35 * field + rng.uniform(0, 1)))
    weight = np.clip(0.5 + 0.25 * rings + 0.12 * field, 0.0, 1.0)
    return _texture(_mix((0.45, 0.28, 0.14), (0.80, 0.60, 0.38), weight))


def _render_shape(rng: np.random.Generator, size: int) -> _Render:
    x, y = _grid(size)
    backdrop = _mix((0.12, 0.13, 0.14), (0.22, 0.23, 0.25), np.clip(y, 0, 1))
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04, size=2)
    xr, yr = _rotate(x, y, rng.uniform(-0.1, 0.1), cx, cy)
    half = 0.3 * rng.uniform(0.96, 1.04)
    # Rounded square (superellipse, exponent 4) with a round hole in its middle.
    radius = (np.abs(xr / half) ** 4 + np.abs(yr / half) ** 4) ** 0.25
    outside_plate = (radius - 1.0) * half
    hole = 0.07 * half / 0.3
    inside_hole = hole - np.hypot(xr, yr)
    alpha = _coverage(np.maximum(outside_plate, inside_hole), size)
    plate = _mix((0.55, 0.57, 0.60), (0.85, 0.86, 0.88), np.clip(0.5 - 0.9 * (xr + yr), 0, 1))
    image = backdrop + (plate - backdrop) * alpha[..., None]
    return _Render(image=image, material=alpha > 0, backdrop=backdrop)


def _render_ring(rng: np.random.Generator, size: int) -> _Render:
    x, y = _grid(size)
    backdrop = _mix((0.14, 0.24, 0.17), (0.20, 0.32, 0.23), np.clip(x, 0, 1))
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04, size=2)
    scale = rng.uniform(0.96, 1.04)
    outer, inner = 0.33 * scale, 0.17 * scale
    distance = np.hypot(x - cx, y - cy)
    alpha = _coverage(np.maximum(distance - outer, inner - distance), size)
    angle = np.arctan2(y - cy, x - cx)
    light = rng.uniform(-0.3, 0.3) - 2.4  # light from the upper left, give or take
    shading = np.clip(0.55 + 0.35 * np.cos(angle - light), 0, 1)
    metal = _mix((0.45, 0.35, 0.12), (0.92, 0.78, 0.40), shading)
    # A stamped mark at a jittered angle, so the ring's orientation is part of its nominal look.
    mark_angle = rng.uniform(-0.25, 0.25)
    mark_radius = 0.5 * (outer + inner)
    mark = np.hypot(x - cx - mark_radius * np.cos(mark_angle), y - cy - mark_radius * np.sin(mark_angle))
    metal = metal * (1.0 - 0.45 * _coverage(mark - 0.025 * scale, size))[..., None]
    image = backdrop + (metal - backdrop) * alpha[..., None]
    return _Render(image=image, material=alpha > 0, backdrop=backdrop)


_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Render]] = {
    "weave": _render_weave,
    "stripes": _render_stripes,
    "grain": _render_grain,
    "shape": _render_shape,
    "ring": _render_ring,
}


def _random_point(rng: np.random.Generator, allowed: np.ndarray, margin: int) -> tuple[float, float]:
    """A random pixel centre (x, y in image units) of ``allowed``, away from the image border."""
    inner = np.zeros_like(allowed)
    inner[margin:-margin, margin:-margin] = allowed[margin:-margin, margin:-margin]
    rows, cols = np.nonzero(inner if inner.any() else allowed)
    pick = rng.integers(rows.size)
    size = allowed.shape[0]
    return (cols[pick] + 0.5) / size, (rows[pick] + 0.5) / size


def _blob_region(rng, x, y, cx, cy, radius) -> np.ndarray:
    """An irregular closed region: a circle whose radius wobbles with the angle."""
    angle = np.arctan2(y - cy, x - cx)
    wobble = 1.0 + sum(
        rng.uniform(0.05, 0.2) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    stretch = rng.uniform(0.6, 1.0)
    return np.hypot(x - cx, (y - cy) / stretch) < radius * wobble


def _apply_defect(rng: np.random.Generator, render: _Render, defect: str) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``defect`` into the clean render. Returns (image float32 (S, S, 3), mask bool (S, S))."""
    size = render.image.shape[0]
    x, y = _grid(size)
    image = render.image.copy()
    pixel = 1.0 / size  # lower bounds in pixels keep small images' defects from vanishing
    for _ in range(20):
        if defect == "missing":
            # Objects lose a chunk of their outline; textures get a hole.
            edge = render.material & ~scipy.ndimage.binary_erosion(render.material, iterations=2)
            on_edge = edge.any() and not render.material.all()
            cx, cy = _random_point(rng, edge if on_edge else render.material, margin=size // 8)
            radius = rng.uniform(0.06, 0.1) if on_edge else rng.uniform(0.04, 0.07)
            region = _blob_region(rng, x, y, cx, cy, max(radius, 3 * pixel))
        else:
            cx, cy = _random_point(rng, render.material, margin=size // 8)
            if defect == "blob":
                region = _blob_region(rng, x, y, cx, cy, max(rng.uniform(0.04, 0.08), 3 * pixel))
            elif defect == "color_spot":
                region = np.hypot(x - cx, y - cy) < max(rng.uniform(0.03, 0.05), 2 * pixel)
            else:  # scratch: a thin segment of random direction through (cx, cy)
                direction = rng.uniform(0, np.pi)
                half_length = rng.uniform(0.1, 0.22)
                along = (x - cx) * np.cos(direction) + (y - cy) * np.sin(direction)
                across = -(x - cx) * np.sin(direction) + (y - cy) * np.cos(direction)
                half_width = max(rng.uniform(0.006, 0.011), 0.75 * pixel)
                region = (np.abs(along) < half_length) & (np.abs(across) < half_width)
        mask = region & render.material
        if np.count_nonzero(mask) >= max(8, size * size // 2000):
            break
    else:
        raise RuntimeError(f"could not place a {defect!r} defect on a {size}px image")

    if defect == "blob":
        image[mask] *= rng.uniform(0.45, 0.7)
    elif defect == "color_spot":
        colour = _SPOT_COLOURS[rng.integers(len(_SPOT_COLOURS))]
        strength = rng.uniform(0.5, 0.75)
        image[mask] = (1 - strength) * image[mask] + strength * colour
    elif defect == "missing":
        image[mask] = render.backdrop[mask]
    else:
        tone = rng.choice([0.05, 0.95])
        strength = rng.uniform(0.6, 0.85)
        image[mask] = (1 - strength) * image[mask] + strength * tone
    return image, mask


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Nominal photometric variation and sensor noise, then quantisation: (S, S, 3) float -> uint8."""
    size = image.shape[0]
    x, y = _grid(size)
    gain = np.float32(rng.uniform(0.94, 1.06)) * (
        1
        + np.float32(rng.uniform(-0.08, 0.08)) * (x - 0.5)
        + np.float32(rng.uniform(-0.08, 0.08)) * (y - 0.5)
    )
    cast = (1 + 0.02 * rng.standard_normal(3, dtype=np.float32)) * 255
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= 0.015 * 255
    noisy = image.astype(np.float32) * gain[..., None] * cast + noise
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _image_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """Independent stream per image, stable across runs and across n_train / n_test."""
    entropy = [seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _check_arguments(category: str, n_train: int, n_test: int, image_size: int, seed: int) -> None:
    if category not in _RENDERERS:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    if int(n_train) != n_train or n_train < 1:
        raise ValueError(f"n_train must be a positive integer, got {n_train!r}")
    if int(n_test) != n_test or n_test < 0:
        raise ValueError(f"n_test must be a non-negative integer, got {n_test!r}")
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _split(images: list[np.ndarray], masks: list[np.ndarray], defect_types: list[str], size: int) -> Split:
    return Split(
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        masks=np.stack(masks) if masks else np.zeros((0, size, size), bool),
        labels=np.array([int(t != GOOD) for t in defect_types], dtype=np.int64),
        defect_types=tuple(defect_types),
        paths=(None,) * len(defect_types),
    )


def _test_split_types(n_test: int) -> list[str]:
    """The defect type of each test image: the first n_test // 2 good, the rest cycling DEFECT_TYPES,
    grouped."""
    n_good = n_test // 2
    defective = [DEFECT_TYPES[i % len(DEFECT_TYPES)] for i in range(n_test - n_good)]
    return [GOOD] * n_good + sorted(defective, key=DEFECT_TYPES.index)


def generate(
    category: str, n_train: int, n_test: int, image_size: int = 128, seed: int = 0
) -> tuple[Split, Split]:
    """Render ``n_train`` defect-free and ``n_test`` test images of one category, in memory.

    The test split holds n_test // 2 good images first, then the defective ones grouped by type
    (types cycle through DEFECT_TYPES, so every type appears once n_test >= 8). Same arguments, same
    arrays. Returns (train, test) Splits: images uint8 (N, S, S, 3), masks bool (N, S, S) (all False
    for good images), labels int64 (N,), defect_types ("good" or a DEFECT_TYPES name), paths all None.
    """
    _check_arguments(category, n_train, n_test, image_size, seed)
    render = _RENDERERS[category]
    train_images, train_masks = [], []
    for index in range(n_train):
        rng = _image_rng(seed, category, "train", index)
        train_images.append(_finish(rng, render(rng, image_size).image))
        train_masks.append(np.zeros((image_size, image_size), dtype=bool))

    test_types = _test_split_types(n_test)
    test_images, test_masks = [], []
    for index, defect in enumerate(test_types):
        rng = _image_rng(seed, category, "test", index)
        clean = render(rng, image_size)
        if defect == GOOD:
            image, mask = clean.image, np.zeros((image_size, image_size), dtype=bool)
        else:
            image, mask = _apply_defect(rng, clean, defect)
        test_images.append(_finish(rng, image))
        test_masks.append(mask)

    train = _split(train_images, train_masks, [GOOD] * n_train, image_size)
    test = _split(test_images, test_masks, test_types, image_size)
    return train, test


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_mvtec_tree(
    root: str | os.PathLike,
    categories: tuple[str, ...] = ("weave", "shape"),
    n_train: int = 20,
    n_test: int = 20,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write ``generate``'s splits as PNGs in the MVTec AD layout and return ``root``.

    Per category: ``train/good/000.png``, ``test/<type>/000.png`` (numbered within each type folder,
    in ``generate``'s order) and ``ground_truth/<type>/000_mask.png`` (255 on defects) for defective
    types. Each category folder appears atomically; an existing one is replaced only if this function
    wrote it (it holds MARKER_FILE), otherwise FileExistsError.
    """
    root = Path(root)
    for category in categories:
        _check_arguments(category, n_train, n_test, image_size, seed)
    for category in categories:
        destination = root / category
        if destination.exists() and not (destination / MARKER_FILE).is_file():
            raise FileExistsError(
                f"{destination} exists and was not written by write_mvtec_tree (no {MARKER_FILE}); "
                "choose another root or remove it"
            )
        train, test = generate(category, n_train, n_test, image_size, seed)
        width = max(3, len(str(max(n_train, n_test))))
        with atomic_directory(destination) as folder:
            for index, image in enumerate(train.images):
                _save_png(image, folder / "train" / GOOD / f"{index:0{width}d}.png")
            counters: dict[str, int] = {}
            for image, mask, defect in zip(test.images, test.masks, test.defect_types):
                number = counters.get(defect, 0)
                counters[defect] = number + 1
                stem = f"{number:0{width}d}"
                _save_png(image, folder / "test" / defect / f"{stem}.png")
                if defect != GOOD:
                    _save_png(
                        mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{stem}_mask.png"
                    )
            provenance = {
                "generator": "subspace_jax.data.synthetic",
                "category": category,
                "n_train": n_train,
                "n_test": n_test,
                "image_size": image_size,
                "seed": seed,
            }
            (folder / MARKER_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return root
