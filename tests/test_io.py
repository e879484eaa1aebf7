"""Atomic writers: the target is either the old or the complete new content, never a partial file."""

from __future__ import annotations

import os
import stat

import pytest

from subspace_jax._io import atomic_directory, atomic_file, atomic_write_bytes, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_write_replaces_content_and_leaves_no_temporaries(tmp_path, umask_022):
    target = tmp_path / "sub" / "results.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]
    # Not mkstemp's owner-only 0600: what any file written by this user would get.
    assert _mode(target) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "figure.png"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_directory_is_replaced_only_when_complete(tmp_path, umask_022):
    target = tmp_path / "checkpoint"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    assert _mode(target) == 0o755
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("interrupted")
    assert (target / "a").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
