"""The methods: every model family, its config, its fitted model and how it scores, in one registry.

base       the config fields every method shares, ``FittedModel``, the nearest-neighbour scorer stages
registry   ``Method``, ``register``, ``get``, ``for_config``, ``for_model``, ``names``
subspace/  subspace-guided feature reconstruction (the paper's method)
patchcore  PatchCore (Roth et al. 2022) on the same features
spade      SPADE (Cohen & Hoshen 2020) on the same features
fusion     several methods on one backbone pass, their maps normalised and combined
fitting    ``fit`` / ``fit_features`` for any registered method

Importing this package registers every method.
"""

from __future__ import annotations

from subspace_jax.methods import registry, subspace  # the library's own method registers first

# isort: split
from subspace_jax.methods import patchcore, spade

# isort: split
from subspace_jax.methods import fusion  # after its members' methods
from subspace_jax.methods.base import BaseConfig, BaselineConfig, FittedModel
from subspace_jax.methods.fitting import fit, fit_features
from subspace_jax.methods.patchcore import PatchCoreConfig, PatchCoreModel
from subspace_jax.methods.registry import Method, for_config, for_model, get, names
from subspace_jax.methods.spade import SpadeConfig, SpadeModel
from subspace_jax.methods.subspace import SubspaceConfig, SubspaceModel

__all__ = [
    "BaseConfig",
    "BaselineConfig",
    "FittedModel",
    "Method",
    "PatchCoreConfig",
    "PatchCoreModel",
    "SpadeConfig",
    "SpadeModel",
    "SubspaceConfig",
    "SubspaceModel",
    "fit",
    "fit_features",
    "for_config",
    "for_model",
    "fusion",
    "get",
    "names",
    "patchcore",
    "registry",
    "spade",
    "subspace",
]
