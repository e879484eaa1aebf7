"""Fitting any registered method: features of nominal images in, a fitted model out (nothing trains).

``fit(images, config)`` runs the backbone over the images in batches (``subspace_jax.engine.features``)
and streams the features into the method's ``fit_stream`` (never holding all N images' features), or
gathers them for its ``fit_features``; with several processes (``jax.distributed``) each one embeds
its consecutive share of the images and the statistics are combined across processes, so every
process ends with the model one process would fit. With ``validation_fraction`` (or ``validation=``)
it first holds defect-free images out of the bank and calibrates the model's thresholds on them
(``subspace_jax.eval.calibration``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from subspace_jax import backbones, sharding
from subspace_jax.engine import batches
from subspace_jax.engine import features as features_lib
from subspace_jax.eval import calibration
from subspace_jax.methods import registry
from subspace_jax.ops.execution import DEFAULT_BATCH_SIZE

__all__ = ["fit", "fit_features"]


def fit_features(
    features: Mapping[str, Any],
    config: Any,
    *,
    backbone_name: str | None = None,
    weights_sha256: str | None = None,
) -> Any:
    """The model of ``config``'s method from precomputed backbone features of the N training images
    (level key -> (N, ...) arrays; extra keys are ignored). ``weights_sha256`` identifies the backbone
    the features came from (needed to score images and to save checkpoints that verify it)."""
    method = registry.for_config(config)
    return method.fit_features(features, config, backbone_name=backbone_name, weights_sha256=weights_sha256)


def fit(
    images: Any,
    config: Any,
    backbone: Any = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    validation_fraction: float | str = 0.0,
    validation: Any = None,
    false_alarm_rate: float = 0.01,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    max_bank_bytes: int | None = None,
) -> Any:
    """Extract features of the nominal ``images`` and build the model of ``config``'s method.

    Args:
      images: uint8 (N, S, S, 3) array with S = ``config.output_size``, an iterable of such batches, or
        a list of image paths (read and resized like the dataset loaders).
      config: a registered method's config (``SubspaceConfig``, ``PatchCoreConfig``, ``SpadeConfig``).
      backbone: a loaded backbone whose ``name`` is ``config.backbone``; default: the cached one.
        It is remembered (``subspace_jax.backbones.remember``), so the model scores with it later.
      batch_size: images per backbone call.
      progress: show a progress bar.
      validation_fraction: when > 0, this fraction of ``images`` (an array or a list of paths), drawn
        with ``seed``, is held out of the bank and calibrates thresholds at ``false_alarm_rate``;
        ``"auto"`` holds out as many as the rate needs (``calibration.holdout_size``). They bound false
        alarms, not recall; ``model.thresholds.achieved_rate`` is the rate the held-out images deliver.
      validation: held-out defect-free images to calibrate on instead (excludes validation_fraction).
      value_range: (lo, hi), the scale of float images (e.g. (0, 1)); uint8 images and paths need none.
      max_bank_bytes: a memory budget for the model instead of an algorithm: the method's
        ``within_budget`` changes the config to fit it (subspace: a learned dictionary, or a coreset);
        the model's ``config`` says what was chosen.
    """
    method = registry.for_config(config)
    if validation is not None or validation_fraction:
        if validation is not None and validation_fraction:
            raise ValueError("validation, validation_fraction: give one of them, not both")
        if validation is None:
            images, validation = calibration.split_images(images, validation_fraction, seed, false_alarm_rate)
        model = fit(
            images,
            config,
            backbone,
            batch_size=batch_size,
            progress=progress,
            value_range=value_range,
            max_bank_bytes=max_bank_bytes,
        )
        thresholds = calibration.calibrate(
            model,
            validation,
            false_alarm_rate=false_alarm_rate,
            batch_size=batch_size,
            progress=progress,
            value_range=value_range,
        )
        return model.with_thresholds(thresholds)
    backbone = backbones.load_cached(config.backbone) if backbone is None else backbone
    backbones.remember(backbone)
    offset, total = 0, batches.count_images(images)
    if max_bank_bytes is not None:
        if method.within_budget is None:
            raise ValueError(f"max_bank_bytes: the {method.name} method takes no bank budget")
        if total is None:
            raise ValueError("max_bank_bytes: needs the number of images (an array or a list of paths)")
        shapes = features_lib.feature_shapes(backbone, config.output_size)
        config = method.within_budget(config, total, shapes, max_bank_bytes)
    if jax.process_count() > 1:  # this process embeds its consecutive share of the images
        if total is None:
            raise ValueError("images: a fit over several processes needs an array or a list of image paths")
        counts, indices = sharding.process_shares(total)
        mine = indices[: counts[jax.process_index()]]
        offset = sum(counts[: jax.process_index()])
        images = images[mine[0] : mine[-1] + 1] if counts[jax.process_index()] else images[:0]
    chunks = features_lib.iter_features(
        images,
        config,
        backbone,
        tuple(method.feature_keys(config)),
        batch_size=batch_size,
        progress=progress and jax.process_index() == 0,
        desc=f"{method.name} fit",
        value_range=value_range,
    )
    identity = dict(backbone_name=backbone.name, weights_sha256=backbone.weights_sha256)
    if method.fit_stream is not None:
        return method.fit_stream(chunks, config, **identity, offset=offset, total=total)
    gathered = list(chunks)
    if not gathered:
        raise ValueError("images: expected at least one image, got none")
    features = {key: np.concatenate([chunk[key] for chunk in gathered]) for key in gathered[0]}
    counts = sharding.process_counts(len(next(iter(features.values()))))
    features = {key: sharding.gather_rows(value, counts) for key, value in features.items()}
    return method.fit_features(features, config, **identity)
