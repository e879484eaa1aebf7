"""Cached dataset features for notebooks and comparison scripts.

A ``Workbench`` loads one dataset split (optionally a small evenly spaced subset, for quick runs and
tests), and its backbone features through the runner's on-disk ``FeatureCache``, so every notebook and
``experiments/compare_mtd.py`` compute a backbone's features of a split once and reuse them.

    bench = Workbench(MTD(root), "mtd", backbone, cache_dir="results/cache", image_size=256)
    train_features = bench.features("train")          # level key -> (N, h, w, c) float32 (memory-mapped)
    test = bench.split("test")                         # Split: images, masks, labels
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from subspace_jax.data import Split, load_samples
from subspace_jax.runner.features import FeatureCache, extract_features


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

    def samples(self, split: str) -> list:
        """The split's samples, limited as configured."""
        return evenly_spaced(self.dataset.samples(split), self.limits.get(split))

    @functools.cache
    def split(self, split: str) -> Split:
        """The split's images, masks and labels at the workbench's size (loaded once)."""
        return load_samples(self.samples(split), self.image_size, self.crop, self.progress, desc=f"{self.name} {split}")

    def features(self, split: str) -> dict[str, np.ndarray]:
        """Backbone features of the split: level key -> (N, h, w, c) float32 ("pooled": (N, c)).

        Read from the cache when it holds exactly this split's image list, otherwise computed (the
        images are loaded) and stored. ``backbone_seconds[split]`` records the backbone's wall time
        when the features were computed (from the cache's record on a hit).
        """
        samples = self.samples(split)
        paths = [str(s.image_path) for s in samples]
        entry = None
        if self.cache is not None:
            # Subsets get their own entry so a quick run never overwrites the full split's features.
            limit = self.limits.get(split)
            category = self.name if limit is None or limit >= len(self.dataset.samples(split)) else f"{self.name}-{limit}"
            entry = self.cache.entry(
                self.name, category, split, self.backbone.name, self.backbone.weights_sha256, self.image_size, self.crop
            )
            hit = self.cache.load(entry, paths)
            if hit is not None:
                self.backbone_seconds[split] = hit[1]
                return hit[0]
        features, seconds = extract_features(
            self.backbone, self.split(split).images, self.batch_size, self.progress, desc=f"{self.name} {split} backbone"
        )
        self.backbone_seconds[split] = seconds
        if entry is not None:
            self.cache.store(
                entry, features, paths, seconds,
                extra={"backbone": self.backbone.name, "weights_sha256": self.backbone.weights_sha256},
            )
        return features
