"""Backbone feature extraction in fixed-size batches, and an on-disk cache of the features as .npy files.

The cache key is (dataset, category, split, backbone name, weights SHA-256, image size, crop): change any of
them and the features are computed afresh. Each entry is a folder holding one ``<level>.npy`` per feature
level and ``meta.json`` (the image paths, in order, and the seconds the backbone took), written atomically.
An entry whose image list differs from the current split's is recomputed, never reused.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from subspace_jax import batching
from subspace_jax._io import atomic_directory

CACHE_FORMAT = 1


def extract_features(
    backbone: Any, images: np.ndarray, batch_size: int = 16, progress: bool = True, desc: str = "features"
) -> tuple[dict[str, np.ndarray], float]:
    """Run ``backbone`` over uint8 images (N,H,W,3) in batches of ``batch_size``: every level it returns.

    The batching (last batch padded, so the jitted forward pass compiles once) is the model's own
    (``subspace_jax.batching``). Returns ({level: (N, ...) float32 array on the host}, wall seconds).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images: expected (N,H,W,3) square images, got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("images: expected at least one image, got none")
    bound = batching.BoundBackbone.of(backbone)
    keys = tuple(jax.eval_shape(bound.apply_fn, bound.params, images[:1]))  # every level, nothing computed
    start = time.perf_counter()
    features = batching.map_batches(
        lambda batch: batching.backbone_features(bound.apply_fn, keys, bound.params, batch),
        images,
        _ImageSize(backbone.name, images.shape[1]),
        batching.batch_size_for(images, batch_size),
        progress=progress,
        desc=desc,
    )
    seconds = time.perf_counter() - start
    return {level: np.asarray(value, np.float32) for level, value in features.items()}, seconds


@dataclasses.dataclass(frozen=True)
class _ImageSize:
    """The input size of images already loaded at their final size (``batching.InputConfig``)."""

    backbone: str
    image_size: int
    crop: None = None

    @property
    def output_size(self) -> int:
        return self.image_size


def _resolved(paths: Sequence[str | Path]) -> list[str]:
    # Absolute paths, so that `--data-root ../data` and `--data-root /abs/data` share one cache entry.
    return [str(Path(p).resolve()) for p in paths]


def _safe(part: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in part)
    return cleaned or "_"


class FeatureCache:
    """Backbone features on disk under ``root``, reused across runs (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(
        self,
        dataset: str,
        category: str,
        split: str,
        backbone: str,
        weights_sha256: str,
        image_size: int,
        crop: int | None,
    ) -> Path:
        """The folder of one cache entry."""
        setting = f"{_safe(backbone)}-{weights_sha256[:16]}-size{image_size}-crop{crop if crop else 'none'}"
        return self.root / _safe(dataset) / _safe(category) / _safe(split) / setting

    def load(self, entry: Path, paths: Sequence[str | Path]) -> tuple[dict[str, np.ndarray], float] | None:
        """The cached (features, backbone seconds) if ``entry`` holds the features of exactly ``paths``.

        Arrays are memory-mapped read-only. None when absent or stale.
        """
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if meta.get("format") != CACHE_FORMAT or meta.get("paths") != _resolved(paths):
            return None
        features = {}
        for level in meta["levels"]:
            array = np.load(entry / f"{level}.npy", mmap_mode="r", allow_pickle=False)
            if array.shape[0] != len(paths):
                return None
            features[level] = array
        return features, float(meta["seconds"])

    def store(
        self,
        entry: Path,
        features: Mapping[str, np.ndarray],
        paths: Sequence[str | Path],
        seconds: float,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write ``features`` (level -> (N, ...) arrays for the N ``paths``) to ``entry``, atomically."""
        for level, array in features.items():
            if array.shape[0] != len(paths):
                raise ValueError(
                    f"features[{level!r}]: expected {len(paths)} rows (one per image), got {array.shape[0]}"
                )
        with atomic_directory(entry) as tmp:
            for level, array in features.items():
                np.save(tmp / f"{_safe(level)}.npy", np.ascontiguousarray(array), allow_pickle=False)
            meta = {
                "format": CACHE_FORMAT,
                "levels": [_safe(level) for level in features],
                "paths": _resolved(paths),
                "seconds": seconds,
                **(extra or {}),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
