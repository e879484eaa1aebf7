"""The on-disk feature cache: keyed on the image bytes and the backbone's code version, verified on every
read, and a damaged entry named, recomputed and replaced (never the same failure on every rerun)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from subspace_jax import backbones
from subspace_jax.runner import feature_cache as feature_io
from subspace_jax.runner.feature_cache import FeatureCache, FeatureCacheWarning, FeatureKey, cached_features

KEY = FeatureKey("mvtec", "bottle", "train", "toy", "ab" * 32, "1.1", 64, None)


class Counting:
    """compute(): features that depend on the image bytes (row i: the bytes of image i), counted."""

    def __init__(self, paths: list[Path]):
        self.paths, self.calls = paths, 0

    def __call__(self) -> tuple[dict[str, np.ndarray], float]:
        self.calls += 1
        rows = [np.frombuffer(p.read_bytes()[:24], np.uint8).astype(np.float32) for p in self.paths]
        level1 = np.stack(rows).reshape(len(rows), 2, 4, 3) + np.arange(24, dtype=np.float32).reshape(2, 4, 3)
        return {"level1": level1, "pooled": level1.mean(axis=(1, 2))}, 1.5


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = tmp_path / "images" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.integers(0, 256, 40, dtype=np.uint8).tobytes())
        paths.append(path)
    return paths


def test_round_trip_reads_the_stored_arrays_without_computing(tmp_path, images):
    cache, compute = FeatureCache(tmp_path / "cache"), Counting(images)
    first = cache.get_or_compute(KEY, images, compute)
    assert (first.hit, first.seconds, compute.calls) == (False, 1.5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good entry is read without any warning
        second = cache.get_or_compute(KEY, [str(p) for p in images], compute)
    assert (second.hit, second.seconds, compute.calls) == (True, 1.5, 1)
    assert set(second.features) == {"level1", "pooled"}
    for level, array in first.features.items():
        np.testing.assert_array_equal(second.features[level], array)
        assert second.features[level].dtype == np.float32 and not second.features[level].flags.writeable
    entry = cache.entry(KEY)
    assert entry.parent == tmp_path / "cache/mvtec/bottle/train"
    assert entry.name.startswith("toy-abababababababab-v1.1-size64-cropnone-")
    assert sorted(p.name for p in entry.iterdir()) == ["level1.npy", "meta.json", "pooled.npy"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["image_sha256"] == feature_io.file_sha256(images) and meta["key"]["backbone_version"] == "1.1"
    # The same files through another spelling of their paths are the same entry.
    assert cache.get_or_compute(KEY, [p.parent / ".." / "images" / p.name for p in images], compute).hit


def test_images_replaced_under_the_same_names_are_recomputed(tmp_path, images):
    cache, compute = FeatureCache(tmp_path / "cache"), Counting(images)
    old = cache.get_or_compute(KEY, images, compute).features["level1"].copy()
    images[2].write_bytes(images[0].read_bytes())  # same name, size and path: other content
    fresh = cache.get_or_compute(KEY, images, compute)
    assert (fresh.hit, compute.calls) == (False, 2)
    np.testing.assert_array_equal(fresh.features["level1"][2], old[0])
    assert not np.array_equal(fresh.features["level1"][2], old[2])
    again = cache.get_or_compute(KEY, images, compute)  # the new entry replaced the old one
    assert again.hit and compute.calls == 2
    np.testing.assert_array_equal(again.features["level1"], fresh.features["level1"])


@pytest.mark.parametrize(
    "field, value",
    [
        ("backbone_version", "1.2"),
        ("weights_sha256", "ab" * 31 + "cd"),
        ("image_size", 128),
        ("crop", 56),
        ("split", "test"),
    ],
)
def test_any_other_key_field_is_a_miss(tmp_path, images, field, value):
    cache, compute = FeatureCache(tmp_path / "cache"), Counting(images)
    cache.get_or_compute(KEY, images, compute)
    other = dataclasses.replace(KEY, **{field: value})
    assert not cache.get_or_compute(other, images, compute).hit and compute.calls == 2
    # Both entries are kept: going back to the first key is a hit.
    assert cache.get_or_compute(KEY, images, compute).hit and cache.get_or_compute(other, images, compute).hit


def test_a_new_backbone_code_version_changes_the_key():
    spec = backbones.REGISTRY["resnet18"]
    assert backbones.features_version(spec) == f"{backbones.FEATURES_VERSION}.{spec.implementation_version}"
    bumped = dataclasses.replace(spec, implementation_version=spec.implementation_version + 1)
    assert backbones.features_version(bumped) != backbones.features_version(spec)

    class Toy:
        name, weights_sha256, features_version = "toy", "ab" * 32, "7.3"

    key = FeatureKey.of(Toy(), dataset="d", category="c", split="train", image_size=64, crop=None)
    assert key == FeatureKey("d", "c", "train", "toy", "ab" * 32, "7.3", 64, None)


def test_a_backbone_without_a_code_version_is_not_cached(tmp_path, images):
    class Unversioned:
        name, weights_sha256 = "toy", "ab" * 32

    key = FeatureKey.of(Unversioned(), dataset="d", category="c", split="train", image_size=64, crop=None)
    with pytest.raises(ValueError, match="no features_version"):
        FeatureCache(tmp_path).get_or_compute(key, images, Counting(images))
    assert cached_features(None, key, images, Counting(images)).hit is False  # no cache: just computed


def _reverse_rows(path: Path) -> None:
    np.save(path, np.load(path)[::-1].copy())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])


def _as_float64(path: Path) -> None:
    np.save(path, np.load(path).astype(np.float64))


def _drop_a_row(path: Path) -> None:
    np.save(path, np.load(path)[:-1])


def _garbage_header(path: Path) -> None:
    path.write_bytes(b"\x93NUMPY\x01\x00garbage" + path.read_bytes()[16:])


DAMAGE = {
    "reversed rows": _reverse_rows,
    "truncated": _truncate,
    "float64": _as_float64,
    "a row fewer": _drop_a_row,
    "garbage header": _garbage_header,
    "missing": Path.unlink,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_array_is_named_then_recomputed_and_replaced(tmp_path, images, damage):
    cache, compute = FeatureCache(tmp_path / "cache"), Counting(images)
    good = cache.get_or_compute(KEY, images, compute).features["level1"].copy()
    target = cache.entry(KEY) / "level1.npy"
    DAMAGE[damage](target)
    with pytest.warns(FeatureCacheWarning, match=r"level1\.npy.*recomputing") as caught:
        recomputed = cache.get_or_compute(KEY, images, compute)
    assert str(target) in str(caught[0].message)
    assert (recomputed.hit, compute.calls) == (False, 2)
    np.testing.assert_array_equal(recomputed.features["level1"], good)
    # The bad entry was replaced: the next run reads it, silently, instead of failing the same way again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cache.get_or_compute(KEY, images, compute)
    assert again.hit and compute.calls == 2
    np.testing.assert_array_equal(again.features["level1"], good)
    assert not list(target.parent.parent.glob(".*"))  # no temporary folders left beside the entry


@pytest.mark.parametrize(
    "meta", ["{not json", "[1, 2]", json.dumps({"format": 2, "key": dataclasses.asdict(KEY), "levels": 3})]
)
def test_a_damaged_meta_json_is_named_then_recomputed(tmp_path, images, meta):
    cache, compute = FeatureCache(tmp_path / "cache"), Counting(images)
    cache.get_or_compute(KEY, images, compute)
    meta_path = cache.entry(KEY) / "meta.json"
    if '"levels": 3' in meta:  # a well-formed header with the right images but a broken levels record
        record = json.loads(meta_path.read_text())
        meta = json.dumps({**record, "levels": 3})
    meta_path.write_text(meta)
    with pytest.warns(FeatureCacheWarning, match="meta.json"):
        assert not cache.get_or_compute(KEY, images, compute).hit
    assert cache.get_or_compute(KEY, images, compute).hit and compute.calls == 2


def test_store_refuses_features_that_do_not_match_the_images(tmp_path, images):
    cache = FeatureCache(tmp_path / "cache")

    def too_few_rows():
        return {"level1": np.zeros((3, 2, 2, 3), np.float32)}, 1.0

    def float64():
        return {"level1": np.zeros((4, 2, 2, 3))}, 1.0

    with pytest.raises(ValueError, match=r"features\['level1'\]: expected 4 rows"):
        cache.get_or_compute(KEY, images, too_few_rows)
    with pytest.raises(ValueError, match=r"features\['level1'\]: expected a float32"):
        cache.get_or_compute(KEY, images, float64)
    assert not cache.entry(KEY).exists()


def test_a_missing_image_file_is_named(tmp_path, images):
    images[1].unlink()
    with pytest.raises(FileNotFoundError, match="001.png"):
        FeatureCache(tmp_path / "cache").get_or_compute(KEY, images, Counting(images))
