"""Subspace-guided feature reconstruction (Hotta et al.), the library's own method (``docs/method.md``).

config      ``SubspaceConfig``: every choice of the method
model       ``SubspaceModel``: the fitted banks (a pytree) and how they shard
pursuit     the pure kernels: sampling, per-level Batch-OMP, residual maps
scorer      the pure scorer (``score_features``) and its timed stages (``SCORER``)
fit         ``fit_features``: banks from nominal features (coreset, aggregation, projection)
dictionary  learned atoms in place of the training images (``SubspaceConfig.dictionary``)
"""

from __future__ import annotations

from subspace_jax.methods import registry
from subspace_jax.methods.subspace.config import SubspaceConfig
from subspace_jax.methods.subspace.fit import fit_features, fit_inputs, fit_stream, within_budget
from subspace_jax.methods.subspace.model import SubspaceModel
from subspace_jax.methods.subspace.scorer import SCORER, score_features

__all__ = ["METHOD", "SCORER", "SubspaceConfig", "SubspaceModel", "fit_features", "score_features"]

METHOD = registry.register(
    registry.Method(
        name="subspace",
        config_cls=SubspaceConfig,
        model_cls=SubspaceModel,
        fit_features=fit_features,
        feature_keys=lambda config: config.feature_keys,
        fit_inputs=fit_inputs,
        fit_stream=fit_stream,
        within_budget=within_budget,
    )
)
