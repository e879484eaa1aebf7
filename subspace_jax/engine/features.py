"""Backbone features of images, batched: the one ``extract_features``, and the backbone a model scores with.

- ``extract_features(images, config, backbone, keys)``: key -> (N, ...) float32 host arrays, computed in
  padded batches of one size (one compilation); the keys not asked for are never computed.
- ``check_backbone`` / ``backbone_for``: a fitted model records the backbone that built it (name and
  weights sha256); scoring takes the backbone passed to it after checking it, or the one of that
  identity from the process-wide cache (``subspace_jax.backbones.for_weights``). Fitted models carry no
  backbone: they are values, and the backbone travels beside them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from subspace_jax import backbones
from subspace_jax.engine import batches
from subspace_jax.ops.execution import DEFAULT_BATCH_SIZE

Array = jax.Array


@functools.partial(jax.jit, static_argnums=(0, 1))
def backbone_features(
    apply_fn: Callable, keys: tuple[str, ...], params: Any, images: Array
) -> dict[str, Array]:
    """``apply_fn(params, images)`` restricted to ``keys`` (the others are never computed), jitted.

    ``apply_fn`` is static: a backbone's ``pure()`` returns its bound method, equal from call to call, so
    this compiles once per backbone, keys and batch shape."""
    out = apply_fn(params, images)
    return {key: out[key] for key in keys}


def feature_keys(backbone: Any, image_size: int) -> tuple[str, ...]:
    """Every feature key ``backbone`` returns (shapes traced, nothing computed)."""
    apply_fn, params = backbone.pure()
    probe = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.uint8)
    return tuple(jax.eval_shape(apply_fn, params, probe))


def iter_features(
    images: batches.ImageSource,
    config: batches.InputConfig,
    backbone: Any,
    keys: tuple[str, ...] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    desc: str = "features",
    value_range: Any = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Backbone features of ``images``, one padded batch at a time: yields key -> (b, ...) float32
    numpy arrays of the batch's b real images, in order (a streaming fit consumes them as they come;
    arguments as for ``extract_features``)."""
    if backbone.name != config.backbone:
        raise ValueError(
            f"backbone: config.backbone is {config.backbone!r} but the backbone given is {backbone.name!r}"
        )
    keys = feature_keys(backbone, config.output_size) if keys is None else tuple(keys)
    batch_size = batches.batch_size_for(images, batch_size)
    apply_fn, params = backbone.pure()
    with batches.progress_bar(progress, desc, batches.count_images(images)) as bar:
        for batch in batches.iter_batches(images, config, batch_size, value_range):
            n = batch.shape[0]
            out = backbone_features(apply_fn, keys, params, batches.pad_batch(batch, batch_size))
            yield {key: np.asarray(value[:n], np.float32) for key, value in out.items()}
            bar.update(n)


def feature_shapes(backbone: Any, image_size: int) -> dict[str, tuple[int, ...]]:
    """Every feature key of ``backbone`` -> one image's feature shape at ``image_size`` (traced, nothing
    computed)."""
    apply_fn, params = backbone.pure()
    probe = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.uint8)
    return {key: tuple(value.shape[1:]) for key, value in jax.eval_shape(apply_fn, params, probe).items()}


def extract_features(
    images: batches.ImageSource,
    config: batches.InputConfig,
    backbone: Any,
    keys: tuple[str, ...] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    desc: str = "features",
    value_range: Any = None,
) -> dict[str, np.ndarray]:
    """Backbone features of ``images`` in padded batches, all at once (``iter_features``, concatenated).

    Args:
      images: a uint8 (N, S, S, 3) array, an iterable of such batches, or image paths (read and resized
        to ``config.image_size`` / ``crop``); S = ``config.output_size``.
      config: gives the input size and the backbone's name (``backbone.name`` must equal it).
      backbone: a loaded backbone (``name``, ``weights_sha256``, ``pure()``).
      keys: feature keys to keep ("level1".."level4", "pooled"); None keeps every key the backbone has.
      batch_size: images per compiled call (lowered to N when fewer); the last batch is padded.
      progress, desc: a progress bar (images/s, time left).
      value_range: (lo, hi) of float images (``subspace_jax.engine.batches.check_batch``).

    Returns:
      key -> (N, h, w, c) float32 (or (N, c) for "pooled") numpy arrays.
    """
    chunks = list(
        iter_features(
            images,
            config,
            backbone,
            keys,
            batch_size=batch_size,
            progress=progress,
            desc=desc,
            value_range=value_range,
        )
    )
    if not chunks:
        raise ValueError("images: expected at least one image, got none")
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}


def check_backbone(fitted: Any, backbone: Any) -> None:
    """Raise ValueError unless ``backbone`` has the name and weights ``fitted``'s bank was built with
    (``fitted.backbone_name``, ``fitted.weights_sha256``)."""
    name = getattr(backbone, "name", None)
    sha = getattr(backbone, "weights_sha256", None)
    if name != fitted.backbone_name:
        raise ValueError(f"backbone: the model was fit with {fitted.backbone_name!r}, got {name!r}")
    if fitted.weights_sha256 is None:
        raise ValueError("backbone: the model records no weights_sha256, so its backbone cannot be verified")
    if sha != fitted.weights_sha256:
        raise ValueError(
            f"backbone: {name!r} weights differ from the ones the bank was built with "
            f"(sha256 {sha} != {fitted.weights_sha256}); refit the model with these weights"
        )


def backbone_for(fitted: Any, backbone: Any = None) -> Any:
    """The backbone to score ``fitted`` with: ``backbone`` (checked), else the cached one of its identity."""
    if backbone is not None:
        check_backbone(fitted, backbone)
        return backbone
    return backbones.for_weights(fitted.backbone_name, fitted.weights_sha256)
