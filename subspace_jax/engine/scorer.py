"""Scoring in fixed-size batches, for every method: one staged scorer, one timer, one loop, one score dtype.

A method describes how it scores with a ``StagedScorer``, set on its model class as ``scorer``:

- ``check_features(model, features)``: the feature dict the method reads, checked (keys, shapes,
  finiteness), before any batch is cut;
- ``stages``: (name, fn) pairs, each ``fn(model, carry, *, execution) -> carry`` calling one jitted
  function, from a feature dict to ``(maps, scores)``;
- ``score_features(model, features, *, execution)``: the same stages fused into one pure function,
  for a user's ``jax.jit`` and for ``shard_map``;
- ``score_images(model, apply_fn, params, images, *, execution)``: the backbone and ``score_features``.

``score_in_batches(model, inputs)`` feeds a fitted model images or precomputed features in padded
batches of one size (one compilation). With a ``timings`` dict it runs the backbone and the stages one
by one and adds each one's wall-clock seconds under its name; with a mesh it scores each batch on the
mesh (``subspace_jax.sharding``). Stage names per method:

- subspace: sampling, reconstruction, maps
- patchcore, spade: matching (nearest-neighbour search), maps
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import chex
import jax
import numpy as np

from subspace_jax import sharding
from subspace_jax.engine import batches, features
from subspace_jax.ops import execution as execution_lib

Array = jax.Array
Stage = tuple[str, Callable[..., Any]]
SCORE_DTYPE = np.float32


def timed(timings: dict[str, float] | None, stage: str, fn: Callable, *args: Any) -> Any:
    """``fn(*args)``; with ``timings``, waits for its result and adds its wall-clock seconds to
    ``timings[stage]`` (JAX dispatch is asynchronous: without the wait the time would be dispatch)."""
    if timings is None:
        return fn(*args)
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
    return out


@dataclasses.dataclass(frozen=True)
class StagedScorer:
    """How one method scores (module docstring).

    Attributes:
      feature_keys: model -> the backbone feature keys the method reads.
      check_features: (model, features) -> the checked dict of those keys (ValueError naming the key
        and image otherwise).
      stages: (name, fn) pairs; ``fn(model, carry, *, execution)`` calls one jitted function. The first
        takes the feature dict, the last returns (maps (B, H, W), scores (B,)).
      score_features: the fused pure scorer ``(model, features, *, execution) -> (maps, scores)``.
      supports_bank_axis: whether ``score_features`` runs with the model's bank rows sharded over a
        mesh axis (``execution.bank_axis``); methods without it score on a mesh's data axis only.
    """

    feature_keys: Callable[[Any], tuple[str, ...]]
    check_features: Callable[[Any, Mapping[str, Any]], dict[str, Any]]
    stages: tuple[Stage, ...]
    score_features: Callable[..., tuple[Array, Array]]
    supports_bank_axis: bool = False

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stages)

    def score_images(self, model: Any, apply_fn: Callable, params: Any, images: Array, **options: Any):
        """Pure: ``apply_fn(params, images)`` (uint8 (B, S, S, 3) in), then ``score_features``."""
        chex.assert_rank(images, 4)
        keys = tuple(self.feature_keys(model))
        out = apply_fn(params, images)
        return self.score_features(model, {key: out[key] for key in keys}, **options)

    @functools.cached_property
    def score_features_jit(self) -> Callable[..., tuple[Array, Array]]:
        return jax.jit(self.score_features, static_argnames=("execution",))

    @functools.cached_property
    def score_images_jit(self) -> Callable[..., tuple[Array, Array]]:
        return jax.jit(self.score_images, static_argnums=(1,), static_argnames=("execution",))

    def run_stages(
        self, model: Any, features: Mapping[str, Array], timings: dict[str, float] | None = None, **options
    ) -> tuple[Array, Array]:
        """The stages one after another on one batch of features; each timed into ``timings``."""
        carry: Any = features
        for name, fn in self.stages:
            carry = timed(timings, name, functools.partial(fn, **options), model, carry)
        return carry


def _feature_batches(
    features: Mapping[str, Any], n: int, batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(block, n real rows) per batch; a short last block is padded with copies of its last row."""
    for start in range(0, n, batch_size):
        block = {key: np.asarray(value[start : start + batch_size]) for key, value in features.items()}
        real = min(batch_size, n - start)
        yield {key: batches.pad_batch(value, batch_size) for key, value in block.items()}, real


def _as_scores(out: tuple[Any, Any], real: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """This batch's real rows as numpy, checked finite: a map or score that is NaN or inf (finite inputs
    whose arithmetic overflowed, e.g. features of 1e19) names its image (counted from ``first``)."""
    maps, scores = np.asarray(out[0][:real], SCORE_DTYPE), np.asarray(out[1][:real], SCORE_DTYPE)
    ok = np.isfinite(scores) & np.isfinite(maps.reshape(real, -1)).all(axis=1)
    if not ok.all():
        image = first + int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"image {image}: its anomaly map or score is not finite (NaN or inf): its features overflow "
            "float32 arithmetic; check the input's scale (value_range) and the backbone"
        )
    return maps, scores


