"""Greedy k-center (Gonzalez): the one coreset selection, for image coresets and PatchCore's patch bank.

Each pick after the first is the point farthest (Euclidean) from every point picked so far, so every
point ends close to a picked one. Distances to a pick come from ||p||² + ||x||² − 2 p·x on points
centred at their mean (a full-precision matrix-vector product: one pass over the points per pick, about
3x faster on CPU than differencing at 779k × 128; centring shrinks the norms whose cancellation costs
digits), and each point's distance to the picked set is the running minimum. Ties go to the lowest
index. On MTD's 761 pooled vectors this picks exactly the indices a float64 numpy loop picks.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from subspace_jax._checks import check_int

__all__ = ["kcenter"]


def _first_argmax(values: jax.Array) -> jax.Array:
    """``jnp.argmax(values)`` for a (N,) float vector without NaN: the lowest index of the maximum.
    A maximum, then the lowest index that holds it, are two reductions XLA's CPU backend vectorises; its
    argmax is a scalar loop, 3.5 ms of the ~25 ms a pick takes at 779k points."""
    top = jnp.max(values)
    index = jnp.where(values == top, jnp.arange(values.shape[0], dtype=jnp.int32), values.shape[0])
    return jnp.min(index)


@partial(jax.jit, static_argnames=("m",))
def _kcenter(points: jax.Array, m: int, start: jax.Array) -> jax.Array:
    points = jnp.asarray(points, jnp.float32)
    points = points - jnp.mean(points, axis=0)
    sq_norms = jnp.sum(points * points, axis=-1)

    def sq_dist_to(index: jax.Array) -> jax.Array:
        cross = jnp.matmul(points, points[index], precision=lax.Precision.HIGHEST)
        return jnp.maximum(sq_norms + sq_norms[index] - 2.0 * cross, 0.0)

    selected = jnp.zeros((m,), jnp.int32).at[0].set(start)

    def pick(i, carry):
        selected, min_dist = carry
        nxt = _first_argmax(min_dist)
        return selected.at[i].set(nxt), jnp.minimum(min_dist, sq_dist_to(nxt))

    selected, _ = lax.fori_loop(1, m, pick, (selected, sq_dist_to(start)))
    return selected


def kcenter(points: jax.Array, m: int, start: int | jax.Array = 0) -> jax.Array:
    """``m`` distinct row indices of ``points`` (N, ...) in pick order, the first ``start``.

    Args:
      points: (N, ...) float; rows are flattened to vectors.
      m: how many to pick, 1 <= m <= N.
      start: the first pick (PatchCore draws it at random; image coresets start from row 0).

    Returns:
      (m,) int32 indices.
    """
    points = jnp.asarray(points)
    if points.ndim < 1 or points.shape[0] < 1:
        raise ValueError(f"points: expected (N, ...) with N >= 1, got shape {points.shape}")
    n = points.shape[0]
    m = check_int("m", m, 1, n)
    return _kcenter(points.reshape(n, -1), m, jnp.asarray(start, jnp.int32))
