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

__all__ = ["SubspaceModel", "gram"]


@jax.jit
def gram(features: Array) -> Array:
    """(N, ...) float -> (N, N) float32 Gram matrix of the flattened rows, at full float32 precision."""
    flat = features.reshape(features.shape[0], -1).astype(jnp.float32)
    return jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SubspaceModel(FittedModel):
    """A fitted subspace model: per-level banks and Gram matrices (leaves) plus static metadata.

    Attributes:
      banks: level key -> (N, h_l, w_l, c_l) features of the N training images (or learned atoms) in
        ``bank_dtype``; the bank matrix of the paper is ``D_l = banks[key].reshape(N, d_l)``,
        d_l = h_l·w_l·c_l.
      grams: level key -> (N, N) float32 ``D_l D_lᵀ`` computed from float32 features.
      sampling_bank: (N, d_s) sampling-level features in ``bank_dtype``; None unless
        ``config.sampling == "subspace"``.
      sampling_gram: (N, N) float32 Gram matrix of the sampling-level features, or None.
      projections: level key -> (c_l, c′_l) float32 channel projection (``config.projection``), applied
        to that level's features (after aggregation) before reconstruction; empty (None when loaded
        from a checkpoint) without one.
      config: the ``SubspaceConfig`` (static).
      backbone_name: the backbone that produced the features (static).
      weights_sha256: hex sha256 of that backbone's weights, None when unknown (static).
      thresholds: ``Thresholds`` for ``predict``, None until calibrated (static; the scorer never reads
        them, so calibrating does not recompile scoring).
    """

    banks: dict[str, Array]
    grams: dict[str, Array]
    sampling_bank: Array | None
    sampling_gram: Array | None
    projections: dict[str, Array] | None
    config: SubspaceConfig = dataclasses.field(metadata=dict(static=True))
    backbone_name: str = dataclasses.field(metadata=dict(static=True))
    weights_sha256: str | None = dataclasses.field(metadata=dict(static=True))
    thresholds: Any = dataclasses.field(default=None, metadata=dict(static=True))

    scorer: ClassVar[Any] = scorer_lib.SCORER

    @property
    def n_train(self) -> int:
        """N, the number of bank rows per level (training images, or learned atoms)."""
        return next(iter(self.grams.values())).shape[0]

    def partition_specs(self) -> SubspaceModel:
        """Bank rows split over a mesh's ``"bank"`` axis; Gram matrices and projections replicated."""
        return dataclasses.replace(
            self,
            banks={key: P("bank") for key in self.banks},
            grams={key: P() for key in self.grams},
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
    ) -> SubspaceModel:
        """The model whose banks are ``levels`` (key -> (N, h, w, c) float features, as stored: after
        aggregation and projection) and ``sampling`` ((N, ...) or None), in ``config.bank_dtype``, with
        Gram matrices of the float32 features."""
        dtype = jnp.dtype(config.bank_dtype)
        banks = {key: jnp.asarray(value, dtype) for key, value in levels.items()}
        grams = {key: gram(value) for key, value in levels.items()}
        sampling_bank = sampling_gram = None
        if sampling is not None:
            flat = sampling.reshape(sampling.shape[0], -1)
            sampling_bank = jnp.asarray(flat, dtype)
            sampling_gram = gram(flat)
        return cls(
            banks, grams, sampling_bank, sampling_gram, projections, config, backbone_name, weights_sha256
        )
