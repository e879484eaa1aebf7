"""Plumbing shared by the memory-bank baselines: chunked nearest-neighbour search, input checks, and
thin adapters onto :mod:`subspace_jax.model`'s map post-processing, batching and backbone binding.

Everything numerical here is pure JAX with static shapes. Maps go through the model's own
``fuse_maps`` (bilinear upsampling, level fusion, Gaussian blur) and images through the model's
batching, padding and backbone checks, so baselines and the subspace model are post-processed and fed
identically.
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

from subspace_jax import model as model_lib

Array = jax.Array

# Squared distances by ||a||^2 + ||b||^2 - 2ab lose digits to cancellation; on GPUs the default matmul
# precision (TF32) would make that worse, so the cross term is always computed at full float32 precision.
_DOT_PRECISION = lax.Precision.HIGHEST


level_key = model_lib.level_key


def validate_common(
    *,
    backbone: str,
    image_size: int,
    crop: int | None,
    levels: Sequence[int],
    sigma: float,
) -> None:
    """Checks the fields every baseline config shares; raises ValueError naming the field."""
    if backbone not in model_lib.BACKBONE_NAMES:
        raise ValueError(f"backbone: expected one of {model_lib.BACKBONE_NAMES}, got {backbone!r}")
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

    The search ranks by ||q||^2 + ||b||^2 - 2 q.b on data centred at the bank mean (distances are
    translation-invariant; centring shrinks the norms whose cancellation costs digits), and the returned
    distance is recomputed directly as ||q - b_nearest||, so it is accurate even when tiny.
    """
    queries = jnp.asarray(queries, jnp.float32)
    bank = jnp.asarray(bank, jnp.float32)
    if queries.ndim != 2:
        raise ValueError(f"queries: expected shape (Q, d), got {queries.shape}")
    n_query, dim = queries.shape
    if bank.ndim != 2 or bank.shape[1] != dim or bank.shape[0] == 0:
        raise ValueError(f"bank: expected shape (M>=1, {dim}), got {bank.shape}")
    n_bank = bank.shape[0]
    centre = jnp.mean(bank, axis=0)
    queries = queries - centre
    bank = bank - centre
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
        (_, best_idx), _ = lax.scan(scan_bank, init, (bank_blocks, bank_sq_blocks, offsets))
        diff = q - bank[best_idx]
        return jnp.sqrt(jnp.sum(diff * diff, axis=-1)), best_idx

    dist, idx = lax.map(one_query_chunk, q_pad.reshape(n_q_chunks, q_chunk, dim))
    return dist.reshape(-1)[:n_query], idx.reshape(-1)[:n_query]


def output_size(image_size: int, crop: int | None) -> int:
    """Side of the square maps: the crop if there is one, else the resized image size."""
    return crop if crop is not None else image_size


def fuse_level_maps(level_maps: Mapping[str, Array], config: Any, fusion: str) -> Array:
    """Level maps {"level<l>": (B, h_l, w_l)} -> (B, S, S) through the model's ``fuse_maps``.

    Bilinear upsampling to S = config.output_size, fusion ("sum" | "mean" | "product"), Gaussian blur
    with config.sigma: exactly the subspace model's post-processing. `config` is a baseline config.
    """
    levels = tuple(int(key.removeprefix("level")) for key in level_maps)
    map_config = model_lib.Config(
        backbone=config.backbone,
        image_size=config.image_size,
        crop=config.crop,
        levels=levels,
        sampling="none",
        fusion=fusion,
        sigma=config.sigma,
    )
    size = config.output_size
    maps, _ = model_lib.fuse_maps(level_maps, (size, size), map_config)
    return maps


class BackboneBinding:
    """Backbone handling of a fitted baseline, borrowed from ``subspace_jax.model.Model``.

    The subclass needs `backbone_name`, `weights_sha256` and `config`; `bind(backbone)` checks the
    backbone's name and weights hash against them, and `score` uses the bound one (or loads it by name).
    """

    bind = model_lib.Model.bind
    _bound_backbone = model_lib.Model._bound_backbone


def check_fit_backbone(backbone: Any, config: Any) -> Any:
    """The backbone to fit with: `backbone`, or `backbones.load(config.backbone)`; names must agree."""
    if backbone is None:
        from subspace_jax import backbones

        backbone = backbones.load(config.backbone)
    if backbone.name != config.backbone:
        raise ValueError(
            f"backbone: config.backbone is {config.backbone!r} but the backbone given is {backbone.name!r}"
        )
    return backbone


def extract_features(
    backbone: Any, images: Any, config: Any, keys: Sequence[str], batch_size: int, progress: bool, desc: str
) -> dict[str, np.ndarray]:
    """Backbone features `keys` of `images` (array, iterable of batches or paths), batch by batch.

    Uses the model's batching (short last batch padded, one compilation) and jitted extraction.
    """
    positive_int("batch_size", batch_size)
    bound = model_lib._BoundBackbone.of(backbone)
    keys = tuple(keys)
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for batch in model_lib._progress(model_lib._iter_batches(images, config, batch_size), progress, desc):
        n = batch.shape[0]
        out = model_lib._extract_jit(bound.apply_fn, keys, bound.params, model_lib._pad_batch(batch, batch_size))
        for key in keys:
            chunks[key].append(np.asarray(out[key][:n]))
    if not chunks[keys[0]]:
        raise ValueError("images: expected at least one image, got none")
    return {key: np.concatenate(value) for key, value in chunks.items()}


def score_in_batches(
    fitted: Any,
    images: Any,
    batch_size: int,
    backbone: Any,
    progress: bool,
    score_images_jit: Any,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs `score_images_jit(fitted, apply_fn, params, batch)` over padded batches of `images`.

    Returns numpy maps (N, S, S) float32 and scores (N,) float32.
    """
    positive_int("batch_size", batch_size)
    bound = fitted._bound_backbone(backbone)
    maps, scores = [], []
    for batch in model_lib._progress(model_lib._iter_batches(images, fitted.config, batch_size), progress, desc):
        n = batch.shape[0]
        batch_maps, batch_scores = score_images_jit(
            fitted, bound.apply_fn, bound.params, model_lib._pad_batch(batch, batch_size)
        )
        maps.append(np.asarray(batch_maps[:n], np.float32))
        scores.append(np.asarray(batch_scores[:n], np.float32))
    if not maps:
        raise ValueError("images: expected at least one image, got none")
    return np.concatenate(maps), np.concatenate(scores)


