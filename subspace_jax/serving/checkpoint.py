"""Save and load fitted models (subspace, PatchCore, SPADE): orbax arrays, JSON metadata and an
integrity marker, validated on load.

Layout of a checkpoint directory::

    <path>/metadata.json    format version, package version, method, config, backbone name and
                            weights sha256, the model's other static fields, image size, shape/dtype/
                            sha256 of every array, and size and sha256 of every file under arrays/
    <path>/arrays/          orbax StandardCheckpointer tree: the model's array fields by name, e.g.
                            {"banks": {"level2": ...}, "grams": {...}, "sampling_bank", "sampling_gram"}
    <path>/subspace_jax_checkpoint.json
                            the format marker, written last: the sha256 of metadata.json's canonical
                            JSON. Metadata covers the array and file hashes, so this one digest covers
                            the config, the metadata and the arrays: an edited sigma or fusion is
                            refused on load (it guards against careless edits and corruption; anyone
                            who can write the folder can also reseal it, so it is no signature).

Models restore by tree structure: a model is a pytree whose array leaves are stored by their field
path, and load rebuilds the abstract model (the class, its static config and backbone identity,
``jax.ShapeDtypeStruct`` leaves), restores orbax into it and checks the result leaf by leaf. For the
subspace model and SPADE the abstract tree is also compared with ``jax.eval_shape`` of the method's
``fit_features`` on features of the stored shapes, so stored arrays must be exactly what the config
would fit.

Saving never destroys what is not a checkpoint: ``path`` must be absent or a directory this module
wrote (marker present, nothing else inside). The new checkpoint is written in full into a hidden
sibling ``.<name>.<pid>-<random>.tmp`` (marker last) and swapped in by two renames (old checkpoint
to ``.<name>.<pid>-<random>.old``, new one into place). A process killed between them leaves a
complete copy beside ``path``: ``load`` reads it, and the next ``save`` renames it back before
replacing it. Siblings left by dead processes (their pid no longer runs) are removed by the next
``save``. Loading checks everything before it returns a model and raises ``CheckpointError`` (a
``ValueError``) naming the path and the problem otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from subspace_jax import backbones
from subspace_jax._io import (
    ACTIVE,
    ACTIVE_LOCK,
    atomic_write_text,
    give_default_permissions,
    replace_directory,
    sibling,
)
from subspace_jax._version import __version__
from subspace_jax.engine.features import check_backbone
from subspace_jax.eval.calibration import Thresholds
from subspace_jax.methods import registry
from subspace_jax.serving.checkpoint_files import (
    ARRAY_DTYPES,
    ARRAYS_DIR,
    FORMAT_VERSION,
    MARKER_FILE,
    METADATA_FILE,
    CheckpointError,
    array_sha256,
    check_files,
    check_overwritable,
    file_manifest,
    locate,
    metadata_sha256,
    read_json,
    read_marker,
    recover_and_clean,
    remove,
    seal,
)

__all__ = ["ARRAYS_DIR", "METADATA_FILE", "MARKER_FILE", "CheckpointError", "load", "read_metadata", "save"]


def _checkpointer() -> ocp.StandardCheckpointer:
    """An orbax checkpointer for this process alone: a checkpoint is one process's file set (with
    several processes, process 0 saves and the others wait, ``sharding.wait_for_processes``)."""
    me = jax.process_index()
    only_me = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.StandardCheckpointer(multiprocessing_options=only_me)


# ---------------------------------------------------------------------------------------------
# Methods and trees


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def _build(method: registry.Method, flat: Mapping[str, Any], config: Any, metadata: Mapping[str, Any]) -> Any:
    """The model of class ``method.model_cls`` from named arrays (arrays or ShapeDtypeStructs) and the
    metadata's static values."""
    return method.model_cls.from_arrays(
        flat,
        config=config,
        backbone_name=metadata["backbone"]["name"],
        weights_sha256=metadata["backbone"]["weights_sha256"],
        static=metadata["static"],
        thresholds=metadata.get("thresholds"),
    )


# ---------------------------------------------------------------------------------------------
# Save


