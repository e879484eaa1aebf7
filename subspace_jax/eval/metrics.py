"""Anomaly localization and detection metrics: pixel AUROC, PRO, image AUROC, pixel AP, F1-max.

All metrics are threshold-free and exact (no fixed threshold grid); tied scores are handled the way
scikit-learn and MVTec's official evaluation handle them. Inputs may be NumPy or JAX arrays.

Speed: every metric needs only the sorted scores of the defect-free pixels and of the defective pixels
separately, so they use ``np.sort`` on values (vectorised) and ``np.searchsorted`` rather than one
``argsort`` over all pixels, which is an order of magnitude slower for tens of millions of pixels. Only
the defective pixels, usually a few percent, are arg-sorted (PRO needs their region weights).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.ndimage

from subspace_jax.eval import calibration

__all__ = ["evaluate", "f1_max", "image_auroc", "pixel_ap", "pixel_auroc", "pro", "threshold_metrics"]

# 8-connectivity within each image, none across images: labelling the (N, H, W) stack at once with this
# structure is the same as labelling every mask separately with a 3x3 block of ones.
_PER_IMAGE_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_PER_IMAGE_8_CONNECTIVITY[1] = True


def _as_scores(values, name: str, ndim: int, shape_text: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_text}, got shape {array.shape}")
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{name} must hold real-valued scores, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float64)
    n_nan = int(np.count_nonzero(np.isnan(array)))
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN values; scores must be comparable numbers")
    n_inf = int(np.count_nonzero(np.isinf(array)))
    if n_inf:
        # A model fed non-finite input scores -inf, which would rank the image as the least anomalous.
        first = np.unravel_index(int(np.flatnonzero(np.isinf(array))[0]), array.shape)
        raise ValueError(
            f"{name} contains {n_inf} infinite values (first at index {tuple(int(i) for i in first)}); "
            "scores must be finite, was a model given NaN or inf input?"
        )
    return array


def _as_binary(values, name: str, shape: tuple[int, ...], shape_text: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape_text} = {shape} like the scores, got {array.shape}")
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be bool (or 0/1 numbers), got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(
            f"{name} must be bool or hold only 0 and 1, got values up to {array.max()!r}; "
            f"binarise it first (e.g. {name} > 0)"
        )
    return array.astype(bool)


def _check_maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = _as_scores(maps, "maps", 3, "(N, H, W)")
    masks = _as_binary(masks, "masks", maps.shape, "(N, H, W)")
    _check_both_classes(masks, "masks", "pixels")
    return maps, masks


def _check_both_classes(positive: np.ndarray, name: str, unit: str) -> None:
    n_positive = int(np.count_nonzero(positive))
    if n_positive == 0:
        raise ValueError(f"{name} has no defective {unit} (no True/1 entries); the metric is undefined")
    if n_positive == positive.size:
        raise ValueError(f"{name} has no defect-free {unit} (no False/0 entries); the metric is undefined")


def _sorted_by_class(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending scores of the negatives and of the positives, each (n,)."""
    return np.sort(scores[~positive], axis=None), np.sort(scores[positive], axis=None)


def _mann_whitney_auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(positive > negative) + 0.5 P(tie) from ascending-sorted scores; equals the ROC area."""
    below = np.searchsorted(negatives, positives, side="left")
    at_or_below = np.searchsorted(negatives, positives, side="right")
    # Twice the Mann-Whitney U statistic, in integers so that no rounding happens before the division.
    twice_u = 2 * int(below.sum(dtype=np.int64)) + int((at_or_below - below).sum(dtype=np.int64))
    return twice_u / (2 * positives.size * negatives.size)


def _counts_at_positive_thresholds(
    negatives: np.ndarray, positives: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when thresholding at each distinct positive score, highest first.

    Precision and recall change only at those thresholds: ``score >= t`` for t a positive's score.
    Returns tp, fp: int64 (T,).
    """
    is_first = np.empty(positives.size, dtype=bool)
    is_first[0] = True
    np.not_equal(positives[1:], positives[:-1], out=is_first[1:])
    first_index = np.flatnonzero(is_first)[::-1]
    true_positives = positives.size - first_index
    false_positives = negatives.size - np.searchsorted(negatives, positives[first_index], side="left")
    return true_positives.astype(np.int64), false_positives.astype(np.int64)


def _average_precision(tp: np.ndarray, fp: np.ndarray, n_positive: int) -> float:
    """sum_k (R_k - R_{k-1}) P_k from the counts at the positive thresholds, highest first."""
    recall_step = np.diff(tp, prepend=0) / n_positive
    return float(np.sum(recall_step * (tp / (tp + fp))))


def _best_f1(tp: np.ndarray, fp: np.ndarray, n_positive: int) -> float:
    return float(np.max(2 * tp / (tp + fp + n_positive)))


def pixel_auroc(maps, masks) -> float:
    """Area under the pixel-wise ROC curve over all pixels of all maps (equals sklearn's roc_auc_score).

    maps: float (N, H, W) anomaly scores; masks: bool (N, H, W), True on defective pixels.
    """
    maps, masks = _check_maps_and_masks(maps, masks)
    return _mann_whitney_auroc(*_sorted_by_class(maps, masks))


