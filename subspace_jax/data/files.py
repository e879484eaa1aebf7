"""Image files named on a command line: folders (recursive), globs or files, in a stable order."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from subspace_jax.data.images import is_image_file

__all__ = ["collect_images"]


def collect_images(specs: Sequence[str], what: str, *, exclude: Sequence[Path] = ()) -> list[Path]:
    """Image files named by ``specs``: folders (recursive, sorted by relative path, hidden entries
    skipped), globs (sorted) or files, in the order given; a file met twice is kept once (the first
    time). Files inside the folders ``exclude`` (e.g. an output folder) are skipped.

    Raises ValueError naming ``what`` (e.g. "TRAIN") and the spec when nothing matches.
    """
    excluded = [os.path.abspath(p) for p in exclude]
    found: list[Path] = []
    seen: set[str] = set()

    def inside_excluded(key: str) -> bool:
        return any(key == root or key.startswith(root + os.sep) for root in excluded)

    def add(path: Path) -> None:
        key = os.path.abspath(path)
        if key not in seen and not inside_excluded(key):
            seen.add(key)
            found.append(path)

    def add_folder(folder: Path) -> None:
        files = [p for p in folder.rglob("*") if is_image_file(p)]
        files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
            add(path)

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            before = len(found)
            add_folder(path)
            if len(found) == before:
                raise ValueError(f"{what}: no image files in the folder {spec}")
        elif path.is_file():
            add(path)
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise ValueError(f"{what}: the pattern {spec!r} matches nothing")
            for match in matches:
                match_path = Path(match)
                if match_path.is_dir():
                    add_folder(match_path)
                elif is_image_file(match_path):
                    add(match_path)
        else:
            raise ValueError(f"{what}: {spec} is neither a file, a folder nor a glob pattern that matches")
    if not found:
        raise ValueError(f"{what}: no image files found in {' '.join(specs)}")
    return found
