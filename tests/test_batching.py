"""Batching, and the backbone a model scores images with, shared by the model and the baselines (no backbone
is run)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import subspace_jax as sj
from subspace_jax.engine import batches as batching
from subspace_jax.methods import patchcore
from subspace_jax.methods.patchcore import PatchCoreConfig


@dataclasses.dataclass(frozen=True)
class _Input:
    backbone: str = "resnet18"
    image_size: int = 8
    crop: int | None = None

    @property
    def output_size(self) -> int:
        return self.crop or self.image_size


def test_map_batches_pads_every_call_to_one_shape_and_drops_the_padding():
    images = np.arange(7 * 8 * 8 * 3, dtype=np.uint8).reshape(7, 8, 8, 3)
    shapes = []

    def fn(batch, first):
        shapes.append((batch.shape, first))
        return {"first": batch[:, 0, 0, 0].astype(np.int64), "sum": batch.reshape(len(batch), -1).sum(1)}

    size = batching.batch_size_for(images, 3)
    out = batching.map_batches(fn, images, _Input(), size, progress=False)
    assert shapes == [((3, 8, 8, 3), 0), ((3, 8, 8, 3), 3), ((3, 8, 8, 3), 6)]  # and each batch's first image
    np.testing.assert_array_equal(out["first"], images[:, 0, 0, 0])
    np.testing.assert_array_equal(out["sum"], images.reshape(7, -1).sum(1))


def test_batch_size_for_checks_and_shrinks_to_the_number_of_images():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    assert batching.batch_size_for(images, 8) == 2
    assert batching.batch_size_for(iter([images]), 8) == 8
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        batching.batch_size_for(images, 0)


def test_map_batches_rejects_wrong_sizes_and_empty_input():
    with pytest.raises(ValueError, match=r"images \(batch 1\): expected images of shape \(B, 8, 8, 3\)"):
        batching.map_batches(
            lambda b, first: b,
            [np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 9, 8, 3), np.uint8)],
            _Input(),
            1,
            progress=False,
        )
    with pytest.raises(ValueError, match="expected at least one image"):
        batching.map_batches(lambda b, first: b, iter([]), _Input(), 1, progress=False)


def test_models_without_weights_say_what_to_pass_and_still_score_features():
    rng = np.random.default_rng(0)
    features = {
        "level2": rng.normal(size=(2, 4, 4, 3)).astype(np.float32),
        "level3": rng.normal(size=(2, 2, 2, 5)).astype(np.float32),
    }
    images = np.zeros((1, 32, 32, 3), np.uint8)
    subspace = sj.fit_features(features, sj.Config(backbone="resnet18", image_size=32, sampling="none", k=1))
    config = PatchCoreConfig(backbone="resnet18", image_size=32, coreset_ratio=1.0)
    core = patchcore.fit_features(features, config)
    for model in (subspace, core):
        assert model.weights_sha256 is None
        with pytest.raises(
            ValueError, match=r"^backbone: the model records no weights_sha256.*pass backbone="
        ):
            model.score(images, progress=False)
        # Features need no backbone: the model scores them as it was fit.
        maps, scores = model.score(features, progress=False)
        assert maps.shape == (2, 32, 32) and scores.shape == (2,) and np.isfinite(maps).all()
