"""Plumbing shared by the memory-bank baselines: chunked nearest-neighbour search, input checks, and
thin adapters onto the subspace model's map post-processing and :mod:`subspace_jax.batching`.

Everything numerical here is pure JAX with static shapes. Maps go through the model's own
``fuse_maps`` (bilinear upsampling, level fusion, Gaussian blur) and images through the same
batching, padding and backbone checks as the model (:mod:`subspace_jax.batching`), so baselines and
the subspace model are post-processed and fed identically.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from subspace_jax import batching
from subspace_jax import model as model_lib

Array = jax.Array

# Squared distances by ||a||^2 + ||b||^2 - 2ab lose digits to cancellation; on GPUs the default matmul
# precision (TF32) would make that worse, so the cross term is always computed at full float32 precision.
_DOT_PRECISION = lax.Precision.HIGHEST


level_key = model_lib.level_key


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Fields and checks every baseline config shares (frozen, hashable: static under jit).

    Attributes:
      backbone: one of `subspace_jax.model.BACKBONE_NAMES`.
      image_size, crop: input resolution, as for `subspace_jax.Config` (maps are `crop or image_size`).
      levels: backbone levels used (1..4); like the model's, any sequence of distinct levels, stored sorted.
      sigma: Gaussian smoothing of the maps in output pixels (0 disables it).
      query_chunk, bank_chunk: nearest-neighbour search block sizes; the search never holds more than a
        (query_chunk, bank_chunk) float32 distance block.
    """

    method: ClassVar[str] = ""

    backbone: str = "wide_resnet50_2"
    image_size: int = 256
    crop: int | None = None
    levels: tuple[int, ...] = (2, 3)
    sigma: float = 4.0
    query_chunk: int = 2048
    bank_chunk: int = 8192

    def fail(self, name: str, expected: str) -> None:
        raise ValueError(f"{type(self).__name__}.{name}: expected {expected}, got {getattr(self, name)!r}")

    def check_positive_int(self, name: str) -> None:
        value = getattr(self, name)
        if not _is_int(value) or not 1 <= value <= model_lib.MAX_INT:
            self.fail(name, f"an int in [1, {model_lib.MAX_INT}]")
        object.__setattr__(self, name, int(value))

    def __post_init__(self) -> None:
        if self.backbone not in model_lib.BACKBONE_NAMES:
            self.fail("backbone", f"one of {model_lib.BACKBONE_NAMES}")
        if not _is_int(self.image_size) or self.image_size < 32:
            self.fail("image_size", "an int >= 32")
        if self.crop is not None and (not _is_int(self.crop) or not 32 <= self.crop <= self.image_size):
            self.fail("crop", f"None or an int in [32, image_size={self.image_size}]")
        levels = (self.levels,) if _is_int(self.levels) else self.levels
        if (
            not isinstance(levels, (tuple, list))
            or not levels
            or not all(_is_int(level) and 1 <= level <= 4 for level in levels)
            or len(set(levels)) != len(levels)
        ):
            self.fail("levels", "a non-empty sequence of distinct levels from {1, 2, 3, 4}")
        object.__setattr__(self, "levels", tuple(sorted(int(level) for level in levels)))
        sigma = self.sigma
        if (
            isinstance(sigma, bool)
            or not isinstance(sigma, (int, float))
            or not (math.isfinite(sigma) and sigma >= 0)
        ):
            self.fail("sigma", "a finite number >= 0")
        object.__setattr__(self, "sigma", float(sigma))
        self.check_positive_int("query_chunk")
        self.check_positive_int("bank_chunk")

    @property
    def output_size(self) -> int:
        """Side of the input images and of the maps: `crop or image_size`."""
        return self.crop if self.crop is not None else self.image_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the method name (`levels` as a list); `from_dict` inverts it."""
        out = {"method": self.method, **dataclasses.asdict(self)}
        out["levels"] = list(self.levels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """A validated config from `to_dict`'s output; unknown keys or another method are errors."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict: expected a mapping, got {type(data).__name__}")
        values = dict(data)
        method = values.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"{cls.__name__}.from_dict: method is {method!r}, expected {cls.method!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}.from_dict: unknown keys {unknown}; known keys are {sorted(known)}"
            )
        return cls(**values)


