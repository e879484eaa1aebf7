"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022) in JAX.

Patch embedding (what this module does, and where it differs from the official code):

* Each chosen level's map (N, h_l, w_l, c_l) is averaged over its 3x3 neighbourhood with stride 1 and
  zero padding 1, the padded zeros counted in the average (torch ``avg_pool2d(3, 1, 1)`` with its default
  ``count_include_pad=True``). The official code (amazon-science/patchcore-inspection) unfolds 3x3
  patches with zero padding and then averages each flattened (c_l * 9) patch down to a fixed
  ``pretrain_embed_dimension`` with ``adaptive_avg_pool1d``; when that dimension equals c_l the two are
  identical, zeros included. We keep all c_l channels (no per-level or final adaptive pooling to 1024),
  so the embedding dimension is the sum of the levels' channels (1536 for WRN50 levels 2+3).
* Coarser levels are upsampled bilinearly (half-pixel centres, torch ``align_corners=False``) to the
  finest chosen level's grid, and the levels are concatenated along channels.

Memory bank: greedy k-center coreset (Sener & Savarese) on a Gaussian random projection (Johnson-
Lindenstrauss) of the patch embeddings to ``projection_dim``; it starts from one seeded random patch,
which is part of the coreset, and adds ``n - 1`` farthest points. (The official sampler does not keep its
random start and averages distances to 10 random starts; the greedy rule afterwards is the same.)

Scoring: each test patch's Euclidean distance to its nearest bank patch (chunked, bounded memory) is
its anomaly score; the map is those scores upsampled to the output size and Gaussian-smoothed
(sigma 4); the image score is the largest patch score, optionally reweighted by the paper's Eq. (7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
from jax import lax

from subspace_jax._checks import is_number
from subspace_jax.methods import registry
from subspace_jax.methods.base import BaselineConfig, FittedModel, baseline_scorer, check_features, level_key
from subspace_jax.ops import maps as maps_lib
from subspace_jax.ops.aggregation import aggregate
from subspace_jax.ops.kcenter import kcenter
from subspace_jax.ops.neighbors import nearest_distance, nearest_neighbor, squared_distances
from subspace_jax.ops.projection import random_projection

__all__ = [
    "METHOD",
    "PatchCoreConfig",
    "PatchCoreModel",
    "fit_features",
    "patch_embeddings",
    "select_coreset",
]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PatchCoreConfig(BaselineConfig):
    """PatchCore settings. Defaults follow the paper (WRN50, levels 2+3, 10% coreset, sigma 4).

    Shared fields (backbone, image_size, crop, levels, sigma, query_chunk, bank_chunk) are described in
    `subspace_jax.methods.base.BaselineConfig`; coarser levels are upsampled to the first (finest) one.
    Own fields:

    Attributes:
      coreset_ratio: fraction of training patches kept in the memory bank, in (0, 1].
      projection_dim: dimension of the random projection used only for coreset selection; None, or a
        value >= the embedding dimension, selects on the raw embeddings.
      reweight: apply PatchCore's image-score reweighting (Eq. 7) instead of the plain maximum.
      num_neighbors: b in Eq. 7, the size of the bank neighbourhood of the nearest memory patch.
      seed: seeds the projection and the coreset's starting patch.
    """

    method: ClassVar[str] = "patchcore"

    coreset_ratio: float = 0.1
    projection_dim: int | None = 128
    reweight: bool = False
    num_neighbors: int = 9
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_number(self.coreset_ratio) or not 0.0 < self.coreset_ratio <= 1.0:
            self._fail("coreset_ratio", "a number in (0, 1]")
        object.__setattr__(self, "coreset_ratio", float(self.coreset_ratio))
        if self.projection_dim is not None:
            self._check_int("projection_dim", 1, 1 << 16)
        self._check_bool("reweight")
        self._check_int("num_neighbors", 1, 1 << 16)
        self._check_seed("seed")


# --- patch embedding ------------------------------------------------------------------------------------


