"""SPADE (Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020) in JAX.

Per test image: the K training images nearest in pooled (global-average) features, by Euclidean
distance, form the gallery. At each level, every test pixel's score is the Euclidean distance to its
nearest gallery feature over all positions of the K images' maps at that level (pixel kNN with k = 1).
The per-level maps are upsampled bilinearly to the output size, averaged over levels and Gaussian-
smoothed (sigma 4), as in the paper and the widely used SPADE-pytorch reimplementation.

Image score: SPADE's own, the mean distance to the K nearest pooled training features (not the map
maximum), so the image-level result is the method's published detector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
from jax import lax

from subspace_jax.methods import registry
from subspace_jax.methods.base import BaselineConfig, FittedModel, baseline_scorer, check_features, level_key
from subspace_jax.ops import maps as maps_lib
from subspace_jax.ops.neighbors import nearest_distance, squared_distances

__all__ = ["METHOD", "SpadeConfig", "SpadeModel", "fit_features", "nearest_images"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SpadeConfig(BaselineConfig):
    """SPADE settings. Defaults follow the SPADE paper: K = 50 images, levels 1-3, sigma 4.

    Shared fields (backbone, image_size, crop, levels, sigma, query_chunk, bank_chunk) are described in
    `subspace_jax.methods.base.BaselineConfig`; the levels' distance maps are averaged. Own field:

    Attributes:
      top_k_images: K, the number of nearest training images (by pooled features) in each test image's
        gallery; a training set smaller than K uses all its images.
    """

    method: ClassVar[str] = "spade"

    levels: tuple[int, ...] = (1, 2, 3)
    top_k_images: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_int("top_k_images", 1, 1 << 20)


def nearest_images(test_pooled: Array, train_pooled: Array, k: int) -> tuple[Array, Array]:
    """The k training images nearest each test image in pooled features.

    Args:
      test_pooled: (B, c); train_pooled: (N, c), N >= k.
    Returns:
      (distances (B, k) float32 ascending, indices (B, k) int32).
    """
    test_pooled = jnp.asarray(test_pooled, jnp.float32)
    train_pooled = jnp.asarray(train_pooled, jnp.float32)
    _, idx = lax.top_k(-squared_distances(test_pooled, train_pooled), k)
    # Reported distances directly, not by the expansion: a test image equal to a training one gives 0.
    dist = jnp.sqrt(jnp.sum((train_pooled[idx] - test_pooled[:, None, :]) ** 2, axis=-1))
    return dist, idx.astype(jnp.int32)


def match(model: Any, features: Mapping[str, Array]) -> tuple[dict[str, Array], Array]:
    """The matching stage: per level, each test pixel's distance to its nearest gallery feature.

    Args:
      model: a fitted `SpadeModel`; its config is static.
      features: {"pooled": (B, c), "level<l>": (B, h_l, w_l, c_l)} for the config's levels.
    Returns:
      ({"level<l>": (B, h_l, w_l) distance maps}, scores (B,) float32: the mean distance to the K
      nearest training images).
    """
    config = model.config
    train = model.train_features
    k = min(config.top_k_images, train["pooled"].shape[0])  # static: shapes are static under jit
    knn_dist, knn_idx = nearest_images(features["pooled"], train["pooled"], k)

    level_maps = {}
    for level in config.levels:
        key = level_key(level)
        _, height, width, channels = features[key].shape

        def one_image(args, key=key, height=height, width=width, channels=channels):
            idx, test_map = args
            # One test image at a time, so only one gallery of k images is gathered at once.
            gallery = train[key][idx].reshape(-1, channels)  # (k * h * w, c)
            dist = nearest_distance(
                test_map.reshape(height * width, channels),
                gallery,
                query_chunk=config.query_chunk,
                bank_chunk=config.bank_chunk,
            )
            return dist.reshape(height, width)

        level_maps[key] = lax.map(one_image, (knn_idx, jnp.asarray(features[key], jnp.float32)))
    return level_maps, jnp.mean(knn_dist, axis=1)


def score_features(
    model: Any, features: Mapping[str, Array], *, execution: Any = None
) -> tuple[Array, Array]:
    """Pure scorer: fitted model (a pytree) and backbone features of B images -> maps, scores.

    Args:
      model: a fitted `SpadeModel`; its config is static.
      features: {"pooled": (B, c), "level<l>": (B, h_l, w_l, c_l)} for the config's levels.
      execution: unused (SPADE has no layout options); accepted like every method's scorer.
    Returns:
      maps (B, S, S) float32 (S = config.output_size; per-level distance maps upsampled, averaged and
      smoothed) and scores (B,) float32 (mean distance to the K nearest training images).
    """
    chex.assert_rank(features["pooled"], 2)
    chex.assert_rank([features[level_key(level)] for level in model.config.levels], 4)
    level_maps, scores = match(model, features)
    size = (model.config.output_size, model.config.output_size)
    return maps_lib.fuse_maps(level_maps, size, fusion="mean", sigma=model.config.sigma), scores


def _feature_keys(config: SpadeConfig) -> tuple[str, ...]:
    return ("pooled", *(level_key(level) for level in config.levels))


def _check(model: Any, features: Mapping[str, Any]) -> dict[str, Array]:
    keys = _feature_keys(model.config)
    checked = check_features(features, keys)
    for key in keys:
        if checked[key].shape[1:] != model.train_features[key].shape[1:]:
            raise ValueError(
                f"features[{key!r}]: expected per-image shape {model.train_features[key].shape[1:]} "
                f"as in training, got {checked[key].shape[1:]}"
            )
    return checked


SCORER = baseline_scorer(match, "mean", _feature_keys, _check, score_features)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpadeModel(FittedModel):
    """A fitted SPADE, a pytree: the training features it matches against (leaves) plus static metadata.

    Attributes:
      train_features: {"pooled": (N, c), "level<l>": (N, h_l, w_l, c_l)} float32.
      config, backbone_name, weights_sha256, thresholds: static, as for `PatchCoreModel`.
    """

    train_features: dict[str, Array]
    config: SpadeConfig = dataclasses.field(metadata=dict(static=True))
    backbone_name: str = dataclasses.field(metadata=dict(static=True))
    weights_sha256: str | None = dataclasses.field(metadata=dict(static=True))
    thresholds: Any = dataclasses.field(default=None, metadata=dict(static=True))

    scorer: ClassVar[Any] = SCORER

    @property
    def n_train(self) -> int:
        """N, the number of training images."""
        return int(self.train_features["pooled"].shape[0])

    @property
    def top_k(self) -> int:
        """The gallery size actually used: min(config.top_k_images, n_train)."""
        return min(self.config.top_k_images, self.n_train)


def _fit_inputs(shapes: dict[str, list[int]], config: SpadeConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """For checkpoints: the features ``fit_features`` stores as arrays of these ``shapes``."""
    return {
        key: jax.ShapeDtypeStruct(tuple(shapes[f"train_features/{key}"]), jnp.float32)
        for key in _feature_keys(config)
    }


def fit_features(
    features: Mapping[str, Any],
    config: SpadeConfig,
    *,
    backbone_name: str | None = None,
    weights_sha256: str | None = None,
) -> SpadeModel:
    """Stores the training features {"pooled": (N, c), "level<l>": (N, h_l, w_l, c_l)}; extra keys ignored."""
    if not isinstance(config, SpadeConfig):
        raise ValueError(f"config: expected a SpadeConfig, got {type(config).__name__}")
    return SpadeModel(
        train_features=check_features(features, _feature_keys(config)),
        config=config,
        backbone_name=config.backbone if backbone_name is None else backbone_name,
        weights_sha256=weights_sha256,
    )


METHOD = registry.register(
    registry.Method(
        name="spade",
        config_cls=SpadeConfig,
        model_cls=SpadeModel,
        fit_features=fit_features,
        feature_keys=_feature_keys,
        fit_inputs=_fit_inputs,
    )
)
