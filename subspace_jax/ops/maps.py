"""Anomaly-map post-processing shared by every method: upsample, fuse, blur; the image score.

Per-level maps (B, h_l, w_l) are upsampled bilinearly (half-pixel centres, edges clamped: torch's
``interpolate(mode="bilinear", align_corners=False)``) to the output size (H, W), fused by sum, mean
or product, and smoothed by a Gaussian equal to ``scipy.ndimage.gaussian_filter(mode="reflect",
truncate=4)``. The arguments are explicit (no method config), so ``maps_and_scores_jit`` compiles once
per (output size, fusion, sigma, score fraction) and batch shape, whatever a method's other settings are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
FUSION_MODES = ("sum", "mean", "product")


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ``int(4σ + 0.5)`` (scipy.ndimage's default truncation)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(maps: Array, sigma: float) -> Array:
    """Separable Gaussian smoothing of (B, H, W) maps with reflect padding (scipy's "reflect",
    i.e. the edge sample is repeated: d c b a | a b c d); ``sigma = 0`` returns the maps unchanged.
    Equals ``scipy.ndimage.gaussian_filter(maps[b], sigma)``."""
    if sigma == 0:
        return maps
    kernel = jnp.asarray(gaussian_kernel(sigma))
    radius = kernel.shape[0] // 2
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = jnp.pad(maps, pad, mode="symmetric")
        size = maps.shape[axis]
        # A weighted sum of shifted slices: exact float32, and small next to the backbone at 2R+1 taps.
        maps = sum(
            kernel[t] * jax.lax.slice_in_dim(padded, t, t + size, axis=axis) for t in range(kernel.shape[0])
        )
    return maps


def _ordered(level_maps: Mapping[str, Array] | Sequence[Array]) -> list[Array]:
    # Sorted keys ("level2" < "level3" < ...): the order jit gives a dict, so fusion rounds the same
    # whether or not the caller's dict went through a jit boundary first.
    if isinstance(level_maps, Mapping):
        return [level_maps[key] for key in sorted(level_maps)]
    return list(level_maps)


def fuse_maps(
    level_maps: Mapping[str, Array] | Sequence[Array],
    out_size: tuple[int, int],
    *,
    fusion: str,
    sigma: float,
) -> Array:
    """Level maps -> bilinear upsampling to ``out_size`` -> fusion -> Gaussian blur.

    Args:
      level_maps: {"level<l>": (B, h_l, w_l)} (fused in sorted key order) or a sequence of (B, h_l, w_l).
      out_size: (H, W) of the output maps.
      fusion: "sum", "mean" or "product" of the upsampled maps.
      sigma: Gaussian smoothing in output pixels (0 disables it).

    Returns:
      (B, H, W) float32 maps.
    """
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion: expected one of {FUSION_MODES}, got {fusion!r}")
    maps = _ordered(level_maps)
    if not maps:
        raise ValueError("level_maps: expected at least one level map, got none")
    chex.assert_rank(maps, 3)
    chex.assert_equal_shape_prefix(maps, 1)
    batch = maps[0].shape[0]
    height, width = out_size
    upsampled = [jax.image.resize(m.astype(jnp.float32), (batch, height, width), "bilinear") for m in maps]
    if fusion == "product":
        fused = math.prod(upsampled[1:], start=upsampled[0])
    else:
        fused = sum(upsampled[1:], start=upsampled[0])
        if fusion == "mean":
            fused = fused / len(upsampled)
    return gaussian_blur(fused, sigma)


def image_scores(maps: Array, fraction: float = 0.0) -> Array:
    """(B, H, W) maps -> (B,) image scores: each map's maximum (``fraction = 0``, the paper's score) or the
    mean of its highest ``max(1, round(fraction·H·W))`` pixels (a top-fraction score resists single-pixel
    noise)."""
    chex.assert_rank(maps, 3)
    if fraction == 0:
        return jnp.max(maps, axis=(1, 2))
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a number in [0, 1], got {fraction!r}")
    flat = maps.reshape(maps.shape[0], -1)
    count = max(1, int(round(fraction * flat.shape[1])))
    return jnp.mean(jax.lax.top_k(flat, count)[0], axis=-1)


def maps_and_scores(
    level_maps: Mapping[str, Array] | Sequence[Array],
    out_size: tuple[int, int],
    *,
    fusion: str,
    sigma: float,
    score_fraction: float = 0.0,
) -> tuple[Array, Array]:
    """``fuse_maps`` and the ``image_scores`` of the fused maps: (B, H, W) float32, (B,) float32."""
    maps = fuse_maps(level_maps, out_size, fusion=fusion, sigma=sigma)
    return maps, image_scores(maps, score_fraction)


# The map stages of staged scoring: static in (out_size, fusion, sigma, score_fraction), never a whole
# method config, so another k or λ reuses the compiled map stage.
maps_and_scores_jit = jax.jit(
    maps_and_scores, static_argnums=(1,), static_argnames=("fusion", "sigma", "score_fraction")
)
fuse_maps_jit = jax.jit(fuse_maps, static_argnums=(1,), static_argnames=("fusion", "sigma"))