def check_features(
    features: Mapping[str, Any], keys: Sequence[str], *, name: str = "features"
) -> dict[str, Array]:
    """Checks a backbone feature dict holds `keys` with one batch size; returns them as float32 arrays.

    Level maps must be (N, h, w, c); "pooled" must be (N, c).
    """
    if not isinstance(features, Mapping):
        raise ValueError(f"{name}: expected a dict of backbone features, got {type(features).__name__}")
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"{name}: missing {missing}; has {sorted(features)}")
    out = {k: jnp.asarray(features[k], dtype=jnp.float32) for k in keys}
    sizes = {k: v.shape[0] if v.ndim else None for k, v in out.items()}
    for k, v in out.items():
        want = 2 if k == "pooled" else 4
        if v.ndim != want:
            shape = "(N, c)" if want == 2 else "(N, h, w, c)"
            raise ValueError(f"{name}[{k!r}]: expected shape {shape}, got {v.shape}")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name}: all entries must have the same batch size, got {sizes}")
    if next(iter(sizes.values())) == 0:
        raise ValueError(f"{name}: expected at least one image, got an empty batch")
    batching.check_finite_features(out, name)
    return out


def squared_distances(queries: Array, bank: Array) -> Array:
    """Squared Euclidean distances (Q, M) of queries (Q, d) to bank rows (M, d), float32, clamped at 0.

    For ranking: computed by expansion on data centred at the bank mean (see `nearest_neighbor`);
    recompute the distances that are reported directly.
    """
    centre = jnp.mean(bank, axis=0)
    queries = queries - centre
    bank = bank - centre
    q_sq = jnp.sum(queries * queries, axis=-1)
    b_sq = jnp.sum(bank * bank, axis=-1)
    cross = jnp.matmul(queries, bank.T, precision=_DOT_PRECISION)
    return jnp.maximum(q_sq[:, None] + b_sq[None, :] - 2.0 * cross, 0.0)


