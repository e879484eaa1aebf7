"""Memory-bank baselines with the subspace model's API: PatchCore and SPADE.

Each method has a frozen config (`PatchCoreConfig`, `SpadeConfig`; `.method` names it, `.to_dict()` is
JSON-ready), `fit(images, config, backbone=None)`, `fit_features(features, config, backbone_name,
weights_sha256)` and a model with `.score(images, batch_size)` / `.score_features(features)` returning
(maps (B, S, S) float32, scores (B,) float32). `METHODS` maps the runner's `--method` names to them.
"""

from __future__ import annotations

from subspace_jax.baselines import patchcore, spade
from subspace_jax.baselines.common import nearest_neighbor
from subspace_jax.baselines.patchcore import PatchCoreConfig, PatchCoreModel, greedy_coreset, select_coreset
from subspace_jax.baselines.spade import SpadeConfig, SpadeModel

# --method name -> (config class, module with fit / fit_features).
METHODS = {
    "patchcore": (PatchCoreConfig, patchcore),
    "spade": (SpadeConfig, spade),
}

__all__ = [
    "METHODS",
    "PatchCoreConfig",
    "PatchCoreModel",
    "SpadeConfig",
    "SpadeModel",
    "greedy_coreset",
    "nearest_neighbor",
    "patchcore",
    "select_coreset",
    "spade",
]
