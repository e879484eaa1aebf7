"""Plumbing shared by the memory-bank baselines: their config base, chunked nearest-neighbour search,
feature checks and feature extraction.

Everything numerical here is pure JAX with static shapes. Maps go through the same post-processing as
the subspace model (:mod:`subspace_jax.maps`: bilinear upsampling, level fusion, Gaussian blur), images
through the same batching, padding and backbone checks (:mod:`subspace_jax.batching`), and scoring
through the same staged scorer (:mod:`subspace_jax.scoring`), so baselines and the subspace model are
fed, post-processed and timed identically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from subspace_jax.engine import batches as batching
from subspace_jax.engine import scorer as scoring
from subspace_jax.methods.base import BaseConfig, level_key
from subspace_jax.ops import maps as maps_lib

__all__ = [
    "BaselineConfig",
    "check_features",
    "extract_features",
    "level_key",
    "nearest_neighbor",
    "squared_distances",
    "staged_scorer",
]

Array = jax.Array

# Squared distances by ||a||^2 + ||b||^2 - 2ab lose digits to cancellation; on GPUs the default matmul
# precision (TF32) would make that worse, so the cross term is always computed at full float32 precision.
_DOT_PRECISION = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class BaselineConfig(BaseConfig):
    """Fields and checks every baseline config shares (frozen, hashable: static under jit).

    Attributes:
      backbone: one of `subspace_jax.model.BACKBONE_NAMES`.
      image_size, crop: input resolution, as for `subspace_jax.Config` (maps are `crop or image_size`).
      levels: backbone levels used (1..4); like the model's, any sequence of distinct levels, stored sorted.
      sigma: Gaussian smoothing of the maps in output pixels (0 disables it).
      query_chunk, bank_chunk: nearest-neighbour search block sizes; the search never holds more than a
        (query_chunk, bank_chunk) float32 distance block.
    """

    query_chunk: int = 2048
    bank_chunk: int = 8192

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_int("query_chunk", 1)
        self._check_int("bank_chunk", 1)


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
    batching.check_finite_features(out, name)
    return out


def squared_distances(queries: Array, bank: Array) -> Array:
    """Squared Euclidean distances (Q, M) of queries (Q, d) to bank rows (M, d), float32, clamped at 0.

    For ranking: computed by expansion on data centred at the bank mean (see `nearest_neighbor`);
    recompute the distances that are reported directly.
    """
    centre = jnp.mean(bank, axis=0)
    queries = queries - centre
    bank = bank - centre
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
    q_chunk = max(1, min(query_chunk, n_query))
    b_chunk = max(1, min(bank_chunk, n_bank))
    n_q_chunks = -(-n_query // q_chunk)
    n_b_chunks = -(-n_bank // b_chunk)

    q_pad = jnp.pad(queries, ((0, n_q_chunks * q_chunk - n_query), (0, 0)))
    b_pad = jnp.pad(bank - centre, ((0, n_b_chunks * b_chunk - n_bank), (0, 0)))
    b_sq = jnp.sum(b_pad * b_pad, axis=-1)
    # Padded bank rows get an infinite norm so they can never be the minimum.
    b_sq = jnp.where(jnp.arange(b_pad.shape[0]) < n_bank, b_sq, jnp.inf)
    bank_blocks = b_pad.reshape(n_b_chunks, b_chunk, dim)
    bank_sq_blocks = b_sq.reshape(n_b_chunks, b_chunk)
    offsets = jnp.arange(n_b_chunks, dtype=jnp.int32) * b_chunk

    def one_query_chunk(raw_q: Array) -> tuple[Array, Array]:
        q = raw_q - centre
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
        diff = raw_q - bank[best_idx]  # the uncentred inputs: duplicates give exactly 0
        return jnp.sqrt(jnp.sum(diff * diff, axis=-1)), best_idx

    dist, idx = lax.map(one_query_chunk, q_pad.reshape(n_q_chunks, q_chunk, dim))
    return dist.reshape(-1)[:n_query], idx.reshape(-1)[:n_query]


def extract_features(
    images: Any,
    config: BaselineConfig,
    backbone: Any,
    keys: Sequence[str],
    batch_size: int,
    progress: bool,
    desc: str,
) -> tuple[dict[str, np.ndarray], Any]:
    """Backbone features `keys` of `images` by `subspace_jax.batching.extract_features` (batched, padded).

    `backbone` None loads `config.backbone`. Returns (features, the backbone used).
    """
    if backbone is None:
        from subspace_jax import backbones

        backbone = backbones.load(config.backbone)
    features = batching.extract_features(
        images, config, backbone, tuple(keys), batch_size=batch_size, progress=progress, desc=desc
    )
    return features, backbone


def staged_scorer(
    match_jit: Callable, fusion: str, feature_keys: Callable[[Any], Sequence[str]], score_images_jit: Callable
) -> scoring.StagedScorer:
    """A baseline's two scoring stages: "matching", ``match_jit(model, features) -> (level maps
    {"level<l>": (B, h_l, w_l)}, scores (B,))``, then "maps", the level maps fused into (B, S, S) by
    ``subspace_jax.maps.fuse_maps`` (``fusion``, the config's sigma)."""

    def matching(model: Any, features: Mapping[str, Array]) -> tuple[dict[str, Array], Array]:
        return match_jit(model, features)

    def maps(model: Any, carry: tuple[dict[str, Array], Array]) -> tuple[Array, Array]:
        level_maps, scores = carry
        size = (model.config.output_size, model.config.output_size)
        return maps_lib.fuse_maps_jit(level_maps, size, fusion=fusion, sigma=model.config.sigma), scores

    return scoring.StagedScorer(
        stages=(("matching", matching), ("maps", maps)),
        feature_keys=lambda model: tuple(feature_keys(model.config)),
        score_images=score_images_jit,
    )
