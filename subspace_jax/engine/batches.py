"""Images in fixed-size batches, for every method: the input contract, padding and host-side loops.

- ``check_batch``: the input contract of every public entry point (shape, dtype, value range).
- ``iter_batches`` / ``pad_batch`` / ``map_batches``: arrays, iterables of batches or image paths in,
  fixed-size (padded) batches out, so every jitted call has one shape and compiles once.
- ``first_nonfinite`` / ``check_finite_features``: NaN and inf named by image.

The functions take a ``config``: any object with ``backbone``, ``image_size``, ``crop`` and
``output_size`` (every method's config is one).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from subspace_jax._checks import is_int, is_number
from subspace_jax.data.images import read_image, resize_image

Array = jax.Array
ImageSource = Any  # np.ndarray (N, S, S, 3) uint8 | Iterable[np.ndarray] | Sequence[str | os.PathLike]


class InputConfig(Protocol):
    """What batching needs of a model's config: the backbone's name, and the input size (images are
    resized to ``image_size`` then centre-cropped to ``crop``; ``output_size`` = ``crop or image_size``)."""

    backbone: str
    image_size: int
    crop: int | None

    @property
    def output_size(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class InputSize:
    """An ``InputConfig`` for images already resized (and cropped) by the caller: S = ``image_size``."""

    backbone: str
    image_size: int
    crop: int | None = None

    @property
    def output_size(self) -> int:
        return self.crop if self.crop is not None else self.image_size


def first_nonfinite(values: Any) -> int | None:
    """Index along the first axis of the first entry holding NaN or inf; None when every entry is finite,
    for integer data, and for traced values (inside jit or eval_shape nothing can be checked)."""
    if isinstance(values, jax.core.Tracer):
        return None
    if isinstance(values, jax.Array):
        if not jax.numpy.issubdtype(values.dtype, jax.numpy.inexact) or values.ndim == 0 or not values.size:
            return None
        ok = np.asarray(jax.numpy.isfinite(values).reshape(values.shape[0], -1).all(axis=1))
    else:
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.inexact) or values.ndim == 0 or not values.size:
            return None
        ok = np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def check_finite_features(features: Any, what: str = "features") -> None:
    """Raise ValueError naming the key and image index of the first NaN or inf in a feature dict."""
    for key, values in features.items():
        index = first_nonfinite(values)
        if index is not None:
            raise ValueError(
                f"{what}[{key!r}]: image {index} holds NaN or inf values; non-finite features would turn "
                "its map into NaN and its score into -inf (ranked least anomalous)"
            )


def check_value_range(value_range: Any) -> tuple[float, float] | None:
    """None, or ``(lo, hi)`` finite numbers with lo < hi; ValueError naming ``value_range`` otherwise."""
    if value_range is None:
        return None
    ok = isinstance(value_range, (tuple, list)) and len(value_range) == 2
    if ok:
        lo, hi = value_range
        ok = is_number(lo) and is_number(hi) and np.isfinite([lo, hi]).all() and float(lo) < float(hi)
    if not ok:
        raise ValueError(f"value_range: expected (lo, hi) with finite lo < hi, got {value_range!r}")
    return float(lo), float(hi)


def check_batch(
    batch: Any, config: InputConfig, what: str, first_index: int = 0, value_range: Any = None
) -> np.ndarray:
    """``batch`` as a (B, S, S, 3) numpy array on the [0, 255] scale, S = ``config.output_size``; else
    ValueError naming ``what`` and the image (counted from ``first_index``).

    The input contract of every public entry point: uint8 images need nothing. Float images need their
    ``value_range=(lo, hi)`` (e.g. ``(0, 1)`` or ``(0, 255)``): nothing about the values says which scale
    they are on, so it is never guessed. Every value must lie in [lo, hi] (NaN and inf never do); the
    batch is then mapped linearly onto [0, 255] (float32).
    """
    batch = np.asarray(batch)
    size = config.output_size
    if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
        raise ValueError(
            f"{what}: expected images of shape (B, {size}, {size}, 3) (config image_size/crop), got "
            f"{batch.shape}; load datasets with subspace_jax.data at this size or pass image paths"
        )
    value_range = check_value_range(value_range)
    if batch.dtype == np.uint8:
        if value_range not in (None, (0.0, 255.0)):
            raise ValueError(
                f"value_range: uint8 images are on (0, 255), got {value_range}; drop value_range"
            )
        return batch
    if not np.issubdtype(batch.dtype, np.floating):
        raise ValueError(f"{what}: expected uint8 or float images, got dtype {batch.dtype}")
    if value_range is None:
        raise ValueError(
            f"{what}: float images need value_range=(lo, hi), the range their pixels are on (e.g. (0, 1) "
            "or (0, 255)); it is never guessed. Or pass uint8 images"
        )
    lo, hi = value_range
    values = batch.reshape(batch.shape[0], -1)
    inside = np.isfinite(values).all(axis=1) & (values.min(axis=1, initial=lo) >= lo)
    inside &= values.max(axis=1, initial=hi) <= hi
    bad = np.flatnonzero(~inside)
    if bad.size:
        image = values[bad[0]]
        found = f"[{np.nanmin(image):g}, {np.nanmax(image):g}]" if np.isfinite(image).any() else "NaN/inf"
        if not np.isfinite(image).all():
            found += " with NaN or inf"
        raise ValueError(
            f"{what}: image {first_index + bad[0]} holds values {found} outside value_range {value_range}"
        )
    if value_range == (0.0, 255.0):
        return batch
    return ((batch.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))).astype(np.float32)


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, bytes, os.PathLike))


def _path_batches(paths: Iterator[Any], config: InputConfig, batch_size: int) -> Iterator[np.ndarray]:
    chunk: list[Any] = []
    for index, path in enumerate(paths):
        if not _is_path(path):
            raise ValueError(
                f"images: item {index} is a {type(path).__name__}, but the first items are paths; give "
                "image paths or image batches, not both"
            )
        chunk.append(path)
        if len(chunk) == batch_size:
            yield np.stack([resize_image(read_image(p), config.image_size, config.crop) for p in chunk])
            chunk = []
    if chunk:
        yield np.stack([resize_image(read_image(p), config.image_size, config.crop) for p in chunk])


def iter_batches(
    images: ImageSource, config: InputConfig, batch_size: int, value_range: Any = None
) -> Iterator[np.ndarray]:
    """Yield (b, S, S, 3) batches on the [0, 255] scale, b <= batch_size, from an array, an iterable of
    batches, or an iterable of image paths (str, bytes or ``os.PathLike``: a list, a generator such as
    ``glob.iglob``...). Paths are read and resized like the dataset loaders (``read_image`` then
    ``resize_image(image, image_size, crop)``); arrays follow ``check_batch`` with ``value_range``.
    """
    if _is_path(images):
        raise ValueError(
            "images: expected an array, an iterable of batches or of image paths, got a single path"
        )
    if isinstance(images, (np.ndarray, jax.Array)):
        images = check_batch(images, config, "images", value_range=value_range)
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    if not isinstance(images, Iterable):
        raise ValueError(
            "images: expected an array, an iterable of batches or of image paths, got "
            f"{type(images).__name__}"
        )
    items = iter(images)
    first = next(items, None)
    if first is None:
        return
    if _is_path(first):
        if value_range is not None:
            check_value_range(value_range)
        yield from _path_batches(itertools.chain([first], items), config, batch_size)
        return
    seen = 0
    for index, batch in enumerate(itertools.chain([first], items)):
        if _is_path(batch):
            raise ValueError(
                f"images: item {index} is a path, but the first items are image batches; give image "
                "paths or image batches, not both"
            )
        batch = check_batch(
            batch, config, f"images (batch {index})", first_index=seen, value_range=value_range
        )
        seen += batch.shape[0]
        for start in range(0, batch.shape[0], batch_size):
            yield batch[start : start + batch_size]


def pad_batch(batch: np.ndarray, batch_size: int) -> np.ndarray:
    """Pad a short last batch with copies of its last image so every call has the same shape."""
    missing = batch_size - batch.shape[0]
    if missing <= 0:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])


def count_images(images: ImageSource) -> int | None:
    """Number of images when known without iterating (arrays, lists of paths), else None."""
    return len(images) if isinstance(images, (np.ndarray, jax.Array, list, tuple)) else None


def batch_size_for(images: ImageSource | int, batch_size: int) -> int:
    """``batch_size`` checked, lowered to the number of images (or ``images`` itself, a count) when
    fewer are given (less padding)."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    n = int(images) if is_int(images) else count_images(images)
    return max(1, min(batch_size, n)) if n else batch_size


