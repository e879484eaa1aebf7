"""TFDS builders (the tfds extra) on small trees written by the tests: built and read without TensorFlow."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

# The tfds extra is installed in CI; without it these tests must fail at import, not skip.
import tensorflow_datasets as tfds
from PIL import Image

from subspace_jax.data import BTAD, MVTecAD, read_image
from subspace_jax.data.mtd import mtd_train_filenames
from subspace_jax.data.tfds import Btad, Mtd, MvtecAd, split_from_source
from tests.data_trees import SIDE, rect_mask, write_btad_category, write_mvtec_category


def _prepare(builder, manual_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tree's oversized mask warns; covered by the loader tests
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def _assert_splits_equal(actual, expected) -> None:
    np.testing.assert_array_equal(actual.images, expected.images)
    np.testing.assert_array_equal(actual.masks, expected.masks)
    np.testing.assert_array_equal(actual.labels, expected.labels)
    assert actual.defect_types == expected.defect_types


def test_mvtec_builder_round_trip(tmp_path):
    manual_dir, data_dir = tmp_path / "mvtec", tmp_path / "tfds"
    write_mvtec_category(manual_dir, "bottle")
    builder = MvtecAd(config="bottle", data_dir=data_dir)
    _prepare(builder, manual_dir)
    assert sorted(p.name for p in (data_dir / "mvtec_ad/bottle/1.0.0").glob("*.array_record*")) == [
        "mvtec_ad-test.array_record-00000-of-00001",
        "mvtec_ad-train.array_record-00000-of-00001",
    ]

    source = tfds.data_source("mvtec_ad/bottle", data_dir=data_dir)
    assert len(source["train"]) == 3 and len(source["test"]) == 5
    records = {source["test"][i]["filename"].decode(): source["test"][i] for i in range(5)}
    scratch = records["bottle/test/scratch/001.png"]  # its mask file is twice the image's size
    assert scratch["image"].shape == (SIDE, SIDE, 3) and scratch["image"].dtype == np.uint8
    np.testing.assert_array_equal(scratch["mask"][..., 0], rect_mask())
    assert scratch["label"] == 1 and scratch["defect_type"] == b"scratch"
    good = records["bottle/test/good/001.png"]  # palette image stored as RGB
    np.testing.assert_array_equal(good["image"], read_image(manual_dir / "bottle/test/good/001.png"))
    assert good["label"] == 0 and not good["mask"].any()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for split in ("train", "test"):
            expected = MVTecAD(manual_dir, "bottle").load(split, image_size=32, crop=24, progress=False)
            actual = split_from_source(source[split], image_size=32, crop=24, progress=False)
            _assert_splits_equal(actual, expected)
            assert [p.as_posix() for p in actual.paths] == [
                p.relative_to(manual_dir).as_posix() for p in expected.paths
            ]

    # The written files are self-describing: reading them needs neither these builder classes nor TensorFlow.
    reopened = tfds.builder_from_directory(data_dir / "mvtec_ad/bottle/1.0.0").as_data_source()
    assert len(reopened["test"]) == 5
    assert "tensorflow" not in sys.modules


def test_btad_builder_masks_from_other_extensions(tmp_path):
    manual_dir, data_dir = tmp_path / "btad", tmp_path / "tfds"
    write_btad_category(manual_dir, "03")
    _prepare(Btad(config="03", data_dir=data_dir), manual_dir)
    source = tfds.data_source("btad/03", data_dir=data_dir)
    actual = split_from_source(source["test"], image_size=32, progress=False)
    expected = BTAD(manual_dir, "03").load("test", image_size=32, progress=False)
    _assert_splits_equal(actual, expected)
    assert actual.defect_types == ("ko", "ko", "ko", "good")
    assert [p.name for p in actual.paths] == ["0000.bmp", "0001.png", "0002.jpg", "0005.bmp"]


def test_mtd_builder_uses_the_canonical_split(tmp_path):
    manual_dir, data_dir = tmp_path / "mtd", tmp_path / "tfds"
    tiny = Image.fromarray(np.full((6, 9), 80, np.uint8))
    free = manual_dir / "MT_Free/Imgs"
    free.mkdir(parents=True)
    for name in (*mtd_train_filenames(), "extra_a.jpg", "extra_b.jpg"):
        tiny.save(free / name)
    for class_name in ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"):
        folder = manual_dir / class_name / "Imgs"
        folder.mkdir(parents=True)
        tiny.save(folder / "d0.jpg")
        mask = np.zeros((6, 9), np.uint8)
        mask[2:4, 3:6] = 255
        Image.fromarray(mask).save(folder / "d0.png")
    _prepare(Mtd(data_dir=data_dir), manual_dir)
    source = tfds.data_source("mtd", data_dir=data_dir)
    assert len(source["train"]) == 761 and len(source["test"]) == 7
    test = split_from_source(source["test"], image_size=9, progress=False)
    assert test.labels.tolist() == [
        1,
        1,
        1,
        1,
        0,
        0,
        1,
    ]  # sorted by file name: MT_Blowhole ... MT_Free ... MT_Uneven
    assert test.defect_types == ("blowhole", "break", "crack", "fray", "good", "good", "uneven")
    assert test.masks[test.labels == 1].any(axis=(1, 2)).all() and not test.masks[test.labels == 0].any()


def test_missing_manual_dir_shows_the_instructions(tmp_path):
    builder = MvtecAd(config="bottle", data_dir=tmp_path / "tfds")
    with pytest.raises(AssertionError, match="mvtec_anomaly_detection.tar.xz"):
        _prepare(builder, tmp_path / "absent")


def test_wrong_manual_dir_lists_what_is_there(tmp_path):
    write_mvtec_category(tmp_path / "mvtec", "cable")
    builder = MvtecAd(config="bottle", data_dir=tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match=r"'bottle' not found.*categories there: cable"):
        _prepare(builder, tmp_path / "mvtec")


@pytest.fixture
def restore_tfds_module():
    """Undo a reload after the test: the module's names and TFDS's registry as they were."""
    import subspace_jax.data.tfds as module

    names = dict(vars(module))
    registry = dict(tfds.core.registered._DATASET_REGISTRY)
    yield module
    vars(module).clear()
    vars(module).update(names)
    tfds.core.registered._DATASET_REGISTRY.clear()
    tfds.core.registered._DATASET_REGISTRY.update(registry)


def test_reloading_the_module_registers_the_builders_again(restore_tfds_module):
    """A reload used to fail with "Dataset with name mvtec_ad already registered"."""
    module = restore_tfds_module
    for _ in range(2):
        module = importlib.reload(module)
    for name, cls in (("mvtec_ad", module.MvtecAd), ("btad", module.Btad), ("mtd", module.Mtd)):
        assert tfds.builder_cls(name) is cls  # the reloaded class, not a stale one
    assert cls is not Mtd

    # Only this module's own earlier registrations are replaced: another builder of the same name collides.
    with pytest.raises(ValueError, match="already registered"):

        class Mtd2(tfds.core.GeneratorBasedBuilder):
            name = "mtd"
            VERSION = tfds.core.Version("1.0.0")