def patch_embeddings(features: Mapping[str, Array], levels: tuple[int, ...]) -> Array:
    """Locally aware patch features: (B, h, w, sum of c_l) on the grid of the first level in `levels`.

    Each level's map is averaged over its 3x3 neighbourhood with the padded zeros counted
    (`subspace_jax.ops.aggregation.aggregate(..., include_padding=True)`), coarser levels are upsampled
    bilinearly to the first level's grid, and the levels are concatenated along channels.

    Args:
      features: backbone dict with "level<l>" maps (B, h_l, w_l, c_l) for every l in `levels`.
      levels: strictly increasing level numbers.
    """
    maps = [
        aggregate(jnp.asarray(features[level_key(level)], jnp.float32), 3, include_padding=True)
        for level in levels
    ]
    batch, height, width, _ = maps[0].shape
    resized = [
        m
        if m.shape[1:3] == (height, width)
        else jax.image.resize(m, (batch, height, width, m.shape[3]), method="bilinear", antialias=False)
        for m in maps
    ]
    return jnp.concatenate(resized, axis=-1)


# --- coreset --------------------------------------------------------------------------------------------


def coreset_size(n_points: int, ratio: float) -> int:
    """Number of bank patches kept: int(n_points * ratio), at least 1."""
    return max(1, int(n_points * ratio))


def select_coreset(points: Array, ratio: float, projection_dim: int | None, seed: int) -> Array:
    """Coreset indices (n,) int32 of `points` (M, d): seeded start and projection, then greedy k-center.

    The key `jax.random.key(seed)` splits into (start key, projection key); the start is
    `randint(start key, 0, M)` and the projection `random_projection(projection key, d, projection_dim)`,
    skipped when `projection_dim` is None or >= d; the selection is the one greedy k-center
    (`subspace_jax.ops.kcenter`). A ratio giving n = M returns arange(M).
    """
    n_points, dim = points.shape
    n_select = coreset_size(n_points, ratio)
    if n_select == n_points:  # ratio 1 keeps every patch: nothing to select
        return jnp.arange(n_points, dtype=jnp.int32)
    start_key, proj_key = jax.random.split(jax.random.key(seed))
    start = jax.random.randint(start_key, (), 0, n_points, dtype=jnp.int32)
    if projection_dim is not None and projection_dim < dim:
        points = jnp.matmul(
            points, random_projection(proj_key, dim, projection_dim), precision=lax.Precision.HIGHEST
        )
    return kcenter(points, n_select, start)


# --- scoring --------------------------------------------------------------------------------------------


def reweighted_scores(
    embeddings: Array, patch_scores: Array, nearest: Array, bank: Array, num_neighbors: int
) -> Array:
    """PatchCore Eq. (7): s = (1 - exp(s*) / sum_{m in N_b(m*)} exp(||m_test* - m||)) * s*.

    m_test* is the test patch with the largest score s*, m* its nearest bank patch, N_b(m*) the b bank
    patches nearest to m* (m* itself included, as in anomalib's implementation).

    Args:
      embeddings: (B, P, C) test patch embeddings; patch_scores: (B, P) nearest-bank distances;
      nearest: (B, P) int32 index of each patch's nearest bank patch; bank: (M, C).
    Returns:
      (B,) image scores.
    """
    b = min(num_neighbors, bank.shape[0])
    worst = jnp.argmax(patch_scores, axis=1)
    s_star = jnp.take_along_axis(patch_scores, worst[:, None], axis=1)[:, 0]
    m_test = jnp.take_along_axis(embeddings, worst[:, None, None], axis=1)[:, 0]
    m_star = bank[jnp.take_along_axis(nearest, worst[:, None], axis=1)[:, 0]]
    _, support = lax.top_k(-squared_distances(m_star, bank), b)  # (B, b)
    support_dist = jnp.sqrt(jnp.sum((bank[support] - m_test[:, None, :]) ** 2, axis=-1))  # (B, b)
    weight = 1.0 - jnp.exp(s_star - jax.nn.logsumexp(support_dist, axis=1))
    return weight * s_star


def match(model: Any, features: Mapping[str, Array]) -> tuple[dict[str, Array], Array]:
    """The matching stage: each test patch's distance to its nearest bank patch.

    Args:
      model: a fitted `PatchCoreModel`; its config is static.
      features: {"level<l>": (B, h_l, w_l, c_l)} for the config's levels.
    Returns:
      ({"level<l0>": (B, h, w) patch scores on the finest level's grid}, image scores (B,) float32).
    """
    config = model.config
    bank = model.bank
    emb = patch_embeddings(features, config.levels)
    batch, height, width, channels = emb.shape
    if channels != bank.shape[1]:  # static: caught at trace time, before the distance products
        keys = [level_key(level) for level in config.levels]
        found = {key: tuple(features[key].shape) for key in keys}
        raise ValueError(
            f"features: the levels' channels sum to {channels} but the memory bank holds {bank.shape[1]}-"
            f"dimensional patches; got {found}: were they made by the backbone the model was fit with?"
        )
    flat = emb.reshape(batch * height * width, channels)
    chunks = {"query_chunk": config.query_chunk, "bank_chunk": config.bank_chunk}
    if config.reweight:  # Eq. (7) needs the nearest bank patch's index
        dist, nearest = nearest_neighbor(flat, bank, **chunks)
        patch_scores = dist.reshape(batch, height * width)
        scores = reweighted_scores(
            flat.reshape(batch, height * width, channels),
            patch_scores,
            nearest.reshape(batch, height * width),
            bank,
            config.num_neighbors,
        )
    else:
        patch_scores = nearest_distance(flat, bank, **chunks).reshape(batch, height * width)
        scores = jnp.max(patch_scores, axis=1)
    return {level_key(config.levels[0]): patch_scores.reshape(batch, height, width)}, scores


