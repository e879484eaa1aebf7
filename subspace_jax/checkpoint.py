"""Save and load fitted models: orbax arrays plus a JSON metadata file, validated on load.

Layout of a checkpoint directory::

    <path>/metadata.json   format version, package version, config, backbone name and weights
                           sha256, image size, shape/dtype/sha256 of every array, and size and
                           sha256 of every file under arrays/
    <path>/arrays/         orbax StandardCheckpointer tree {"banks", "grams", "sampling_bank",
                           "sampling_gram"}

Saving writes into a temporary sibling directory and renames it into place, so an interrupted save
never leaves a half-written checkpoint where a good one was. Loading checks everything (metadata,
config, file sizes and hashes, array shapes, dtypes and content hashes, and optionally the
backbone) before it returns a model, and raises ``CheckpointError`` (a ``ValueError``) naming the
path and the problem otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from subspace_jax import __version__
from subspace_jax._io import atomic_directory, atomic_write_text
from subspace_jax.batching import check_backbone
from subspace_jax.model import Config, Model, level_key

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
ARRAYS_DIR = "arrays"


class CheckpointError(ValueError):
    """A checkpoint is missing a part, corrupted, of an unknown format, or built with another backbone."""


def _flat_arrays(model: Model) -> dict[str, jax.Array]:
    """ "banks/level2" -> array, ... for every array leaf of the model."""
    flat = {f"banks/{key}": value for key, value in model.banks.items()}
    flat |= {f"grams/{key}": value for key, value in model.grams.items()}
    if model.sampling_bank is not None:
        flat["sampling_bank"] = model.sampling_bank
        flat["sampling_gram"] = model.sampling_gram
    return flat


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def _array_sha256(array: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()


def _file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
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


def _check_files(arrays_path: Path, manifest: Any) -> None:
    """Every file the save wrote is there, whole and unchanged, before orbax reads any of them
    (a restore that fails half-way inside orbax leaves its asynchronous reads dangling)."""
    if not isinstance(manifest, dict):
        raise CheckpointError(
            f"{arrays_path.parent / METADATA_FILE}: corrupted metadata, 'files' must map paths to sizes"
        )
    found = _file_manifest(arrays_path)
    for name, expected in manifest.items():
        actual = found.get(name)
        if actual is None:
            raise CheckpointError(f"{arrays_path / name}: missing, the checkpoint is incomplete or corrupted")
        if not isinstance(expected, dict) or actual != expected:
            raise CheckpointError(
                f"{arrays_path / name}: {actual['size']} bytes with sha256 {actual['sha256'][:16]}…, expected "
                f"{expected}; the file is truncated or altered, the checkpoint is corrupted"
            )


def save(model: Model, path: str | os.PathLike) -> Path:
    """Save ``model`` to the directory ``path`` (replaced atomically if it exists); returns the path."""
    import orbax.checkpoint as ocp

    if not isinstance(model, Model):
        raise ValueError(f"model: expected a subspace_jax.Model, got {type(model).__name__}")
    path = Path(path).absolute()
    flat = _flat_arrays(model)
    metadata = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": model.config.to_dict(),
        "backbone": {"name": model.backbone_name, "weights_sha256": model.weights_sha256},
        "image_size": model.config.image_size,
        "output_size": model.config.output_size,
        "n_train": model.n_train,
        "arrays": {
            name: {"shape": list(value.shape), "dtype": str(value.dtype), "sha256": _array_sha256(value)}
            for name, value in flat.items()
        },
    }
    with atomic_directory(path) as tmp:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / ARRAYS_DIR, _nest(flat))
            checkpointer.wait_until_finished()
        metadata["files"] = _file_manifest(tmp / ARRAYS_DIR)
        atomic_write_text(tmp / METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The validated metadata of the checkpoint at ``path`` (no arrays are read)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no checkpoint directory here")
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not a subspace-jax checkpoint ({METADATA_FILE} is missing)")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{meta_path}: corrupted metadata, not valid JSON ({error})") from error
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{meta_path}: corrupted metadata, expected a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: unknown checkpoint format version {version!r}; this subspace-jax "
            f"{__version__} reads format version {FORMAT_VERSION}"
        )
    required = ("config", "backbone", "image_size", "n_train", "arrays", "files")
    missing = [key for key in required if key not in metadata]
    if missing:
        raise CheckpointError(f"{meta_path}: corrupted metadata, missing {missing}")
    try:
        config = Config.from_dict(metadata["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{meta_path}: invalid config ({error})") from error
    backbone = metadata["backbone"]
    if (
        not isinstance(backbone, dict)
        or not isinstance(backbone.get("name"), str)
        or not isinstance(backbone.get("weights_sha256"), (str, type(None)))
    ):
        raise CheckpointError(
            f"{meta_path}: corrupted metadata, 'backbone' must hold a name and weights_sha256"
        )
    if metadata["image_size"] != config.image_size:
        raise CheckpointError(
            f"{meta_path}: image_size {metadata['image_size']!r} disagrees with the config's {config.image_size}"
        )
    _check_array_specs(meta_path, metadata["arrays"], config, metadata["n_train"])
    metadata["config"] = config
    return metadata


def _check_array_specs(meta_path: Path, specs: Any, config: Config, n_train: Any) -> None:
    expected = {f"{group}/{level_key(level)}" for group in ("banks", "grams") for level in config.levels}
    if config.sampling == "subspace":
        expected |= {"sampling_bank", "sampling_gram"}
    if not isinstance(specs, dict) or set(specs) != expected:
        found = sorted(specs) if isinstance(specs, dict) else specs
        raise CheckpointError(
            f"{meta_path}: corrupted metadata, arrays {found} where the config needs {sorted(expected)}"
        )
    if not isinstance(n_train, int) or n_train < 1:
        raise CheckpointError(f"{meta_path}: corrupted metadata, n_train {n_train!r}")
    for name, spec in specs.items():
        ok = (
            isinstance(spec, dict)
            and isinstance(spec.get("shape"), list)
            and all(isinstance(s, int) and s >= 0 for s in spec["shape"])
            and isinstance(spec.get("sha256"), str)
            and spec.get("dtype") in ("float32", "bfloat16")
        )
        if not ok:
            raise CheckpointError(f"{meta_path}: corrupted metadata for array {name!r}: {spec!r}")
        shape = spec["shape"]
        if name.startswith("grams/") or name == "sampling_gram":
            good = shape == [n_train, n_train] and spec["dtype"] == "float32"
        elif name.startswith("banks/"):
            good = len(shape) == 4 and shape[0] == n_train and spec["dtype"] == config.bank_dtype
        else:
            good = len(shape) == 2 and shape[0] == n_train and spec["dtype"] == config.bank_dtype
        if not good:
            raise CheckpointError(
                f"{meta_path}: corrupted metadata, array {name!r} {spec['dtype']}{shape} does not fit the config"
            )


def load(path: str | os.PathLike, backbone: Any = None) -> Model:
    """Load a model saved by ``save``; nothing is returned unless every check passes.

    Args:
      path: the checkpoint directory.
      backbone: optionally the backbone to score with; it must have the stored name and weights
        sha256 (else CheckpointError) and is bound to the model for ``Model.score``. Without it,
        ``Model.score`` loads the backbone by name and makes the same check.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    metadata = read_metadata(path)
    config: Config = metadata["config"]
    arrays_path = path / ARRAYS_DIR
    if not arrays_path.is_dir():
        raise CheckpointError(f"{path}: the arrays directory {ARRAYS_DIR}/ is missing")
    _check_files(arrays_path, metadata["files"])
    specs = metadata["arrays"]
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = _nest(
        {
            name: jax.ShapeDtypeStruct(tuple(spec["shape"]), jnp.dtype(spec["dtype"]), sharding=sharding)
            for name, spec in specs.items()
        }
    )
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            # Compare the stored shapes first: a mismatching restore fails inside orbax's async reads.
            stored = checkpointer.metadata(arrays_path).item_metadata.tree
            for name, spec in specs.items():
                node = stored
                for part in name.split("/"):
                    node = node[part]
                if list(node.shape) != spec["shape"] or str(jnp.dtype(node.dtype)) != spec["dtype"]:
                    raise CheckpointError(
                        f"{arrays_path}: stored array {name!r} is {jnp.dtype(node.dtype)}{list(node.shape)} but "
                        f"{METADATA_FILE} says {spec['dtype']}{spec['shape']}, the checkpoint is corrupted"
                    )
            restored = checkpointer.restore(arrays_path, abstract)
    except CheckpointError:
        raise
    except Exception as error:  # orbax and tensorstore raise many types for unreadable files
        raise CheckpointError(
            f"{arrays_path}: cannot read the arrays, the checkpoint is corrupted ({error})"
        ) from error
    flat = {}
    for name, spec in specs.items():
        node = restored
        for part in name.split("/"):
            node = node[part]
        if list(node.shape) != spec["shape"] or str(node.dtype) != spec["dtype"]:
            raise CheckpointError(
                f"{arrays_path}: array {name!r} is {node.dtype}{list(node.shape)}, expected {spec['dtype']}{spec['shape']}"
            )
        if _array_sha256(node) != spec["sha256"]:
            raise CheckpointError(
                f"{arrays_path}: array {name!r} does not match its recorded sha256, the checkpoint is corrupted"
            )
        flat[name] = node
    levels = [level_key(level) for level in config.levels]
    model = Model(
        banks={key: flat[f"banks/{key}"] for key in levels},
        grams={key: flat[f"grams/{key}"] for key in levels},
        sampling_bank=flat.get("sampling_bank"),
        sampling_gram=flat.get("sampling_gram"),
        config=config,
        backbone_name=metadata["backbone"]["name"],
        weights_sha256=metadata["backbone"]["weights_sha256"],
    )
    if backbone is not None:
        try:
            check_backbone(model, backbone)
        except ValueError as error:
            raise CheckpointError(f"{path}: {error}") from error
        model = model.bind(backbone)
    return model
