"""The subspace model's pure scorer: sampling -> reconstruction -> maps, fused or as timed stages.

- ``score_features(model, features)``: one pure function of the fitted model (a pytree whose config is
  static) and backbone features, for a user's ``jax.jit`` and for ``shard_map``.
- ``SCORER``: the ``StagedScorer`` of ``subspace_jax.engine.scorer``: the same three stages as separately
  jitted calls (``model.score(timings=...)`` and the runner's per-stage times), the fused form, and
  ``score_images`` (backbone included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import jax

from subspace_jax.engine import batches
from subspace_jax.engine.scorer import StagedScorer
from subspace_jax.methods.subspace.pursuit import (
    Candidates,
    check_feature_shapes,
    reconstruct_levels,
    sample_candidates,
)
from subspace_jax.ops import maps as maps_lib
from subspace_jax.ops.execution import Execution

__all__ = ["SCORER", "score_features"]

Array = jax.Array
Features = Mapping[str, Array]


def score_features(
    model: Any, features: Features, *, execution: Execution | None = None
) -> tuple[Array, Array]:
    """Pure scorer on precomputed features: sampling -> reconstruction -> maps.

    Args:
      model: a fitted ``SubspaceModel`` (a pytree; its config is static).
      features: level key -> (B, h_l, w_l, c_l) float features of the test images, holding the
        reconstruction levels and, for subspace sampling, the sampling level.
      execution: layout options (``subspace_jax.ops.execution.Execution``: memory budget of the
        vectorised steps, gathered/masked choice); default: the backend's. Static under ``jit``.

    Returns:
      maps (B, S, S) float32 (S = ``config.output_size``) and scores (B,) float32.
    """
    cfg = model.config
    for key in cfg.feature_keys:
        chex.assert_rank(features[key], 2 if key == "pooled" else 4)
    chex.assert_equal_shape_prefix([features[key] for key in cfg.feature_keys], 1)
    candidates = sample_candidates(model, features, execution=execution)
    level_maps = reconstruct_levels(model, features, candidates, execution=execution)
    size = (cfg.output_size, cfg.output_size)
    return maps_lib.maps_and_scores(
        level_maps, size, fusion=cfg.fusion, sigma=cfg.sigma, score_fraction=cfg.score_fraction
    )


def check_features(model: Any, features: Features) -> dict[str, Any]:
    """The keys the model reads, checked: present, shaped like the banks, finite (ValueError naming
    the key and image otherwise)."""
    keys = model.config.feature_keys
    if not isinstance(features, Mapping):
        raise ValueError(f"features: expected a dict level key -> array, got {type(features).__name__}")
    missing = [key for key in keys if key not in features]
    if missing:
        raise ValueError(f"features: missing {missing}; this config needs {list(keys)}")
    selected = {key: features[key] for key in keys}
    check_feature_shapes(model, selected)
    batches.check_finite_features(selected)
    return selected


# Staged scoring: each stage is one jitted call. The map stage is static in (output size, fusion, sigma,
# score fraction) only, so scoring another k or λ reuses its program.
_sample_jit = jax.jit(sample_candidates, static_argnames=("execution",))
_reconstruct_jit = jax.jit(reconstruct_levels, static_argnames=("execution",))


def _sampling_stage(model: Any, features: Features, *, execution: Execution | None = None):
    return features, _sample_jit(model, features, execution=execution)


def _reconstruction_stage(
    model: Any, carry: tuple[Features, Candidates], *, execution: Execution | None = None
) -> dict[str, Array]:
    return _reconstruct_jit(model, *carry, execution=execution)


def _maps_stage(model: Any, level_maps: dict[str, Array], *, execution: Any = None) -> tuple[Array, Array]:
    cfg = model.config
    size = (cfg.output_size, cfg.output_size)
    return maps_lib.maps_and_scores_jit(
        level_maps, size, fusion=cfg.fusion, sigma=cfg.sigma, score_fraction=cfg.score_fraction
    )


SCORER = StagedScorer(
    feature_keys=lambda model: model.config.feature_keys,
    check_features=check_features,
    stages=(
        ("sampling", _sampling_stage),
        ("reconstruction", _reconstruction_stage),
        ("maps", _maps_stage),
    ),
    score_features=score_features,
    supports_bank_axis=True,
)