def image_auroc(scores, labels) -> float:
    """Area under the image-level ROC curve (equals sklearn's roc_auc_score).

    scores: float (N,) image anomaly scores; labels: (N,) bool or 0/1, 1 for defective images.
    """
    scores = _as_scores(scores, "scores", 1, "(N,)")
    labels = _as_binary(labels, "labels", scores.shape, "(N,)")
    _check_both_classes(labels, "labels", "images")
    return _mann_whitney_auroc(*_sorted_by_class(scores, labels))


def pixel_ap(maps, masks) -> float:
    """Pixel-wise average precision, sum over thresholds of (R_k - R_{k-1}) P_k, without interpolation.

    Equals sklearn's average_precision_score on the flattened pixels. maps: float (N, H, W);
    masks: bool (N, H, W).
    """
    maps, masks = _check_maps_and_masks(maps, masks)
    negatives, positives = _sorted_by_class(maps, masks)
    return _average_precision(*_counts_at_positive_thresholds(negatives, positives), positives.size)


def f1_max(maps, masks) -> float:
    """Largest pixel-wise F1 score over all thresholds. maps: float (N, H, W); masks: bool (N, H, W).

    F1 = 2 tp / (tp + fp + n_defective); for a fixed tp it is largest at the highest threshold giving
    that tp, so only thresholds at defective pixels' scores need checking.
    """
    maps, masks = _check_maps_and_masks(maps, masks)
    negatives, positives = _sorted_by_class(maps, masks)
    return _best_f1(*_counts_at_positive_thresholds(negatives, positives), positives.size)


