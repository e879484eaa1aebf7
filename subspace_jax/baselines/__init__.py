"""Memory-bank baselines with the subspace model's API: PatchCore and SPADE.

Each method has a frozen config (`PatchCoreConfig`, `SpadeConfig`; `.method` names it, `.to_dict()` is
JSON-ready), `fit(images, config, backbone=None)`, `fit_features(features, config, backbone_name,
weights_sha256)` and a model with `.score(images, batch_size)` / `.score_features(features)` returning
(maps (B, S, S) float32, scores (B,) float32). `subspace_jax.methods` lists them, with the subspace
model, under their `--method` names.
"""

from __future__ import annotations

from subspace_jax.baselines import patchcore, spade
from subspace_jax.baselines.common import nearest_neighbor
from subspace_jax.baselines.patchcore import PatchCoreConfig, PatchCoreModel, greedy_coreset, select_coreset
from subspace_jax.baselines.spade import SpadeConfig, SpadeModel

__all__ = [
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
