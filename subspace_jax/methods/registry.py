"""The one method registry: every model family the library, the command, the runners and checkpoints know.

Each method module registers its ``Method`` when it is imported (``subspace_jax.methods`` imports them
all): ``subspace``, ``patchcore``, ``spade``. A ``Method`` names the family's config class, model class and
``fit_features``, the backbone feature keys a config reads, and, for checkpoints, how to recover the
shapes of ``fit_features``' inputs from a stored model. How a model scores is its class's ``scorer``.

Adding a method: a module under ``subspace_jax/methods/`` with a config (``BaseConfig`` subclass whose
``method`` names it), a model (``FittedModel`` subclass, a pytree dataclass) with its ``scorer``, a
``fit_features``, and ``register(Method(...))``; then import it in ``subspace_jax/methods/__init__.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["Method", "for_config", "for_model", "get", "names", "register"]


@dataclasses.dataclass(frozen=True)
class Method:
    """One model family.

    Attributes:
      name: the ``--method`` name (``config_cls.method == name``).
      config_cls: its frozen config dataclass.
      model_cls: the fitted model's class (a ``FittedModel`` pytree dataclass with a ``scorer``).
      fit_features: ``(features, config, *, backbone_name=None, weights_sha256=None) -> model``.
      feature_keys: config -> the backbone feature keys ``fit_features`` and the scorer read.
      fit_inputs: for checkpoints, ``(stored array shapes by "field/key", config) -> {feature key:
        jax.ShapeDtypeStruct}`` of the inputs ``fit_features`` would turn into those arrays; None where
        they cannot be recovered from the model (a coreset keeps no feature maps).
      fit_stream: ``(chunks, config, *, backbone_name, weights_sha256, offset, total) -> model`` from an
        iterable of feature chunks without holding them all (several processes: this one's share,
        starting at image ``offset`` of ``total``); None: the chunks are gathered for ``fit_features``.
      within_budget: ``(config, n images, feature shapes, max bytes) -> config`` whose fitted model holds
        at most that many bytes; None: the method takes no bank budget.
    """

    name: str
    config_cls: type
    model_cls: type
    fit_features: Callable[..., Any]
    feature_keys: Callable[[Any], tuple[str, ...]]
    fit_inputs: Callable[[dict[str, list[int]], Any], dict[str, Any] | None] | None = None
    fit_stream: Callable[..., Any] | None = None
    within_budget: Callable[..., Any] | None = None

    @property
    def scorer(self) -> Any:
        """The model class's ``subspace_jax.engine.scorer.StagedScorer``."""
        return self.model_cls.scorer


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (once per name); returns it."""
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"method: {method.name!r} is registered already")
    if method.config_cls.method != method.name:
        raise ValueError(f"method: {method.config_cls.__name__}.method is not {method.name!r}")
    _METHODS[method.name] = method
    return method


def names() -> tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(_METHODS)


def get(name: str) -> Method:
    """The method called ``name``; ValueError listing the known names otherwise."""
    if name not in _METHODS:
        raise ValueError(f"method: expected one of {', '.join(_METHODS)}, got {name!r}")
    return _METHODS[name]


def for_config(config: Any) -> Method:
    """The method whose config class ``config`` is an instance of."""
    for method in _METHODS.values():
        if type(config) is method.config_cls:
            return method
    raise ValueError(
        f"config: expected a config of one of the methods {', '.join(_METHODS)} "
        f"({', '.join(m.config_cls.__name__ for m in _METHODS.values())}), got {type(config).__name__}"
    )


def for_model(model: Any) -> Method:
    """The method whose model class ``model`` is an instance of."""
    for method in _METHODS.values():
        if type(model) is method.model_cls:
            return method
    raise ValueError(
        f"model: expected a fitted model ({', '.join(m.model_cls.__name__ for m in _METHODS.values())}), "
        f"got {type(model).__name__}"
    )
