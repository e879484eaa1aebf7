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
import numpy as np
from jax import lax

from subspace_jax.engine import batches as batching
from subspace_jax.engine import scorer as scoring
from subspace_jax.methods import common
from subspace_jax.ops import maps as maps_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SpadeConfig(common.BaselineConfig):
    """SPADE settings. Defaults follow the SPADE paper: K = 50 images, levels 1-3, sigma 4.

    Shared fields (backbone, image_size, crop, levels, sigma, query_chunk, bank_chunk) are described in
    `common.BaselineConfig`; the levels' distance maps are averaged. Own field:

    Attributes:
      top_k_images: K, the number of nearest training images (by pooled features) in each test image's
        gallery; a training set smaller than K uses all its images.
    """

    method: ClassVar[str] = "spade"

    levels: tuple[int, ...] = (1, 2, 3)
    top_k_images: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_int("top_k_images", 1)


def nearest_images(test_pooled: Array, train_pooled: Array, k: int) -> tuple[Array, Array]:
    """The k training images nearest each test image in pooled features.

    Args:
      test_pooled: (B, c); train_pooled: (N, c), N >= k.
    Returns:
      (distances (B, k) float32 ascending, indices (B, k) int32).
    """
    test_pooled = jnp.asarray(test_pooled, jnp.float32)
    train_pooled = jnp.asarray(train_pooled, jnp.float32)
    _, idx = lax.top_k(-common.squared_distances(test_pooled, train_pooled), k)
    # Reported distances directly, not by the expansion: a test image equal to a training one gives 0.
    dist = jnp.sqrt(jnp.sum((train_pooled[idx] - test_pooled[:, None, :]) ** 2, axis=-1))
    return dist, idx.astype(jnp.int32)


def match(model: SpadeModel, features: Mapping[str, Array]) -> tuple[dict[str, Array], Array]:
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
        key = common.level_key(level)
        _, height, width, channels = features[key].shape

        def one_image(args, key=key, height=height, width=width, channels=channels):
            idx, test_map = args
            # One test image at a time, so only one gallery of k images is gathered at once.
            gallery = train[key][idx].reshape(-1, channels)  # (k * h * w, c)
            dist, _ = common.nearest_neighbor(
                test_map.reshape(height * width, channels),
                gallery,
                query_chunk=config.query_chunk,
                bank_chunk=config.bank_chunk,
            )
            return dist.reshape(height, width)

        level_maps[key] = lax.map(one_image, (knn_idx, jnp.asarray(features[key], jnp.float32)))
    return level_maps, jnp.mean(knn_dist, axis=1)


def score_features(model: SpadeModel, features: Mapping[str, Array]) -> tuple[Array, Array]:
    """Pure scorer: fitted model (a pytree) and backbone features of B images -> maps, scores.

    Args:
      model: a fitted `SpadeModel`; its config is static.
      features: {"pooled": (B, c), "level<l>": (B, h_l, w_l, c_l)} for the config's levels.
    Returns:
      maps (B, S, S) float32 (S = config.output_size; per-level distance maps upsampled, averaged and
      smoothed) and scores (B,) float32 (mean distance to the K nearest training images).
    """
    chex.assert_rank(features["pooled"], 2)
    chex.assert_rank([features[common.level_key(level)] for level in model.config.levels], 4)
    level_maps, scores = match(model, features)
    size = (model.config.output_size, model.config.output_size)
    return maps_lib.fuse_maps(level_maps, size, fusion="mean", sigma=model.config.sigma), scores


def score_images(model: SpadeModel, apply_fn: Any, params: Any, images: Array) -> tuple[Array, Array]:
    """Pure scorer on images, backbone included (`apply_fn, params = backbone.pure()`), for a user's jit.

    images: (B, S, S, 3) uint8 or float in [0, 255] -> maps (B, S, S) float32, scores (B,) float32.
    """
    chex.assert_rank(images, 4)
    return score_features(model, apply_fn(params, images))


_score_features_jit = jax.jit(score_features)
_score_images_jit = jax.jit(score_images, static_argnums=(1,))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpadeModel(batching.BackboneBinding):
    """A fitted SPADE, a pytree: the training features it matches against (leaves) plus static metadata.

    Attributes:
      train_features: {"pooled": (N, c), "level<l>": (N, h_l, w_l, c_l)} float32.
      config, backbone_name, weights_sha256: static, as for `PatchCoreModel`.
    """

    train_features: dict[str, Array]
    config: SpadeConfig = dataclasses.field(metadata=dict(static=True))
    backbone_name: str = dataclasses.field(metadata=dict(static=True))
    weights_sha256: str | None = dataclasses.field(metadata=dict(static=True))

    @property
    def n_train(self) -> int:
        """N, the number of training images."""
        return int(self.train_features["pooled"].shape[0])

    @property
    def top_k(self) -> int:
        """The gallery size actually used: min(config.top_k_images, n_train)."""
        return min(self.config.top_k_images, self.n_train)

    def score_features(self, features: Mapping[str, Any]) -> tuple[Array, Array]:
        """Backbone features of B images -> (maps (B, S, S) float32, scores (B,) float32); jitted."""
        keys = _feature_keys(self.config)
        checked = common.check_features(features, keys)
        for key in keys:
            if checked[key].shape[1:] != self.train_features[key].shape[1:]:
                raise ValueError(
                    f"features[{key!r}]: expected per-image shape {self.train_features[key].shape[1:]} "
                    f"as in training, got {checked[key].shape[1:]}"
                )
        return _score_features_jit(self, checked)

    def score(
        self,
        images: Any,
        batch_size: int = 8,
        *,
        backbone: Any = None,
        timings: dict[str, float] | None = None,
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Maps (N, S, S) float32 and scores (N,) float32 of `images`, in batches, as numpy arrays.

        `images`, `backbone` and `timings` as for `PatchCoreModel.score`.
        """
        return scoring.score_in_batches(
            SCORER,
            self,
            images,
            batch_size=batch_size,
            backbone=backbone,
            timings=timings,
            progress=progress,
            desc="SPADE score",
        )


def _feature_keys(config: SpadeConfig) -> list[str]:
    return ["pooled", *(common.level_key(level) for level in config.levels)]


SCORER = common.staged_scorer(jax.jit(match), "mean", _feature_keys, _score_images_jit)


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
        train_features=common.check_features(features, _feature_keys(config)),
        config=config,
        backbone_name=config.backbone if backbone_name is None else backbone_name,
        weights_sha256=weights_sha256,
    )


def fit(
    images: Any, config: SpadeConfig, backbone: Any = None, *, batch_size: int = 8, progress: bool = True
) -> SpadeModel:
    """Fits on nominal `images` (uint8 (N, S, S, 3), iterable of batches, or paths); returns the model
    bound to `backbone` (loaded by `config.backbone` when None)."""
    if not isinstance(config, SpadeConfig):
        raise ValueError(f"config: expected a SpadeConfig, got {type(config).__name__}")
    features, backbone = common.extract_features(
        images, config, backbone, _feature_keys(config), batch_size, progress, "SPADE fit"
    )
    model = fit_features(
        features, config, backbone_name=backbone.name, weights_sha256=backbone.weights_sha256
    )
    return model.bind(backbone)
