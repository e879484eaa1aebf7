"""The restricted unpickler: torch.save files (zip and legacy) read back exactly; malicious pickles
refused."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from subspace_jax.backbones import TorchFileError, UnsafePickleError, load_torch_file

pytestmark = pytest.mark.parity


class _WritesMarker:
    """Unpickling this would create ``path`` (via ``builtins.open``) if the unpickler let it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsShell:
    def __init__(self, path: Path):
        self.command = f"touch {path}"

    def __reduce__(self):
        return (os.system, (self.command,))


def _zip_torch_file(path: Path, payload: bytes) -> None:
    """A file laid out like torch's zip format, with ``payload`` as its data.pkl."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def _legacy_torch_file(path: Path, payload: bytes) -> None:
    """A file laid out like torch's legacy format (magic, protocol, sys info), then ``payload``."""
    stream = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, stream, protocol=2)
    pickle.dump(1001, stream, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, stream, protocol=2)
    stream.write(payload)
    path.write_bytes(stream.getvalue())


@pytest.mark.parametrize("gadget", [_WritesMarker, _RunsShell])
@pytest.mark.parametrize("layout", ["zip", "legacy", "raw"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, gadget, layout):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"conv.weight": gadget(marker)}, protocol=2)
    weights = tmp_path / "evil.pth"
    if layout == "zip":
        _zip_torch_file(weights, payload)
    elif layout == "legacy":
        _legacy_torch_file(weights, payload)
    else:
        weights.write_bytes(payload)
    with pytest.raises(
        UnsafePickleError,
        match=r"refusing to load global '(builtins\.open|io\.open|posix\.system|os\.system)'",
    ):
        load_torch_file(weights)
    assert not marker.exists()


def test_refusal_names_the_file(tmp_path):
    weights = tmp_path / "evil.pth"
    _zip_torch_file(weights, pickle.dumps(_WritesMarker(tmp_path / "m"), protocol=2))
    with pytest.raises(UnsafePickleError, match="evil.pth"):
        load_torch_file(weights)


def _tensors() -> dict[str, torch.Tensor]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    longs = torch.arange(10, dtype=torch.int64)
    return {
        "weight": torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0)),
        "transposed": base.t(),  # non-contiguous view
        "strided": base[::2, 1::2],
        "slice": longs[3:7],  # offset into a storage shared with "longs"
        "longs": longs,
        "half": torch.linspace(-1, 1, 5).half(),
        "double": torch.linspace(0, 1, 4, dtype=torch.float64),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(7),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_tensors_round_trip_exactly(tmp_path, zip_format):
    tensors = _tensors()
    state = torch.nn.Module().state_dict()  # an OrderedDict with _metadata, like a real state dict
    state.update(tensors)
    path = tmp_path / "weights.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_torch_file(path)
    assert list(loaded) == list(tensors)
    for key, tensor in tensors.items():
        expected = tensor.detach().numpy()
        assert loaded[key].dtype == expected.dtype, key
        assert loaded[key].shape == expected.shape, key
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)


def test_real_state_dict_matches_torch_load(tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    loaded = load_torch_file(path)
    reference = torch.load(path, weights_only=True)
    assert list(loaded) == list(reference)
    for key, tensor in reference.items():
        np.testing.assert_array_equal(loaded[key], tensor.numpy(), err_msg=key)


def test_not_a_torch_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(TorchFileError, match="junk.pth"):
        load_torch_file(junk)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_torch_file(tmp_path / "nowhere.pth")


def test_truncated_legacy_file_is_reported(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"w": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TorchFileError, match="truncated"):
        load_torch_file(truncated)


def test_zip_storage_of_wrong_length_is_reported(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"w": torch.ones(100)}, path)
    damaged = tmp_path / "damaged.pth"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if "/data/" in item.filename:
                data = data[:-8]
            target.writestr(item, data)
    message = "damaged.pth: archive member 'full/data/0' declares 392 bytes, expected 400"
    with pytest.raises(TorchFileError, match=message):
        load_torch_file(damaged)
