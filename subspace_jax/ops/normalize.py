"""Normalisations of score maps by statistics of nominal (defect-free) values, pure JAX.

``zscore`` divides by a floored standard deviation; ``quantile_transform`` is the empirical distribution
function of nominal values, continued linearly beyond their range so it stays strictly increasing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["quantile_transform", "zscore"]

Array = jax.Array


def _spread(stats: Array) -> Array:
    """The std of ``stats = (mean, std)``, floored (a constant held-out value would divide by 0)."""
    return jnp.maximum(stats[1], jnp.maximum(1e-6 * jnp.abs(stats[0]), 1e-12))


def zscore(values: Array, stats: Array) -> Array:
    """``(values - mean) / std`` with ``stats = (mean, std)`` (the std floored as in ``_spread``)."""
    return (values - stats[0]) / _spread(stats)


def quantile_transform(values: Array, quantiles: Array, tail: int = 10) -> Array:
    """The empirical distribution function of the held-out values, ``quantiles`` (Q,) at probabilities
    ``linspace(0, 1, Q)``: linear between them, and beyond the first and last continued linearly with
    the slope over the outer ``tail`` steps (so the transform stays strictly increasing there)."""
    count = quantiles.shape[0]
    probs = jnp.linspace(0.0, 1.0, count, dtype=jnp.float32)
    low, high = quantiles[0], quantiles[-1]
    step = tail / (count - 1)
    slope_low = step / jnp.maximum(quantiles[tail] - low, 1e-12)
    slope_high = step / jnp.maximum(high - quantiles[count - 1 - tail], 1e-12)
    inside = jnp.interp(values, quantiles, probs)
    below = (values - low) * slope_low
    above = 1.0 + (values - high) * slope_high
    return jnp.where(values < low, below, jnp.where(values > high, above, inside))
