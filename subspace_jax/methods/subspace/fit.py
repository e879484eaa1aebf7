"""Fitting a subspace model: banks built from the nominal training features, streamed (no training).

``BankBuilder`` takes the training images' backbone features chunk by chunk and never holds all N
images' raw float32 features: each chunk is aggregated and projected as it arrives and appended to the
banks, in float32 while the model will keep its Gram matrices (small N, ``keeps_grams``; they are
computed from the float32 rows) and in the bank's dtype beyond. So the fit's memory is the bank plus a
chunk, plus, for PCA projections, the first ``PCA_SAMPLE_IMAGES`` images' features: PCA directions come
from the pixel moments of that sample (one pass over the images, not two; a thousand images hold a
million pixel vectors, plenty for c x c covariances of c <= 1280, and MTD's 761 images are all of them).
Coresets (k-center on the float32 sampling features) and dictionaries (``dictionary.learn_atoms``, from
statistics accumulated over the stored rows) are chosen at the end, over every image.

``fit_features(features, config)`` is the builder on one chunk; ``fit_stream(chunks, config)`` on any
iterable of chunks. With several processes (``jax.distributed``) each feeds its consecutive share of the
images (``sharding.process_shares``): the PCA moments are summed over the processes and the rows
gathered in image order, so every process ends with the model one process would have fitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from subspace_jax import sharding
from subspace_jax._checks import check_int
from subspace_jax.engine import batches
from subspace_jax.methods.base import level_key
from subspace_jax.methods.subspace import dictionary
from subspace_jax.methods.subspace.config import SubspaceConfig
from subspace_jax.methods.subspace.model import SubspaceModel, keeps_grams
from subspace_jax.ops.aggregation import aggregate
from subspace_jax.ops.kcenter import kcenter
from subspace_jax.ops.projection import PixelMoments, random_projection

__all__ = ["PCA_SAMPLE_IMAGES", "BankBuilder", "fit_features", "fit_inputs", "fit_stream", "within_budget"]

Array = jax.Array
PCA_SAMPLE_IMAGES = 1024


class BankBuilder:
    """Streams training features into a ``SubspaceModel`` (module docstring).

    Args:
      config: the model configuration.
      offset: the global index of this process's first image (several processes), else 0.
      total: N over every process when known (several processes: required), else None.
    """

    def __init__(self, config: SubspaceConfig, *, offset: int = 0, total: int | None = None) -> None:
        if not isinstance(config, SubspaceConfig):
            raise ValueError(f"config: expected a SubspaceConfig, got {type(config).__name__}")
        self.config = config
        self.keys = tuple(level_key(level) for level in config.levels)
        self.sampling_key = level_key(config.sampling_level) if config.sampling == "subspace" else None
        self.offset, self.total = offset, total
        self.n = 0  # images added on this process
        self._rows: dict[str, list[np.ndarray]] = {key: [] for key in self.keys}
        self._sampling: list[np.ndarray] = []
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._projections: dict[str, Array] | None = None if config.projection == "pca" else {}
        self._pending: list[dict[str, np.ndarray]] = []  # aggregated chunks waiting for PCA directions
        self._moments: dict[str, PixelMoments] = {}
        self._float32 = True  # rows kept in float32 (Gram matrices from float32 features)

    # --- chunks ---------------------------------------------------------------------------------

    def add(self, features: Mapping[str, Any]) -> None:
        """Append one chunk: level key -> (b, h, w, c) (or (b, c) for "pooled") float features of the
        next b training images; extra keys are ignored."""
        feats = _select(features, self.config)
        sizes = {key: value.shape[0] for key, value in feats.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"features: every level needs the same number of images, got {sizes}")
        shapes = {key: tuple(value.shape[1:]) for key, value in feats.items()}
        if self._shapes is None:
            for key in self.keys:
                if len(shapes[key]) != 3:
                    raise ValueError(
                        f"features[{key!r}]: expected (N, h, w, c), got shape {feats[key].shape}"
                    )
            self._shapes = shapes
            self._start_projections()
        elif shapes != self._shapes:
            raise ValueError(f"features: image shapes {shapes} differ from the first chunk's {self._shapes}")
        b = next(iter(sizes.values()))
        if b == 0:
            return
        if self.sampling_key is not None:
            sampling = np.asarray(feats[self.sampling_key], np.float32)
            self._sampling.append(sampling.reshape(b, -1))
        aggregated = {key: _aggregate_in_chunks(feats[key], self.config.aggregate) for key in self.keys}
        first = self.offset + self.n
        self.n += b
        if self._projections is not None:
            self._store(aggregated)
            return
        in_sample = max(0, min(b, PCA_SAMPLE_IMAGES - first))
        for key in self._moments:
            if in_sample:
                self._moments[key].add(aggregated[key][:in_sample])
        self._pending.append(aggregated)
        if self._sample_complete():
            self._settle()

    def _start_projections(self) -> None:
        channels = self.config.projected_channels
        for level, key in zip(self.config.levels, self.keys):
            c = self._shapes[key][-1]
            if key in channels and channels[key] > c:
                raise ValueError(
                    f"config.projection_channels: {channels[key]} for {key} exceeds its {c} channels"
                )
        if self.config.projection == "random":
            self._projections = {
                key: random_projection(
                    jax.random.fold_in(jax.random.key(self.config.seed), level), c, channels[key]
                )
                for level, key in zip(self.config.levels, self.keys)
                if key in channels
                for c in [self._shapes[key][-1]]
            }
        elif self.config.projection == "pca":
            self._moments = {key: PixelMoments(self._shapes[key][-1]) for key in channels}

    def _sample_complete(self) -> bool:
        """Whether this process holds its part of the PCA sample (the first images of the whole set)."""
        mine = max(0, PCA_SAMPLE_IMAGES - self.offset)
        return (
            self.n >= mine
            if self.total is None
            else self.offset + self.n >= min(self.total, PCA_SAMPLE_IMAGES)
        )

    def _settle(self) -> None:
        """The PCA directions from the sample's moments (summed over processes), then the waiting chunks
        projected and stored."""
        channels = self.config.projected_channels
        projections = {}
        for key, moments in self._moments.items():
            moments.second = sharding.sum_over_processes(moments.second)
            moments.total = sharding.sum_over_processes(moments.total)
            moments.count = int(sharding.sum_over_processes(np.asarray(moments.count)))
            projections[key] = jnp.asarray(moments.directions(channels[key]))
        self._projections = projections
        self._moments = {}
        pending, self._pending = self._pending, []
        for chunk in pending:
            self._store(chunk)

    def _store(self, aggregated: dict[str, np.ndarray]) -> None:
        """Project one aggregated chunk and append its rows (float32, or the bank dtype once the model
        is too large to keep Gram matrices)."""
        for key in self.keys:
            value = aggregated[key]
            if key in self._projections:
                value = np.asarray(_project(value, self._projections[key]))
            self._rows[key].append(
                np.asarray(value, np.float32) if self._float32 else _bank_cast(value, self.config)
            )
        if self._float32 and not self._keeps_grams(
            self.offset + self.n if self.total is None else self.total
        ):
            self._float32 = False
            for key in self.keys:
                self._rows[key] = [_bank_cast(chunk, self.config) for chunk in self._rows[key]]

    def _keeps_grams(self, n: int) -> bool:
        # N, not the coreset's or dictionary's M: rows are float32 while all N would keep Gram matrices.
        row = sum(int(np.prod(self._stored_shape(key))) for key in self.keys)
        row += int(np.prod(self._shapes[self.sampling_key])) if self.sampling_key is not None else 0
        return keeps_grams(
            n, row * np.dtype(self.config.bank_dtype).itemsize, len(self.keys) + bool(self.sampling_key)
        )

    def _stored_shape(self, key: str) -> tuple[int, ...]:
        h, w, c = self._shapes[key]
        return (h, w, self.config.projected_channels.get(key, c))

    # --- the model ---------------------------------------------------------------------------------

    def finish(self, *, backbone_name: str | None = None, weights_sha256: str | None = None) -> SubspaceModel:
        """The model of every image added (on every process)."""
        if self._projections is None:  # fewer images than the PCA sample
            self._settle()
        counts = sharding.process_counts(self.n)
        if sum(counts) < 1:
            raise ValueError("features: expected at least one training image, got none")
        config = self.config
        levels = {
            key: sharding.gather_rows(_concatenate(self._rows[key], self._stored_shape(key)), counts)
            for key in self.keys
        }
        self._rows = {key: [] for key in self.keys}
        sampling = None
        if self.sampling_key is not None:
            sampling = sharding.gather_rows(_concatenate(self._sampling, None), counts)
            sampling = sampling.reshape((sampling.shape[0], *self._shapes[self.sampling_key]))
        n = sum(counts)
        if config.coreset:
            if config.coreset > n:
                raise ValueError(f"config.coreset={config.coreset} exceeds the {n} training images")
            if sampling is None:
                raise ValueError(
                    "config.coreset: the k-center coreset runs on the sampling features; use "
                    "sampling='subspace'"
                )
            keep = np.sort(np.asarray(kcenter(sampling, config.coreset)))
            levels = {key: value[keep] for key, value in levels.items()}
            sampling = None if sampling is None else sampling[keep]
        projections = dict(self._projections)
        if config.dictionary:
            levels, sampling, _ = dictionary.learn_atoms(
                levels, sampling, config, config.dictionary, config.dictionary_steps
            )
        model = SubspaceModel.from_levels(
            levels,
            sampling,
            projections,
            config,
            config.backbone if backbone_name is None else backbone_name,
            weights_sha256,
        )
        return model.check_finite()


def fit_stream(
    chunks: Iterable[Mapping[str, Any]],
    config: SubspaceConfig,
    *,
    backbone_name: str | None = None,
    weights_sha256: str | None = None,
    offset: int = 0,
    total: int | None = None,
) -> SubspaceModel:
    """A ``SubspaceModel`` from an iterable of feature chunks (``BankBuilder``); ``offset`` and
    ``total`` place this process's share among several processes."""
    builder = BankBuilder(config, offset=offset, total=total)
    for chunk in chunks:
        builder.add(chunk)
    return builder.finish(backbone_name=backbone_name, weights_sha256=weights_sha256)