@partial(jax.jit, static_argnames=("query_chunk", "bank_chunk"))
def nearest_neighbor(
    queries: Array, bank: Array, *, query_chunk: int = 1024, bank_chunk: int = 4096
) -> tuple[Array, Array]:
    """Euclidean distance of each query to its nearest bank row, and that row's index.

    Args:
      queries: (Q, d) float.
      bank: (M, d) float, M >= 1.
      query_chunk, bank_chunk: the largest intermediate is a (query_chunk, bank_chunk) float32 block;
        queries are processed chunk by chunk (`lax.map`) and the bank is scanned chunk by chunk with a
        running minimum, so memory does not grow with Q * M.

    Returns:
      (distances (Q,) float32, indices (Q,) int32). Ties go to the lowest bank index.

    The search ranks by ||q||^2 + ||b||^2 - 2 q.b on data centred at the bank mean (distances are
    translation-invariant; centring shrinks the norms whose cancellation costs digits), and the returned
    distance is recomputed directly as ||q - b_nearest||, so it is accurate even when tiny.
    """
    queries = jnp.asarray(queries, jnp.float32)
    bank = jnp.asarray(bank, jnp.float32)
    if queries.ndim != 2:
        raise ValueError(f"queries: expected shape (Q, d), got {queries.shape}")
    n_query, dim = queries.shape
    if bank.ndim != 2 or bank.shape[1] != dim or bank.shape[0] == 0:
        raise ValueError(f"bank: expected shape (M>=1, {dim}), got {bank.shape}")
    n_bank = bank.shape[0]
    centre = jnp.mean(bank, axis=0)
    q_chunk = max(1, min(query_chunk, n_query))
    b_chunk = max(1, min(bank_chunk, n_bank))
    n_q_chunks = -(-n_query // q_chunk)
    n_b_chunks = -(-n_bank // b_chunk)

    q_pad = jnp.pad(queries, ((0, n_q_chunks * q_chunk - n_query), (0, 0)))
    b_pad = jnp.pad(bank - centre, ((0, n_b_chunks * b_chunk - n_bank), (0, 0)))
    b_sq = jnp.sum(b_pad * b_pad, axis=-1)
    # Padded bank rows get an infinite norm so they can never be the minimum.
    b_sq = jnp.where(jnp.arange(b_pad.shape[0]) < n_bank, b_sq, jnp.inf)
    bank_blocks = b_pad.reshape(n_b_chunks, b_chunk, dim)
    bank_sq_blocks = b_sq.reshape(n_b_chunks, b_chunk)
    offsets = jnp.arange(n_b_chunks, dtype=jnp.int32) * b_chunk

    def one_query_chunk(raw_q: Array) -> tuple[Array, Array]:
        q = raw_q - centre
        q_sq = jnp.sum(q * q, axis=-1)

        def scan_bank(carry, block):
            best_d2, best_idx = carry
            b, bsq, offset = block
            cross = jnp.matmul(q, b.T, precision=_DOT_PRECISION)
            d2 = q_sq[:, None] + bsq[None, :] - 2.0 * cross
            local = jnp.argmin(d2, axis=1).astype(jnp.int32)
            local_d2 = jnp.take_along_axis(d2, local[:, None], axis=1)[:, 0]
            better = local_d2 < best_d2  # strict: an earlier chunk keeps ties
            return (
                jnp.where(better, local_d2, best_d2),
                jnp.where(better, local + offset, best_idx),
            ), None

        init = (jnp.full((q_chunk,), jnp.inf, jnp.float32), jnp.zeros((q_chunk,), jnp.int32))
        (_, best_idx), _ = lax.scan(scan_bank, init, (bank_blocks, bank_sq_blocks, offsets))
        diff = raw_q - bank[best_idx]  # the uncentred inputs: duplicates give exactly 0
        return jnp.sqrt(jnp.sum(diff * diff, axis=-1)), best_idx

    dist, idx = lax.map(one_query_chunk, q_pad.reshape(n_q_chunks, q_chunk, dim))
    return dist.reshape(-1)[:n_query], idx.reshape(-1)[:n_query]


def model_config(config: BaselineConfig, levels: tuple[int, ...] | None = None, fusion: str = "sum") -> Any:
    """The `subspace_jax.Config` with a baseline's backbone, input size, levels and sigma, for calling the
    model's `fuse_maps`; no reconstruction is run with it."""
    return model_lib.Config(
        backbone=config.backbone,
        image_size=config.image_size,
        crop=config.crop,
        levels=config.levels if levels is None else levels,
        sampling="none",
        fusion=fusion,
        sigma=config.sigma,
    )


def fuse_level_maps(level_maps: Mapping[str, Array], config: BaselineConfig, fusion: str) -> Array:
    """Level maps {"level<l>": (B, h_l, w_l)} -> (B, S, S) through the model's ``fuse_maps``.

    Bilinear upsampling to S = config.output_size, fusion ("sum" | "mean" | "product"), Gaussian blur
    with config.sigma: exactly the subspace model's post-processing.
    """
    levels = tuple(int(key.removeprefix("level")) for key in level_maps)
    size = config.output_size
    maps, _ = model_lib.fuse_maps(level_maps, (size, size), model_config(config, levels, fusion))
    return maps


def extract_features(
    images: Any,
    config: BaselineConfig,
    backbone: Any,
    keys: Sequence[str],
    batch_size: int,
    progress: bool,
    desc: str,
) -> tuple[dict[str, np.ndarray], Any]:
    """Backbone features `keys` of `images` by `subspace_jax.batching.extract_features` (batched, padded).

    `backbone` None loads `config.backbone`. Returns (features, the backbone used).
    """
    if backbone is None:
        from subspace_jax import backbones

        backbone = backbones.load(config.backbone)
    features = batching.extract_features(
        images, config, backbone, tuple(keys), batch_size=batch_size, progress=progress, desc=desc
    )
    return features, backbone


def score_in_batches(
    fitted: Any,
    images: Any,
    batch_size: int,
    backbone: Any,
    progress: bool,
    timings: dict[str, float] | None,
    score_images_jit: Any,
    score_features_jit: Any,
    feature_keys: Sequence[str],
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores `images` batch by batch, as `subspace_jax.Model.score` does.

    Without `timings`, one fused `score_images_jit(fitted, apply_fn, params, batch)` per batch; with it,
    the backbone (`feature_keys` only) and `score_features_jit(fitted, features)` run as separate jitted
    stages and their wall-clock seconds are added to `timings["backbone"]` and `timings["matching"]`
    (nearest-neighbour search and maps; the first call includes compilation).

    Returns numpy maps (N, S, S) float32 and scores (N,) float32.
    """
    batch_size = batching.batch_size_for(images, batch_size)
    bound = fitted.bound_backbone(backbone)
    keys = tuple(feature_keys)

    def timed(stage: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
        return out

    def score_batch(batch: np.ndarray) -> tuple[Array, Array]:
        if timings is None:
            return score_images_jit(fitted, bound.apply_fn, bound.params, batch)
        features = timed("backbone", batching.backbone_features, bound.apply_fn, keys, bound.params, batch)
        return timed("matching", score_features_jit, fitted, features)

    maps, scores = batching.map_batches(
        score_batch, images, fitted.config, batch_size, progress=progress, desc=desc
    )
    return maps.astype(np.float32, copy=False), scores.astype(np.float32, copy=False)