def save(model: Any, path: str | os.PathLike) -> Path:
    """Save a fitted model to the directory ``path`` and return the absolute path.

    Args:
      model: a fitted model of a registered method (``SubspaceModel``, ``PatchCoreModel``, ``SpadeModel``).
      path: a new directory, or an existing checkpoint to replace (atomically). Anything else there
        (a file, a folder of other things) is refused with ``CheckpointError`` and left untouched.
    """
    method = registry.for_model(model).name
    path = Path(os.path.abspath(path))
    flat = model.arrays()
    metadata = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "method": method,
        "config": model.config.to_dict(),
        "backbone": {"name": model.backbone_name, "weights_sha256": model.weights_sha256},
        "static": model.static_values(),
        "image_size": model.config.image_size,
        "output_size": model.config.output_size,
        "n_train": int(model.n_train),
        "arrays": {
            name: {"shape": list(value.shape), "dtype": str(value.dtype), "sha256": array_sha256(value)}
            for name, value in flat.items()
        },
    }
    if getattr(model, "thresholds", None) is not None:  # optional: only calibrated models have them
        metadata["thresholds"] = model.thresholds.to_dict()
    for parent in path.parents:
        if os.path.lexists(parent) and not parent.is_dir():
            raise CheckpointError(f"{path}: cannot be a checkpoint folder, {parent} is a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot create its folder ({error})") from error
    recover_and_clean(path)
    check_overwritable(path)
    tmp = sibling(path, "tmp")
    old = sibling(path, "old")
    with ACTIVE_LOCK:
        ACTIVE.update((tmp, old))
    try:
        tmp.mkdir()
        with _checkpointer() as checkpointer:
            # Host copies: with several processes, orbax refuses device arrays local to one of them.
            checkpointer.save(
                tmp / ARRAYS_DIR, _nest({name: np.asarray(value) for name, value in flat.items()})
            )
            checkpointer.wait_until_finished()
        metadata["files"] = file_manifest(tmp / ARRAYS_DIR)
        atomic_write_text(tmp / METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        seal(tmp, metadata)
        give_default_permissions(tmp, 0o777)  # mkdir honours the umask already; keep it explicit
        # The target may have changed while we wrote: it is checked again just before the swap.
        replace_directory(tmp, path, old, still_replaceable=check_overwritable, first=MARKER_FILE)
    except BaseException:
        if tmp.exists():
            remove(tmp)
        raise
    finally:
        with ACTIVE_LOCK:
            ACTIVE.difference_update((tmp, old))
    return path


# ---------------------------------------------------------------------------------------------
# Load


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The validated metadata of the checkpoint at ``path`` (no arrays are read).

    ``metadata["config"]`` is the config object; ``metadata["path"]`` the folder actually read (a
    complete copy beside ``path`` when a killed save left ``path`` missing).
    """
    path = locate(Path(os.path.abspath(path)))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no checkpoint directory here")
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not a subspace-jax checkpoint ({METADATA_FILE} is missing)")
    metadata = read_json(meta_path, "metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{meta_path}: corrupted metadata, expected a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        hint = ""
        if version in (1, 2):
            hint = " (written by an earlier subspace-jax; fit and save the model again)"
        raise CheckpointError(
            f"{meta_path}: unknown checkpoint format version {version!r}{hint}; this subspace-jax "
            f"{__version__} reads format version {FORMAT_VERSION}"
        )
    marker = read_marker(path)
    if marker["metadata_sha256"] != metadata_sha256(metadata):
        raise CheckpointError(
            f"{meta_path}: does not match the integrity digest in {MARKER_FILE}; the metadata (config, "
            "backbone or array records) was edited or corrupted after saving, refusing to load it"
        )
    required = ("method", "config", "backbone", "static", "image_size", "n_train", "arrays", "files")
    missing = [key for key in required if key not in metadata]
    if missing:
        raise CheckpointError(f"{meta_path}: corrupted metadata, missing {missing}")
    known = registry.names()
    if not isinstance(metadata["method"], str) or metadata["method"] not in known:
        raise CheckpointError(f"{meta_path}: unknown method {metadata['method']!r}; known: {sorted(known)}")
    method = registry.get(metadata["method"])
    try:
        config = method.config_cls.from_dict(metadata["config"])
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
            f"{meta_path}: image_size {metadata['image_size']!r} disagrees with the config's "
            f"{config.image_size}"
        )
    if "thresholds" in metadata:
        if not any(f.name == "thresholds" for f in dataclasses.fields(method.model_cls)):
            raise CheckpointError(f"{meta_path}: {metadata['method']} models carry no thresholds")
        try:
            metadata["thresholds"] = Thresholds.from_dict(metadata["thresholds"])
        except ValueError as error:
            raise CheckpointError(f"{meta_path}: invalid thresholds ({error})") from error
    _check_array_specs(meta_path, method, metadata, config)
    metadata["config"] = config
    metadata["path"] = path
    return metadata


def _check_array_specs(
    meta_path: Path, method: registry.Method, metadata: dict[str, Any], config: Any
) -> None:
    """The stored arrays are the leaves of a model of this method and config: each spec well formed,
    the abstract model buildable, and (where the fit inputs are recoverable) equal to
    ``jax.eval_shape`` of ``fit_features``."""
    specs = metadata["arrays"]
    if not isinstance(specs, dict) or not specs:
        raise CheckpointError(f"{meta_path}: corrupted metadata, 'arrays' must map array names to specs")
    for name, spec in specs.items():
        ok = (
            isinstance(spec, dict)
            and isinstance(spec.get("shape"), list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in spec["shape"])
            and isinstance(spec.get("sha256"), str)
            and spec.get("dtype") in ARRAY_DTYPES
        )
        if not ok:
            raise CheckpointError(f"{meta_path}: corrupted metadata for array {name!r}: {spec!r}")
    abstract = {
        name: jax.ShapeDtypeStruct(tuple(spec["shape"]), jnp.dtype(spec["dtype"]))
        for name, spec in specs.items()
    }
    try:
        template = _build(method, abstract, config, metadata)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{meta_path}: corrupted metadata, {error}") from None
    # Where the method can say which features its fit turns into these arrays, the arrays must be exactly
    # what fitting such features gives (jax.eval_shape); otherwise they are checked against the abstract
    # model only.
    shapes = {name: spec["shape"] for name, spec in specs.items()}
    try:
        inputs = None if method.fit_inputs is None else method.fit_inputs(shapes, config)
    except KeyError as error:
        raise CheckpointError(
            f"{meta_path}: corrupted metadata, arrays {sorted(specs)} do not fit the config "
            f"(array {error.args[0]!r} is missing)"
        ) from None
    if inputs is not None:
        try:
            fitted = jax.eval_shape(
                functools.partial(
                    method.fit_features,
                    config=config,
                    backbone_name=metadata["backbone"]["name"],
                    weights_sha256=metadata["backbone"]["weights_sha256"],
                ),
                inputs,
            )
        except (ValueError, TypeError) as error:
            fitted = None
            reason = str(error)
        if fitted is None:
            raise CheckpointError(
                f"{meta_path}: corrupted metadata, arrays {sorted(specs)} do not fit the config ({reason})"
            )
        expected = {name: (list(leaf.shape), str(leaf.dtype)) for name, leaf in fitted.arrays().items()}
        if set(expected) != set(specs):
            raise CheckpointError(
                f"{meta_path}: corrupted metadata, arrays {sorted(specs)} where the config needs "
                f"{sorted(expected)}"
            )
        for name, (shape, dtype) in expected.items():
            spec = specs[name]
            if spec["shape"] != shape or spec["dtype"] != dtype:
                raise CheckpointError(
                    f"{meta_path}: corrupted metadata, array {name!r} {spec['dtype']}{spec['shape']} "
                    f"does not fit the config (fitting gives {dtype}{shape})"
                )
    if metadata["n_train"] != template.n_train:
        raise CheckpointError(
            f"{meta_path}: corrupted metadata, n_train {metadata['n_train']!r} but the arrays hold "
            f"{template.n_train} training images"
        )


def load(path: str | os.PathLike, backbone: Any = None) -> Any:
    """Load a model saved by ``save``; nothing is returned unless every check passes.

    Args:
      path: the checkpoint directory.
      backbone: optionally the backbone to score with; it must have the stored name and weights
        sha256 (else CheckpointError) and is remembered (``subspace_jax.backbones.remember``), so the
        model's ``score`` uses it. Without it, ``score`` loads the backbone by name and makes the same
        check.

    Returns:
      the model (``SubspaceModel``, ``PatchCoreModel`` or ``SpadeModel``, as saved).
    """
    metadata = read_metadata(path)
    path = metadata["path"]
    method = registry.get(metadata["method"])
    config = metadata["config"]
    arrays_path = path / ARRAYS_DIR
    if not arrays_path.is_dir():
        raise CheckpointError(f"{path}: the arrays directory {ARRAYS_DIR}/ is missing")
    check_files(arrays_path, metadata["files"])
    specs = metadata["arrays"]
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {
        name: jax.ShapeDtypeStruct(tuple(spec["shape"]), jnp.dtype(spec["dtype"]), sharding=sharding)
        for name, spec in specs.items()
    }
    try:
        with _checkpointer() as checkpointer:
            # Compare the stored shapes first: a mismatching restore fails inside orbax's async reads.
            stored = checkpointer.metadata(arrays_path).item_metadata.tree
            for name, spec in specs.items():
                node = stored
                for part in name.split("/"):
                    node = node[part]
                if list(node.shape) != spec["shape"] or str(jnp.dtype(node.dtype)) != spec["dtype"]:
                    raise CheckpointError(
                        f"{arrays_path}: stored array {name!r} is {jnp.dtype(node.dtype)}{list(node.shape)} "
                        f"but {METADATA_FILE} says {spec['dtype']}{spec['shape']}, the checkpoint is damaged"
                    )
            restored = checkpointer.restore(arrays_path, _nest(abstract))
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
                f"{arrays_path}: array {name!r} is {node.dtype}{list(node.shape)}, "
                f"expected {spec['dtype']}{spec['shape']}"
            )
        if array_sha256(node) != spec["sha256"]:
            raise CheckpointError(
                f"{arrays_path}: array {name!r} does not match its recorded sha256, "
                "the checkpoint is corrupted"
            )
        flat[name] = node
    model = _build(method, flat, config, metadata)
    if backbone is not None:
        try:
            check_backbone(model, backbone)
        except ValueError as error:
            raise CheckpointError(f"{path}: {error}") from error
        backbones.remember(backbone)  # the model's score() finds it by its identity
    return model
