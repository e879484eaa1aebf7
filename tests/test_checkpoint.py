"""Checkpoint round trips and the failures loading must report clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

import subspace_jax as sj
from subspace_jax.serving import checkpoint, checkpoint_files

SHA = "ab" * 32


def make_model(bank_dtype: str = "float32", sampling: str = "subspace") -> sj.Model:
    rng = np.random.default_rng(0)
    features = {
        "level2": rng.normal(size=(6, 4, 4, 5)).astype(np.float32),
        "level3": rng.normal(size=(6, 2, 2, 7)).astype(np.float32),
        "pooled": rng.normal(size=(6, 16)).astype(np.float32),
    }
    config = sj.Config(
        backbone="efficientnet_lite0",
        image_size=32,
        levels=(2, 3),
        sampling_level="pooled",
        sampling=sampling,
        lam=3,
        k=2,
        sigma=1.0,
        bank_dtype=bank_dtype,
    )
    return sj.fit_features(features, config, weights_sha256=SHA)


def score_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "level2": rng.normal(size=(2, 4, 4, 5)).astype(np.float32),
        "level3": rng.normal(size=(2, 2, 2, 7)).astype(np.float32),
        "pooled": rng.normal(size=(2, 16)).astype(np.float32),
    }


@pytest.mark.parametrize(("bank_dtype", "sampling"), [("float32", "subspace"), ("bfloat16", "none")])
def test_save_load_reproduces_arrays_metadata_and_scores_exactly(tmp_path, bank_dtype, sampling):
    model = make_model(bank_dtype, sampling)
    saved = checkpoint.save(model, tmp_path / "model")
    loaded = checkpoint.load(saved)
    assert loaded.config == model.config
    assert (loaded.backbone_name, loaded.weights_sha256) == ("efficientnet_lite0", SHA)
    assert loaded.banks["level2"].dtype == jnp.dtype(bank_dtype)
    for key in model.banks:
        np.testing.assert_array_equal(np.asarray(loaded.banks[key]), np.asarray(model.banks[key]))
        np.testing.assert_array_equal(np.asarray(loaded.grams[key]), np.asarray(model.grams[key]))
    assert (loaded.sampling_bank is None) == (sampling != "subspace")
    expected = model.score(score_inputs(), progress=False)
    got = loaded.score(score_inputs(), progress=False)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(expected[0]))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(expected[1]))
    metadata = json.loads((saved / checkpoint.METADATA_FILE).read_text())
    assert metadata["format_version"] == checkpoint.FORMAT_VERSION
    assert metadata["package_version"] == sj.__version__
    assert metadata["backbone"] == {"name": "efficientnet_lite0", "weights_sha256": SHA}
    assert metadata["image_size"] == 32 and metadata["config"]["bank_dtype"] == bank_dtype


def test_save_replaces_an_existing_checkpoint_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "model"
    checkpoint.save(make_model(sampling="none"), path)
    checkpoint.save(make_model(), path)
    assert checkpoint.load(path).config.sampling == "subspace"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        checkpoint.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="metadata.json is missing"):
        checkpoint.load(tmp_path / "empty")


def edit_metadata(path: Path, edit, reseal: bool = True) -> None:
    """Edit metadata.json; ``reseal`` recomputes the integrity marker, so the checks behind it are
    reached (as if a bug, not an edit, had written inconsistent metadata)."""
    meta_path = path / checkpoint.METADATA_FILE
    metadata = json.loads(meta_path.read_text())
    edit(metadata)
    meta_path.write_text(json.dumps(metadata))
    if reseal:
        checkpoint_files.seal(path, metadata)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "unknown checkpoint format version 99"),
        (lambda m: m["config"].update(k=0), "invalid config.*Config.k"),
        (lambda m: m["config"].update(mystery=1), "invalid config.*unknown keys"),
        (lambda m: m.update(image_size=64), "image_size 64 disagrees"),
        (
            lambda m: m["arrays"]["banks/level2"].update(shape=[6, 4, 4, 6]),
            "stored array 'banks/level2' is float32\\[6, 4, 4, 5\\]",
        ),
        (lambda m: m["arrays"]["grams/level3"].update(sha256="0" * 64), "grams/level3.*sha256"),
        (lambda m: m["arrays"].pop("sampling_gram"), "arrays.*config needs"),
        (lambda m: m.pop("backbone"), "missing \\['backbone'\\]"),
        (lambda m: m.update(n_train=7), "n_train 7 but the arrays hold 6"),
        (lambda m: m.update(method="padim"), "unknown method 'padim'"),
        (lambda m: m["config"].update(bank_dtype="bfloat16"), "banks/level2.*does not fit the config"),
        (lambda m: m["arrays"].update(extra=m["arrays"]["grams/level2"]), "no fields of SubspaceModel"),
    ],
)
def test_tampered_metadata_is_a_clear_error(tmp_path, edit, message):
    path = checkpoint.save(make_model(), tmp_path / "model")
    edit_metadata(path, edit)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(path)


def test_unparseable_metadata_is_a_clear_error(tmp_path):
    path = checkpoint.save(make_model(), tmp_path / "model")
    (path / checkpoint.METADATA_FILE).write_text('{"format_version": 1, "config": ')
    with pytest.raises(checkpoint.CheckpointError, match="not valid JSON"):
        checkpoint.load(path)


def test_truncated_array_file_is_a_clear_error(tmp_path):
    path = checkpoint.save(make_model(), tmp_path / "model")
    files = [p for p in (path / checkpoint.ARRAYS_DIR).rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = largest.read_bytes()
    largest.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match=f"{largest.name}.*truncated or altered"):
        checkpoint.load(path)


def test_altered_or_missing_array_file_is_a_clear_error(tmp_path):
    path = checkpoint.save(make_model(), tmp_path / "model")
    files = sorted(p for p in (path / checkpoint.ARRAYS_DIR).rglob("*") if p.is_file())
    original = files[0].read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    files[0].write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="truncated or altered"):
        checkpoint.load(path)
    files[0].write_bytes(original)
    files[-1].unlink()
    with pytest.raises(checkpoint.CheckpointError, match="missing, the checkpoint is incomplete"):
        checkpoint.load(path)


def test_missing_arrays_directory_is_a_clear_error(tmp_path):
    path = checkpoint.save(make_model(), tmp_path / "model")
    shutil.rmtree(path / checkpoint.ARRAYS_DIR)
    with pytest.raises(checkpoint.CheckpointError, match="arrays directory"):
        checkpoint.load(path)


def test_a_different_backbone_is_refused(tmp_path):
    path = checkpoint.save(make_model(), tmp_path / "model")
    # Only the name and sha256 attributes are read by the check, so a namespace stands in for a
    # backbone here; the end-to-end test checks a real efficientnet_lite0 against a foreign hash.
    other_weights = SimpleNamespace(name="efficientnet_lite0", weights_sha256="cd" * 32)
    with pytest.raises(checkpoint.CheckpointError, match="weights differ"):
        checkpoint.load(path, backbone=other_weights)
    other_name = SimpleNamespace(name="resnet18", weights_sha256=SHA)
    with pytest.raises(checkpoint.CheckpointError, match="fit with 'efficientnet_lite0', got 'resnet18'"):
        checkpoint.load(path, backbone=other_name)
