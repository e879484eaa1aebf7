"""subspace-jax: training-free anomaly localization by subspace-guided feature reconstruction.

The public API (``import subspace_jax as sj``)::

    model = sj.fit(images, sj.Config(backbone="efficientnet_lite0"))    # any method's config
    maps, scores = sj.score(model, test_images)                           # = model.score(test_images)
    prediction = sj.predict(model, test_images)                           # thresholds applied
    sj.save(model, "model_dir"); model = sj.load("model_dir")

Scoring entry points, one name per kind:

- ``score(model, inputs)`` / ``model.score(inputs)``: images (arrays, batches, paths) or backbone
  features in, numpy maps and scores out, in padded batches; timings, meshes, memory budget.
- ``predict(model, images)`` / ``model.predict(images)``: ``score`` plus the calibrated decision
  (``Prediction``: normalised scores, decisions, masks).
- ``score_features(model, features)``, ``score_images(model, apply_fn, params, images)``: the pure
  scorers, for use inside your own ``jax.jit``.
- ``sharding.score_features(model, features, mesh)``: the pure scorer on a device mesh.

Layers, lowest first (``docs/architecture.md``): ``ops`` (OMP, maps, k-center, projections,
aggregation, neighbours, execution) · ``backbones`` · ``data`` · ``eval`` (metrics, calibration) ·
``sharding`` · ``engine`` (batches, features, the staged scorer) · ``methods`` (the registry: subspace,
PatchCore, SPADE) · ``configs`` (named configs, the loader, flags) · ``serving`` (checkpoints, export,
predict, evaluate, report) · ``runner`` (benchmarks) · ``cli``.
"""

from __future__ import annotations

from typing import Any

from subspace_jax import backbones, configs, data, sharding
from subspace_jax._version import __version__
from subspace_jax.configs import load as load_config
from subspace_jax.eval.calibration import Prediction, Thresholds, calibrate
from subspace_jax.methods import (
    PatchCoreConfig,
    PatchCoreModel,
    SpadeConfig,
    SpadeModel,
    SubspaceConfig,
    SubspaceModel,
    fit,
    fit_features,
)
from subspace_jax.methods import get as get_method
from subspace_jax.methods import names as method_names
from subspace_jax.ops.execution import DEFAULT_BATCH_SIZE
from subspace_jax.serving.checkpoint import load, save

__all__ = [
    "Config",
    "Model",
    "PatchCoreConfig",
    "PatchCoreModel",
    "Prediction",
    "SpadeConfig",
    "SpadeModel",
    "SubspaceConfig",
    "SubspaceModel",
    "Thresholds",
    "__version__",
    "backbones",
    "calibrate",
    "configs",
    "data",
    "fit",
    "fit_features",
    "get_method",
    "load",
    "load_config",
    "method_names",
    "predict",
    "save",
    "score",
    "score_features",
    "score_images",
    "sharding",
]

# The library's own method under short names.
Config = SubspaceConfig
Model = SubspaceModel


def score(model: Any, inputs: Any, batch_size: int = DEFAULT_BATCH_SIZE, **options: Any) -> Any:
    """``model.score(inputs, batch_size, **options)``: maps (N, S, S) and scores (N,), numpy."""
    return model.score(inputs, batch_size, **options)


def predict(model: Any, images: Any, batch_size: int = DEFAULT_BATCH_SIZE, **options: Any) -> Prediction:
    """``model.predict(images, batch_size, **options)``: scores with the calibrated decisions."""
    return model.predict(images, batch_size, **options)


def score_features(model: Any, features: Any, *, execution: Any = None) -> Any:
    """The pure scorer of ``model``'s method on backbone features (jit-able): maps (B, S, S), scores (B,)."""
    return model.scorer.score_features(model, features, execution=execution)


def score_images(model: Any, apply_fn: Any, params: Any, images: Any, *, execution: Any = None) -> Any:
    """The pure scorer on uint8 images (B, S, S, 3), backbone included (``apply_fn, params =
    backbone.pure()``), for use inside ``jax.jit`` (with ``apply_fn`` static)."""
    return model.scorer.score_images(model, apply_fn, params, images, execution=execution)