def score_features(
    model: Any, features: Mapping[str, Array], *, execution: Any = None
) -> tuple[Array, Array]:
    """Pure scorer: fitted model (a pytree) and backbone features of B images -> maps, scores.

    Args:
      model: a fitted `PatchCoreModel`; its config is static.
      features: {"level<l>": (B, h_l, w_l, c_l)} for the config's levels.
      execution: unused (PatchCore has no layout options); accepted like every method's scorer.
    Returns:
      maps (B, S, S) float32 (S = config.output_size) and scores (B,) float32.
    """
    chex.assert_rank([features[key] for key in _feature_keys(model.config)], 4)
    patch_map, scores = match(model, features)
    size = (model.config.output_size, model.config.output_size)
    return maps_lib.fuse_maps(patch_map, size, fusion="sum", sigma=model.config.sigma), scores


def _feature_keys(config: PatchCoreConfig) -> tuple[str, ...]:
    return tuple(level_key(level) for level in config.levels)


def _check(model: Any, features: Mapping[str, Any]) -> dict[str, Array]:
    return check_features(features, _feature_keys(model.config))


SCORER = baseline_scorer(match, "sum", _feature_keys, _check, score_features)


# --- model ----------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PatchCoreModel(FittedModel):
    """A fitted PatchCore, a pytree: the memory bank (leaf) plus static metadata.

    Attributes:
      bank: (M, C) float32 coreset of training patch embeddings, C = sum of the levels' channels.
      config: the `PatchCoreConfig` (static).
      backbone_name, weights_sha256: the backbone that produced the features (static); a
        weights_sha256 of None means unknown, and scoring images then needs ``backbone=``.
      n_train: number of training images (static).
      thresholds: ``Thresholds`` for ``predict``, None until calibrated (static).
    """

    bank: Array
    config: PatchCoreConfig = dataclasses.field(metadata=dict(static=True))
    backbone_name: str = dataclasses.field(metadata=dict(static=True))
    weights_sha256: str | None = dataclasses.field(metadata=dict(static=True))
    n_train: int = dataclasses.field(metadata=dict(static=True))
    thresholds: Any = dataclasses.field(default=None, metadata=dict(static=True))

    scorer: ClassVar[Any] = SCORER


def fit_features(
    features: Mapping[str, Any],
    config: PatchCoreConfig,
    *,
    backbone_name: str | None = None,
    weights_sha256: str | None = None,
) -> PatchCoreModel:
    """Builds the memory bank from training features {"level<l>": (N, h_l, w_l, c_l)}; extra keys ignored.

    All N * h * w patch embeddings are computed at once, then coreset-subsampled.
    """
    if not isinstance(config, PatchCoreConfig):
        raise ValueError(f"config: expected a PatchCoreConfig, got {type(config).__name__}")
    checked = check_features(features, _feature_keys(config))
    emb = patch_embeddings(checked, config.levels)
    flat = emb.reshape(-1, emb.shape[-1])
    indices = select_coreset(flat, config.coreset_ratio, config.projection_dim, config.seed)
    return PatchCoreModel(
        bank=flat[indices],
        config=config,
        backbone_name=config.backbone if backbone_name is None else backbone_name,
        weights_sha256=weights_sha256,
        n_train=int(emb.shape[0]),
    )


METHOD = registry.register(
    registry.Method(
        name="patchcore",
        config_cls=PatchCoreConfig,
        model_cls=PatchCoreModel,
        fit_features=fit_features,
        feature_keys=_feature_keys,
        fit_inputs=None,  # the bank keeps a coreset of patches, not the feature maps it came from
    )
)