def fit_features(
    features: Mapping[str, Any],
    config: SubspaceConfig,
    *,
    backbone_name: str | None = None,
    weights_sha256: str | None = None,
) -> SubspaceModel:
    """Build a ``SubspaceModel`` from precomputed backbone features of the N training images.

    Args:
      features: level key -> (N, h, w, c) (or (N, c) for "pooled") float arrays holding at least
        ``config.feature_keys``; extra keys are ignored. Arrays may be memory-mapped: they are read in
        chunks.
      config: the model configuration.
      backbone_name: backbone that produced the features (default ``config.backbone``).
      weights_sha256: hex sha256 of its weights; needed to score images and to save checkpoints that
        verify the backbone; None for features of unknown origin.
    """
    feats = _select(features, config) if isinstance(config, SubspaceConfig) else features
    n = {key: np.shape(value)[0] for key, value in feats.items()}
    if len(set(n.values())) != 1 or min(n.values()) < 1:
        raise ValueError(f"features: every level needs the same number N >= 1 of images, got {n}")
    if any(isinstance(value, jax.core.Tracer) for value in feats.values()):
        return _traced(feats, config, backbone_name, weights_sha256)
    size = next(iter(n.values()))
    chunks = (
        {key: value[start : start + _CHUNK_IMAGES] for key, value in feats.items()}
        for start in range(0, size, _CHUNK_IMAGES)
    )
    return fit_stream(chunks, config, backbone_name=backbone_name, weights_sha256=weights_sha256)


