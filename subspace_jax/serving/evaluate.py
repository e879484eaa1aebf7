"""A calibrated model on a labelled test set: the metrics and the report behind ``subspace-jax evaluate``.

``evaluate_model`` scores a dataset's test split (``subspace_jax.data.registry``), computes pixel/image
AUROC, PRO, AP and F1-max where the labels allow, and the decision metrics at the model's thresholds
(``subspace_jax.eval.metrics.threshold_metrics``), and writes ``metrics.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from subspace_jax._io import atomic_write_text, jsonable
from subspace_jax.data import registry as datasets
from subspace_jax.data.images import shown
from subspace_jax.eval import calibration, metrics
from subspace_jax.ops.execution import DEFAULT_BATCH_SIZE
from subspace_jax.serving import report
from subspace_jax.serving.predict import CALIBRATION_NOTE

__all__ = ["open_dataset", "evaluate_model"]


def open_dataset(name: str, root: Path, category: str | None) -> Any:
    """The dataset ``name`` (``mvtec``, ``btad``, ``mtd``, ``folder``) at ``root``; ``category`` may be
    omitted for single-category datasets. ValueError naming the flag otherwise."""
    spec = datasets.get(name)
    if category is None:
        if len(spec.categories) > 1:
            raise ValueError(f"--category: {spec.title} needs one of {', '.join(spec.categories)}")
        category = spec.categories[0]
    if category not in spec.categories:
        raise ValueError(f"--category: expected one of {', '.join(spec.categories)}, got {category!r}")
    return spec.open(Path(root), category)


def evaluate_model(
    model: Any,
    dataset: Any,
    out: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    report_limit: int = 100,
    progress: bool = True,
    labels_text: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Score ``dataset``'s test split with the calibrated ``model``; write ``out/metrics.json`` and
    ``out/report.html``; return the metrics (fractions, plus counts and the thresholds)."""
    thresholds = calibration.require_thresholds(model)
    config = model.config
    test = dataset.load("test", image_size=config.image_size, crop=config.crop, progress=progress)
    start = time.perf_counter()
    maps, scores = model.score(test.images, batch_size, progress=progress)
    seconds = time.perf_counter() - start
    labels = test.labels.astype(bool)
    result: dict[str, Any] = dict(labels_text or {})
    result["n_test"] = len(labels)
    result["n_defective"] = int(labels.sum())
    result["score_seconds_per_image"] = seconds / len(labels)
    if labels.any() and (~labels).any():
        result["image_auroc"] = metrics.image_auroc(scores, labels)
    if test.masks.any():
        result["pixel_auroc"] = metrics.pixel_auroc(maps, test.masks)
        result["pro"] = metrics.pro(maps, test.masks)
        result["pixel_ap"] = metrics.pixel_ap(maps, test.masks)
        result["pixel_f1_max"] = metrics.f1_max(maps, test.masks)
    result |= metrics.threshold_metrics(maps, scores, test.masks, labels, thresholds)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(jsonable(result), indent=2) + "\n")
    decided = calibration.decide(maps, scores, thresholds)
    files = [p for p in test.paths if p is not None]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in files]) if files else ""
    top = report.TopK(report_limit)
    for i in range(len(labels)):

        def build(i: int = i) -> Any:
            heat = calibration.normalize(maps[i], thresholds.pixel)
            picture = report.overlay(test.images[i], heat, decided.masks[i])
            truth = test.defect_types[i] if labels[i] else "good"
            return report.GalleryItem(
                path=shown(os.path.relpath(test.paths[i], root))
                if test.paths[i] is not None
                else f"test image {i}",
                score=float(scores[i]),
                normalized_score=float(decided.normalized_scores[i]),
                anomalous=bool(decided.decisions[i]),
                image_uri=report.data_uri(report.thumbnail(test.images[i])),
                overlay_uri=report.data_uri(report.thumbnail(picture)),
                note=f"ground truth: {truth}",
            )

        top.offer(float(scores[i]), i, build)
    metric_text = {k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in result.items()}
    report.write_report(
        out / "report.html",
        title=f"subspace-jax evaluation on {result.get('dataset', 'a test set')}",
        items=top.items(),
        scores=scores,
        threshold=thresholds.image,
        summary={
            "model": str(result.get("model_dir", "")),
            "dataset": str(result.get("dataset", "")),
            "test images": str(len(labels)),
            "false-alarm rate": thresholds.describe_rate(),
        },
        note=CALIBRATION_NOTE,
        nominal_scores=thresholds.nominal_scores,
        metrics=metric_text,
        defective=labels,
        full_list=None,
    )
    return result
