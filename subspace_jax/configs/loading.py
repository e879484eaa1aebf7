"""The one config loader: a packaged config by name, or a config file (a ``.py`` with ``get_config()``,
or JSON).

A config module (as in big_vision's ``configs/*.py``) has ``get_config()`` returning one method's frozen
config (``SubspaceConfig``, ``PatchCoreConfig``, ``SpadeConfig``)::

    # subspace_jax/configs/mtd_paper.py
    from subspace_jax.methods.subspace import SubspaceConfig

    def get_config():
        return SubspaceConfig(levels=(2, 3, 4), sampling_level="pooled")

The named configs ship inside the package (``names()``), so an installed package has them. A JSON file
holds a config's ``to_dict()`` (its ``method`` key picks the class; without one, the subspace method).
``load(source, **overrides)`` replaces fields after loading; the runners and ``subspace-jax fit`` take
``--config NAME|FILE`` and let flags override fields. Every failure is a ValueError naming the source.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from subspace_jax.methods import registry

__all__ = ["CONFIG_DIR", "from_dict", "load", "names", "parse_overrides"]

CONFIG_DIR = Path(__file__).resolve().parent
_NOT_CONFIGS = {"__init__", "loading", "flags"}
_MAX_JSON_BYTES = 1 << 20


def names() -> tuple[str, ...]:
    """The packaged config names (``mtd_default``, ``mtd_paper``, ...), sorted."""
    return tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in _NOT_CONFIGS))


def from_dict(data: Any, source: str = "config") -> Any:
    """The config a ``to_dict()`` mapping describes; its ``method`` picks the class (default subspace)."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a JSON object (a config's to_dict()), got {type(data).__name__}"
        )
    try:
        method = registry.get(data.get("method", "subspace"))
        return method.config_cls.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def _run_module(path: Path) -> Any:
    name = "subspace_jax_config_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: not a Python config file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in the file is reported with the file's name
        raise ValueError(f"{path}: the config file failed to run: {type(exc).__name__}: {exc}") from exc
    return module


def _get_config(module: Any, source: str) -> Any:
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"{source}: defines no get_config() function")
    try:
        config = get_config()
    except Exception as exc:  # noqa: BLE001 - reported with the source's name
        raise ValueError(f"{source}: get_config() failed: {type(exc).__name__}: {exc}") from exc
    try:
        registry.for_config(config)
    except ValueError as exc:
        raise ValueError(f"{source}: get_config() returned no method config: {exc}") from None
    return config


def load(source: str | os.PathLike, **overrides: Any) -> Any:
    """The config named ``source`` (a packaged name such as ``"mtd_default"``, a ``.py`` file with
    ``get_config()``, or a JSON file), with ``overrides`` replacing fields.

    Raises ValueError naming the source when it is unknown or missing, fails to run, has no
    ``get_config``, returns something that is not a method's config, or an override is invalid.
    """
    text = os.fspath(source)
    path = Path(text)
    if re.fullmatch(r"[A-Za-z_]\w*", text) and text in names():
        config = _get_config(importlib.import_module(f"subspace_jax.configs.{text}"), text)
        where = text
    elif path.suffix == ".py" or path.suffix == ".json":
        if not path.is_file():
            raise ValueError(f"{path}: config file not found")
        where = str(path)
        if path.suffix == ".py":
            config = _get_config(_run_module(path), where)
        else:
            if path.stat().st_size > _MAX_JSON_BYTES:
                raise ValueError(
                    f"{path}: a config file of {path.stat().st_size} bytes; expected at most 1 MiB"
                )
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from None
            config = from_dict(data, where)
    else:
        raise ValueError(
            f"{text}: expected a packaged config name ({', '.join(names())}) or a .py / .json config file"
        )
    if not overrides:
        return config
    known = {field.name for field in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{where}: overrides {unknown} are not fields of {type(config).__name__}")
    try:
        return dataclasses.replace(config, **overrides)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def parse_overrides(text: str, base: Any) -> dict[str, Any]:
    """Config overrides written on one line, as the experiment scripts take them: ``"k=10,levels=2+3"``
    -> {"k": 10, "levels": (2, 3)}, each value of the type of ``base``'s field."""
    fields = {f.name for f in dataclasses.fields(base)}
    out = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"{item!r}: expected FIELD=VALUE with a field of {type(base).__name__}")
        current = getattr(base, name)
        if isinstance(current, bool):
            if value not in ("true", "false"):
                raise ValueError(f"{item!r}: expected true or false")
            out[name] = value == "true"
        elif isinstance(current, tuple):
            out[name] = tuple(int(v) for v in value.split("+") if v)
        elif isinstance(current, float):
            out[name] = float(value)
        elif value.lstrip("-").isdigit():
            out[name] = int(value)
        else:
            out[name] = None if value == "none" and current is None else value
    return out
