"""Argument checks shared by every layer: one definition of "an int" and "a number in a range".

Each check raises ValueError naming the argument and what was expected, so every public entry point
words its errors the same way: ``batch_size: expected an int in [1, 2147483647], got 0``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_INT = 2**31 - 1  # sizes, counts and loop bounds become int32 shapes, indices and bounds under jit


def is_int(value: Any) -> bool:
    """True for Python and numpy integers; False for bools (``True`` is no image size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for Python and numpy reals (ints and floats), False for bools."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """``value`` as a Python int in [minimum, maximum]; else ValueError naming ``name``."""
    if not is_int(value) or not minimum <= value <= maximum:
        raise ValueError(f"{name}: expected an int in [{minimum}, {maximum}], got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    high_inclusive: bool = False,
    low_inclusive: bool = True,
) -> float:
    """``value`` as a float in [low, high) (bounds as flagged); NaN is refused. Else ValueError."""
    ok = is_number(value) and not math.isnan(float(value))
    if ok:
        above = low <= value if low_inclusive else low < value
        below = value <= high if high_inclusive else value < high
        ok = above and below
    if not ok:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise ValueError(f"{name}: expected a number in {left}{low}, {high}{right}, got {value!r}")
    return float(value)
