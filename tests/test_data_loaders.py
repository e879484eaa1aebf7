"""MVTec AD, BTAD and generic folder loaders on trees written by the tests (tests/data_trees.py)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subspace_jax.data import BTAD, BTAD_CATEGORIES, MVTEC_CATEGORIES, FolderDataset, MVTecAD, Sample, Split
from subspace_jax.data.loading import load_samples
from tests.data_trees import expected_mask_at_32, write_btad_category, write_mvtec_category


@pytest.fixture()
def mvtec(tmp_path) -> tuple[Path, dict]:
    colors = write_mvtec_category(tmp_path / "mvtec")
    return tmp_path / "mvtec", colors


@pytest.fixture()
def btad(tmp_path) -> tuple[Path, dict]:
    colors = write_btad_category(tmp_path / "btad")
    return tmp_path / "btad", colors


def _relative(split: Split, base: Path) -> list[str]:
    return [path.relative_to(base).as_posix() for path in split.paths]


def _load_quietly(dataset, split: str, **kwargs) -> Split:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dataset.load(split, progress=False, **kwargs)


def test_category_constants():
    assert len(MVTEC_CATEGORIES) == 15 and "metal_nut" in MVTEC_CATEGORIES
    assert BTAD_CATEGORIES == ("01", "02", "03")


def test_mvtec_samples(mvtec):
    root, _ = mvtec
    dataset = MVTecAD(root, "widget")
    train = dataset.samples("train")
    assert [s.image_path.name for s in train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in train)
    test = dataset.samples("test")
    assert [(s.defect_type, s.image_path.name, s.label) for s in test] == [
        ("dent", "000.png", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
        ("scratch", "000.png", 1),
        ("scratch", "001.png", 1),
    ]
    assert test[0].mask_path == root / "widget/ground_truth/dent/000_mask.png"
    assert test[1].mask_path is None
    with pytest.raises(ValueError, match="split"):
        dataset.samples("validation")


def test_mvtec_load_converts_every_kind_and_resizes(mvtec):
    root, colors = mvtec
    dataset = MVTecAD(root, "widget")
    train = dataset.load("train", image_size=32, progress=False)
    assert train.images.shape == (3, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.masks.shape == (3, 32, 32) and train.masks.dtype == bool and not train.masks.any()
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0, 0, 0]
    for image, name in zip(train.images, _relative(train, root / "widget")):
        np.testing.assert_array_equal(image, np.broadcast_to(colors[name], (32, 32, 3)))

    with pytest.warns(UserWarning) as record:
        test = dataset.load("test", image_size=32, progress=False)
    assert len(record) == 1  # one warning for the one oversized mask, naming it
    assert "001_mask.png" in str(record[0].message) and "128x128" in str(record[0].message)
    names = _relative(test, root / "widget")
    for image, name in zip(test.images, names):
        np.testing.assert_array_equal(image, np.broadcast_to(colors[name], (32, 32, 3)))
    assert test.defect_types == ("dent", "good", "good", "scratch", "scratch")
    assert test.labels.tolist() == [1, 0, 0, 1, 1]
    for mask, label in zip(test.masks, test.labels):
        np.testing.assert_array_equal(mask, expected_mask_at_32() if label else np.zeros((32, 32), bool))


def test_center_crop_after_resize(mvtec):
    root, _ = mvtec
    full = _load_quietly(MVTecAD(root, "widget"), "test", image_size=32)
    cropped = _load_quietly(MVTecAD(root, "widget"), "test", image_size=32, crop=24)
    assert cropped.images.shape == (5, 24, 24, 3) and cropped.masks.shape == (5, 24, 24)
    np.testing.assert_array_equal(cropped.images, full.images[:, 4:28, 4:28])
    np.testing.assert_array_equal(cropped.masks, full.masks[:, 4:28, 4:28])


def test_missing_root_and_category_list_what_exists(mvtec, tmp_path):
    root, _ = mvtec
    with pytest.raises(FileNotFoundError, match=r"nowhere.*contains: .*mvtec/"):
        MVTecAD(tmp_path / "nowhere", "widget")
    with pytest.raises(FileNotFoundError, match=r"'bottle' not found.*categories there: widget"):
        MVTecAD(root, "bottle")


def test_missing_split_folder_lists_category(mvtec):
    root, _ = mvtec
    shutil.rmtree(root / "widget/train")
    with pytest.raises(FileNotFoundError, match=r"training folder.*contains: ground_truth/, test/"):
        MVTecAD(root, "widget").samples("train")


def test_defective_image_without_mask_is_named(mvtec):
    root, _ = mvtec
    (root / "widget/ground_truth/scratch/001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"test/scratch/001.png has no ground-truth mask"):
        MVTecAD(root, "widget").samples("test")


def test_empty_training_set(mvtec):
    root, _ = mvtec
    for path in (root / "widget/train/good").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"training set is empty.*train/good"):
        MVTecAD(root, "widget").samples("train")


def test_truncated_file_names_itself_at_load(mvtec):
    root, _ = mvtec
    path = root / "widget/test/good/000.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"test/good/000.png"):
        _load_quietly(MVTecAD(root, "widget"), "test", image_size=32)


def test_btad_matches_masks_by_stem_across_extensions(btad):
    root, colors = btad
    dataset = BTAD(root, 1)
    assert repr(dataset) == f"BTAD({str(root)!r}, '01')"
    test_samples = dataset.samples("test")
    assert [(s.defect_type, s.image_path.name, s.mask_path and s.mask_path.name) for s in test_samples] == [
        ("ko", "0000.bmp", "0000.png"),
        ("ko", "0001.png", "0001.bmp"),
        ("ko", "0002.jpg", "0002.jpg"),
        ("good", "0005.bmp", None),
    ]
    test = dataset.load("test", image_size=32, progress=False)
    for image, name in zip(test.images, _relative(test, root / "01")):
        tolerance = 2 if name.endswith(".jpg") else 0  # JPEG is lossy even on a flat colour
        np.testing.assert_allclose(image, np.broadcast_to(colors[name], (32, 32, 3)), atol=tolerance)
    for mask, label in zip(test.masks, test.labels):
        np.testing.assert_array_equal(mask, expected_mask_at_32() if label else np.zeros((32, 32), bool))
    train = dataset.load("train", image_size=32, progress=False)
    assert train.images.shape == (2, 32, 32, 3) and train.defect_types == ("good", "good")


def test_btad_missing_category_lists_products(btad):
    root, _ = btad
    with pytest.raises(FileNotFoundError, match=r"'02' not found.*categories there: 01"):
        BTAD(root, "02")


def test_folder_dataset_with_and_without_masks(tmp_path):
    write_mvtec_category(tmp_path, "plain")
    root = tmp_path / "plain"
    with_masks = _load_quietly(FolderDataset(root), "test", image_size=32)
    assert with_masks.masks[with_masks.labels == 1].any(axis=(1, 2)).all()

    shutil.rmtree(root / "ground_truth")
    with pytest.raises(FileNotFoundError, match="has no ground-truth mask"):
        FolderDataset(root).samples("test")
    image_level_only = FolderDataset(root, require_masks=False).load("test", image_size=32, progress=False)
    assert image_level_only.labels.tolist() == [1, 0, 0, 1, 1] and not image_level_only.masks.any()


def test_folder_dataset_ambiguous_masks_are_an_error(tmp_path):
    write_mvtec_category(tmp_path, "plain")
    root = tmp_path / "plain"
    shutil.copy(root / "ground_truth/dent/000_mask.png", root / "ground_truth/dent/000_mask.bmp")
    with pytest.raises(ValueError, match="ambiguous masks"):
        FolderDataset(root).samples("test")


def test_load_samples_rejects_defective_without_mask(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"x.png has no ground-truth mask"):
        load_samples([Sample(tmp_path / "x.png", 1, "dent", None)], 8, progress=False)
    with pytest.raises(ValueError, match="label"):
        Sample(tmp_path / "x.png", 2, "dent", None)
    with pytest.raises(ValueError, match="samples is empty"):
        load_samples([], 8)
