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
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from subspace_jax._checks import is_int
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


def check_batch(batch: Any, config: InputConfig, what: str, first_index: int = 0) -> np.ndarray:
    """``batch`` as a (B, S, S, 3) numpy array, S = ``config.output_size``; else ValueError.

    The input contract of every public entry point: uint8 images (the normal path), or float images
    on the same [0, 255] scale. Float batches are refused when they hold NaN or inf (naming the image,
    counted from ``first_index``), values outside [0, 255], or only values <= 1 (images scaled to
    [0, 1] would silently score as almost black: multiply them by 255 or convert them to uint8).
    """
    batch = np.asarray(batch)
    size = config.output_size
    if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
        raise ValueError(
            f"{what}: expected images of shape (B, {size}, {size}, 3) (config image_size/crop), got "
            f"{batch.shape}; load datasets with subspace_jax.data at this size or pass image paths"
        )
    if batch.dtype == np.uint8:
        return batch
    if not np.issubdtype(batch.dtype, np.floating):
        raise ValueError(f"{what}: expected uint8 (or float in [0, 255]) images, got dtype {batch.dtype}")
    bad = first_nonfinite(batch)
    if bad is not None:
        raise ValueError(f"{what}: image {first_index + bad} holds NaN or inf values")
    if batch.size:
        low, high = float(batch.min()), float(batch.max())
        if low < 0.0 or high > 255.0:
            raise ValueError(
                f"{what}: float images must hold values in [0, 255] (the uint8 scale), got values in "
                f"[{low:g}, {high:g}]; pass raw pixels, not normalised ones (the backbone normalises)"
            )
        if high <= 1.0:
            raise ValueError(
                f"{what}: float images must be on the [0, 255] scale, but every value is <= 1 (max "
                f"{high:g}), which looks like [0, 1] images; multiply them by 255 or convert them to uint8"
            )
    return batch


def iter_batches(images: ImageSource, config: InputConfig, batch_size: int) -> Iterator[np.ndarray]:
    """Yield (b, S, S, 3) batches, b <= batch_size, from an array, an iterable of batches or paths.

    Paths are read and resized like the dataset loaders (``read_image`` then
    ``resize_image(image, image_size, crop)``).
    """
    if isinstance(images, (str, os.PathLike)):
        raise ValueError(
            "images: expected an array, an iterable of batches or a list of paths, got a single path"
        )
    if isinstance(images, (np.ndarray, jax.Array)):
        images = check_batch(images, config, "images")
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    if (
        isinstance(images, (list, tuple))
        and images
        and all(isinstance(p, (str, os.PathLike)) for p in images)
    ):
        for start in range(0, len(images), batch_size):
            paths = images[start : start + batch_size]
            yield np.stack([resize_image(read_image(p), config.image_size, config.crop) for p in paths])
        return
    if not isinstance(images, Iterable):
        raise ValueError(
            "images: expected an array, an iterable of batches or a list of paths, got "
            f"{type(images).__name__}"
        )
    seen = 0
    for index, batch in enumerate(images):
        batch = check_batch(batch, config, f"images (batch {index})", first_index=seen)
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


def progress_bar(items: Iterable, enabled: bool, desc: str, total: int | None = None) -> Iterable:
    """``items`` wrapped in a tqdm bar counting batches when ``enabled``."""
    if not enabled:
        return items
    return tqdm(items, desc=desc, unit="batch", total=total)


def map_batches(
    fn: Callable[[np.ndarray], Any],
    images: ImageSource,
    config: InputConfig,
    batch_size: int,
    *,
    progress: bool = True,
    desc: str = "batches",
) -> Any:
    """Apply ``fn`` to fixed-size batches of ``images`` and concatenate its outputs on the host.

    Args:
      fn: (batch_size, S, S, 3) images -> a pytree of arrays with the batch axis first.
      images: an array, an iterable of batches or a list of paths (see ``iter_batches``).
      config: gives the input size.
      batch_size: images per call (an int >= 1, at most the number of images: use
        ``batch_size_for``); the last batch is padded and the padding is dropped from the outputs.
      progress, desc: a progress bar over batches.

    Returns:
      ``fn``'s pytree with each leaf a numpy array over all N images.
    """
    outputs = []
    n_images = count_images(images)
    total = None if n_images is None else -(-n_images // batch_size)
    for batch in progress_bar(iter_batches(images, config, batch_size), progress, desc, total):
        n = batch.shape[0]
        out = fn(pad_batch(batch, batch_size))
        outputs.append(jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[:n]), out))
    if not outputs:
        raise ValueError("images: expected at least one image, got none")
    return jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *outputs)
