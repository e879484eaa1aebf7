"""Fusion: several registered methods on one backbone pass, their maps normalised and combined.

A ``FusionConfig`` holds its members' configs (any registered method's, e.g. the subspace default and
PatchCore), how each member's map is normalised, and the weights of the maps and of the image scores.
``fit_features`` fits every member from the same training features, except for a seeded held-out
fraction of the images (``holdout_fraction``): the members score those defect-free images, and their
maps and scores give each member's normalisation statistics. Nothing is estimated from test images.

Scoring reads the union of the members' feature keys (one backbone pass), scores each member and
combines:

- maps: ``sum_i w_i n_i(m_i)``, then an optional Gaussian blur (``sigma``), where ``n_i`` is
  ``"zscore"``: ``(m - mean) / std`` of the member's held-out map values;
  ``"level_zscore"``: each of the member's level maps (the carry before its last scoring stage,
  ``{"level<l>": (B, h, w)}``) z-scored by its own held-out statistics, the member's own level fusion
  and blur (its last stage) run on them, then a global z-score of that map by its held-out values;
  ``"quantile"``: the rank transform ``F(m)``, the empirical distribution function of the held-out map
  values (``QUANTILES`` quantiles, linear in between), extended linearly beyond the nominal range with
  the slope of its outer percent, so values above every nominal one still keep their order;
- image scores: ``sum_i v_i r_i(s_i)`` of the members' own image scores, where ``r_i`` is
  ``"ratio"``: ``s / mean`` of the member's held-out image scores (nominal images score about 1;
  non-negative, like every member's score) or ``"zscore"``: ``(s - mean) / std``.

The model holds the statistics of every normalisation (a few KB per member), so the normalisation, the
score rule and the weights are static choices: ``dataclasses.replace(model, config=...)`` switches them
without refitting. ``member_outputs`` and ``combine`` are the two halves of ``score_features``, public so
that a weight sweep scores the members once (``experiments/mtd_fusion.py``).

config  ``FusionConfig``: members, normalisation, weights, the held-out fraction
model   ``FusionModel``, the pure scorer (``member_outputs`` then ``combine``), its stages, ``fit_features``
"""

from __future__ import annotations

from subspace_jax.methods import registry
from subspace_jax.methods.fusion.config import NORMALIZATIONS, QUANTILES, SCORE_RULES, FusionConfig
from subspace_jax.methods.fusion.model import (
    FusionModel,
    combine,
    fit_features,
    level_maps,
    member_outputs,
    score_features,
    stage_names,
)

__all__ = [
    "METHOD",
    "NORMALIZATIONS",
    "QUANTILES",
    "SCORE_RULES",
    "FusionConfig",
    "FusionModel",
    "combine",
    "fit_features",
    "level_maps",
    "member_outputs",
    "score_features",
    "stage_names",
]

METHOD = registry.register(
    registry.Method(
        name="fusion",
        config_cls=FusionConfig,
        model_cls=FusionModel,
        fit_features=fit_features,
        feature_keys=lambda config: config.feature_keys,
        fit_inputs=None,  # PatchCore members keep coresets, not the feature maps they came from
    )
)