def score_in_batches(
    model: Any,
    inputs: Any,
    *,
    batch_size: int = execution_lib.DEFAULT_BATCH_SIZE,
    backbone: Any = None,
    timings: dict[str, float] | None = None,
    progress: bool = True,
    desc: str = "score",
    mesh: Any = None,
    execution: execution_lib.Execution | None = None,
    value_range: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps and image scores of ``inputs``, scored in batches of ``batch_size``.

    Args:
      model: a fitted model (its class's ``scorer`` says how it scores).
      inputs: images (a uint8 (N, S, S, 3) array, an iterable of batches or image paths), or
        precomputed features (a dict level key -> (N, ...) arrays; extra keys are ignored).
      batch_size: rows per compiled call (lowered to N when fewer); the last batch is padded.
      backbone: for images, the backbone to use, checked against the weights the model was fit with
        (default: the cached backbone of that identity, ``subspace_jax.backbones.for_weights``).
      timings: when given, the backbone (images only) and each stage run as separately jitted calls
        and their seconds are added under the stage names (the first call includes compilation);
        features given on the host are first moved to the device, timed as "input".
        Otherwise one fused function runs per batch.
      progress, desc: a progress bar over images (rate, time left).
      mesh: a ``jax.sharding.Mesh`` from ``subspace_jax.sharding.make_mesh``: the model is placed on it
        (``sharding.shard_model``) unless it is already, each batch of ``batch_size`` (rounded up to a
        multiple of the data axis) is split over ``"data"``, and the fused sharded scorer runs (with
        ``timings``: one stage, "scoring", after nothing else). With several processes, ``inputs`` are
        this process's share, every process passes as many, and the results are this process's rows.
      execution: layout options of the scorer (``subspace_jax.ops.execution``); None: the backend's.
      value_range: (lo, hi) of float images (``subspace_jax.engine.batches.check_batch``); uint8 images
        and paths need none.

    Returns:
      maps (N, S, S) float32 and scores (N,) float32, numpy. ValueError naming the image when one's map
      or score is not finite.
    """
    # Thresholds are static metadata the scorer never reads: strip them so that calibrated and
    # uncalibrated models share one compiled scorer.
    model = model.with_thresholds(None)
    scorer = model.scorer
    options = {"execution": execution}
    if mesh is not None:
        model = sharding.placed(model, mesh)
        batch_size = sharding.local_batch_size(batch_size, mesh)
    if isinstance(inputs, Mapping):
        checked = scorer.check_features(model, inputs)
        n = int(np.shape(next(iter(checked.values())))[0])
        if mesh is None:
            batch_size = batches.batch_size_for(n, batch_size)
        maps, scores = [], []
        with batches.progress_bar(progress, desc, n) as bar:
            for first, (block, real) in zip(
                range(0, n, batch_size), _feature_batches(checked, n, batch_size)
            ):
                if mesh is not None:
                    score = functools.partial(sharding.score_block, execution=execution)
                    out = timed(timings, "scoring", score, model, block, mesh)
                elif timings is None:
                    out = scorer.score_features_jit(model, block, **options)
                else:
                    # Host features (a cache, a memory map) go to the device once, timed on their own:
                    # every stage then reads device arrays.
                    block = timed(timings, "input", jax.device_put, block)
                    out = scorer.run_stages(model, block, timings, **options)
                block_maps, block_scores = _as_scores(out, real, first)
                maps.append(block_maps)
                scores.append(block_scores)
                bar.update(real)
        return np.concatenate(maps), np.concatenate(scores)

    net = features.backbone_for(model, backbone)
    apply_fn, params = net.pure()
    keys = tuple(scorer.feature_keys(model))
    if mesh is None:
        batch_size = batches.batch_size_for(inputs, batch_size)
    else:
        params = sharding.replicate(params, mesh)

    def score_batch(batch: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
        if mesh is not None:
            score = functools.partial(
                sharding.score_block, apply_fn=apply_fn, params=params, execution=execution
            )
            out = timed(timings, "scoring", score, model, batch, mesh)
        elif timings is None:
            out = scorer.score_images_jit(model, apply_fn, params, batch, **options)
        else:
            feats = timed(timings, "backbone", features.backbone_features, apply_fn, keys, params, batch)
            out = scorer.run_stages(model, feats, timings, **options)
        # Padding rows are checked too: they repeat the batch's last image.
        return _as_scores(out, len(batch), first)

    return batches.map_batches(
        score_batch, inputs, model.config, batch_size, progress=progress, desc=desc, value_range=value_range
    )
