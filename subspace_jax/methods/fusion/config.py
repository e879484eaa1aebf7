"""``FusionConfig``: the members' configs, the normalisation and the weights (the package docstring)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from subspace_jax._checks import is_number
from subspace_jax.methods import registry
from subspace_jax.methods.base import BaseConfig

__all__ = ["NORMALIZATIONS", "QUANTILES", "SCORE_RULES", "TAIL_STEPS", "FusionConfig"]

NORMALIZATIONS = ("zscore", "level_zscore", "quantile")
SCORE_RULES = ("ratio", "zscore")
QUANTILES = 1001  # held-out map quantiles at probabilities 0, 0.001, ..., 1
TAIL_STEPS = 10  # the outer percent (10 of the 1000 steps) sets the slope beyond the nominal range
_SHARED = ("backbone", "image_size", "crop")  # fields every member takes from the fusion


@dataclasses.dataclass(frozen=True)
class FusionConfig(BaseConfig):
    """A fusion of registered methods (hashable: static under ``jit``).

    The shared fields backbone, image_size and crop are the fusion's: every member takes them (a
    member config given with others is replaced; a stored one that disagrees is refused).

    Attributes:
      members: the members' configs (any registered method but a fusion), at least one; default: the
        subspace and PatchCore methods' default configs.
      normalization: how each member's map is normalised before the weighted sum: "zscore",
        "level_zscore" or "quantile" (module docstring).
      map_weights: one weight >= 0 per member for the normalised maps (not all 0); () weighs all 1.
      score_rule: how each member's image score is normalised: "ratio" or "zscore".
      score_weights: one weight >= 0 per member for the normalised image scores; () weighs all 1.
      holdout_fraction: fraction of the training images, drawn with seed, kept out of the members'
        banks; their maps and scores give the normalisation statistics (at least 1 image, at most N - 1).
      refit: after the statistics, fit every member again on all N images, so the banks lose nothing
        to the held-out images (twice the fitting time; the statistics then describe members of N - h
        images, whose nominal maps are slightly higher than the refitted members').
      seed: seeds the held-out draw.
      sigma: Gaussian smoothing of the fused map in pixels (0: none; the members smooth their own).
      levels: derived, the union of the members' levels (not a parameter).
    """

    method: ClassVar[str] = "fusion"

    members: tuple[Any, ...] = dataclasses.field(default=(), metadata=dict(flag=False))
    normalization: str = "zscore"
    map_weights: tuple[float, ...] = ()
    score_rule: str = "ratio"
    score_weights: tuple[float, ...] = ()
    holdout_fraction: float = 0.1
    refit: bool = False
    seed: int = 0
    sigma: float = 0.0
    levels: tuple[int, ...] = dataclasses.field(default=(), init=False)

    def __post_init__(self) -> None:
        members = self.members
        if isinstance(members, list):
            members = tuple(members)
        if members == ():
            members = (registry.get("subspace").config_cls(), registry.get("patchcore").config_cls())
        if not isinstance(members, tuple):
            self._fail("members", "a tuple of registered methods' configs")
        for i, member in enumerate(members):
            try:
                method = registry.for_config(member)
            except ValueError:
                self._fail("members", f"registered methods' configs; members[{i}] is {type(member).__name__}")
            if method.name == self.method:
                self._fail("members", f"configs of other methods than a fusion; members[{i}] is a fusion")
        object.__setattr__(self, "levels", tuple(sorted({lv for m in members for lv in m.levels})))
        super().__post_init__()
        shared = {name: getattr(self, name) for name in _SHARED}
        replaced = []
        for i, member in enumerate(members):
            try:
                replaced.append(dataclasses.replace(member, **shared))
            except ValueError as error:
                raise ValueError(
                    f"{type(self).__name__}.members[{i}]: {error} (members take the fusion's {shared})"
                ) from None
        object.__setattr__(self, "members", tuple(replaced))
        self._check_choice("normalization", NORMALIZATIONS)
        self._check_choice("score_rule", SCORE_RULES)
        for name in ("map_weights", "score_weights"):
            weights = getattr(self, name)
            weights = tuple(weights) if isinstance(weights, list) else weights
            ok = (
                isinstance(weights, tuple)
                and all(is_number(w) and 0 <= w < float("inf") for w in weights)
                and (weights == () or (len(weights) == len(replaced) and sum(weights) > 0))
            )
            if not ok:
                self._fail(name, f"() or {len(replaced)} finite numbers >= 0, one per member, not all 0")
            object.__setattr__(self, name, tuple(float(w) for w in weights))
        if not is_number(self.holdout_fraction) or not 0.0 < self.holdout_fraction < 1.0:
            self._fail("holdout_fraction", "a number in (0, 1)")
        object.__setattr__(self, "holdout_fraction", float(self.holdout_fraction))
        self._check_bool("refit")
        self._check_int("seed", 0, 2**63 - 1)

    @property
    def weights(self) -> tuple[float, ...]:
        """The map weights, one per member (``map_weights`` or all 1)."""
        return self.map_weights or (1.0,) * len(self.members)

    @property
    def image_weights(self) -> tuple[float, ...]:
        """The image-score weights, one per member (``score_weights`` or all 1)."""
        return self.score_weights or (1.0,) * len(self.members)

    @property
    def feature_keys(self) -> tuple[str, ...]:
        """The union of the members' backbone feature keys, in member order (one backbone pass)."""
        keys: dict[str, None] = {}
        for member in self.members:
            keys.update(dict.fromkeys(registry.for_config(member).feature_keys(member)))
        return tuple(keys)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fusion's fields with the members as their own ``to_dict()``."""
        out: dict[str, Any] = {"method": self.method}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "members":
                value = [member.to_dict() for member in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionConfig:
        """The config ``to_dict`` describes; members whose backbone, image_size or crop disagree with the
        fusion's, or levels other than their union, are refused."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict: expected a mapping, got {type(data).__name__}")
        values = dict(data)
        levels = values.pop("levels", None)
        members = values.get("members", [])
        if not isinstance(members, (list, tuple)) or not all(isinstance(m, Mapping) for m in members):
            raise ValueError(f"{cls.__name__}.from_dict: members must be a list of config dicts")
        parsed = []
        for i, member in enumerate(members):
            method = registry.get(member.get("method", "subspace"))
            parsed.append(method.config_cls.from_dict(member))
            for name in _SHARED:
                if name in values and getattr(parsed[-1], name) != values[name]:
                    raise ValueError(
                        f"{cls.__name__}.from_dict: members[{i}].{name} is {getattr(parsed[-1], name)!r}, "
                        f"the fusion's is {values[name]!r}"
                    )
        values["members"] = tuple(parsed)
        for name in ("map_weights", "score_weights"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        config = super().from_dict(values)
        if levels is not None and tuple(levels) != config.levels:
            raise ValueError(
                f"{cls.__name__}.from_dict: levels {levels!r} are not the members' union "
                f"{list(config.levels)}"
            )
        return config
