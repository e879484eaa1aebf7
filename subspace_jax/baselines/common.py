"""Plumbing shared by the memory-bank baselines: chunked nearest-neighbour search and input checks.

Everything numerical here is pure JAX with static shapes. The map post-processing (bilinear upsampling
and Gaussian smoothing) and batched feature extraction belong to :mod:`subspace_jax.model`; the private
stand-ins at the bottom of this module exist only until that module lands and are marked as such.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

# Squared distances by ||a||^2 + ||b||^2 - 2ab lose digits to cancellation; on GPUs the default matmul
# precision (TF32) would make that worse, so the cross term is always computed at full float32 precision.
_DOT_PRECISION = lax.Precision.HIGHEST


def level_key(level: int) -> str:
    """The backbone feature-dict key of a level number: 2 -> "level2"."""
    return f"level{level}"


def validate_common(
    *,
    backbone: str,
    image_size: int,
    crop: int | None,
    levels: Sequence[int],
    sigma: float,
) -> None:
    """Checks the fields every baseline config shares; raises ValueError naming the field."""
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(f"backbone: expected a backbone name such as 'wide_resnet50_2', got {backbone!r}")
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size: expected an int >= 32, got {image_size!r}")
    if crop is not None and (not isinstance(crop, int) or not 32 <= crop <= image_size):
        raise ValueError(f"crop: expected None or an int in [32, image_size={image_size}], got {crop!r}")
    if not isinstance(levels, tuple) or not levels:
        raise ValueError(f"levels: expected a non-empty tuple of ints in 1..4, got {levels!r}")
    if any(not isinstance(l, int) or not 1 <= l <= 4 for l in levels):
        raise ValueError(f"levels: expected ints in 1..4, got {levels!r}")
    if len(set(levels)) != len(levels) or tuple(sorted(levels)) != levels:
        raise ValueError(f"levels: expected strictly increasing levels, got {levels!r}")
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma: expected a finite float >= 0 (0 disables smoothing), got {sigma!r}")


def positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def check_features(
    features: Mapping[str, Any], keys: Sequence[str], *, name: str = "features"
) -> dict[str, Array]:
    """Checks a backbone feature dict holds `keys` with one batch size; returns them as float32 arrays.

    Level maps must be (N, h, w, c); "pooled" must be (N, c).
    """
    if not isinstance(features, Mapping):
        raise ValueError(f"{name}: expected a dict of backbone features, got {type(features).__name__}")
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"{name}: missing {missing}; has {sorted(features)}")
    out = {k: jnp.asarray(features[k], dtype=jnp.float32) for k in keys}
    sizes = {k: v.shape[0] if v.ndim else None for k, v in out.items()}
    for k, v in out.items():
        want = 2 if k == "pooled" else 4
        if v.ndim != want:
            shape = "(N, c)" if want == 2 else "(N, h, w, c)"
            raise ValueError(f"{name}[{k!r}]: expected shape {shape}, got {v.shape}")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name}: all entries must have the same batch size, got {sizes}")
    if next(iter(sizes.values())) == 0:
        raise ValueError(f"{name}: expected at least one image, got an empty batch")
    return out


def squared_distances(queries: Array, bank: Array) -> Array:
    """Squared Euclidean distances (Q, M) of queries (Q, d) to bank rows (M, d), float32, clamped at 0."""
    q_sq = jnp.sum(queries * queries, axis=-1)
    b_sq = jnp.sum(bank * bank, axis=-1)
    cross = jnp.matmul(queries, bank.T, precision=_DOT_PRECISION)
    return jnp.maximum(q_sq[:, None] + b_sq[None, :] - 2.0 * cross, 0.0)


@partial(jax.jit, static_argnames=("query_chunk", "bank_chunk"))
def nearest_neighbor(
    queries: Array, bank: Array, *, query_chunk: int = 1024, bank_chunk: int = 4096
) -> tuple[Array, Array]:
    """Euclidean distance of each query to its nearest bank row, and that row's index.

    Args:
      queries: (Q, d) float.
      bank: (M, d) float, M >= 1.
      query_chunk, bank_chunk: the largest intermediate is a (query_chunk, bank_chunk) float32 block;
        queries are processed chunk by chunk (`lax.map`) and the bank is scanned chunk by chunk with a
        running minimum, so memory does not grow with Q * M.

    Returns:
      (distances (Q,) float32, indices (Q,) int32). Ties go to the lowest bank index.
    """
    queries = jnp.asarray(queries, jnp.float32)
    bank = jnp.asarray(bank, jnp.float32)
    n_query, dim = queries.shape
    n_bank = bank.shape[0]
    if bank.ndim != 2 or bank.shape[1] != dim or n_bank == 0:
        raise ValueError(f"bank: expected shape (M>=1, {dim}), got {bank.shape}")
    q_chunk = max(1, min(query_chunk, n_query))
    b_chunk = max(1, min(bank_chunk, n_bank))
    n_q_chunks = -(-n_query // q_chunk)
    n_b_chunks = -(-n_bank // b_chunk)

    q_pad = jnp.pad(queries, ((0, n_q_chunks * q_chunk - n_query), (0, 0)))
    b_pad = jnp.pad(bank, ((0, n_b_chunks * b_chunk - n_bank), (0, 0)))
    b_sq = jnp.sum(b_pad * b_pad, axis=-1)
    # Padded bank rows get an infinite norm so they can never be the minimum.
    b_sq = jnp.where(jnp.arange(b_pad.shape[0]) < n_bank, b_sq, jnp.inf)
    bank_blocks = b_pad.reshape(n_b_chunks, b_chunk, dim)
    bank_sq_blocks = b_sq.reshape(n_b_chunks, b_chunk)
    offsets = jnp.arange(n_b_chunks, dtype=jnp.int32) * b_chunk

    def one_query_chunk(q: Array) -> tuple[Array, Array]:
        q_sq = jnp.sum(q * q, axis=-1)

        def scan_bank(carry, block):
            best_d2, best_idx = carry
            b, bsq, offset = block
            cross = jnp.matmul(q, b.T, precision=_DOT_PRECISION)
            d2 = q_sq[:, None] + bsq[None, :] - 2.0 * cross
            local = jnp.argmin(d2, axis=1).astype(jnp.int32)
            local_d2 = jnp.take_along_axis(d2, local[:, None], axis=1)[:, 0]
            better = local_d2 < best_d2  # strict: an earlier chunk keeps ties
            return (
                jnp.where(better, local_d2, best_d2),
                jnp.where(better, local + offset, best_idx),
            ), None

        init = (jnp.full((q_chunk,), jnp.inf, jnp.float32), jnp.zeros((q_chunk,), jnp.int32))
        (best_d2, best_idx), _ = lax.scan(scan_bank, init, (bank_blocks, bank_sq_blocks, offsets))
        return best_d2, best_idx

    d2, idx = lax.map(one_query_chunk, q_pad.reshape(n_q_chunks, q_chunk, dim))
    d2 = d2.reshape(-1)[:n_query]
    idx = idx.reshape(-1)[:n_query]
    return jnp.sqrt(jnp.maximum(d2, 0.0)), idx


def output_size(image_size: int, crop: int | None) -> int:
    """Side of the square maps: the crop if there is one, else the resized image size."""
    return crop if crop is not None else image_size


# --- TEMPORARY stand-ins for subspace_jax.model's map helpers (delete after `git merge model`) ---------


def _upsample_bilinear(maps: Array, size: int) -> Array:
    """(B, h, w) -> (B, size, size), bilinear with half-pixel centres (torch align_corners=False)."""
    return jax.image.resize(maps, (maps.shape[0], size, size), method="bilinear", antialias=False)


def _gaussian_blur(maps: Array, sigma: float) -> Array:
    """Separable Gaussian blur of (B, H, W) maps, reflect padding, radius int(4 sigma + 0.5)."""
    if sigma == 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel = jnp.asarray(kernel / kernel.sum(), jnp.float32)
    padded = jnp.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="symmetric")
    rows = jax.vmap(lambda m: jax.vmap(lambda r: jnp.convolve(r, kernel, mode="valid"))(m))(padded)
    cols = jax.vmap(lambda m: jax.vmap(lambda c: jnp.convolve(c, kernel, mode="valid"))(m.T).T)(rows)
    return cols


# --- end of TEMPORARY map helpers ----------------------------------------------------------------------


def upsample_maps(maps: Array, size: int) -> Array:
    """(B, h, w) -> (B, size, size), bilinear (half-pixel centres), the model's upsampling."""
    return _upsample_bilinear(maps, size)


