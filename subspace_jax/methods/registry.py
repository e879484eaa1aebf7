"""The method registry: every model family the runner, the workbench and the scripts can use, by name.

Each ``Method`` has its frozen config class, ``fit`` (images) and ``fit_features`` (precomputed
backbone features), the pure ``score_images`` for a user's ``jax.jit``, and its ``StagedScorer``
(the stages ``subspace_jax.scoring.score_in_batches`` runs and times):

- ``subspace``: ``subspace_jax.Config``, stages sampling, reconstruction, maps
- ``patchcore``: ``PatchCoreConfig``, stages matching, maps
- ``spade``: ``SpadeConfig``, stages matching, maps
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from subspace_jax.engine import scorer as scoring
from subspace_jax.methods import patchcore, spade
from subspace_jax.methods.subspace import model as model_lib


@dataclasses.dataclass(frozen=True)
class Method:
    """One model family.

    Attributes:
      name: the ``--method`` name.
      config_cls: its frozen config dataclass (``config_cls.method == name``).
      model_cls: the fitted model's class (a pytree).
      fit: ``fit(images, config, backbone=None, *, batch_size, progress) -> model`` (bound to the backbone).
      fit_features: ``fit_features(features, config, *, backbone_name, weights_sha256) -> model``.
      score_images: pure ``(model, apply_fn, params, images) -> (maps, scores)``.
      scorer: the staged scorer of ``subspace_jax.scoring``.
    """

    name: str
    config_cls: type
    model_cls: type
    fit: Callable[..., Any]
    fit_features: Callable[..., Any]
    score_images: Callable[..., Any]
    scorer: scoring.StagedScorer


METHODS: dict[str, Method] = {
    "subspace": Method(
        "subspace",
        model_lib.Config,
        model_lib.Model,
        model_lib.fit,
        model_lib.fit_features,
        model_lib.score_images,
        model_lib.SCORER,
    ),
    "patchcore": Method(
        "patchcore",
        patchcore.PatchCoreConfig,
        patchcore.PatchCoreModel,
        patchcore.fit,
        patchcore.fit_features,
        patchcore.score_images,
        patchcore.SCORER,
    ),
    "spade": Method(
        "spade",
        spade.SpadeConfig,
        spade.SpadeModel,
        spade.fit,
        spade.fit_features,
        spade.score_images,
        spade.SCORER,
    ),
}
NAMES = tuple(METHODS)


def get(name: str) -> Method:
    """The method called ``name``; ValueError listing the known names otherwise."""
    if name not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(NAMES)}, got {name!r}")
    return METHODS[name]


def for_config(config: Any) -> Method:
    """The method whose config class ``config`` is an instance of."""
    for method in METHODS.values():
        if type(config) is method.config_cls:
            return method
    raise ValueError(
        f"config: expected a config of one of the methods {', '.join(NAMES)} "
        f"({', '.join(m.config_cls.__name__ for m in METHODS.values())}), got {type(config).__name__}"
    )
