"""Cached dataset features for notebooks and comparison scripts.

A ``Workbench`` loads one dataset split (optionally a small evenly spaced subset, for quick runs and
tests), and its backbone features through the runner's on-disk ``FeatureCache``, so every notebook and
``experiments/compare_mtd.py`` compute a backbone's features of a split once and reuse them.

    bench = Workbench(MTD(root), "mtd", backbone, cache_dir="results/cache", image_size=256)
    train_features = bench.features("train")          # level key -> (N, h, w, c) float32 (memory-mapped)
    test = bench.split("test")                         # Split: images, masks, labels
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from subspace_jax.data import Split, load_samples
from subspace_jax.runner.features import FeatureCache, FeatureKey, cached_features, extract_features


def evenly_spaced(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread evenly over ``items`` (all of them when ``limit`` is None).

    Spreading (rather than the first ``limit``) keeps every defect class of a sorted test list.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit: expected None or an int >= 1, got {limit!r}")
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


class Workbench:
    """One dataset at one input size with one backbone: splits and cached features.

    Args:
      dataset: a ``subspace_jax.data`` dataset (``.samples(split)``).
      name: the dataset's name in the cache (e.g. "mtd").
      backbone: a loaded backbone (``name``, ``weights_sha256``, ``pure()``).
      cache_dir: root of the feature cache; None computes features every time.
      image_size, crop: input resolution, as in ``subspace_jax.Config``.
      limits: split -> at most this many samples, evenly spaced (e.g. ``{"train": 24, "test": 24}``).
      batch_size: images per backbone call.
      progress: show progress bars.
    """

    def __init__(
        self,
        dataset: Any,
        name: str,
        backbone: Any,
        *,
        cache_dir: str | Path | None,
        image_size: int = 256,
        crop: int | None = None,
        limits: dict[str, int] | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        self.dataset = dataset
        self.name = name
        self.backbone = backbone
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.image_size = image_size
        self.crop = crop
        self.limits = dict(limits or {})
        self.batch_size = batch_size
        self.progress = progress
        self.backbone_seconds: dict[str, float] = {}
        self._splits: dict[str, Split] = {}

    def samples(self, split: str) -> list:
        """The split's samples, limited as configured."""
        return evenly_spaced(self.dataset.samples(split), self.limits.get(split))

    def split(self, split: str) -> Split:
        """The split's images, masks and labels at the workbench's size, loaded once and kept by this
        workbench (``forget`` drops them; they go with the workbench)."""
        if split not in self._splits:
            self._splits[split] = self._load(split)
        return self._splits[split]

    def forget(self, split: str | None = None) -> None:
        """Drop the loaded images of ``split`` (all splits when None); ``split`` reloads them."""
        if split is None:
            self._splits.clear()
        else:
            self._splits.pop(split, None)

    def _load(self, split: str) -> Split:
        return load_samples(
            self.samples(split), self.image_size, self.crop, self.progress, desc=f"{self.name} {split}"
        )

    def features(self, split: str) -> dict[str, np.ndarray]:
        """Backbone features of the split: level key -> (N, h, w, c) float32 ("pooled": (N, c)).

        Read from the cache when it holds this split's images (by content) for this backbone, otherwise
        computed and stored; computing uses the split's images if ``split`` has loaded them, else loads
        them without keeping them. ``backbone_seconds[split]`` records the backbone's wall time when the
        features were computed (from the cache's record on a hit).
        """
        samples = self.samples(split)
        # Subsets get their own entry so a quick run never overwrites the full split's features.
        limit = self.limits.get(split)
        full = limit is None or limit >= len(self.dataset.samples(split))
        key = FeatureKey.of(
            self.backbone,
            dataset=self.name,
            category=self.name if full else f"{self.name}-{limit}",
            split=split,
            image_size=self.image_size,
            crop=self.crop,
        )

        def compute() -> tuple[dict[str, np.ndarray], float]:
            loaded = self._splits[split] if split in self._splits else self._load(split)
            return extract_features(
                self.backbone,
                loaded.images,
                self.batch_size,
                self.progress,
                desc=f"{self.name} {split} backbone",
            )

        got = cached_features(self.cache, key, [s.image_path for s in samples], compute)
        self.backbone_seconds[split] = got.seconds
        return got.features


def bank_bytes(model: Any) -> int:
    """Bytes of every array a fitted model (a pytree) holds: banks, Gram matrices, coresets."""
    import jax

    return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(model) if hasattr(leaf, "nbytes")))


def evaluate(
    bench: Workbench, method_name: str, config: Any, *, batch_size: int = 16, progress: bool = True
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Fit ``method_name`` ("subspace" | "patchcore" | "spade") with ``config`` on the bench's cached
    training features, score its test features and compute the metrics.

    The scorer is compiled on one untimed batch first, so the per-image times are steady-state.

    Returns (row, maps (N, S, S) float32, scores (N,)); ``row`` holds the metrics (fractions),
    ``bank_seconds`` (building the bank from features), ``fit_seconds`` (training backbone + bank),
    ``method_seconds_per_image`` (scoring from features), ``seconds_per_image`` (backbone + scoring),
    ``bank_bytes``, ``stage_seconds`` (summed over the test set), ``n_train``, ``n_test`` and the config.
    """
    import time

    import jax

    from subspace_jax.engine import scorer as scoring
    from subspace_jax.eval import metrics
    from subspace_jax.runner import core

    method = core.resolve_method(method_name)
    train = bench.features("train")
    start = time.perf_counter()
    model = method.fit_features(
        train, config, backbone_name=bench.backbone.name, weights_sha256=bench.backbone.weights_sha256
    )
    jax.block_until_ready(model)
    bank_seconds = time.perf_counter() - start
    test = bench.split("test")  # before its features, which then reuse these images if computed
    test_features = bench.features("test")
    warm = {key: value[:batch_size] for key, value in test_features.items()}
    scoring.score_in_batches(method.scorer, model, warm, batch_size=batch_size, timings={}, progress=False)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    maps, scores = scoring.score_in_batches(
        method.scorer,
        model,
        test_features,
        batch_size=batch_size,
        timings=stages,
        progress=progress,
        desc=method_name,
    )
    score_seconds = time.perf_counter() - start
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
        "bank_bytes": bank_bytes(model),
        "stage_seconds": stages,
        "n_train": int(next(iter(train.values())).shape[0]),
        "n_test": n_test,
    }
    return row, maps, scores


def default_config(
    method_name: str, dataset: str = "mtd", *, config_file: str | None = None, **overrides: Any
) -> Any:
    """``method_name``'s config for ``dataset`` as the runner starts from it (MTD's subspace default is
    ``experiments/configs/mtd_default.py``), or from ``config_file`` (a name in ``experiments/configs``
    such as ``"mtd_paper"``, or a path), then ``overrides``.

    The ablation notebooks start from ``config_file="mtd_paper"``: they study the paper's method.
    """
    import dataclasses

    from subspace_jax.configs import loading as config_files
    from subspace_jax.runner import core, datasets

    method = core.resolve_method(method_name)
    if config_file is None:
        spec = {"mtd": datasets.MTD, "mvtec": datasets.MVTEC, "btad": datasets.BTAD}[dataset]
        base = core.default_config(spec, method)
    else:
        path = Path(config_file)
        if path.suffix != ".py":
            path = config_files.CONFIG_DIR / f"{config_file}.py"
        base = config_files.load(path)
        if not isinstance(base, method.config_cls):
            raise ValueError(
                f"config_file: {path} holds a {type(base).__name__}, not a config of {method_name!r}"
            )
    return dataclasses.replace(base, **overrides)