def _pro_curve(
    maps: np.ndarray, masks: np.ndarray, negatives: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The PRO-vs-FPR curve of MVTec's official ``compute_pro``, ties collapsed: (fpr (P,), pro (P,)).

    The official curve has one point per distinct score. Between two consecutive distinct scores of
    defective pixels only FPR moves, along a horizontal line; this curve keeps the two end points of
    each such line (the point just before a defective score's tie group and the point after it), which
    gives the same trapezoid area and the same interpolated end point, without sorting every pixel.
    ``negatives``: the defect-free pixels' scores already sorted ascending, when the caller has them.
    """
    labelled, n_regions = scipy.ndimage.label(masks, structure=_PER_IMAGE_8_CONNECTIVITY)
    region_of_pixel = labelled[masks]
    region_sizes = np.bincount(region_of_pixel, minlength=n_regions + 1)
    defective_scores = maps[masks]
    # Each defective pixel raises its region's overlap by 1/size; the mean over regions divides by n_regions.
    weights = 1.0 / (region_sizes[region_of_pixel] * float(n_regions))

    order = np.argsort(defective_scores, kind="stable")[::-1]
    scores_desc = defective_scores[order]
    pro_desc = np.cumsum(weights[order])
    is_last_of_tie = np.empty(scores_desc.size, dtype=bool)
    is_last_of_tie[-1] = True
    np.not_equal(scores_desc[1:], scores_desc[:-1], out=is_last_of_tie[:-1])
    group_scores = scores_desc[is_last_of_tie]
    pro_after = pro_desc[is_last_of_tie]
    pro_before = np.concatenate(([0.0], pro_after[:-1]))

    if negatives is None:
        negatives = np.sort(maps[~masks], axis=None)
    n_negatives = negatives.size
    fpr_after = (n_negatives - np.searchsorted(negatives, group_scores, side="left")) / n_negatives
    fpr_before = (n_negatives - np.searchsorted(negatives, group_scores, side="right")) / n_negatives

    fpr = np.concatenate(([0.0], np.stack([fpr_before, fpr_after], axis=1).ravel(), [1.0]))
    pro_values = np.concatenate(([0.0], np.stack([pro_before, pro_after], axis=1).ravel(), [1.0]))
    # As in the official code: summation error must not push the curve above 1.
    return np.minimum(fpr, 1.0), np.minimum(pro_values, 1.0)


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) for x in [0, x_max]; x non-decreasing, y at x_max interpolated linearly.

    Mirrors the official ``trapezoid(x, y, x_max)``: the interpolation uses the last point with
    x <= x_max and the first one after it.
    """
    n_inside = int(np.searchsorted(x, x_max, side="right"))
    x_in, y_in = x[:n_inside], y[:n_inside]
    area = float(np.sum(0.5 * (y_in[1:] + y_in[:-1]) * np.diff(x_in)))
    if n_inside < x.size and x[n_inside - 1] < x_max:
        x0, x1, y0, y1 = x[n_inside - 1], x[n_inside], y[n_inside - 1], y[n_inside]
        y_end = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += float(0.5 * (y0 + y_end) * (x_max - x0))
    return area


def pro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD's official AU-PRO).

    Regions are the 8-connected components of each mask; thresholds are all distinct scores of all maps;
    FPR counts every defect-free pixel (including those of good images); PRO is the mean overlap over
    all regions of all images. The curve is integrated with the trapezoid rule up to FPR = fpr_limit
    (its end point interpolated) and divided by fpr_limit.

    maps: float (N, H, W) anomaly scores; masks: bool (N, H, W), True on defective pixels.
    """
    real = isinstance(fpr_limit, (int, float, np.integer, np.floating)) and not isinstance(fpr_limit, bool)
    if not real or not 0.0 < fpr_limit <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}")
    fpr_limit = float(fpr_limit)
    maps, masks = _check_maps_and_masks(maps, masks)
    return _pro_area(*_pro_curve(maps, masks), fpr_limit)


def _pro_area(fpr: np.ndarray, pro_values: np.ndarray, fpr_limit: float) -> float:
    return float(_trapezoid_up_to(fpr, pro_values, fpr_limit) / fpr_limit)


def evaluate(maps, scores, masks, labels) -> dict[str, float | None]:
    """Every metric of one test set, as the runner, the workbench and the notebooks report them.

    maps: float (N, H, W) anomaly maps; scores: float (N,) image scores; masks: bool or 0/1 (N, H, W),
    True on defective pixels; labels: bool or 0/1 (N,), 1 for defective images.

    Returns {"pixel_auroc", "pro", "image_auroc", "pixel_ap", "f1_max"} as Python floats (fractions),
    each equal to its own function here (``pro`` at ``fpr_limit=0.3``); ``image_auroc`` is None when
    ``labels`` hold one class only (e.g. a test subset of defective images). The pixels are sorted
    once and shared by the pixel metrics, which matters at tens of millions of pixels.
    """
    maps = _as_scores(maps, "maps", 3, "(N, H, W)")
    scores = _as_scores(scores, "scores", 1, "(N,)")
    if scores.shape[0] != maps.shape[0]:
        raise ValueError(
            f"scores must have one value per map: shape ({maps.shape[0]},) for maps of shape {maps.shape}, "
            f"got {scores.shape}"
        )
    masks = _as_binary(masks, "masks", maps.shape, "(N, H, W)")
    labels = _as_binary(labels, "labels", scores.shape, "(N,)")
    _check_both_classes(masks, "masks", "pixels")
    negatives, positives = _sorted_by_class(maps, masks)
    tp, fp = _counts_at_positive_thresholds(negatives, positives)
    n_defective_images = int(np.count_nonzero(labels))
    return {
        "pixel_auroc": _mann_whitney_auroc(negatives, positives),
        "pro": _pro_area(*_pro_curve(maps, masks, negatives), 0.3),
        "image_auroc": (
            _mann_whitney_auroc(*_sorted_by_class(scores, labels))
            if 0 < n_defective_images < labels.size
            else None
        ),
        "pixel_ap": _average_precision(tp, fp, positives.size),
        "f1_max": _best_f1(tp, fp, positives.size),
    }


def threshold_metrics(
    maps: np.ndarray, scores: np.ndarray, masks: np.ndarray, labels: np.ndarray, thresholds: Any
) -> dict:
    """Image false-alarm rate, recall, precision and F1 at the image threshold, the F1-max oracle (the
    best F1 over all thresholds, i.e. with the labels), pixel precision, recall, IoU and false-alarm
    rate of the predicted masks (map > pixel threshold in images decided anomalous) and of the ungated
    masks (map > pixel threshold), and the ungated pixel false-alarm rate on defect-free images."""
    labels = np.asarray(labels).astype(bool)
    masks = np.asarray(masks).astype(bool)
    decided = calibration.decide(maps, scores, thresholds)
    decisions = decided.decisions
    out: dict[str, Any] = {"image_threshold": thresholds.image, "pixel_threshold": thresholds.pixel}
    out["false_alarm_rate_target"] = thresholds.false_alarm_rate
    out["false_alarm_rate"] = float(decisions[~labels].mean()) if (~labels).any() else math.nan
    tp = int((decisions & labels).sum())
    fp = int((decisions & ~labels).sum())
    out["recall"] = tp / max(int(labels.sum()), 1)
    out["precision"] = tp / max(tp + fp, 1)
    out["f1"] = 2 * tp / max(tp + fp + int(labels.sum()), 1)
    if labels.any() and (~labels).any():
        out["f1_max_oracle"] = f1_max(scores[:, None, None], labels[:, None, None])
    for name, predicted in (
        ("pixel", decided.masks),
        ("pixel_ungated", maps > thresholds.pixel),
    ):
        ptp = int((predicted & masks).sum())
        pfp = int((predicted & ~masks).sum())
        pfn = int((~predicted & masks).sum())
        out[f"{name}_precision"] = ptp / max(ptp + pfp, 1)
        out[f"{name}_recall"] = ptp / max(ptp + pfn, 1)
        out[f"{name}_iou"] = ptp / max(ptp + pfp + pfn, 1)
        out[f"{name}_false_alarm_rate"] = pfp / max(int((~masks).sum()), 1)
    # What the pixel threshold controls: the fraction of pixels of defect-free images above it (pixels
    # around defects in defective images are not like the calibration pixels: smoothing spreads the defect).
    if (~labels).any():
        out["pixel_false_alarm_rate_nominal_images"] = float((maps[~labels] > thresholds.pixel).mean())
    return out
