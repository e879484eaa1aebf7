"""Experiment variants as Python config files (as big_vision's ``configs/*.py``).

A config file is a Python module with ``get_config()`` returning one method's frozen config
(``subspace_jax.Config``, ``PatchCoreConfig`` or ``SpadeConfig``)::

    # experiments/configs/mtd_paper.py
    import subspace_jax as sj

    def get_config():
        return sj.Config(levels=(2, 3, 4), sampling_level="pooled")

A file may start from another one: ``load(Path(__file__).with_name("mtd_paper.py"), reconstruction="pixel")``.
The runners take ``--config FILE``; flags given on the command line override the file's fields.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

# experiments/configs of this checkout: the runner's per-dataset defaults live there.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def load(path: str | os.PathLike, **overrides: Any) -> Any:
    """The config ``get_config()`` of the file ``path`` returns, with ``overrides`` replacing fields.

    Raises ValueError naming the file when it is missing, fails to run, has no ``get_config``, returns
    something that is not a method's config, or an override is invalid.
    """
    from subspace_jax.methods import registry as methods

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    name = "subspace_jax_config_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: not a Python config file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in the file is reported with the file's name
        raise ValueError(f"{path}: the config file failed to run: {type(exc).__name__}: {exc}") from exc
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"{path}: defines no get_config() function")
    try:
        config = get_config()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: get_config() failed: {type(exc).__name__}: {exc}") from exc
    try:
        methods.for_config(config)
    except ValueError as exc:
        raise ValueError(f"{path}: get_config() returned no method config: {exc}") from None
    if not overrides:
        return config
    known = {field.name for field in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{path}: overrides {unknown} are not fields of {type(config).__name__}")
    return dataclasses.replace(config, **overrides)