def smooth_maps(maps: Array, sigma: float) -> Array:
    """Gaussian smoothing of (B, H, W) maps, the model's blur (reflect padding, radius int(4 sigma + 0.5))."""
    return _gaussian_blur(maps, sigma)


def postprocess_maps(maps: Array, size: int, sigma: float) -> Array:
    """Patch-resolution maps (B, h, w) -> (B, size, size): bilinear upsampling, then Gaussian blur."""
    return smooth_maps(upsample_maps(maps, size), sigma)


# --- TEMPORARY stand-ins for subspace_jax.model's batched feature extraction (replace after merge) -----


def resolve_backbone(backbone: Any, name: str) -> Any:
    """The given backbone, or `subspace_jax.backbones.load(name)` when None."""
    if backbone is not None:
        return backbone
    from subspace_jax import backbones  # imported lazily: fitting from cached features needs no backbone

    return backbones.load(name)


def check_images(images: Any, size: int, *, name: str = "images") -> np.ndarray:
    """uint8 (or float in [0, 255]) NHWC images of side `size` -> numpy (N, size, size, 3)."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
        raise ValueError(f"{name}: expected shape (N, {size}, {size}, 3) images, got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got none")
    return arr


def extract_features(
    backbone: Any,
    images: Any,
    size: int,
    keys: Sequence[str],
    batch_size: int,
    progress: bool,
    desc: str,
) -> dict[str, Array]:
    """Runs the backbone over `images` (N, size, size, 3) in batches; keeps `keys` of its output dict."""
    from tqdm.auto import tqdm

    positive_int("batch_size", batch_size)
    arr = check_images(images, size)
    parts: dict[str, list[Array]] = {k: [] for k in keys}
    for start in tqdm(range(0, arr.shape[0], batch_size), desc=desc, disable=not progress):
        out = backbone(arr[start : start + batch_size])
        for k in keys:
            parts[k].append(out[k])
    return {k: jnp.concatenate(v, axis=0) for k, v in parts.items()}


def score_images(
    model: Any, images: Any, batch_size: int, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """Backbone + `model.score_features` over batches -> (maps (N, S, S) float32, scores (N,) float32)."""
    from tqdm.auto import tqdm

    if model.backbone is None:
        raise ValueError(
            "model.backbone: this model was fitted from features without a backbone; "
            "use score_features(features) or fit with a backbone"
        )
    positive_int("batch_size", batch_size)
    arr = check_images(images, model.config.output_size)
    maps, scores = [], []
    for start in tqdm(range(0, arr.shape[0], batch_size), desc=desc, disable=not progress):
        m, s = model.score_features(model.backbone(arr[start : start + batch_size]))
        maps.append(np.asarray(m, np.float32))
        scores.append(np.asarray(s, np.float32))
    return np.concatenate(maps), np.concatenate(scores)
