"""Flax NNX ports of ImageNet CNNs returning multi-level NHWC feature maps, with torch-free weight loading.

``load(name, weights=None)`` -> :class:`Backbone` (``load_cached``: once per process); ``b(images)``
gives ``{"level1".."level4", "pooled"}``.
Names: ``resnet18``, ``resnet50``, ``wide_resnet50_2``, ``efficientnet_lite0`` (see :data:`REGISTRY`).
"""

from __future__ import annotations

from .backbone import Backbone, build_model, load, load_pretrained
from .cache import for_weights, load_cached, remember
from .convert import WeightsMismatchError, load_state_dict
from .pretrained import WeightsHashError, WeightsNotFoundError
from .registry import (
    FEATURES_VERSION,
    NORMALIZATIONS,
    REGISTRY,
    BackboneSpec,
    features_version,
    preprocess,
)
from .torch_weights import TorchFileError, UnsafePickleError, load_torch_file

__all__ = [
    "FEATURES_VERSION",
    "NORMALIZATIONS",
    "REGISTRY",
    "Backbone",
    "BackboneSpec",
    "TorchFileError",
    "UnsafePickleError",
    "WeightsHashError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "build_model",
    "features_version",
    "for_weights",
    "load",
    "load_cached",
    "load_pretrained",
    "load_state_dict",
    "load_torch_file",
    "preprocess",
    "remember",
]
