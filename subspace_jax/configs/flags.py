"""Command-line flags generated from a frozen config dataclass, so every field is a flag and none is copied.

A field ``k: int = 5`` becomes ``--k 5``; ``levels: tuple[int, ...]`` becomes ``--levels 2 3 4``; a bool
becomes ``--name/--no-name``; ``X | None`` also accepts ``none``; ``Literal[...]`` becomes a choice.
Flags the user does not pass are absent from the parsed namespace (``argparse.SUPPRESS``), so the
dataset's and the config's own defaults apply untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Callable, Literal, Union

from subspace_jax.methods.base import BACKBONE_NAMES

_NONE_WORDS = ("none", "null")


def flag_name(field_name: str) -> str:
    """``sampling_level`` -> ``--sampling-level``."""
    return "--" + field_name.replace("_", "-")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _scalar_parser(tp: Any) -> Callable[[str], Any]:
    """A str -> value converter for a scalar annotation (int, float, str, bool, Literal, unions of them)."""
    if tp is type(None):

        def parse_none(text: str) -> None:
            if text.lower() in _NONE_WORDS:
                return None
            raise ValueError(f"expected 'none', got {text!r}")

        return parse_none
    if tp is bool:

        def parse_bool(text: str) -> bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {text!r}")

        return parse_bool
    if tp in (int, float, str):
        return tp
    if typing.get_origin(tp) is Literal:
        options = typing.get_args(tp)

        def parse_literal(text: str) -> Any:
            for option in options:
                if str(option) == text or (isinstance(option, str) and option.lower() == text.lower()):
                    return option
            raise ValueError(f"expected one of {', '.join(map(str, options))}, got {text!r}")

        return parse_literal
    if _is_union(tp):
        # Try the narrowest reading first: None, then int before float before str.
        order = {type(None): 0, bool: 1, int: 2, float: 3, str: 5}
        members = sorted(typing.get_args(tp), key=lambda m: order.get(m, 4))
        parsers = [_scalar_parser(m) for m in members]

        def parse_union(text: str) -> Any:
            errors = []
            for parse in parsers:
                try:
                    return parse(text)
                except (ValueError, TypeError) as exc:
                    errors.append(str(exc))
            raise ValueError("; ".join(errors))

        return parse_union
    raise TypeError(f"no command-line reading for the annotation {tp!r}")


def _sequence_element(tp: Any) -> Any | None:
    """The element annotation of ``tuple[X, ...]`` / ``list[X]`` (or of their ``| None``), else None."""
    candidates = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    for candidate in candidates:
        origin = typing.get_origin(candidate)
        if origin in (tuple, list):
            args = [a for a in typing.get_args(candidate) if a is not Ellipsis]
            return Union[tuple(args)] if len(args) > 1 else (args[0] if args else str)
    return None


def _optional(tp: Any) -> bool:
    return _is_union(tp) and type(None) in typing.get_args(tp)


def field_docs(config_cls: type) -> dict[str, str]:
    """Field name -> description, read from the "Attributes:" section of a Google-style class docstring
    (``name: text`` or ``a, b: text``, continuation lines indented deeper)."""
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(config_cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:") + 1
    except StopIteration:
        return docs
    current: list[str] = []
    indent = None
    for line in lines[start:]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip())
        match = re.match(r"^\s*([\w, ]+):\s+(.*)$", line)
        if match and (indent is None or depth <= indent):
            indent = depth
            current = [name.strip() for name in match.group(1).split(",")]
            for name in current:
                docs[name] = match.group(2).strip()
        elif indent is not None and depth > indent:
            for name in current:
                docs[name] += " " + line.strip()
        else:
            break
    return {name: text.replace("``", "") for name, text in docs.items()}


def _describe_default(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser, config_cls: type, defaults: Any, title: str
) -> list[str]:
    """Add one flag per field of the dataclass ``config_cls``; return the field names added.

    ``defaults`` (an instance) only feeds the help text; unset flags stay unset in the namespace.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls: expected a dataclass type, got {config_cls!r}")
    hints = typing.get_type_hints(config_cls)
    descriptions = field_docs(config_cls)
    group = parser.add_argument_group(title)
    names = []
    for field in dataclasses.fields(config_cls):
        if not field.init or field.metadata.get("flag") is False:  # e.g. a fusion's member configs
            continue
        tp = hints[field.name]
        default = getattr(defaults, field.name)
        text = descriptions.get(field.name, "").replace(
            "BACKBONE_NAMES", "{" + ", ".join(BACKBONE_NAMES) + "}"
        )
        doc = f"{text} (default: {_describe_default(default)})".lstrip()
        doc = doc.replace("%", "%%")  # argparse formats help strings with %
        element = _sequence_element(tp)
        if tp is bool:
            group.add_argument(
                flag_name(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=doc,
            )
        elif element is not None:
            element_parser = _scalar_parser(element)
            none_ok = _optional(tp)

            def parse_item(text: str, _parse=element_parser, _none_ok=none_ok) -> Any:
                if _none_ok and text.lower() in _NONE_WORDS:
                    return None
                return _parse(text)

            parse_item.__name__ = field.name  # argparse names the converter in its error messages
            group.add_argument(
                flag_name(field.name),
                dest=field.name,
                nargs="+",
                type=parse_item,
                default=argparse.SUPPRESS,
                metavar=field.name.upper(),
                help=doc,
            )
        else:
            parse = _scalar_parser(tp)

            def parse_scalar(text: str, _parse=parse) -> Any:
                return _parse(text)

            parse_scalar.__name__ = field.name
            choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
            group.add_argument(
                flag_name(field.name),
                dest=field.name,
                type=parse_scalar,
                default=argparse.SUPPRESS,
                metavar=("{" + ",".join(map(str, choices)) + "}") if choices else field.name.upper(),
                help=doc,
            )
        names.append(field.name)
    return names


def config_from_namespace(defaults: Any, namespace: argparse.Namespace, names: list[str]) -> Any:
    """``defaults`` with the fields given on the command line replaced (lists become tuples; a lone
    ``none`` for an optional sequence becomes None)."""
    changes: dict[str, Any] = {}
    for name in names:
        if not hasattr(namespace, name):
            continue
        value = getattr(namespace, name)
        if isinstance(value, list):
            value = None if value == [None] else tuple(value)
        changes[name] = value
    return dataclasses.replace(defaults, **changes)
