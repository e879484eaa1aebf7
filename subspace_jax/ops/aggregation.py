"""Local aggregation of feature maps: each pixel's features replaced by the mean over its neighbourhood.

PatchCore's "locally aware patch features" and ``SubspaceConfig.aggregate`` are this one function. At the
borders the mean is either over the neighbours inside the map (``include_padding=False``) or over the full
window with the padded zeros counted (``include_padding=True``: torch's ``avg_pool2d(size, 1, size // 2)``
with its default ``count_include_pad=True``, which the official PatchCore code matches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from subspace_jax._checks import check_int

__all__ = ["aggregate"]


def aggregate(features: jax.Array, size: int, *, include_padding: bool = False) -> jax.Array:
    """(B, h, w, c) -> (B, h, w, c) float32 mean over each pixel's size × size window (odd ``size``;
    1 returns the features unchanged); jittable."""
    size = check_int("size", size, 1)
    if size % 2 == 0:
        raise ValueError(f"size: expected an odd int >= 1, got {size}")
    if size == 1:
        return features
    x = jnp.asarray(features, jnp.float32)
    window, strides = (1, size, size, 1), (1, 1, 1, 1)
    pad = size // 2
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
    if include_padding:
        return total / float(size * size)
    ones = jnp.ones((1,) + x.shape[1:3] + (1,), jnp.float32)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
    return total / count
