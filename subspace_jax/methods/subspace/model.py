"""``SubspaceModel``: the fitted subspace model, a pytree of per-level banks plus static metadata."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from subspace_jax.methods.base import FittedModel
from subspace_jax.methods.subspace import scorer as scorer_lib
from subspace_jax.methods.subspace.config import SubspaceConfig

Array = jax.Array

__all__ = ["SubspaceModel", "gram", "keeps_grams"]


@jax.jit
def gram(features: Array) -> Array:
    """(N, ...) float -> (N, N) float32 Gram matrix of the flattened rows, at full float32 precision."""
    flat = features.reshape(features.shape[0], -1).astype(jnp.float32)
    return jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)


def keeps_grams(n: int, row_bytes: int, n_banks: int) -> bool:
    """Whether a model of n rows keeps its Gram matrices: while the n_banks (n, n) float32 matrices take
    no more memory than the banks (``row_bytes`` per row, over all banks). They cost N² and save the
    pursuit from computing m x m Gram submatrices from gathered rows, 5-10x slower at MTD's shapes
    (``benchmarks/scale.md``); so small banks keep them and large ones grow linearly in N."""
    return n * 4 * n_banks <= row_bytes


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SubspaceModel(FittedModel):
    """A fitted subspace model: per-level banks and Gram matrices (leaves) plus static metadata.

    Attributes:
      banks: level key -> (N, h_l, w_l, c_l) features of the N training images (or learned atoms) in
        ``bank_dtype``; the bank matrix of the paper is ``D_l = banks[key].reshape(N, d_l)``,
        d_l = h_l·w_l·c_l.
      grams: level key -> (N, N) float32 ``D_l D_lᵀ`` computed from float32 features, kept while all
        the Gram matrices together take no more memory than the banks (``keeps_grams``): they make the
        pursuit 5-10x faster at MTD's shapes; beyond that size (N > 2720 for ``mtd_default``) None,
        and the pursuit computes the Gram columns it needs from the rows (no N × N state).
      sampling_bank: (N, d_s) sampling-level features in ``bank_dtype``; None unless
        ``config.sampling == "subspace"``.
      sampling_gram: (N, N) float32 Gram matrix of the sampling-level features, or None (no sampling
        bank, or no Gram matrices kept).
      projections: level key -> (c_l, c′_l) float32 channel projection (``config.projection``), applied
        to that level's features (after aggregation) before reconstruction; empty (None when loaded
        from a checkpoint) without one.
      config: the ``SubspaceConfig`` (static).
      backbone_name: the backbone that produced the features (static).
      weights_sha256: hex sha256 of that backbone's weights, None when unknown (static).
      n_train: N, the real bank rows (static; a bank sharded over a mesh is padded beyond N).
      thresholds: ``Thresholds`` for ``predict``, None until calibrated (static; the scorer never reads
        them, so calibrating does not recompile scoring).
    """

    banks: dict[str, Array]
    grams: dict[str, Array] | None
    sampling_bank: Array | None
    sampling_gram: Array | None
    projections: dict[str, Array] | None
    config: SubspaceConfig = dataclasses.field(metadata=dict(static=True))
    backbone_name: str = dataclasses.field(metadata=dict(static=True))
    weights_sha256: str | None = dataclasses.field(metadata=dict(static=True))
    n_train: int = dataclasses.field(metadata=dict(static=True))
    thresholds: Any = dataclasses.field(default=None, metadata=dict(static=True))

    scorer: ClassVar[Any] = scorer_lib.SCORER

    def partition_specs(self) -> SubspaceModel:
        """Bank rows split over a mesh's ``"bank"`` axis; Gram matrices and projections replicated."""
        return dataclasses.replace(
            self,
            banks={key: P("bank") for key in self.banks},
            grams=None if self.grams is None else {key: P() for key in self.grams},
            sampling_bank=None if self.sampling_bank is None else P("bank"),
            sampling_gram=None if self.sampling_gram is None else P(),
            projections=None if self.projections is None else {key: P() for key in self.projections},
        )

    @classmethod
    def from_levels(
        cls,
        levels: dict[str, Any],
        sampling: Any,
        projections: dict[str, Any],
        config: SubspaceConfig,
        backbone_name: str,
        weights_sha256: str | None,
        keep_grams: bool | None = None,
    ) -> SubspaceModel:
        """The model whose banks are ``levels`` (key -> (N, h, w, c) float features, as stored: after
        aggregation and projection) and ``sampling`` ((N, ...) or None), in ``config.bank_dtype``, with
        Gram matrices of the float32 features when ``keep_grams`` (default: ``keeps_grams``)."""
        dtype = jnp.dtype(config.bank_dtype)
        n = next(iter(levels.values())).shape[0]
        flats = {key: value.reshape(n, -1) for key, value in levels.items()}
        if sampling is not None:
            flats["sampling"] = sampling.reshape(n, -1)
        row_bytes = sum(flat.shape[1] for flat in flats.values()) * dtype.itemsize
        if keep_grams is None:
            keep_grams = keeps_grams(n, row_bytes, len(flats))
        banks = {key: jnp.asarray(value, dtype) for key, value in levels.items()}
        grams = {key: gram(value) for key, value in levels.items()} if keep_grams else None
        sampling_bank = sampling_gram = None
        if sampling is not None:
            sampling_bank = jnp.asarray(flats["sampling"], dtype)
            sampling_gram = gram(flats["sampling"]) if keep_grams else None
        return cls(
            banks, grams, sampling_bank, sampling_gram, projections, config, backbone_name, weights_sha256, n
        )
