"""Fitting a subspace model: the banks built from the nominal training features (no training).

``fit_features(features, config)`` keeps the configured training images (all, or a k-center coreset of
the sampling features), applies each reconstruction level's aggregation and channel projection, learns
a dictionary when asked, and stores the banks with their Gram matrices (``SubspaceModel.from_levels``).
Projections, coresets and dictionaries are fitted on the nominal training features only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from subspace_jax.engine import batches
from subspace_jax.methods.base import level_key
from subspace_jax.methods.subspace import dictionary
from subspace_jax.methods.subspace.config import SubspaceConfig
from subspace_jax.methods.subspace.model import SubspaceModel
from subspace_jax.ops.aggregation import aggregate
from subspace_jax.ops.kcenter import kcenter
from subspace_jax.ops.projection import pca_projection, random_projection

__all__ = ["fit_features", "projection_for"]

Array = jax.Array


def fit_features(
    features: Mapping[str, Any],
    config: SubspaceConfig,
    *,
    backbone_name: str | None = None,
    weights_sha256: str | None = None,
) -> SubspaceModel:
    """Build a ``SubspaceModel`` from precomputed backbone features of the N training images.

    Args:
      features: level key -> (N, h, w, c) (or (N, c) for "pooled") float arrays holding at least
        ``config.feature_keys``; extra keys are ignored.
      config: the model configuration.
      backbone_name: backbone that produced the features (default ``config.backbone``).
      weights_sha256: hex sha256 of its weights; needed to score images and to save checkpoints that
        verify the backbone; None for features of unknown origin.
    """
    if not isinstance(config, SubspaceConfig):
        raise ValueError(f"config: expected a SubspaceConfig, got {type(config).__name__}")
    backbone_name = config.backbone if backbone_name is None else backbone_name
    feats = _select(features, config)
    n = {key: value.shape[0] for key, value in feats.items()}
    if len(set(n.values())) != 1 or min(n.values()) < 1:
        raise ValueError(f"features: every level needs the same number N >= 1 of images, got {n}")
    if config.coreset:
        sampling = feats[level_key(config.sampling_level)]
        if config.coreset > sampling.shape[0]:
            raise ValueError(
                f"config.coreset={config.coreset} exceeds the {sampling.shape[0]} training images"
            )
        keep = np.sort(np.asarray(kcenter(np.asarray(sampling, np.float32), config.coreset)))
        feats = {key: np.asarray(value)[keep] for key, value in feats.items()}
    values, projections = {}, {}
    for level in config.levels:
        key = level_key(level)
        value = feats[key]
        if value.ndim != 4:
            raise ValueError(f"features[{key!r}]: expected (N, h, w, c), got shape {value.shape}")
        value = _aggregate_in_chunks(value, config.aggregate)
        projection = projection_for(value, key, level, config)
        if projection is not None:
            projections[key] = projection
            value = _project(value, projection)
        values[key] = value
    sampling = feats[level_key(config.sampling_level)] if config.sampling == "subspace" else None
    if config.dictionary:
        values = {key: np.asarray(value, np.float32) for key, value in values.items()}
        values, sampling, _ = dictionary.learn_atoms(
            values, sampling, config, config.dictionary, config.dictionary_steps
        )
    model = SubspaceModel.from_levels(values, sampling, projections, config, backbone_name, weights_sha256)
    return model.check_finite()


def projection_for(features: Any, key: str, level: int, config: SubspaceConfig) -> Array | None:
    """The (c, c′) float32 projection ``config`` asks for at ``level`` (fitted on the (N, h, w, c)
    nominal ``features`` for PCA), or None when that level keeps its channels."""
    channels = config.projected_channels.get(key)
    if channels is None:
        return None
    if channels > features.shape[-1]:
        raise ValueError(
            f"config.projection_channels: {channels} for {key} exceeds its {features.shape[-1]} channels"
        )
    if config.projection == "pca":
        return jnp.asarray(pca_projection(features, channels))
    key_ = jax.random.fold_in(jax.random.key(config.seed), level)
    return random_projection(key_, features.shape[-1], channels)


def _select(features: Mapping[str, Any], config: SubspaceConfig) -> dict[str, Any]:
    """The keys ``config`` reads, present and finite (ValueError naming the key and image otherwise)."""
    if not isinstance(features, Mapping):
        raise ValueError(f"features: expected a dict level key -> array, got {type(features).__name__}")
    missing = [key for key in config.feature_keys if key not in features]
    if missing:
        raise ValueError(f"features: missing {missing}; this config needs {list(config.feature_keys)}")
    selected = {key: features[key] for key in config.feature_keys}
    batches.check_finite_features(selected)
    return selected


def _aggregate_in_chunks(features: Any, size: int) -> Any:
    """``aggregate`` of (N, h, w, c) training features, 64 images at a time (bounded memory)."""
    if size == 1:
        return features
    return np.concatenate(
        [np.asarray(aggregate(jnp.asarray(features[i : i + 64]), size)) for i in range(0, len(features), 64)]
    )


@jax.jit
def _project(features: Array, projection: Array) -> Array:
    """(..., c) @ (c, c′) at full float32 precision."""
    return jnp.matmul(jnp.asarray(features, jnp.float32), projection, precision=jax.lax.Precision.HIGHEST)


def fit_inputs(
    shapes: dict[str, list[int]], config: SubspaceConfig
) -> dict[str, jax.ShapeDtypeStruct] | None:
    """For checkpoints: the features ``fit_features`` turns into arrays of these stored ``shapes``
    ("banks/level2" -> shape, ...), as ShapeDtypeStructs; KeyError naming a missing array. None when
    the banks are not the features themselves: projections, coresets, aggregation and dictionaries
    change the rows or their channels on the host, so their inputs cannot be recovered."""
    if config.projection != "none" or config.coreset or config.aggregate > 1 or config.dictionary:
        return None
    keys = [level_key(level) for level in config.levels]
    inputs = {key: tuple(shapes[f"banks/{key}"]) for key in keys}
    if config.sampling == "subspace":
        sampling_key = level_key(config.sampling_level)
        if sampling_key not in inputs:
            inputs[sampling_key] = tuple(shapes["sampling_bank"])
    return {key: jax.ShapeDtypeStruct(shape, jnp.float32) for key, shape in inputs.items()}
