"""The on-disk layout of checkpoints: the files, their hashes and seal, and where a checkpoint lives.

A checkpoint folder holds ``metadata.json``, ``arrays/`` (orbax) and the marker written last, whose
digest covers the metadata, which covers the arrays and files (``subspace_jax.serving.checkpoint``
describes the format). This module recognises a complete checkpoint exactly as written (nothing else
may be replaced or deleted by a save), and recovers the complete copy a killed save left beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from subspace_jax._io import atomic_write_text, remove_tree, siblings

FORMAT_VERSION = 3  # 3: subspace models record n_train; Gram matrices are optional
METADATA_FILE = "metadata.json"
ARRAYS_DIR = "arrays"
MARKER_FILE = "subspace_jax_checkpoint.json"
MARKER_FORMAT = "subspace-jax checkpoint"
ENTRIES = frozenset({METADATA_FILE, ARRAYS_DIR, MARKER_FILE})
ARRAY_DTYPES = ("float32", "bfloat16")


class CheckpointError(ValueError):
    """A checkpoint is missing a part, corrupted, of an unknown format, or built with another backbone;
    or a save would overwrite something that is not a checkpoint."""


# ---------------------------------------------------------------------------------------------
# Hashes


def array_sha256(array: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()


def metadata_sha256(metadata: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``metadata`` (sorted keys, no whitespace): reformatting the
    file keeps it, changing any value does not."""
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {"size", "sha256"} of every file orbax wrote under ``folder``."""
    manifest = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        manifest[file.relative_to(folder).as_posix()] = {
            "size": file.stat().st_size,
            "sha256": digest.hexdigest(),
        }
    return manifest


def check_files(arrays_path: Path, manifest: Any) -> None:
    """Every file the save wrote is there, whole and unchanged, before orbax reads any of them
    (a restore that fails half-way inside orbax leaves its asynchronous reads dangling)."""
    if not isinstance(manifest, dict):
        raise CheckpointError(
            f"{arrays_path.parent / METADATA_FILE}: corrupted metadata, 'files' must map paths to sizes"
        )
    found = file_manifest(arrays_path)
    for name, expected in manifest.items():
        actual = found.get(name)
        if actual is None:
            raise CheckpointError(f"{arrays_path / name}: missing, the checkpoint is incomplete or corrupted")
        if not isinstance(expected, dict) or actual != expected:
            raise CheckpointError(
                f"{arrays_path / name}: {actual['size']} bytes with sha256 {actual['sha256'][:16]}…, "
                f"expected {expected}; the file is truncated or altered, the checkpoint is corrupted"
            )


def seal(folder: Path, metadata: Mapping[str, Any]) -> None:
    """Write the format marker holding the integrity digest of ``metadata`` (the last file written)."""
    marker = {
        "format": MARKER_FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata_sha256": metadata_sha256(metadata),
    }
    atomic_write_text(folder / MARKER_FILE, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: corrupted {what}, not valid JSON ({error})") from error
    except RecursionError:
        raise CheckpointError(f"{path}: corrupted {what}, nested too deeply to be ours") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the {what} ({error})") from error


def read_marker(folder: Path) -> dict[str, Any]:
    marker_path = folder / MARKER_FILE
    if not marker_path.is_file():
        raise CheckpointError(
            f"{folder}: incomplete or not a subspace-jax checkpoint ({MARKER_FILE} is missing; a save "
            "writes it last)"
        )
    marker = read_json(marker_path, "format marker")
    if (
        not isinstance(marker, dict)
        or marker.get("format") != MARKER_FORMAT
        or not isinstance(marker.get("metadata_sha256"), str)
    ):
        raise CheckpointError(f"{marker_path}: not a subspace-jax checkpoint marker")
    return marker


# ---------------------------------------------------------------------------------------------
# Where checkpoints live: recognising, recovering and cleaning up


def is_checkpoint_dir(folder: Path) -> bool:
    """``folder`` is a complete checkpoint this module wrote, exactly as written: only our entries, a
    marker whose digest matches the metadata, and under ``arrays/`` exactly the files the metadata lists
    (no symlinks). Nothing else may be overwritten or deleted by ``save``."""
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        entries = {entry.name for entry in folder.iterdir()}
        if entries != ENTRIES:
            return False
        marker = read_marker(folder)
        metadata = read_json(folder / METADATA_FILE, "metadata")
        if not isinstance(metadata, dict) or marker["metadata_sha256"] != metadata_sha256(metadata):
            return False
        arrays = folder / ARRAYS_DIR
        if arrays.is_symlink() or not arrays.is_dir() or not isinstance(metadata.get("files"), dict):
            return False
        found = set()
        for entry in arrays.rglob("*"):
            if entry.is_symlink():
                return False
            if entry.is_file():
                found.add(entry.relative_to(arrays).as_posix())
            elif not entry.is_dir():
                return False
        return found == set(metadata["files"])
    except (OSError, CheckpointError):
        return False


def newest_complete(candidates: list[Path]) -> Path | None:
    complete = [p for p in candidates if is_checkpoint_dir(p)]
    return max(complete, key=lambda p: (p / MARKER_FILE).stat().st_mtime_ns, default=None)


def remove(folder: Path) -> None:
    # The marker goes first, so a removal cut short never leaves something that looks complete.
    remove_tree(folder, first=MARKER_FILE)


def recover_and_clean(path: Path) -> None:
    """Before a save: put back the complete copy a killed swap left (when ``path`` is gone), then
    remove every sibling left by dead processes."""
    stale = siblings(path, stale_only=True)
    if not os.path.lexists(path):
        survivor = newest_complete(stale)
        if survivor is not None:
            os.replace(survivor, path)
            stale.remove(survivor)
    for entry in stale:
        remove(entry)


def locate(path: Path) -> Path:
    """``path``, or when it is gone the newest complete copy a killed save left beside it."""
    if os.path.lexists(path):
        return path
    survivor = newest_complete(siblings(path, stale_only=False))
    if survivor is None:
        raise FileNotFoundError(f"{path}: no checkpoint directory here")
    return survivor


def check_overwritable(path: Path) -> None:
    if os.path.lexists(path) and not is_checkpoint_dir(path):
        what = "a file" if path.is_file() else "a folder that is not a subspace-jax checkpoint"
        if path.is_dir() and not path.is_symlink() and not (path / MARKER_FILE).exists():
            what += f" (no {MARKER_FILE})"
        raise CheckpointError(
            f"{path}: is {what}; save only replaces an existing checkpoint, so nothing was written or "
            "removed. Choose a new path or remove it yourself."
        )
