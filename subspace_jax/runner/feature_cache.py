"""Backbone feature extraction in fixed-size batches, and an on-disk cache of the features as .npy files.

One path reads or fills the cache: ``cached_features(cache, key, paths, compute)`` (``cache`` may be None).
An entry is reused only when all of these match what it was computed from:

- the ``FeatureKey``: dataset, category, split, backbone name, weights SHA-256, the backbone's code
  version (``backbones.FEATURES_VERSION`` and the spec's ``implementation_version``), image size, crop;
- the SHA-256 of every image file's bytes, in order (so images replaced under the same names are
  recomputed; the files are read, which takes about 0.2 s for MTD's 1344 images);
- ``CACHE_FORMAT``, which covers the entry layout and the image loading and extraction code.

Each entry is a folder (``FeatureCache.entry``) holding one ``<level>.npy`` per feature level and
``meta.json`` (the key, the image paths and hashes, the backbone seconds, and each array's shape and
CRC-32), replaced atomically. On reading, every array's header, size, dtype, shape and CRC-32 are checked:
a truncated, reordered or otherwise damaged entry is reported in a ``FeatureCacheWarning`` naming the
file, then recomputed and replaced. CRC-32 finds accidental damage at about 1 GB/s; it is no defence
against someone who can write the cache (they could rewrite meta.json too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from subspace_jax._io import atomic_directory
from subspace_jax.engine.batches import InputSize
from subspace_jax.engine.features import extract_features

CACHE_FORMAT = 3  # 3: images are read in their EXIF orientation
_CHUNK_BYTES = 1 << 26  # checksums read the memory-mapped arrays this much at a time


def features_of_images(
    backbone: Any, images: np.ndarray, batch_size: int = 16, progress: bool = True, desc: str = "features"
) -> tuple[dict[str, np.ndarray], float]:
    """Every feature key of ``backbone`` for uint8 images (N, S, S, 3) already at their final size, by
    ``subspace_jax.engine.features.extract_features``; returns (features, wall seconds)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images: expected (N,H,W,3) square images, got shape {images.shape}")
    start = time.perf_counter()
    features = extract_features(
        images,
        InputSize(backbone.name, images.shape[1]),
        backbone,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    return features, time.perf_counter() - start


def _safe(part: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in part)
    return cleaned or "_"


class FeatureCacheWarning(UserWarning):
    """A damaged cache entry was found; it is recomputed and replaced."""


@dataclasses.dataclass(frozen=True)
class FeatureKey:
    """What the cached features of one split depend on, besides the bytes of its image files.

    ``backbone_version``: the backbone's ``features_version`` (``backbones.features_version``).
    """

    dataset: str
    category: str
    split: str
    backbone: str
    weights_sha256: str
    backbone_version: str
    image_size: int
    crop: int | None

    @classmethod
    def of(
        cls, backbone: Any, *, dataset: str, category: str, split: str, image_size: int, crop: int | None
    ) -> FeatureKey:
        """The key of ``backbone``'s features (``name``, ``weights_sha256``, ``features_version``)."""
        return cls(
            dataset,
            category,
            split,
            backbone.name,
            backbone.weights_sha256,
            str(getattr(backbone, "features_version", "")),
            image_size,
            crop,
        )


@dataclasses.dataclass(frozen=True)
class CachedFeatures:
    """features: level -> (N, ...) float32 (memory-mapped read-only on a hit); seconds: the backbone's
    wall time when they were computed; hit: whether they came from the cache."""

    features: dict[str, np.ndarray]
    seconds: float
    hit: bool


Compute = Callable[[], "tuple[Mapping[str, np.ndarray], float]"]


def cached_features(
    cache: FeatureCache | None, key: FeatureKey, paths: Sequence[str | Path], compute: Compute
) -> CachedFeatures:
    """The features of the images ``paths`` from ``cache`` if it holds a valid entry for ``key`` and these
    files' bytes, else ``compute()`` -> (features, seconds), stored in ``cache``. ``cache`` None: compute."""
    if cache is None:
        features, seconds = compute()
        return CachedFeatures(dict(features), float(seconds), False)
    return cache.get_or_compute(key, paths, compute)


def file_sha256(paths: Sequence[str | Path]) -> list[str]:
    """The SHA-256 (hex) of each file's bytes. Raises FileNotFoundError naming a missing file."""
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digests.append(digest.hexdigest())
    return digests


def _crc32(array: np.ndarray) -> int:
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    crc = 0
    for lo in range(0, flat.size, _CHUNK_BYTES):
        crc = zlib.crc32(flat[lo : lo + _CHUNK_BYTES], crc)
    return crc


class _Damaged(Exception):
    """An entry file fails a check; the message names the file and what is wrong."""


def _open_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Memory-map the float32 C-order array in ``path`` after checking its header against ``shape`` and
    its size against the header (a truncated file would otherwise fail inside mmap)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
    except FileNotFoundError:
        raise _Damaged(f"{path}: missing") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _Damaged(f"{path}: unreadable .npy header ({exc})") from None
    found_shape, fortran_order, dtype = header
    if dtype != np.dtype(np.float32) or fortran_order:
        raise _Damaged(f"{path}: expected float32 in C order, found {dtype} (fortran_order={fortran_order})")
    if tuple(found_shape) != shape:
        raise _Damaged(f"{path}: expected shape {shape} (recorded in meta.json), found {tuple(found_shape)}")
    expected_bytes = offset + int(np.prod(shape)) * 4
    actual_bytes = path.stat().st_size
    if actual_bytes != expected_bytes:
        raise _Damaged(f"{path}: holds {actual_bytes} bytes, its header and meta.json need {expected_bytes}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:  # e.g. replaced between the checks above and here
        raise _Damaged(f"{path}: cannot be memory-mapped ({exc})") from None


class FeatureCache:
    """Backbone features on disk under ``root``, reused across runs (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def entry(self, key: FeatureKey) -> Path:
        """The folder of ``key``'s entry (one per key; new image bytes replace its content). The name is
        readable and ends in a digest of the whole key, so keys differing anywhere never share a folder."""
        crop = key.crop if key.crop else "none"
        digest = hashlib.sha256(json.dumps(_jsonable_key(key), sort_keys=True).encode()).hexdigest()[:12]
        setting = (
            f"{_safe(key.backbone)}-{key.weights_sha256[:16]}-v{_safe(key.backbone_version)}"
            f"-size{key.image_size}-crop{crop}-{digest}"
        )
        return self.root / _safe(key.dataset) / _safe(key.category) / _safe(key.split) / setting

    def get_or_compute(
        self, key: FeatureKey, paths: Sequence[str | Path], compute: Compute
    ) -> CachedFeatures:
        """The features of ``paths`` for ``key``: read and verified from the cache, or ``compute()`` ->
        (features: level -> (N, ...) float32, seconds) and stored atomically (N = len(paths))."""
        if not key.backbone_version:
            raise ValueError(
                f"backbone {key.backbone!r}: no features_version, so its cached features could not be told "
                "apart from those of other code versions; give it one or run without a feature cache"
            )
        entry = self.entry(key)
        paths = [Path(p) for p in paths]
        digests = file_sha256(paths)
        try:
            hit = self._read(entry, key, digests)
        except _Damaged as exc:
            warnings.warn(f"feature cache: {exc}; recomputing the entry", FeatureCacheWarning, stacklevel=3)
            hit = None
        if hit is not None:
            return hit
        features, seconds = compute()
        features = dict(features)
        self._write(entry, key, paths, digests, features, float(seconds))
        return CachedFeatures(features, float(seconds), False)

    def _read(self, entry: Path, key: FeatureKey, digests: list[str]) -> CachedFeatures | None:
        """The verified entry; None when absent or computed from something else; _Damaged when broken."""
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise _Damaged(f"{meta_path}: unreadable ({exc})") from None
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != _jsonable_key(key):
            return None
        if meta.get("image_sha256") != digests:
            return None  # the images changed since: an honest miss, not damage
        try:
            levels = {
                str(level): (str(rec["file"]), tuple(int(n) for n in rec["shape"]), int(rec["crc32"]))
                for level, rec in meta["levels"].items()
            }
            seconds = float(meta["seconds"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _Damaged(f"{meta_path}: malformed levels or seconds ({exc!r})") from None
        features = {}
        for level, (name, shape, crc) in levels.items():
            path = entry / name
            if Path(name).name != name or not shape or shape[0] != len(digests):
                raise _Damaged(f"{meta_path}: level {level!r} records file {name!r} of shape {shape}")
            array = _open_npy(path, shape)
            if _crc32(array) != crc:
                raise _Damaged(f"{path}: contents differ from the CRC-32 recorded when it was stored")
            features[level] = array
        if not features:
            raise _Damaged(f"{meta_path}: lists no feature levels")
        return CachedFeatures(features, seconds, True)

    def _write(
        self,
        entry: Path,
        key: FeatureKey,
        paths: Sequence[Path],
        digests: list[str],
        features: Mapping[str, np.ndarray],
        seconds: float,
    ) -> None:
        if not features:
            raise ValueError("features: expected at least one level, got none")
        for level, array in features.items():
            if not isinstance(array, np.ndarray) or array.dtype != np.float32:
                found = getattr(array, "dtype", type(array).__name__)
                raise ValueError(f"features[{level!r}]: expected a float32 NumPy array, got {found}")
            if array.ndim == 0 or array.shape[0] != len(paths):
                raise ValueError(
                    f"features[{level!r}]: expected {len(paths)} rows (one per image), "
                    f"got shape {array.shape}"
                )
        names = {level: f"{_safe(level)}.npy" for level in features}
        if len(set(names.values())) != len(names):
            raise ValueError(f"features: level names {sorted(features)} collide as file names")
        levels = {}
        with atomic_directory(entry) as tmp:
            for level, array in features.items():
                array = np.ascontiguousarray(array)
                with open(tmp / names[level], "wb") as f:
                    np.save(f, array, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                levels[level] = {"file": names[level], "shape": list(array.shape), "crc32": _crc32(array)}
            meta = {
                "format": CACHE_FORMAT,
                "key": _jsonable_key(key),
                "levels": levels,
                "seconds": seconds,
                "paths": [str(p.resolve()) for p in paths],
                "image_sha256": digests,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _jsonable_key(key: FeatureKey) -> dict[str, Any]:
    return dataclasses.asdict(key)
