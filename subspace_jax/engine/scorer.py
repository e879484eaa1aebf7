"""Staged scoring in fixed-size batches, for every method: one scorer, one timer, one score dtype.

A method describes how it scores with a ``StagedScorer``: its stages, each ``fn(model, carry) ->
carry`` calling one jitted function, from a feature dict to ``(maps, scores)``; the feature keys its
first stage reads; and its fused pure scorer on images (backbone included). ``score_in_batches`` feeds
it images or precomputed features in padded batches of one size (one compilation) and, when given a
``timings`` dict, runs the stages one by one and adds each one's wall-clock seconds under its name
(``"backbone"`` first when it starts from images). Stage names per method:

- subspace: sampling, reconstruction, maps
- patchcore, spade: matching (nearest-neighbour search), maps
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from subspace_jax.engine import batches as batching

Array = jax.Array
Stage = tuple[str, Callable[[Any, Any], Any]]
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
    """How one method scores.

    Attributes:
      stages: (name, fn) pairs; ``fn(model, carry) -> carry`` calls one jitted function. The first
        takes the feature dict, the last returns (maps (B, H, W), scores (B,)).
      feature_keys: model -> the backbone feature keys the stages read.
      score_images: the fused pure scorer, jitted with ``apply_fn`` static:
        ``(model, apply_fn, params, images (B, S, S, 3)) -> (maps, scores)``.
    """

    stages: tuple[Stage, ...]
    feature_keys: Callable[[Any], tuple[str, ...]]
    score_images: Callable[..., tuple[Array, Array]]

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stages)

    def run_stages(
        self,
        model: Any,
        features: Mapping[str, Array],
        timings: dict[str, float] | None = None,
        **options: Any,
    ) -> tuple[Array, Array]:
        """The stages one after another on one batch of features; each timed into ``timings``.
        ``options`` (the subspace model's ``execution``) go to every stage."""
        carry: Any = features
        for name, fn in self.stages:
            carry = timed(timings, name, functools.partial(fn, **options), model, carry)
        return carry


def _feature_batches(
    features: Mapping[str, Any], keys: tuple[str, ...], n: int, batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(block, n real rows) per batch; a short last block is padded with copies of its last row."""
    for start in range(0, n, batch_size):
        block = {key: np.asarray(features[key][start : start + batch_size]) for key in keys}
        real = min(batch_size, n - start)
        yield {key: batching.pad_batch(value, batch_size) for key, value in block.items()}, real


def _feature_rows(
    scorer: StagedScorer, model: Any, features: Mapping[str, Any]
) -> tuple[tuple[str, ...], int]:
    """The feature keys ``model`` reads and the number N >= 1 of images ``features`` holds."""
    keys = tuple(scorer.feature_keys(model))
    missing = [key for key in keys if key not in features]
    if missing:
        raise ValueError(f"features: missing {missing}; this model reads {list(keys)}")
    n = int(np.shape(features[keys[0]])[0])
    if n == 0:
        raise ValueError("features: expected at least one image, got none")
    return keys, n


def score_in_batches(
    scorer: StagedScorer,
    model: Any,
    inputs: Any,
    *,
    batch_size: int = 8,
    backbone: Any = None,
    timings: dict[str, float] | None = None,
    progress: bool = True,
    desc: str = "score",
    mesh: Any = None,
    execution: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps and image scores of ``inputs``, scored in batches of ``batch_size``.

    Args:
      scorer: the method's ``StagedScorer``.
      model: a fitted model of that method (a pytree with ``config``).
      inputs: images (a uint8 (N, S, S, 3) array, an iterable of batches or image paths, as for
        ``Model.score``), or precomputed features (a dict level key -> (N, ...) arrays; extra keys
        are ignored).
      batch_size: rows per compiled call (lowered to N when fewer); the last batch is padded.
      backbone: for images, the backbone to use (default: the model's bound one, else loaded by name);
        checked against the weights the model was fit with. Unused for features.
      timings: when given, the backbone (images only) and each stage run as separately jitted calls
        and their seconds are added under the stage names (the first call includes compilation).
        Otherwise images go through the fused ``score_images`` and features through the model's
        ``score_features``.
      progress, desc: a progress bar over batches.
      mesh: a ``jax.sharding.Mesh`` from ``subspace_jax.sharding.make_mesh`` (subspace model only):
        the model is placed on it (``shard_model``) unless it is already, each batch of
        ``batch_size`` (rounded up to a multiple of the data axis) is split over ``"data"``, and
        the fused sharded scorer runs (with ``timings``: one stage, "scoring", after "backbone").
        With several processes, ``inputs`` are this process's share, every process must pass
        the same number of them, and the results are this process's rows.
      execution: ``subspace_jax.execution.Execution`` layout options of the subspace scorer
        (memory budget, gathered/masked choice); None: the backend's default.

    Returns:
      maps (N, S, S) float32 and scores (N,) float32, numpy.
    """
    if mesh is not None:
        return _score_on_mesh(
            scorer, model, inputs, mesh, batch_size, backbone, timings, progress, desc, execution
        )
    # Layout options reach the subspace scorer only (the baselines have none).
    options = {} if execution is None else {"execution": execution}
    if isinstance(inputs, Mapping):
        keys, n = _feature_rows(scorer, model, inputs)
        batch_size = batching.batch_size_for(n, batch_size)
        maps, scores = [], []
        batches = _feature_batches(inputs, keys, n, batch_size)
        for block, real in batching.progress_bar(batches, progress, desc, -(-n // batch_size)):
            if timings is None:
                out = model.score_features(block, **options)
            else:
                out = scorer.run_stages(model, block, timings, **options)
            maps.append(np.asarray(out[0][:real], SCORE_DTYPE))
            scores.append(np.asarray(out[1][:real], SCORE_DTYPE))
        return np.concatenate(maps), np.concatenate(scores)

    batch_size = batching.batch_size_for(inputs, batch_size)
    bound = model.bound_backbone(backbone)
    keys = tuple(scorer.feature_keys(model))

    def score_batch(batch: np.ndarray) -> tuple[Array, Array]:
        if timings is None:
            return scorer.score_images(model, bound.apply_fn, bound.params, batch, **options)
        features = timed(
            timings, "backbone", batching.backbone_features, bound.apply_fn, keys, bound.params, batch
        )
        return scorer.run_stages(model, features, timings, **options)

    maps, scores = batching.map_batches(
        score_batch, inputs, model.config, batch_size, progress=progress, desc=desc
    )
    return maps.astype(SCORE_DTYPE, copy=False), scores.astype(SCORE_DTYPE, copy=False)


def _score_on_mesh(
    scorer: StagedScorer,
    model: Any,
    inputs: Any,
    mesh: Any,
    batch_size: int,
    backbone: Any,
    timings: dict[str, float] | None,
    progress: bool,
    desc: str,
    execution: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``score_in_batches`` on a mesh (see there): this process's rows of every global batch."""
    from subspace_jax import sharding

    model = sharding.placed(model, mesh)
    local = sharding.local_batch_size(batch_size, mesh)
    if isinstance(inputs, Mapping):
        keys, n = _feature_rows(scorer, model, inputs)
        maps, scores = [], []
        batches = _feature_batches(inputs, keys, n, local)
        for block, real in batching.progress_bar(batches, progress, desc, -(-n // local)):
            score = functools.partial(sharding.score_block, execution=execution)
            out = timed(timings, "scoring", score, model, block, mesh)
            maps.append(np.asarray(out[0][:real], SCORE_DTYPE))
            scores.append(np.asarray(out[1][:real], SCORE_DTYPE))
        return np.concatenate(maps), np.concatenate(scores)

    bound = model.bound_backbone(backbone)
    bound = bound._replace(params=sharding.replicate(bound.params, mesh))

    def score_batch(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score = functools.partial(sharding.score_block, bound=bound, execution=execution)
        return timed(timings, "scoring", score, model, batch, mesh)

    maps, scores = batching.map_batches(
        score_batch, inputs, model.config, local, progress=progress, desc=desc
    )
    return maps.astype(SCORE_DTYPE, copy=False), scores.astype(SCORE_DTYPE, copy=False)