def _traced(feats: dict[str, Any], config: SubspaceConfig, backbone_name: Any, weights_sha256: Any) -> Any:
    """``fit_features`` under ``jax.eval_shape`` (checkpoints compare stored arrays with what fitting
    gives): only configs whose banks are the features themselves (``fit_inputs``) are traced."""
    if config.projection != "none" or config.coreset or config.aggregate > 1 or config.dictionary:
        raise ValueError(
            "fit_features: only configs without projection, coreset, aggregation or dictionary trace"
        )
    levels = {level_key(level): feats[level_key(level)] for level in config.levels}
    sampling = feats[level_key(config.sampling_level)] if config.sampling == "subspace" else None
    name = config.backbone if backbone_name is None else backbone_name
    return SubspaceModel.from_levels(levels, sampling, {}, config, name, weights_sha256)


def fit_inputs(
    shapes: dict[str, list[int]], config: SubspaceConfig
) -> dict[str, jax.ShapeDtypeStruct] | None:
    """For checkpoints: the features ``fit_features`` turns into arrays of these stored ``shapes``
    ("banks/level2" -> shape, ...), as ShapeDtypeStructs; KeyError naming a missing array. None when
    the banks are not the features themselves: projections, coresets, aggregation and dictionaries
    change the rows or their channels on the host, so their inputs cannot be recovered."""
    if config.projection != "none" or config.coreset or config.aggregate > 1 or config.dictionary:
        return None
    keys = [level_key(level) for level in config.levels]
    inputs = {key: tuple(shapes[f"banks/{key}"]) for key in keys}
    if config.sampling == "subspace":
        sampling_key = level_key(config.sampling_level)
        if sampling_key not in inputs:
            inputs[sampling_key] = tuple(shapes["sampling_bank"])
    return {key: jax.ShapeDtypeStruct(shape, jnp.float32) for key, shape in inputs.items()}


