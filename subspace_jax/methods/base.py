"""The config fields every method shares, and their validators, defined once.

``BaseConfig`` holds what every method's config has (the backbone, the input size, the levels and
the map smoothing) and checks it; ``subspace_jax.Config`` and the baselines' configs extend it. Its
``_check_*`` helpers are the one place a config field is validated, so every config names the field
and the expected value the same way: ``Config.k: expected an int >= 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from subspace_jax.backbones.registry import NORMALIZATIONS
from subspace_jax.backbones.registry import REGISTRY as _BACKBONE_REGISTRY
from subspace_jax.backbones.registry import get_spec as _backbone_spec

BACKBONE_NAMES = tuple(_BACKBONE_REGISTRY)
LEVELS = (1, 2, 3, 4)
MAX_INT = 2**31 - 1  # int fields become int32 shapes, indices and loop bounds under jit
SEED_RANGE = (-(2**63), 2**63 - 1)  # what jax.random.key accepts


def _is_int(value: Any) -> bool:
    """True for Python and numpy integers; False for bools (``True`` is no image size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def level_key(level: int | str) -> str:
    """The backbone feature-dict key of a level: 2 -> "level2", "pooled" -> "pooled"."""
    return "pooled" if level == "pooled" else f"level{level}"


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Fields every method's config shares (frozen and hashable, so static under ``jit``).

    Attributes:
      backbone: feature extractor, one of ``BACKBONE_NAMES``, optionally with its input normalisation
        as ``"<name>:<normalization>"`` (``NORMALIZATIONS``: ``"tf"``, ``"imagenet"``), e.g.
        ``"efficientnet_lite0:imagenet"``; stored as ``backbones.load(backbone).name`` (the
        backbone's own normalisation drops the suffix), so features, caches and fitted models of
        the two normalisations are never mixed.
      image_size: images are resized to ``image_size`` × ``image_size``.
      crop: optional centre crop after resizing (the PatchCore protocol: 256 then 224); the
        anomaly maps have size ``crop or image_size``.
      levels: backbone levels (1..4, strides 4..32) the method reads, stored sorted.
      sigma: Gaussian smoothing of the fused map in pixels (0 disables it).
    """

    # The --method name of the config's family (the registry in subspace_jax.methods).
    method: ClassVar[str] = ""

    backbone: str = "wide_resnet50_2"
    image_size: int = 256
    crop: int | None = None
    levels: tuple[int, ...] = (2, 3)
    sigma: float = 4.0

    def __post_init__(self) -> None:
        try:
            if not isinstance(self.backbone, str):
                raise ValueError
            object.__setattr__(self, "backbone", _backbone_spec(self.backbone).name)
        except ValueError:
            self._fail(
                "backbone",
                f"one of {BACKBONE_NAMES}, optionally as '<name>:<normalization>' with a normalization "
                f"from {tuple(NORMALIZATIONS)}",
            )
        self._check_int("image_size", 32)
        if self.crop is not None and (not _is_int(self.crop) or not 32 <= self.crop <= self.image_size):
            self._fail("crop", f"None or an int in [32, image_size={self.image_size}]")
        levels = (self.levels,) if _is_int(self.levels) else self.levels
        if (
            not isinstance(levels, (tuple, list))
            or not levels
            or not all(_is_int(level) and level in LEVELS for level in levels)
            or len(set(levels)) != len(levels)
        ):
            self._fail("levels", "a non-empty sequence of distinct levels from {1, 2, 3, 4}")
        object.__setattr__(self, "levels", tuple(sorted(int(level) for level in levels)))
        self._check_number("sigma", 0.0, math.inf)

    # --- validators (each raises ValueError naming the config class and the field) -------------

    def _fail(self, name: str, expected: str) -> None:
        raise ValueError(f"{type(self).__name__}.{name}: expected {expected}, got {getattr(self, name)!r}")

    def _check_choice(self, name: str, options: tuple) -> None:
        if getattr(self, name) not in options:
            self._fail(name, f"one of {options}")

    def _check_int(self, name: str, minimum: int) -> None:
        """An int in [minimum, MAX_INT] (sizes, counts and loop bounds become int32 under jit);
        stored as a Python int."""
        value = getattr(self, name)
        if not _is_int(value) or not minimum <= value <= MAX_INT:
            self._fail(name, f"an int in [{minimum}, {MAX_INT}]")
        object.__setattr__(self, name, int(value))

    def _check_seed(self, name: str) -> None:
        """An int ``jax.random.key`` accepts (the int64 range); stored as a Python int."""
        value = getattr(self, name)
        if not _is_int(value) or not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            self._fail(name, f"an int in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (jax.random.key takes an int64)")
        object.__setattr__(self, name, int(value))

    def _check_number(self, name: str, low: float, high: float, *, high_inclusive: bool = False) -> None:
        """A real number (Python or numpy) in [low, high) (or [low, high]); stored as a float. NaN
        fails the comparisons, so it is refused too."""
        value = getattr(self, name)
        ok = (
            not isinstance(value, bool)
            and isinstance(value, (int, float, np.integer, np.floating))
            and (low <= value <= high if high_inclusive else low <= value < high)
        )
        if not ok:
            self._fail(name, f"a number in [{low}, {high}{']' if high_inclusive else ')'}")
        object.__setattr__(self, name, float(value))

    def _check_bool(self, name: str) -> None:
        if not isinstance(getattr(self, name), bool):
            self._fail(name, "a bool")

    # --- shared behaviour ----------------------------------------------------------------------

    @property
    def output_size(self) -> int:
        """Side of the input images and of the anomaly maps: ``crop or image_size``."""
        return self.crop if self.crop is not None else self.image_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the method name first (``levels`` as a list); ``from_dict`` inverts it."""
        out = {"method": self.method, **dataclasses.asdict(self)}
        out["levels"] = list(self.levels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """A validated config; unknown keys or another method are errors, missing keys take defaults.

        ``method`` may be absent (configs saved before it was recorded).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict: expected a mapping, got {type(data).__name__}")
        values = dict(data)
        method = values.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"{cls.__name__}.from_dict: method is {method!r}, expected {cls.method!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}.from_dict: unknown keys {unknown}; known keys are {sorted(known)}"
            )
        if isinstance(values.get("levels"), list):
            values["levels"] = tuple(values["levels"])
        return cls(**values)
