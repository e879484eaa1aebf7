"""Finding the MTD (env, beside the checkout, user cache) and `python -m subspace_jax.data.mtd download`
against a local HTTP server serving a fake archive of the published layout (tiny images, real counts)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subspace_jax._download import DownloadError
from subspace_jax.data.mtd import (
    DOWNLOAD_COMMAND,
    MTD,
    MTD_CLASSES,
    MTDArchiveError,
    MTDNotFoundError,
    download,
    fetch,
    find_root,
    mtd_train_filenames,
)

REPO = Path(__file__).resolve().parents[1]
# The published class sizes (the dataset's README), independent of the module's constants.
SIZES = {"MT_Blowhole": 115, "MT_Break": 85, "MT_Crack": 57, "MT_Fray": 32, "MT_Uneven": 103}
N_FREE, N_DEFECTIVE = 952, sum(SIZES.values())
OFFLINE_URL = "http://127.0.0.1:9/master.zip"  # port 9 (discard): connection refused


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def archive_entries() -> dict[str, bytes]:
    """Member name -> bytes of a GitHub-style archive: one top folder, the MT_* folders, a README."""
    jpg = encoded(np.full((8, 8), 128, np.uint8), "JPEG")
    png = encoded(np.zeros((8, 8), np.uint8), "PNG")
    top = "Magnetic-tile-defect-datasets.-master"
    entries = {f"{top}/README.md": b"# MTD\n", f"{top}/preview.jpg": jpg}
    train = list(mtd_train_filenames())
    free = train + [f"extra_{i}.jpg" for i in range(N_FREE - len(train))]
    stems = {"MT_Free": [name.removesuffix(".jpg") for name in free]}
    stems.update({name: [f"exp_{name}_{i}" for i in range(count)] for name, count in SIZES.items()})
    for class_name, names in stems.items():
        for stem in names:
            entries[f"{top}/{class_name}/Imgs/{stem}.jpg"] = jpg
            entries[f"{top}/{class_name}/Imgs/{stem}.png"] = png
    return entries


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def good_entries() -> dict[str, bytes]:
    return archive_entries()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No MTD anywhere: empty user cache, no neighbour of the checkout, no env var, no URL override."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SUBSPACE_JAX_MTD", raising=False)
    monkeypatch.delenv("SUBSPACE_JAX_MTD_URL", raising=False)
    monkeypatch.setattr(fetch, "beside_checkout", lambda: tmp_path / "shared" / "data" / "mtd")
    return tmp_path


def make_root(path: Path) -> Path:
    for name in MTD_CLASSES:
        (path / name / "Imgs").mkdir(parents=True)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_default_root_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.default_root() == tmp_path / "xdg" / "subspace_jax" / "mtd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.default_root() == tmp_path / "home" / ".cache" / "subspace_jax" / "mtd"


def test_find_root_order_env_then_checkout_neighbour_then_cache(isolated, monkeypatch):
    with pytest.raises(MTDNotFoundError) as missing:
        find_root()
    assert DOWNLOAD_COMMAND in str(missing.value) and str(isolated / "cache") in str(missing.value)
    cache = make_root(isolated / "cache" / "subspace_jax" / "mtd")
    assert find_root() == cache
    beside = make_root(isolated / "shared" / "data" / "mtd")
    assert find_root() == beside
    explicit = make_root(isolated / "mine")
    monkeypatch.setenv("SUBSPACE_JAX_MTD", str(explicit))
    assert find_root() == explicit
    # A set variable is the only place looked in: a wrong one is reported, not papered over.
    monkeypatch.setenv("SUBSPACE_JAX_MTD", str(isolated / "typo"))
    with pytest.raises(MTDNotFoundError, match="SUBSPACE_JAX_MTD=.*typo"):
        find_root()


def test_find_root_finds_the_checkouts_neighbour_by_default(monkeypatch):
    """Without patches: a source checkout looks at ../shared/data/mtd first (whether or not it exists)."""
    monkeypatch.delenv("SUBSPACE_JAX_MTD", raising=False)
    assert fetch.candidate_roots()[0] == REPO.parent / "shared" / "data" / "mtd"


def test_download_into_the_user_cache_then_found_and_loadable(
    isolated, http_server, good_entries, monkeypatch
):
    served, base = http_server
    (served / "master.zip").write_bytes(zipped(good_entries))
    monkeypatch.setenv("SUBSPACE_JAX_MTD_URL", base + "master.zip")
    assert fetch.main(["download", "--no-progress"]) == 0
    root = isolated / "cache" / "subspace_jax" / "mtd"
    assert find_root() == root
    assert leftovers(root) == sorted(MTD_CLASSES)  # no README, preview, archive or temporary
    assert leftovers(root.parent) == ["mtd"]
    dataset = MTD(root)
    train, test = dataset.samples("train"), dataset.samples("test")
    assert len(train) == 761 and len(test) == N_FREE - 761 + N_DEFECTIVE
    assert sum(s.label for s in test) == N_DEFECTIVE and all(s.mask_path.is_file() for s in test if s.label)
    # Already there: a second run downloads nothing (the server no longer has the file).
    (served / "master.zip").unlink()
    assert download(progress=False) == root


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", "corrupt or incomplete"),
        ("flipped byte", "corrupt or incomplete"),
        ("missing mask", "no mask"),
        ("missing image", "951 MT_Free"),
        ("not MTD", "no MT_\\*/Imgs/ files"),
    ],
)
def test_bad_archive_is_refused_and_leaves_nothing(isolated, http_server, good_entries, damage, message):
    served, base = http_server
    entries = dict(good_entries)
    if damage == "missing mask":
        del entries[next(name for name in entries if name.endswith("MT_Crack/Imgs/exp_MT_Crack_3.png"))]
    elif damage == "missing image":
        del entries[next(name for name in entries if "MT_Free/Imgs/extra_" in name and name.endswith(".jpg"))]
    elif damage == "not MTD":
        entries = {"repo-master/README.md": b"hello"}
    data = zipped(entries)
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped byte":
        # The stored bytes of a member in the middle of the archive: its CRC-32 no longer matches.
        offset = data.index(b"exp_MT_Break_40.jpg") + 200
        data = data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]
    (served / "master.zip").write_bytes(data)
    dest = isolated / "data" / "mtd"
    with pytest.raises(MTDArchiveError, match=message):
        download(dest, url=base + "master.zip", progress=False)
    assert leftovers(dest.parent) == []  # no destination, no hidden temporary folder


def test_offline_is_one_clear_line_without_traceback(isolated, capsys):
    with pytest.raises(DownloadError, match="127.0.0.1:9"):
        download(isolated / "mtd", url=OFFLINE_URL, progress=False)
    assert leftovers(isolated) == []
    assert fetch.main(["download", "--dest", str(isolated / "mtd"), "--url", OFFLINE_URL]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: could not download MTD from " + OFFLINE_URL)
    assert "Offline?" in err and not (isolated / "mtd").exists()


def test_command_line_entry_point_offline(tmp_path):
    """The documented command itself: exit code 1, one line on stderr, no Python traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "SUBSPACE_JAX_MTD_URL": OFFLINE_URL}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, "-m", "subspace_jax.data.mtd", "download", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "could not download MTD" in result.stderr
    assert leftovers(tmp_path / "cache" / "subspace_jax") == []


def test_existing_folder_that_is_not_mtd_is_never_overwritten(isolated, http_server, good_entries):
    served, base = http_server
    (served / "master.zip").write_bytes(zipped(good_entries))
    dest = isolated / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a complete MTD"):
        download(dest, url=base + "master.zip", progress=False)
    assert leftovers(dest) == ["notes.txt"] and leftovers(isolated) == ["mine", "served"]
