"""The one process-wide cache of backbones: loading converts and folds weights, so do it once.

``load_cached(name, weights)`` loads a backbone once per (name, weights file) and keeps the most recent
few. ``remember(backbone)`` keeps a backbone that was built elsewhere (a custom weights file, a stand-in
in tests) under its identity, (name, weights sha256). ``for_weights(name, weights_sha256)`` is what a
fitted model scores with when no backbone is passed: the remembered backbone of that identity, else
the default weights of ``name`` if their hash matches, else a ValueError saying what to pass.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any

from .backbone import Backbone, load

__all__ = ["for_weights", "load_cached", "remember"]

_KEEP = 4  # backbones kept by identity; WRN50's folded weights are 270 MB
_BY_IDENTITY: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()


@functools.lru_cache(maxsize=_KEEP)
def _load(name: str, weights: str | None) -> Backbone:
    return load(name, weights=weights)


def load_cached(name: str, weights: str | os.PathLike | None = None) -> Backbone:
    """``backbones.load(name, weights)``, loaded once per process and kept for the next call (and
    remembered by identity for ``for_weights``)."""
    source = None if weights is None else os.fspath(weights)
    if source is not None and source != "random":
        source = os.path.abspath(source)
    backbone = _load(name, source)
    remember(backbone)
    return backbone


def remember(backbone: Any) -> None:
    """Keep ``backbone`` (anything with ``name``, ``weights_sha256`` and ``pure()``) under its identity."""
    key = (backbone.name, backbone.weights_sha256)
    _BY_IDENTITY[key] = backbone
    _BY_IDENTITY.move_to_end(key)
    while len(_BY_IDENTITY) > _KEEP:
        _BY_IDENTITY.popitem(last=False)


def for_weights(name: str, weights_sha256: str | None) -> Any:
    """The backbone ``name`` with weights of hash ``weights_sha256``: remembered, or the default weights
    when they have that hash. ValueError when neither, naming what to do."""
    if weights_sha256 is None:
        raise ValueError(
            f"backbone: the model records no weights_sha256, so no {name} backbone can be checked against "
            "it; pass backbone= (the one its features came from) or refit with weights_sha256"
        )
    found = _BY_IDENTITY.get((name, weights_sha256))
    if found is not None:
        return found
    default = load_cached(name)
    if default.weights_sha256 != weights_sha256:
        raise ValueError(
            f"backbone: the model was fit with {name} weights of sha256 {weights_sha256[:16]}…, not the "
            f"default ones ({default.weights_sha256[:16]}…); pass backbone=backbones.load({name!r}, "
            "weights=FILE) with the file it was fit with"
        )
    return default
