"""One dataset category at one input size with one backbone: its splits and their cached features.

The benchmark runner (``run_category``), the notebooks and ``experiments/compare_mtd.py`` all read a
category through a ``Workbench``: it loads a split (optionally a small evenly spaced subset, for quick
runs and tests) once, and its backbone features through the on-disk ``FeatureCache``, so a backbone's
features of a split are computed once and reused by every later run.

    bench = Workbench(MTD(root), "mtd", backbone, cache_dir="results/cache", image_size=256)
    train_features = bench.features("train")          # level key -> (N, h, w, c) float32 (memory-mapped)
    test = bench.split("test")                         # Split: images, masks, labels
    row, maps, scores = evaluation.evaluate(bench, "subspace", config)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from subspace_jax.data import Split, load_samples
from subspace_jax.runner.feature_cache import FeatureCache, FeatureKey, cached_features, features_of_images

__all__ = ["Workbench", "evenly_spaced"]


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
    """One dataset category at one input size with one backbone: splits and cached features.

    Args:
      dataset: a ``subspace_jax.data`` dataset (``.samples(split)``).
      name: the dataset's name in the cache (e.g. "mtd").
      backbone: a loaded backbone (``name``, ``weights_sha256``, ``pure()``).
      category: the category's name in the cache (default: ``name``, for single-category datasets).
      cache_dir: root of the feature cache; None computes features every time.
      image_size, crop: input resolution, as in every method's config.
      limits: split -> at most this many samples, evenly spaced (e.g. ``{"train": 24, "test": 24}``).
      batch_size: images per backbone call.
      progress: show progress bars.

    After ``features(split)``: ``backbone_seconds[split]`` is the backbone's wall time (from the cache's
    record on a hit), ``load_seconds[split]`` the time spent reading images for it (0 when they were
    loaded already or not needed), ``cache_hits[split]`` whether the cache supplied them.
    """

    def __init__(
        self,
        dataset: Any,
        name: str,
        backbone: Any,
        *,
        category: str | None = None,
        cache_dir: str | Path | None = None,
        image_size: int = 256,
        crop: int | None = None,
        limits: dict[str, int] | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        self.dataset = dataset
        self.name = name
        self.category = name if category is None else category
        self.backbone = backbone
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.image_size = image_size
        self.crop = crop
        self.limits = dict(limits or {})
        self.batch_size = batch_size
        self.progress = progress
        self.backbone_seconds: dict[str, float] = {}
        self.load_seconds: dict[str, float] = {}
        self.cache_hits: dict[str, bool] = {}
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
            self.samples(split), self.image_size, self.crop, self.progress, desc=f"{self.category} {split}"
        )

    def features(self, split: str) -> dict[str, np.ndarray]:
        """Backbone features of the split: level key -> (N, h, w, c) float32 ("pooled": (N, c)).

        Read from the cache when it holds this split's images (by content) for this backbone, otherwise
        computed and stored; computing uses the split's images if ``split`` has loaded them, else loads
        them without keeping them.
        """
        samples = self.samples(split)
        # Subsets get their own entry so a quick run never overwrites the full split's features.
        limit = self.limits.get(split)
        full = limit is None or limit >= len(self.dataset.samples(split))
        key = FeatureKey.of(
            self.backbone,
            dataset=self.name,
            category=self.category if full else f"{self.category}-{limit}",
            split=split,
            image_size=self.image_size,
            crop=self.crop,
        )
        self.load_seconds[split] = 0.0

        def compute() -> tuple[dict[str, np.ndarray], float]:
            if split in self._splits:
                loaded = self._splits[split]
            else:
                start = time.perf_counter()
                loaded = self._load(split)
                self.load_seconds[split] = time.perf_counter() - start
            return features_of_images(
                self.backbone,
                loaded.images,
                self.batch_size,
                self.progress,
                desc=f"{self.category} {split} backbone",
            )

        got = cached_features(self.cache, key, [s.image_path for s in samples], compute)
        self.backbone_seconds[split] = got.seconds
        self.cache_hits[split] = got.hit
        return got.features
