"""Checkpoints never destroy what is not theirs, survive a killed save, refuse edited metadata, and
hold every fitted model (subspace, PatchCore, SPADE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_checkpoint import SHA, edit_metadata, make_model, score_inputs

from subspace_jax._io import atomic_directory
from subspace_jax.methods import patchcore, spade
from subspace_jax.methods.patchcore import PatchCoreConfig
from subspace_jax.methods.spade import SpadeConfig
from subspace_jax.serving import checkpoint

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes (None for folders) of everything under ``folder``, hidden entries too."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def dead_pid() -> int:
    """The pid of a process that has exited (so siblings named with it are stale)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- item 1: only a checkpoint is ever overwritten -------------------------------------------------


def test_save_refuses_a_folder_that_is_not_a_checkpoint_and_touches_nothing(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (work / "src" / "code.py").write_text("print(1)")
    before = snapshot(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=f"{work}: is a folder that is not a subspace-jax"):
        checkpoint.save(make_model(), work)
    monkeypatch.chdir(work)
    with pytest.raises(checkpoint.CheckpointError, match="not a subspace-jax checkpoint"):
        checkpoint.save(make_model(), ".")
    assert snapshot(tmp_path) == before
    # A folder holding only a metadata.json (someone else's, or ours without the marker) is not ours.
    other = tmp_path / "other"
    other.mkdir()
    (other / checkpoint.METADATA_FILE).write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match=f"{other}.*no {checkpoint.MARKER_FILE}"):
        checkpoint.save(make_model(), other)
    assert (other / checkpoint.METADATA_FILE).read_text() == "{}"


def test_a_checkpoint_the_user_added_files_to_is_not_overwritten(tmp_path):
    path = checkpoint.save(make_model(), tmp_path / "model")
    (path / "README.txt").write_text("my notes about this model")
    before = snapshot(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="not a subspace-jax checkpoint"):
        checkpoint.save(make_model(sampling="none"), path)
    assert snapshot(tmp_path) == before


# --- item 2: an existing file is refused, and no hidden copy is left ----------------------------------


def test_save_over_an_existing_file_is_refused_and_leaves_no_hidden_copy(tmp_path):
    target = tmp_path / "model"
    target.write_text("an unrelated file")
    with pytest.raises(checkpoint.CheckpointError, match=f"{target}: is a file"):
        checkpoint.save(make_model(), target)
    assert target.read_text() == "an unrelated file"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_over_a_file_leaves_no_hidden_old_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("file")
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --- item 3: a killed swap is recoverable, stale temporaries are removed ------------------------------


