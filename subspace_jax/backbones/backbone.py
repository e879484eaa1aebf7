"""The public backbone object: weights resolved and loaded, BatchNorm folded, forward pass jitted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .convert import load_state_dict
from .pretrained import WeightsHashError, expected_hash_prefix, resolve_weights, sha256_file
from .registry import BackboneSpec, features_version, get_spec, preprocess
from .torch_weights import load_torch_file

__all__ = ["Backbone", "build_model", "load", "load_pretrained"]

Features = dict[str, jax.Array]


def load_pretrained(name: str, path: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Path of the pretrained weight file for backbone ``name``.

    Order: ``path``; ``$SUBSPACE_JAX_WEIGHTS/<file>``; the file shipped by the weights package
    (``efficientnet_lite0``); the torch hub cache (``$TORCH_HOME/hub/checkpoints`` or
    ``~/.cache/torch/hub/checkpoints``); a download from torchvision's URL into that cache (base URL
    overridable with ``$SUBSPACE_JAX_WEIGHTS_URL``). Raises ``WeightsNotFoundError`` when offline.
    """
    spec = get_spec(name)
    packaged = spec.packaged_weights() if path is None and spec.weights_package else None
    return resolve_weights(
        spec.weights_file,
        path=path,
        packaged=packaged,
        downloadable=spec.weights_package is None,
        progress=progress,
    )


def build_model(
    name: str, weights: str | os.PathLike | None = None, *, seed: int = 0, progress: bool = True
) -> tuple[nnx.Module, str]:
    """The unfolded NNX model for ``name`` and its weights tag (sha256 of the file, or ``random-seed<seed>``).

    ``weights``: None (pretrained, resolved by :func:`load_pretrained`), a path, or ``"random"``.
    """
    spec = get_spec(name)
    model = spec.constructor(np.random.default_rng(seed))
    if isinstance(weights, str) and weights == "random":
        return model, f"random-seed{seed}"
    path = load_pretrained(name, weights, progress=progress)
    digest = sha256_file(path)
    prefix = expected_hash_prefix(Path(path).name)
    if prefix is not None and not digest.startswith(prefix):
        raise WeightsHashError(
            f"weights file {path}: its sha256 is {digest}, which does not start with {prefix} as its file "
            "name promises: the file is corrupt or altered"
        )
    load_state_dict(model, load_torch_file(path), source=str(path))
    return model, digest


class Backbone:
    """A frozen ImageNet CNN: ``b(images)`` -> level dict, ``b.classify(images)`` -> logits.

    ``images``: uint8 (or float in [0, 255]) NHWC (B, H, W, 3); preprocessing is included. Output:
    ``{"level1": (B, H/4, W/4, C1), ..., "level4": (B, H/32, W/32, C4), "pooled": (B, C4)}`` float32
    (spatial sizes rounded up; channels in ``level_channels``). Each call is one jitted function,
    compiled once per input shape and dtype.

    ``micro_batch``: inside the jitted call, run the batch through the network this many images at a
    time (``lax.map``), so activations stay cache-sized; the default is 4 on CPU (Lite0 at batch 16 and
    256 px ran about 2x faster per image than whole-batch) and whole-batch on accelerators.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nnx.Module,
        weights_sha256: str,
        *,
        micro_batch: int | None | str = "auto",
    ):
        for _, module in nnx.iter_modules(model):
            if hasattr(module, "fold_batchnorm"):
                module.fold_batchnorm()
        self.spec = spec
        self.name = spec.name
        self.weights_sha256 = weights_sha256
        self.features_version = features_version(spec)  # part of every feature-cache key
        self.level_channels = dict(spec.level_channels)
        if micro_batch == "auto":
            micro_batch = 4 if jax.default_backend() == "cpu" else None
        if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
            raise ValueError(f"micro_batch: expected a positive int, None or 'auto', got {micro_batch!r}")
        self.micro_batch = micro_batch
        self._graphdef, params = nnx.split(model)
        # Layers keep host (numpy) arrays while loading and folding; move them to the device once.
        self._params = jax.device_put(params)
        self._features = jax.jit(self._apply)
        self._classify = jax.jit(self._apply_classify)

    def _forward(self, params: Any, images: jax.Array) -> dict[str, jax.Array]:
        """One pass of the whole network (levels, pooled and logits) over (b, H, W, 3) images."""
        model = nnx.merge(self._graphdef, params)
        features = model(preprocess(images, self.spec))
        return {**features, "logits": model.logits(features["pooled"])}

    def _in_micro_batches(self, params: Any, images: jax.Array) -> dict[str, jax.Array]:
        batch = images.shape[0]
        step = self.micro_batch
        if step is None or batch <= step:
            return self._forward(params, images)
        chunks = -(-batch // step)
        padded = jnp.pad(images, ((0, chunks * step - batch),) + ((0, 0),) * 3)
        stacked = jax.lax.map(
            lambda chunk: self._forward(params, chunk), padded.reshape((chunks, step) + images.shape[1:])
        )
        return jax.tree.map(lambda a: a.reshape((chunks * step,) + a.shape[2:])[:batch], stacked)

    def _apply(self, params: Any, images: jax.Array) -> dict[str, jax.Array]:
        features = self._in_micro_batches(params, images)
        del features["logits"]  # unused outputs are pruned from the compiled program
        return features

    def _apply_classify(self, params: Any, images: jax.Array) -> jax.Array:
        return self._in_micro_batches(params, images)["logits"]

    def __call__(self, images: Any) -> dict[str, jax.Array]:
        return self._features(self._params, _check_images(images))

    def classify(self, images: Any) -> jax.Array:
        """(B, H, W, 3) images -> (B, 1000) ImageNet logits."""
        return self._classify(self._params, _check_images(images))

    def pure(self) -> tuple[Callable[[Any, jax.Array], dict[str, jax.Array]], Any]:
        """``(apply_fn, params)`` with ``apply_fn(params, images)`` equal to ``self(images)``: pure,
        jittable."""
        return self._apply, self._params

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, weights_sha256={self.weights_sha256[:16]!r})"


def _check_images(images: Any) -> Any:
    shape = np.shape(images)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            f"images: expected uint8 or float NHWC (B, H, W, 3) in [0, 255], got shape {tuple(shape)}"
        )
    dtype = np.dtype(getattr(images, "dtype", np.asarray(images).dtype))
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"images: expected dtype uint8 or float, got {dtype}")
    return images


def load(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    normalization: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Backbone:
    """Backbone ``name`` (``resnet18``, ``resnet50``, ``wide_resnet50_2``, ``efficientnet_lite0``).

    ``weights``: None for the pretrained ImageNet weights (see :func:`load_pretrained`), a path to a
    ``.pth`` file (torch state dict), or ``"random"`` for a seeded random initialisation (tests, timing).
    ``normalization``: input mean/std by name, ``"tf"`` ((x - 127) / 128) or ``"imagenet"``; None keeps
    the backbone's own (``"tf"`` for efficientnet_lite0). It may also be given as
    ``name="efficientnet_lite0:imagenet"``; a non-default one shows in ``Backbone.name``.
    """
    spec = get_spec(name, normalization)
    model, tag = build_model(spec.name, weights, seed=seed, progress=progress)
    return Backbone(spec, model, tag)