def progress_bar(enabled: bool, desc: str, total: int | None = None) -> tqdm:
    """A tqdm bar counting images (rate in images/s and the time left when ``total`` is known);
    disabled when not ``enabled``."""
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


def map_batches(
    fn: Callable[[np.ndarray], Any],
    images: ImageSource,
    config: InputConfig,
    batch_size: int,
    *,
    progress: bool = True,
    desc: str = "batches",
    value_range: Any = None,
) -> Any:
    """Apply ``fn`` to fixed-size batches of ``images`` and concatenate its outputs on the host.

    Args:
      fn: ((batch_size, S, S, 3) images, index of the batch's first image) -> a pytree of arrays with
        the batch axis first.
      images: an array, an iterable of batches or of image paths (see ``iter_batches``).
      config: gives the input size.
      batch_size: images per call (an int >= 1, at most the number of images: use
        ``batch_size_for``); the last batch is padded and the padding is dropped from the outputs.
      progress, desc: a progress bar over images (rate and time left).
      value_range: of float images (``check_batch``).

    Returns:
      ``fn``'s pytree with each leaf a numpy array over all N images.
    """
    outputs = []
    seen = 0
    with progress_bar(progress, desc, count_images(images)) as bar:
        for batch in iter_batches(images, config, batch_size, value_range):
            n = batch.shape[0]
            out = fn(pad_batch(batch, batch_size), seen)
            outputs.append(jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[:n]), out))
            seen += n
            bar.update(n)
    if not outputs:
        raise ValueError("images: expected at least one image, got none")
    return jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *outputs)