def test_a_swap_cut_between_its_renames_is_found_by_load_and_put_back_by_save(tmp_path):
    path = tmp_path / "model"
    old_copy = checkpoint.save(make_model(sampling="none"), tmp_path / "a")
    new_copy = checkpoint.save(make_model(), tmp_path / "b")
    pid = dead_pid()
    # What a process killed after its first rename leaves: the old checkpoint as .old, the complete
    # new one as .tmp, nothing at the path.
    os.replace(old_copy, tmp_path / f".model.{pid}-0000aaaa.old")
    os.replace(new_copy, tmp_path / f".model.{pid}-0000bbbb.tmp")
    loaded = checkpoint.load(path)
    assert loaded.config.sampling == "subspace"  # the newer, complete copy
    np.testing.assert_array_equal(
        np.asarray(loaded.score(score_inputs(), progress=False)[0]),
        np.asarray(make_model().score(score_inputs(), progress=False)[0]),
    )
    checkpoint.save(make_model(sampling="random"), path)
    assert checkpoint.load(path).config.sampling == "random"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    path = checkpoint.save(make_model(), tmp_path / "model")
    pid = dead_pid()
    stale = tmp_path / f".model.{pid}-0123abcd.tmp"
    (stale / "arrays").mkdir(parents=True)
    (stale / "arrays" / "chunk").write_bytes(b"\0" * 1000)
    stale_old = tmp_path / f".model.{pid}-4567cdef.old"
    stale_old.mkdir()
    live = tmp_path / f".model.{os.getppid()}-89abcdef.tmp"  # our parent runs: a save in progress
    live.mkdir()
    unrelated = tmp_path / ".model.notes.tmp"
    unrelated.write_text("not ours")
    checkpoint.save(make_model(sampling="none"), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", live.name, unrelated.name])
    assert checkpoint.load(path).config.sampling == "none"


def test_a_save_failing_at_the_last_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = checkpoint.save(make_model(sampling="none"), tmp_path / "model")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == path and Path(src).name.endswith(".tmp"):
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save(make_model(), path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert checkpoint.load(path).config.sampling == "none"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


_KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_checkpoint import make_model
    from subspace_jax.serving import checkpoint

    path = Path({path!r})
    checkpoint.save(make_model(sampling="none"), path)
    if {where!r} == "between_renames":
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if Path(src) == path:  # the old checkpoint just moved aside; die before the new one moves in
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
    else:
        def manifest(folder):
            os.kill(os.getpid(), signal.SIGKILL)  # orbax has written part of the new checkpoint
        checkpoint.file_manifest = manifest
    checkpoint.save(make_model(), path)
    """
)


@pytest.mark.parametrize("where", ["between_renames", "while_writing"])
def test_a_save_killed_with_sigkill_is_recoverable(tmp_path, where):
    path = tmp_path / "model"
    script = _KILLED_SAVE.format(tests=str(REPO / "tests"), path=str(path), where=where)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model"]
    assert leftovers, "the kill should have left the swap half-done"
    # load finds a complete checkpoint: the new one if it was complete, else the old one.
    expected = "subspace" if where == "between_renames" else "none"
    assert not path.exists() if where == "between_renames" else path.exists()
    assert checkpoint.load(path).config.sampling == expected
    checkpoint.save(make_model(sampling="random"), path)
    assert checkpoint.load(path).config.sampling == "random"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# --- item 7: metadata is covered by the integrity check -----------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["config"].update(sigma=0.0),
        lambda m: m["config"].update(fusion="product"),
        lambda m: m["backbone"].update(weights_sha256="cd" * 32),
        lambda m: m.update(package_version="9.9"),
    ],
)
def test_edited_metadata_is_refused(tmp_path, edit):
    path = checkpoint.save(make_model(), tmp_path / "model")
    edit_metadata(path, edit, reseal=False)
    message = "metadata.json: does not match the integrity digest"
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(path)


def test_reformatted_metadata_still_loads_and_a_missing_marker_is_refused(tmp_path):
    path = checkpoint.save(make_model(), tmp_path / "model")
    meta_path = path / checkpoint.METADATA_FILE
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()), indent=7))  # same content
    assert checkpoint.load(path).config == make_model().config
    (path / checkpoint.MARKER_FILE).unlink()
    with pytest.raises(checkpoint.CheckpointError, match=f"{checkpoint.MARKER_FILE} is missing"):
        checkpoint.load(path)


# --- issue 10: every fitted model round-trips by tree structure --------------------------------------


def baseline_features(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "level1": rng.normal(size=(n, 8, 8, 3)).astype(np.float32),
        "level2": rng.normal(size=(n, 4, 4, 5)).astype(np.float32),
        "level3": rng.normal(size=(n, 2, 2, 7)).astype(np.float32),
        "pooled": rng.normal(size=(n, 16)).astype(np.float32),
    }


@pytest.mark.parametrize("method", ["patchcore", "spade"])
def test_baseline_models_round_trip(tmp_path, method):
    if method == "patchcore":
        config = PatchCoreConfig(backbone="efficientnet_lite0", image_size=32, coreset_ratio=0.5, sigma=1.0)
        model = patchcore.fit_features(baseline_features(5), config, weights_sha256=SHA)
    else:
        config = SpadeConfig(backbone="efficientnet_lite0", image_size=32, top_k_images=3, sigma=1.0)
        model = spade.fit_features(baseline_features(5), config, weights_sha256=SHA)
    path = checkpoint.save(model, tmp_path / method)
    loaded = checkpoint.load(path)
    assert type(loaded) is type(model) and loaded.config == config
    assert (loaded.n_train, loaded.backbone_name, loaded.weights_sha256) == (5, "efficientnet_lite0", SHA)
    test = baseline_features(2)
    for got, expected in zip(loaded.score(test, progress=False), model.score(test, progress=False)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-6)
    assert checkpoint.read_metadata(path)["method"] == method


def test_spade_arrays_that_do_not_fit_the_config_are_refused(tmp_path):
    config = SpadeConfig(backbone="efficientnet_lite0", image_size=32, top_k_images=3, sigma=1.0)
    path = checkpoint.save(spade.fit_features(baseline_features(5), config), tmp_path / "spade")
    edit_metadata(path, lambda m: m["arrays"]["train_features/pooled"].update(shape=[4, 16]))
    with pytest.raises(checkpoint.CheckpointError, match="do not fit the config.*same batch size"):
        checkpoint.load(path)
