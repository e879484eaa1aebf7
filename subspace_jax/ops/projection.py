"""Channel projections of feature maps: the principal directions of nominal pixels, or a seeded Gaussian.

- ``PixelMoments`` accumulates the first and second moments of pixel vectors (float64, O(c²) memory
  whatever the number of pixels), chunk by chunk or merged across processes; ``directions(c′)`` are the
  top principal directions, a (c, c′) matrix with orthonormal columns. ``pca_projection`` is the
  one-shot form. Features are projected without removing the mean, so a projection is linear and a
  reconstruction from atoms stays a reconstruction.
- ``random_projection``: a Gaussian (c, c′) matrix with N(0, 1/c′) entries (norms kept in expectation:
  the Johnson-Lindenstrauss projection PatchCore selects its coreset on), from a JAX key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from subspace_jax._checks import check_int

__all__ = ["PixelMoments", "pca_projection", "random_projection"]


class PixelMoments:
    """Running sums of pixel vectors x (c,) and of x xᵀ, in float64.

    ``add(features)`` takes (..., c) float features (e.g. a chunk of (n, h, w, c) maps);
    ``merge(other)`` adds another accumulator's sums (e.g. another process's); sums are kept in
    extended precision (``np.longdouble``), so the order of additions hardly matters;
    ``directions(channels)`` returns the (c, channels) float32 top principal directions.
    """

    def __init__(self, channels: int) -> None:
        self.channels = check_int("channels", channels, 1)
        # Extended precision (80-bit on x86): the sums then hardly depend on their order, so moments
        # accumulated by several processes and added give the directions one process gives.
        self.second = np.zeros((channels, channels), np.longdouble)
        self.total = np.zeros(channels, np.longdouble)
        self.count = 0

    def add(self, features: np.ndarray) -> PixelMoments:
        array = np.asarray(features)
        if array.shape[-1:] != (self.channels,) or not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"features: expected float pixel vectors (..., {self.channels}), "
                f"got {array.dtype} {array.shape}"
            )
        flat = array.reshape(-1, self.channels)
        # Blocks of about 4 million values: a float64 product per block (BLAS), one extended-precision
        # addition per block, and a float64 copy that stays small whatever the chunk.
        step = max(1, (1 << 22) // self.channels)
        for start in range(0, flat.shape[0], step):
            block = flat[start : start + step].astype(np.float64)
            self.second += block.T @ block
            self.total += block.sum(axis=0)
        self.count += flat.shape[0]
        return self

    def merge(self, other: PixelMoments) -> PixelMoments:
        if other.channels != self.channels:
            raise ValueError(f"moments: {other.channels} channels cannot merge into {self.channels}")
        self.second += other.second
        self.total += other.total
        self.count += other.count
        return self

    def directions(self, channels: int) -> np.ndarray:
        """(c, channels) float32: eigenvectors of the pixel covariance with the largest eigenvalues."""
        channels = check_int("channels", channels, 1, self.channels)
        if self.count == 0:
            raise ValueError("features: no pixel vectors were added, nothing to project")
        mean = self.total / self.count
        cov = (self.second / self.count - np.outer(mean, mean)).astype(np.float64)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1][:channels]
        return np.ascontiguousarray(vectors[:, order], dtype=np.float32)


def pca_projection(features: np.ndarray, channels: int) -> np.ndarray:
    """(N, h, w, c) (or (P, c)) nominal features -> (c, channels) float32 top principal directions."""
    array = np.asarray(features)
    if array.ndim < 2 or array.shape[0] < 1 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"features: expected float features (N, ..., c) with N >= 1, got {array.dtype} {array.shape}"
        )
    moments = PixelMoments(array.shape[-1])
    for image in array:
        moments.add(image)
    return moments.directions(channels)


def random_projection(key: jax.Array, in_dim: int, out_dim: int) -> jax.Array:
    """Gaussian (in_dim, out_dim) float32 matrix with N(0, 1/out_dim) entries, from the JAX ``key``."""
    in_dim = check_int("in_dim", in_dim, 1)
    out_dim = check_int("out_dim", out_dim, 1)
    return jax.random.normal(key, (in_dim, out_dim), jnp.float32) / jnp.sqrt(jnp.float32(out_dim))
