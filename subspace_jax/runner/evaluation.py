"""The one fit → score → metrics path of the benchmarks, the notebooks and the comparison scripts.

``fit_and_score`` fits a method on training features and scores test features with per-stage timings;
``evaluate(bench, method, config)`` does it on a ``Workbench``'s cached features and adds the metrics and
the costs. ``default_config`` is the config a benchmark starts from for a dataset and a method.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from subspace_jax import configs
from subspace_jax.engine.scorer import score_in_batches
from subspace_jax.eval import metrics
from subspace_jax.methods import registry

__all__ = [
    "DATASET_CONFIGS",
    "DEFAULT_METHODS",
    "default_config",
    "default_method",
    "evaluate",
    "fit_and_score",
    "resolve_method",
]

# The config a benchmark starts from, per dataset and method, when it is not the method's defaults: MTD's
# subspace default is the packaged mtd_default (issue 14: the paper's MTD setting with a PCA-projected
# bfloat16 bank, k = 20 and a top-1% image score, chosen on half A of the test set), its fusion default
# mtd_fusion (issue 22: mtd_default and PatchCore fused, chosen on half A).
DATASET_CONFIGS: dict[str, dict[str, str]] = {"mtd": {"subspace": "mtd_default", "fusion": "mtd_fusion"}}
# The method a benchmark runs without --method or --config: the subspace method, except on MTD, where the
# fusion beat PatchCore on half A on all four metrics (docs/results/mtd_fusion_efficientnet_lite0.md).
DEFAULT_METHODS: dict[str, str] = {"mtd": "fusion"}


def default_method(dataset: str | None = None) -> registry.Method:
    """The method a benchmark of ``dataset`` runs when none is named (``DEFAULT_METHODS``)."""
    return registry.get(DEFAULT_METHODS.get(dataset or "", "subspace"))


def resolve_method(name: str) -> registry.Method:
    """The registry entry of ``--method name`` (ValueError naming the flag otherwise)."""
    try:
        return registry.get(name)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None


def default_config(method: str | registry.Method, dataset: str | None = None, **overrides: Any) -> Any:
    """``method``'s config for ``dataset`` as the benchmarks start from it (its packaged config in
    ``DATASET_CONFIGS``, else the method's defaults), with ``overrides`` replacing fields."""
    method = resolve_method(method) if isinstance(method, str) else method
    name = DATASET_CONFIGS.get(dataset or "", {}).get(method.name)
    base = method.config_cls() if name is None else configs.load(name)
    return dataclasses.replace(base, **overrides)


def fit_and_score(
    method: registry.Method,
    config: Any,
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]],
    *,
    backbone: Any,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "scoring",
    warmup: bool = False,
    mesh: Any = None,
    execution: Any = None,
) -> tuple[Any, np.ndarray, np.ndarray, dict[str, float]]:
    """Fit ``method`` with ``config`` on training features, score the test features.

    Args:
      train, test: backbone features (level key -> (N, ...)) of the training and test images; ``test``
        may be a function returning them, called after fitting, once the training features are dropped
        (when the caller holds no other reference, the two are never in memory together).
      backbone: identifies the features' backbone (``name``, ``weights_sha256``) for the model.
      warmup: score one batch first, timed as ``compile``, so that the stage times are steady-state
        (without it the first batch's time includes compilation).
      mesh, execution: as for ``model.score``.

    Returns:
      (model, maps (N, S, S), scores (N,), timings): ``fit`` (building the model from the features,
      seconds), each scoring stage's seconds under its name, and ``score_total`` (the stages plus
      batching and host copies).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model = method.fit_features(
        train, config, backbone_name=backbone.name, weights_sha256=backbone.weights_sha256
    )
    jax.block_until_ready(model)
    timings["fit"] = time.perf_counter() - start
    del train
    test = test() if callable(test) else test
    options = dict(batch_size=batch_size, mesh=mesh, execution=execution)
    if warmup:  # compiles every stage: timed on its own, so the stage times are steady-state
        first = {key: value[:batch_size] for key, value in test.items()}
        start = time.perf_counter()
        score_in_batches(model, first, timings={}, progress=False, **options)
        timings["compile"] = time.perf_counter() - start
    start = time.perf_counter()
    maps, scores = score_in_batches(model, test, timings=timings, progress=progress, desc=desc, **options)
    timings["score_total"] = time.perf_counter() - start
    return model, maps, scores, timings


def evaluate(
    bench: Any, method_name: str, config: Any, *, batch_size: int = 16, progress: bool = True
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Fit ``method_name`` with ``config`` on the bench's cached training features, score its test
    features (after one untimed batch, so the per-image times are steady-state) and compute the metrics.

    Returns (row, maps (N, S, S) float32, scores (N,)); ``row`` holds the metrics (fractions),
    ``bank_seconds`` (building the model from features), ``fit_seconds`` (training backbone + bank),
    ``method_seconds_per_image`` (scoring from features), ``seconds_per_image`` (backbone + scoring),
    ``bank_bytes``, ``stage_seconds`` (summed over the test set), ``n_train``, ``n_test`` and the config.
    """
    method = resolve_method(method_name)
    train = bench.features("train")
    test = bench.split("test")  # before its features, which then reuse these images if computed
    test_features = bench.features("test")
    model, maps, scores, timings = fit_and_score(
        method,
        config,
        train,
        test_features,
        backbone=bench.backbone,
        batch_size=batch_size,
        progress=progress,
        desc=method_name,
        warmup=True,
    )
    bank_seconds = timings.pop("fit")
    timings.pop("compile")
    score_seconds = timings.pop("score_total")
    n_test = int(maps.shape[0])
    row = {
        "method": method_name,
        "config": config.to_dict(),
        **metrics.evaluate(maps, scores, test.masks, test.labels),
        "backbone_train_seconds": bench.backbone_seconds["train"],
        "bank_seconds": bank_seconds,
        "fit_seconds": bench.backbone_seconds["train"] + bank_seconds,
        "backbone_seconds_per_image": bench.backbone_seconds["test"] / n_test,
        "method_seconds_per_image": score_seconds / n_test,
        "seconds_per_image": (bench.backbone_seconds["test"] + score_seconds) / n_test,
        "bank_bytes": model.nbytes,
        "stage_seconds": timings,
        "n_train": int(next(iter(train.values())).shape[0]),
        "n_test": n_test,
    }
    return row, maps, scores
