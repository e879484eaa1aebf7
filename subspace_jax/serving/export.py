"""The whole scorer as one serialized StableHLO program (``jax.export``), runnable with jax alone.

``export_model(model)`` closes the model's pure ``score_images`` over the fitted model and the backbone's
parameters, so the bank, the Gram matrices and the network weights become constants of the program: uint8
(B, S, S, 3) images in, (maps (B, S, S) float32, scores (B,) float32) out. The artifact is the same
pure function ``model.score`` runs, not a re-implementation, which is what keeps the two in agreement.
On the inspection machine::

    import jax, numpy as np
    scorer = jax.export.deserialize(open("model.jaxexport", "rb").read())
    maps, scores = scorer.call(images)  # uint8 (B, S, S, 3)

It needs ``jax``, ``numpy`` and ``flatbuffers`` (jax's deserializer; not subspace_jax, flax or orbax),
and a jax whose serialization version can read it (jax guarantees reading artifacts of at least the
previous six months). The artifact is sealed: ``<file>.sha256`` beside it holds its digest, which the
loading code checks before running it (``verify_artifact``, or three lines of ``hashlib``).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from subspace_jax._io import atomic_write_bytes, atomic_write_text
from subspace_jax.engine import features
from subspace_jax.serving.checkpoint import MARKER_FILE

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def _check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    platforms = tuple(platforms)
    bad = [p for p in platforms if p not in PLATFORMS]
    if not platforms or bad or len(set(platforms)) != len(platforms):
        raise ValueError(f"platforms: expected distinct names from {PLATFORMS}, got {list(platforms)}")
    return platforms


def export_model(
    model: Any,
    *,
    batch_size: int | None = None,
    platforms: Sequence[str] = ("cpu",),
    backbone: Any = None,
) -> jax.export.Exported:
    """``jax.export`` of the scorer of ``model`` with everything inside.

    Args:
      model: a fitted model of any method (``backbone``, checked, or else the cached backbone of the
        model's identity, ``subspace_jax.backbones.for_weights``).
      batch_size: a fixed batch size B, or None for a symbolic batch dimension ("b"): then the
        program accepts any batch size, and the backbone runs on the whole batch at once (no CPU
        micro-batching, whose loop needs a known size).
      platforms: lowering platforms; one artifact can hold several ("cpu", "cuda", "tpu").

    Returns:
      the ``jax.export.Exported``; ``.serialize()`` gives the bytes ``save_exported`` writes.
    """
    platforms = _check_platforms(platforms)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size: expected None or an int >= 1, got {batch_size!r}")
    net = features.backbone_for(model, backbone)
    if batch_size is None and getattr(net, "micro_batch", None) is not None:
        net = copy.copy(net)  # the copy's _apply reads micro_batch at trace time
        net.micro_batch = None
    apply_fn, params = net.pure()
    fitted = model.with_thresholds(None)  # the scorer reads no thresholds
    size = model.config.output_size

    def score(images: jax.Array) -> tuple[jax.Array, jax.Array]:
        return model.scorer.score_images(fitted, apply_fn, params, images)

    if batch_size is None:
        shape = jax.export.symbolic_shape(f"b, {size}, {size}, 3")
    else:
        shape = (batch_size, size, size, 3)
    spec = jax.ShapeDtypeStruct(shape, jnp.uint8)
    return jax.export.export(jax.jit(score), platforms=platforms)(spec)


def seal_path(path: str | os.PathLike) -> Path:
    """Where an artifact's seal lives: ``<path>.sha256``, in ``sha256sum`` format."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def read_seal(path: str | os.PathLike) -> str | None:
    """The sha256 hex digest an artifact's seal records, or None when there is no readable seal."""
    try:
        text = seal_path(path).read_text(encoding="ascii")[:200]
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split(" ", 1)[0].strip()
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def verify_artifact(path: str | os.PathLike) -> bytes:
    """The artifact's bytes after checking them against its seal; ValueError naming the file when the
    seal is missing or does not match (a damaged or altered artifact would run and give other scores)."""
    path = Path(path)
    data = path.read_bytes()
    expected = read_seal(path)
    if expected is None:
        raise ValueError(f"{path}: no seal ({seal_path(path).name}) beside it; export the model again")
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(
            f"{path}: its bytes do not match its seal {seal_path(path).name}: damaged or altered"
        )
    return data


def _check_target(path: Path, overwrite: bool) -> None:
    for folder in (path.parent, *path.parent.parents):
        if (folder / MARKER_FILE).is_file():
            raise ValueError(
                f"{path}: inside the checkpoint folder {folder}; write the artifact elsewhere (it would "
                "change the checkpoint)"
            )
    if not os.path.lexists(path) or overwrite:
        return
    if path.is_file() and not path.is_symlink() and read_seal(path) is not None:
        return  # an artifact of ours: replacing it is what export does
    raise ValueError(
        f"{path}: exists and is not an exported artifact; choose another file or pass --overwrite"
    )


def save_exported(exported: jax.export.Exported, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``exported.serialize()`` to ``path`` and its seal (sha256) beside it, atomically each;
    returns the path. Refuses a path inside a checkpoint folder, and an existing file that is not an
    artifact unless ``overwrite``."""
    path = Path(os.path.abspath(path))
    _check_target(path, overwrite)
    data = bytes(exported.serialize())
    # The seal goes first: an artifact is never newer than its seal, and a killed export leaves the old
    # artifact with a seal that no longer matches, which loading refuses.
    atomic_write_text(seal_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return atomic_write_bytes(path, data)
