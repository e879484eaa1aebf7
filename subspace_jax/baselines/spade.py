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
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from subspace_jax.baselines import common

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SpadeConfig:
    """SPADE settings. Defaults follow the SPADE paper: K = 50 images, levels 1-3, sigma 4.

    Attributes:
      backbone, image_size, crop: as for the subspace model.
      levels: backbone levels whose distance maps are averaged (strictly increasing).
      top_k_images: K, the number of nearest training images (by pooled features) in each test image's
        gallery; a training set smaller than K uses all its images.
      sigma: Gaussian smoothing of the maps, in output pixels (0 disables it).
      query_chunk, bank_chunk: nearest-neighbour search block sizes (bounded memory).
    """

    method: ClassVar[str] = "spade"

    backbone: str = "wide_resnet50_2"
    image_size: int = 256
    crop: int | None = None
    levels: tuple[int, ...] = (1, 2, 3)
    top_k_images: int = 50
    sigma: float = 4.0
    query_chunk: int = 2048
    bank_chunk: int = 8192

    def __post_init__(self) -> None:
        common.validate_common(
            backbone=self.backbone,
            image_size=self.image_size,
            crop=self.crop,
            levels=self.levels,
            sigma=self.sigma,
        )
        common.positive_int("top_k_images", self.top_k_images)
        common.positive_int("query_chunk", self.query_chunk)
        common.positive_int("bank_chunk", self.bank_chunk)

    @property
    def output_size(self) -> int:
        return common.output_size(self.image_size, self.crop)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, with the method name, for results files."""
        return {"method": self.method, **dataclasses.asdict(self)}


def nearest_images(test_pooled: Array, train_pooled: Array, k: int) -> tuple[Array, Array]:
    """The k training images nearest each test image in pooled features.

    Args:
      test_pooled: (B, c); train_pooled: (N, c), N >= k.
    Returns:
      (distances (B, k) float32 ascending, indices (B, k) int32).
    """
    d2 = common.squared_distances(jnp.asarray(test_pooled, jnp.float32), jnp.asarray(train_pooled, jnp.float32))
    neg_d2, idx = lax.top_k(-d2, k)
    return jnp.sqrt(-neg_d2), idx.astype(jnp.int32)


@partial(jax.jit, static_argnames=("config", "k"))
def score_spade_features(
    train: Mapping[str, Array], features: Mapping[str, Array], config: SpadeConfig, k: int
) -> tuple[Array, Array]:
    """Pure scorer: training features and test features of B images -> (maps (B, S, S), scores (B,)).

    Args:
      train: {"pooled": (N, c), "level<l>": (N, h_l, w_l, c_l)} of the training images.
      features: the same keys for B test images.
      config: static settings; k: static number of gallery images (<= N).
    """
    knn_dist, knn_idx = nearest_images(features["pooled"], train["pooled"], k)
    size = config.output_size

    def one_image(args):
        idx, test_maps = args
        level_maps = []
        for level in config.levels:
            key = common.level_key(level)
            gallery = train[key][idx]  # (k, h, w, c)
            height, width, channels = test_maps[key].shape
            dist, _ = common.nearest_neighbor(
                test_maps[key].reshape(height * width, channels),
                gallery.reshape(-1, channels),
                query_chunk=config.query_chunk,
                bank_chunk=config.bank_chunk,
            )
            level_maps.append(common.upsample_maps(dist.reshape(1, height, width), size)[0])
        return jnp.mean(jnp.stack(level_maps), axis=0)

    # One test image at a time, so only one gallery of k images is gathered at once.
    level_inputs = {common.level_key(l): features[common.level_key(l)] for l in config.levels}
    maps = lax.map(one_image, (knn_idx, level_inputs))
    maps = common.smooth_maps(maps, config.sigma)
    return maps, jnp.mean(knn_dist, axis=1)


@dataclasses.dataclass(frozen=True)
class SpadeModel:
    """A fitted SPADE: the training features it matches against (all levels plus "pooled")."""

    config: SpadeConfig
    train_features: dict[str, Array]
    backbone_name: str
    weights_sha256: str
    n_train: int
    backbone: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def top_k(self) -> int:
        """The gallery size actually used: min(config.top_k_images, n_train)."""
        return min(self.config.top_k_images, self.n_train)

    def score_features(self, features: Mapping[str, Any]) -> tuple[Array, Array]:
        """Backbone features of B images -> (maps (B, S, S) float32, scores (B,) float32)."""
        keys = _feature_keys(self.config)
        checked = common.check_features(features, keys)
        for key in keys:
            if checked[key].shape[1:] != self.train_features[key].shape[1:]:
                raise ValueError(
                    f"features[{key!r}]: expected per-image shape {self.train_features[key].shape[1:]} "
                    f"as in training, got {checked[key].shape[1:]}"
                )
        return score_spade_features(self.train_features, checked, self.config, self.top_k)

    def score(self, images: Any, batch_size: int = 16, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (B, S, S, 3) -> (maps (B, S, S) float32, scores (B,) float32), in batches."""
        return common.score_images(self, images, batch_size, progress, desc="SPADE scoring")


def _feature_keys(config: SpadeConfig) -> list[str]:
    return ["pooled", *(common.level_key(l) for l in config.levels)]


def fit_features(
    features: Mapping[str, Any],
    config: SpadeConfig,
    backbone_name: str | None = None,
    weights_sha256: str = "",
    *,
    backbone: Any = None,
) -> SpadeModel:
    """Stores the training features {"pooled": (N, c), "level<l>": (N, h_l, w_l, c_l)}."""
    if not isinstance(config, SpadeConfig):
        raise ValueError(f"config: expected a SpadeConfig, got {type(config).__name__}")
    checked = common.check_features(features, _feature_keys(config))
    return SpadeModel(
        config=config,
        train_features=checked,
        backbone_name=backbone_name if backbone_name is not None else config.backbone,
        weights_sha256=weights_sha256,
        n_train=int(checked["pooled"].shape[0]),
        backbone=backbone,
    )


def fit(
    images: Any, config: SpadeConfig, backbone: Any = None, *, batch_size: int = 16, progress: bool = True
) -> SpadeModel:
    """uint8 training images (N, S, S, 3) -> fitted SpadeModel (backbone loaded from the config if None)."""
    if not isinstance(config, SpadeConfig):
        raise ValueError(f"config: expected a SpadeConfig, got {type(config).__name__}")
    backbone = common.resolve_backbone(backbone, config.backbone)
    features = common.extract_features(
        backbone, images, config.output_size, _feature_keys(config), batch_size, progress, desc="SPADE features"
    )
    return fit_features(features, config, backbone.name, backbone.weights_sha256, backbone=backbone)