def within_budget(
    config: SubspaceConfig, n: int, shapes: Mapping[str, tuple[int, ...]], max_bytes: int
) -> SubspaceConfig:
    """``config``, or the same config changed so that the fitted model holds at most ``max_bytes``: a
    learned dictionary of the most atoms that fit (image atoms: on MTD 256 atoms lose about half a
    point, a coreset of 256 images three), else a k-center coreset of the most images that fit (pixel
    atoms).

    Args:
      n: the training images.
      shapes: feature key -> one image's feature shape (``subspace_jax.engine.features.feature_shapes``).
      max_bytes: the budget for every array of the model (banks, Gram matrices, projections).

    ValueError when not even k rows fit.
    """
    check_int("max_bank_bytes", max_bytes, 1, 2**62)
    itemsize = np.dtype(config.bank_dtype).itemsize
    row, fixed = 0, 0
    for key in (level_key(level) for level in config.levels):
        h, w, c = shapes[key]
        kept = config.projected_channels.get(key, c)
        row += h * w * kept * itemsize
        fixed += c * kept * 4 if key in config.projected_channels else 0
    banks = len(config.levels)
    if config.sampling == "subspace":
        row += int(np.prod(shapes[level_key(config.sampling_level)])) * itemsize
        banks += 1
    crossover = row // (4 * banks)  # the most rows that keep their Gram matrices (keeps_grams)

    def fits(m: int) -> bool:
        grams = 4 * banks * m * m if keeps_grams(m, row, banks) else 0
        return m * row + grams + fixed <= max_bytes

    rows = min(n, config.dictionary or config.coreset or n)
    if fits(rows):
        return config
    beyond = min(n, (max_bytes - fixed) // row)  # without Gram matrices
    m = beyond if beyond > crossover and fits(beyond) else 0
    low, high = 0, min(n, crossover)  # with them: the largest m that fits, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    m = max(m, low)
    least = config.k if config.sampling == "subspace" and config.reconstruction == "image" else 1
    if m < least:
        raise ValueError(
            f"max_bank_bytes: {max_bytes} bytes hold {m} rows of {row} bytes; this config needs at least "
            f"{least} (k), about {least * row + fixed} bytes"
        )
    if config.reconstruction == "image" and not config.coreset:
        return dataclasses.replace(config, dictionary=m)
    return dataclasses.replace(config, coreset=m, dictionary=0)


# --- helpers ---------------------------------------------------------------------------------------

_CHUNK_IMAGES = 64


def _select(features: Mapping[str, Any], config: SubspaceConfig) -> dict[str, Any]:
    """The keys ``config`` reads, present and finite (ValueError naming the key and image otherwise)."""
    if not isinstance(features, Mapping):
        raise ValueError(f"features: expected a dict level key -> array, got {type(features).__name__}")
    missing = [key for key in config.feature_keys if key not in features]
    if missing:
        raise ValueError(f"features: missing {missing}; this config needs {list(config.feature_keys)}")
    selected = {key: features[key] for key in config.feature_keys}
    batches.check_finite_features(selected)
    return selected


def _concatenate(chunks: list[np.ndarray], shape: tuple[int, ...] | None) -> np.ndarray:
    if chunks:
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return np.zeros((0, *(shape or (0,))), np.float32)


def _bank_cast(value: Any, config: SubspaceConfig) -> np.ndarray:
    return np.asarray(jnp.asarray(value, jnp.dtype(config.bank_dtype)))


def _aggregate_in_chunks(features: Any, size: int) -> Any:
    """``aggregate`` of (N, h, w, c) training features, 64 images at a time (bounded memory)."""
    if size == 1:
        return features
    return np.concatenate(
        [np.asarray(aggregate(jnp.asarray(features[i : i + 64]), size)) for i in range(0, len(features), 64)]
    )


@jax.jit
def _project(features: Array, projection: Array) -> Array:
    """(..., c) @ (c, c′) at full float32 precision."""
    return jnp.matmul(jnp.asarray(features, jnp.float32), projection, precision=jax.lax.Precision.HIGHEST)
