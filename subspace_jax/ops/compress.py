"""Feature transforms before reconstruction: local aggregation, channel projections, an image coreset.

Both are fitted on nominal training features only and are plain linear algebra on the host (numpy),
run once at fit time; scoring applies a projection as one (c, c') matmul inside the jitted scorer.

- ``pca_projection``: the top principal directions of a level's pixel vectors (N·h·w samples of
  dimension c), a (c, c') matrix with orthonormal columns. Features are projected without removing the
  mean, so the projection is linear and a reconstruction from atoms stays a reconstruction.
- ``random_projection``: a seeded Gaussian (c, c') matrix with variance 1/c' (norms kept in expectation).
- ``aggregate``: the mean of each pixel's size × size neighbourhood (PatchCore's local patch
  embedding), jittable; at the borders only the neighbours inside the map are averaged.
- ``kcenter``: greedy k-center on image vectors (e.g. pooled features): M' images such that every
  training image is close to a chosen one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_features(features: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim < 2 or array.shape[0] < 1 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"{name}: expected float features (N, ..., c) with N >= 1, got {array.dtype} {array.shape}"
        )
    return array


def pca_projection(features: np.ndarray, channels: int) -> np.ndarray:
    """(N, h, w, c) (or (P, c)) nominal features -> (c, channels) float32 top principal directions.

    The covariance is accumulated in float64 one image at a time, so memory is O(c²) whatever N·h·w.
    """
    array = _check_features(features, "features")
    c = array.shape[-1]
    if not isinstance(channels, (int, np.integer)) or not 1 <= channels <= c:
        raise ValueError(f"channels: expected an int in [1, {c}], got {channels!r}")
    second = np.zeros((c, c))
    total = np.zeros(c)
    count = 0
    for block in array.reshape(array.shape[0], -1, c):
        block = block.astype(np.float64)
        second += block.T @ block
        total += block.sum(axis=0)
        count += block.shape[0]
    mean = total / count
    cov = second / count - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:channels]
    return np.ascontiguousarray(vectors[:, order], dtype=np.float32)


def random_projection(c: int, channels: int, seed: int = 0) -> np.ndarray:
    """(c, channels) float32 Gaussian matrix with entries N(0, 1/channels), from ``seed``."""
    if not isinstance(channels, (int, np.integer)) or not 1 <= channels <= c:
        raise ValueError(f"channels: expected an int in [1, {c}], got {channels!r}")
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((c, channels)) / np.sqrt(channels)).astype(np.float32)


def kcenter(points: np.ndarray, m: int) -> np.ndarray:
    """Greedy k-center (Gonzalez): ``m`` distinct row indices of ``points`` (N, ...), in pick order.

    Starts from row 0, then repeatedly adds the row farthest (Euclidean) from the rows chosen so far;
    ties go to the lowest index.
    """
    array = _check_features(points, "points")
    flat = array.reshape(array.shape[0], -1).astype(np.float64)
    n = flat.shape[0]
    if not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise ValueError(f"m: expected an int in [1, N={n}], got {m!r}")
    sq = np.einsum("ij,ij->i", flat, flat)
    chosen = [0]
    dist = np.maximum(sq - 2 * flat @ flat[0] + sq[0], 0.0)
    for _ in range(m - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.maximum(sq - 2 * flat @ flat[nxt] + sq[nxt], 0.0))
    return np.asarray(chosen, np.int64)


def aggregate(features: jax.Array, size: int) -> jax.Array:
    """(B, h, w, c) -> (B, h, w, c) mean over each pixel's size × size neighbourhood (odd ``size``;
    1 returns the features unchanged). Near the borders the mean is over the neighbours inside the map."""
    if size == 1:
        return features
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"size: expected an odd int >= 1, got {size!r}")
    x = jnp.asarray(features, jnp.float32)
    window, strides = (1, size, size, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "SAME")
    ones = jnp.ones((1,) + x.shape[1:3] + (1,), jnp.float32)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, "SAME")
    return total / count
