"""Choosing on one half of a test set and reporting on the other: metrics on the full set and on the
halves A and B (``subspace_jax.data.split.stratified_halves``), overall and per defect type.

``halves_report(maps, scores, masks, labels, defect_types)`` returns, in %, rounded to two decimals:

- ``"<set>/all"`` and ``"<set>/<type>"`` (that type's images with the defect-free images of the same set)
  for the sets ``full``, ``A`` and ``B``: pixel AUROC, PRO, image AUROC, pixel AP (a group without
  both defective and defect-free images, possible in small subsets, is left out);
- ``"full/pooled/<type>"``: the type's share of all defect pixels, and the AUROC of its defect pixels
  against every defect-free pixel (the pooled pixel AUROC is the share-weighted mean of these).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from subspace_jax.data.split import stratified_halves
from subspace_jax.eval import metrics

__all__ = ["SETS", "four_metrics", "halves_report", "set_indices"]

SETS = ("full", "A", "B")


def set_indices(defect_types: Sequence[str], name: str, seed: int = 0) -> np.ndarray:
    """The sorted test indices of ``name``: ``"full"``, or the half ``"A"`` / ``"B"`` (stratified by defect
    type, seeded)."""
    if name == "full":
        return np.arange(len(defect_types))
    if name not in ("A", "B"):
        raise ValueError(f"set: expected one of {SETS}, got {name!r}")
    a, b = stratified_halves(list(defect_types), seed=seed)
    return a if name == "A" else b


def four_metrics(maps: np.ndarray, scores: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict:
    """Pixel AUROC, PRO, image AUROC and pixel AP (fractions)."""
    return {
        "pixel_auroc": metrics.pixel_auroc(maps, masks),
        "pro": metrics.pro(maps, masks),
        "image_auroc": metrics.image_auroc(scores, labels),
        "pixel_ap": metrics.pixel_ap(maps, masks),
    }


def halves_report(
    maps: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    defect_types: Sequence[str],
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The report of the module docstring for a whole test set's maps (N, H, W), scores (N,), masks
    (N, H, W), labels (N,) and defect types (N,) ("good" for defect-free images)."""
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool)
    labels = np.asarray(labels)
    types = np.asarray(list(defect_types))
    defects = sorted(set(types.tolist()) - {"good"})
    out: dict[str, dict[str, float]] = {}
    for name in SETS:
        index = set_indices(types.tolist(), name, seed)
        groups = {"all": index}
        for t in defects:
            groups[t] = index[(types[index] == t) | (types[index] == "good")]
        for group, idx in groups.items():
            if not labels[idx].any() or labels[idx].all():  # a small subset may miss a type in a half
                continue
            row = four_metrics(maps[idx], scores[idx], masks[idx], labels[idx])
            out[f"{name}/{group}"] = {k: round(100 * v, 2) for k, v in row.items()}
    normal = maps[~masks]
    total = masks.sum()
    for t in defects:
        idx = np.flatnonzero(types == t)
        positive = maps[idx][masks[idx]]
        values = np.concatenate([normal, positive])
        truth = np.concatenate([np.zeros(normal.size, bool), np.ones(positive.size, bool)])
        out[f"full/pooled/{t}"] = {
            "defect_pixel_share": round(100 * positive.size / total, 2),
            "pixel_auroc_vs_all_normal": round(100 * metrics.image_auroc(values, truth), 2),
        }
    return out
