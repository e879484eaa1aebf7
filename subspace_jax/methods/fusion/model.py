"""``FusionModel`` (the fitted members and their held-out statistics), the pure scorer and its stages,
and ``fit_features`` (the package docstring describes the method)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from subspace_jax.engine import batches
from subspace_jax.engine.scorer import StagedScorer, timed
from subspace_jax.eval import calibration
from subspace_jax.methods import registry
from subspace_jax.methods.base import FittedModel, check_features
from subspace_jax.methods.fusion.config import QUANTILES, TAIL_STEPS, FusionConfig
from subspace_jax.ops import maps as maps_lib
from subspace_jax.ops.normalize import quantile_transform, zscore

__all__ = [
    "FusionModel",
    "combine",
    "fit_features",
    "level_maps",
    "member_outputs",
    "score_features",
    "stage_names",
]

Array = jax.Array
STAT_NAMES = ("map", "score", "levels", "level_map", "quantiles")


# --- normalisations --------------------------------------------------------------------------------------


def _map_levels(carry: Any, fn: Any) -> Any:
    """``carry`` with each ``{"level<l>": (B, h, w)}`` entry replaced by ``fn(key, map)``."""

    def visit(path: Any, leaf: Any) -> Any:
        key = path[-1] if path else None
        if (
            isinstance(key, jax.tree_util.DictKey)
            and str(key.key).startswith("level")
            and getattr(leaf, "ndim", 0) == 3
        ):
            return fn(str(key.key), leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(visit, carry)


def level_maps(carry: Any) -> dict[str, Array]:
    """The level maps ``{"level<l>": (B, h, w)}`` a member's carry holds before its last stage."""
    found: dict[str, Array] = {}
    _map_levels(carry, lambda key, value: found.setdefault(key, value))
    if not found:
        raise ValueError("level_zscore: the member's scorer leaves no level maps before its last stage")
    return dict(sorted(found.items()))


def _carry(member: Any, features: Mapping[str, Array], execution: Any) -> Any:
    """The member's scoring stages but the last: its level maps (and what the last stage needs)."""
    carry: Any = features
    for _, fn in member.scorer.stages[:-1]:
        carry = fn(member, carry, execution=execution)
    return carry


def _last(member: Any, carry: Any, execution: Any) -> tuple[Array, Array]:
    return member.scorer.stages[-1][1](member, carry, execution=execution)


def member_outputs(
    member: Any,
    stats: Mapping[str, Array],
    features: Mapping[str, Array],
    *,
    normalization: str,
    score_rule: str,
    execution: Any = None,
) -> tuple[Array, Array]:
    """One member's normalised map (B, S, S) and normalised image score (B,) (module docstring)."""
    if normalization == "level_zscore":
        carry = _carry(member, features, execution)
        _, scores = _last(member, carry, execution)
        keys = list(level_maps(carry))
        normed = _map_levels(carry, lambda key, m: zscore(m, stats["levels"][keys.index(key)]))
        maps = zscore(_last(member, normed, execution)[0], stats["level_map"])
    else:
        maps, scores = member.scorer.score_features(member, features, execution=execution)
        if normalization == "zscore":
            maps = zscore(maps, stats["map"])
        else:
            maps = quantile_transform(maps, stats["quantiles"], tail=TAIL_STEPS)
    if score_rule == "zscore":
        scores = zscore(scores, stats["score"])
    else:
        scores = scores / jnp.maximum(stats["score"][0], 1e-12)
    return maps.astype(jnp.float32), scores.astype(jnp.float32)


def combine(
    outputs: Sequence[tuple[Array, Array]],
    map_weights: Sequence[float],
    score_weights: Sequence[float],
    sigma: float = 0.0,
) -> tuple[Array, Array]:
    """The fused map ``sum_i w_i maps_i`` (blurred by ``sigma``) and score ``sum_i v_i scores_i`` of the
    members' normalised ``outputs`` [(maps (B, S, S), scores (B,)), ...]."""
    maps = sum(w * jnp.asarray(m, jnp.float32) for w, (m, _) in zip(map_weights, outputs))
    scores = sum(v * jnp.asarray(s, jnp.float32) for v, (_, s) in zip(score_weights, outputs))
    return maps_lib.gaussian_blur(maps, sigma).astype(jnp.float32), scores.astype(jnp.float32)


def _member_features(member: Any, features: Mapping[str, Array]) -> dict[str, Array]:
    return {key: features[key] for key in member.scorer.feature_keys(member)}


def score_features(
    model: Any, features: Mapping[str, Array], *, execution: Any = None
) -> tuple[Array, Array]:
    """Pure scorer: fitted ``FusionModel`` (a pytree) and backbone features of B images -> fused maps
    (B, S, S) float32 and scores (B,) float32."""
    cfg = model.config
    outputs = [
        member_outputs(
            member,
            stats,
            _member_features(member, features),
            normalization=cfg.normalization,
            score_rule=cfg.score_rule,
            execution=execution,
        )
        for member, stats in zip(model.members, model.stats)
    ]
    return combine(outputs, cfg.weights, cfg.image_weights, cfg.sigma)


# --- the staged scorer: one stage per member, then the fusion -------------------------------------------

_member_outputs_jit = jax.jit(member_outputs, static_argnames=("normalization", "score_rule", "execution"))
_combine_jit = jax.jit(combine, static_argnums=(1, 2, 3))


def stage_names(config: FusionConfig) -> tuple[str, ...]:
    """The timed stages: each member's method name (numbered when repeated), then "fusion"."""
    methods = [member.method for member in config.members]
    return tuple(m if methods.count(m) == 1 else f"{m}#{i}" for i, m in enumerate(methods)) + ("fusion",)


def _member_stage(model: Any, features: Mapping[str, Array], index: int, *, execution: Any = None) -> Any:
    member, cfg = model.members[index], model.config
    return _member_outputs_jit(
        member,
        model.stats[index],
        _member_features(member, features),
        normalization=cfg.normalization,
        score_rule=cfg.score_rule,
        execution=execution,
    )


def _members_stage(model: Any, features: Mapping[str, Array], *, execution: Any = None) -> list:
    return [_member_stage(model, features, i, execution=execution) for i in range(len(model.members))]


def _fusion_stage(model: Any, outputs: list, *, execution: Any = None) -> tuple[Array, Array]:
    cfg = model.config
    return _combine_jit(outputs, cfg.weights, cfg.image_weights, cfg.sigma)


def _check(model: Any, features: Mapping[str, Any]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for member in model.members:
        checked.update(member.scorer.check_features(member, features))
    return checked


@dataclasses.dataclass(frozen=True)
class FusionScorer(StagedScorer):
    """The fusion's ``StagedScorer``: ``run_stages`` times each member under its method's name and the
    combination as "fusion" (``stage_names``); ``stages`` holds the same work as "members", "fusion"."""

    def run_stages(
        self, model: Any, features: Mapping[str, Array], timings: dict[str, float] | None = None, **options
    ) -> tuple[Array, Array]:
        names = stage_names(model.config)
        outputs = [
            timed(timings, names[i], functools.partial(_member_stage, **options), model, features, i)
            for i in range(len(model.members))
        ]
        return timed(timings, names[-1], functools.partial(_fusion_stage, **options), model, outputs)


SCORER = FusionScorer(
    feature_keys=lambda model: model.config.feature_keys,
    check_features=_check,
    stages=(("members", _members_stage), ("fusion", _fusion_stage)),
    score_features=score_features,
    supports_bank_axis=False,
)


# --- model -----------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FusionModel(FittedModel):
    """A fitted fusion, a pytree: the member models and their normalisation statistics (leaves).

    Attributes:
      members: the fitted member models, in ``config.members`` order.
      stats: per member, its held-out statistics (float32): "map" (mean, std) of its map values,
        "score" (mean, std) of its image scores, "levels" (L, 2) of its level maps (sorted keys),
        "level_map" (mean, std) of its map after per-level z-scores, "quantiles" (``QUANTILES``,) of its
        map values.
      config: the ``FusionConfig`` (static).
      backbone_name, weights_sha256: the backbone the features came from (static).
      n_train: N, the training images given to fit (the members' banks hold N minus the held-out ones,
        or all N with ``refit``).
      thresholds: ``Thresholds`` of the fused score for ``predict`` (static), None until calibrated.
    """

    members: tuple[Any, ...]
    stats: tuple[dict[str, Array], ...]
    config: FusionConfig = dataclasses.field(metadata=dict(static=True))
    backbone_name: str = dataclasses.field(metadata=dict(static=True))
    weights_sha256: str | None = dataclasses.field(metadata=dict(static=True))
    n_train: int = dataclasses.field(metadata=dict(static=True))
    thresholds: Any = dataclasses.field(default=None, metadata=dict(static=True))

    scorer: ClassVar[Any] = SCORER

    def arrays(self) -> dict[str, Any]:
        """``"members/<i>/<member's name>"`` and ``"stats/<i>/<name>"``."""
        flat: dict[str, Any] = {}
        for i, (member, stats) in enumerate(zip(self.members, self.stats)):
            flat |= {f"members/{i}/{name}": value for name, value in member.arrays().items()}
            flat |= {f"stats/{i}/{name}": stats[name] for name in STAT_NAMES}
        return flat

    def static_values(self) -> dict[str, Any]:
        """``n_train`` and ``"members/<i>/<name>"`` for each member's static values."""
        out: dict[str, Any] = {"n_train": int(self.n_train)}
        for i, member in enumerate(self.members):
            out |= {f"members/{i}/{name}": value for name, value in member.static_values().items()}
        return out

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, Any],
        *,
        config: Any,
        backbone_name: str,
        weights_sha256: str | None,
        static: Mapping[str, Any],
        thresholds: Any = None,
    ) -> FusionModel:
        """The fusion ``arrays()`` and ``static_values()`` describe, each member rebuilt by its own class;
        ValueError naming what does not fit."""
        if not isinstance(config, FusionConfig):
            raise ValueError(f"config: expected a FusionConfig, got {type(config).__name__}")
        count = len(config.members)
        member_arrays: list[dict[str, Any]] = [{} for _ in range(count)]
        stats: list[dict[str, Any]] = [{} for _ in range(count)]
        member_static: list[dict[str, Any]] = [{} for _ in range(count)]
        strays = []
        for name, value in arrays.items():
            kind, _, rest = name.partition("/")
            index, _, key = rest.partition("/")
            if kind not in ("members", "stats") or not index.isdigit() or int(index) >= count or not key:
                strays.append(name)
            elif kind == "members":
                member_arrays[int(index)][key] = value
            elif key in STAT_NAMES:
                stats[int(index)][key] = value
            else:
                strays.append(name)
        if strays:
            raise ValueError(f"arrays {sorted(strays)} are no fields of a fusion of {count} members")
        if not isinstance(static, Mapping):
            raise ValueError(f"'static' is {static!r}; FusionModel needs a mapping")
        for name, value in static.items():
            kind, _, rest = name.partition("/")
            index, _, key = rest.partition("/")
            if kind == "members" and index.isdigit() and int(index) < count and key:
                member_static[int(index)][key] = value
            elif name != "n_train":
                raise ValueError(f"'static' holds {name!r}, no static value of a fusion of {count} members")
        n_train = static.get("n_train")
        if not isinstance(n_train, int) or isinstance(n_train, bool) or n_train < 2:
            raise ValueError(f"'static' n_train is {n_train!r}; a fusion needs an int >= 2")
        for i, member_stats in enumerate(stats):
            missing = [name for name in STAT_NAMES if name not in member_stats]
            if missing:
                raise ValueError(f"arrays: the statistics {missing} of member {i} are missing")
        members = tuple(
            registry.for_config(member_cfg).model_cls.from_arrays(
                member_arrays[i],
                config=member_cfg,
                backbone_name=backbone_name,
                weights_sha256=weights_sha256,
                static=member_static[i],
            )
            for i, member_cfg in enumerate(config.members)
        )
        return cls(
            members=members,
            stats=tuple(stats),
            config=config,
            backbone_name=backbone_name,
            weights_sha256=weights_sha256,
            n_train=n_train,
            thresholds=thresholds,
        )

    def partition_specs(self) -> FusionModel:
        """Everything replicated (the members' own bank specs are not used: ``supports_bank_axis`` is
        False, so a mesh's bank axis is refused and scoring is data-parallel)."""
        return jax.tree_util.tree_map(lambda _: P(), self)


# --- fitting ---------------------------------------------------------------------------------------------

_carry_jit = jax.jit(_carry, static_argnames=("execution",))
_last_jit = jax.jit(_last, static_argnames=("execution",))
_STAT_BATCH = 8


def _held_out_statistics(member: Any, features: Mapping[str, Any]) -> dict[str, Array]:
    """The member's statistics (``FusionModel.stats``) from the features of held-out nominal images."""
    keys = member.scorer.feature_keys(member)
    n = int(np.shape(features[keys[0]])[0])
    size = min(_STAT_BATCH, n)
    carries, maps, scores = [], [], []
    for start in range(0, n, size):
        real = min(size, n - start)
        block = {
            key: batches.pad_batch(np.asarray(features[key][start : start + real]), size) for key in keys
        }
        carry = _carry_jit(member, block, execution=None)
        batch_maps, batch_scores = _last_jit(member, carry, execution=None)
        carries.append((carry, real))
        maps.append(np.asarray(batch_maps[:real], np.float64))
        scores.append(np.asarray(batch_scores[:real], np.float64))
    values, image_scores = np.concatenate(maps), np.concatenate(scores)
    levels = [level_maps(carry) for carry, _ in carries]
    level_stats = []
    for key in levels[0]:
        parts = [np.asarray(lv[key][:real], np.float64) for lv, (_, real) in zip(levels, carries)]
        pixels = np.concatenate(parts)
        level_stats.append((pixels.mean(), pixels.std()))
    level_stats = jnp.asarray(level_stats, jnp.float32)
    keys_order = list(levels[0])
    normed = []
    for carry, real in carries:
        carry = _map_levels(carry, lambda key, m: zscore(m, level_stats[keys_order.index(key)]))
        normed.append(np.asarray(_last_jit(member, carry, execution=None)[0][:real], np.float64))
    normed_values = np.concatenate(normed)
    probs = np.linspace(0.0, 1.0, QUANTILES)
    return {
        "map": jnp.asarray([values.mean(), values.std()], jnp.float32),
        "score": jnp.asarray([image_scores.mean(), image_scores.std()], jnp.float32),
        "levels": level_stats,
        "level_map": jnp.asarray([normed_values.mean(), normed_values.std()], jnp.float32),
        "quantiles": jnp.asarray(np.quantile(values.reshape(-1), probs), jnp.float32),
    }


def fit_features(
    features: Mapping[str, Any],
    config: FusionConfig,
    *,
    backbone_name: str | None = None,
    weights_sha256: str | None = None,
) -> FusionModel:
    """Every member fitted from the same training features {key: (N, ...)} (extra keys ignored) but a
    seeded held-out ``holdout_fraction`` of the images (``calibration.holdout_split``), whose member maps
    and scores give the normalisation statistics; with ``refit``, the members are then fitted again on
    all N images."""
    if not isinstance(config, FusionConfig):
        raise ValueError(f"config: expected a FusionConfig, got {type(config).__name__}")
    checked = check_features(features, config.feature_keys)
    n = int(next(iter(checked.values())).shape[0])
    if n < 2:
        raise ValueError(f"features: a fusion needs at least 2 training images (some are held out), got {n}")
    train, held = calibration.holdout_split(n, config.holdout_fraction, config.seed)
    identity = dict(backbone_name=config.backbone if backbone_name is None else backbone_name)
    members, stats = [], []
    for member_cfg in config.members:
        method = registry.for_config(member_cfg)
        keys = method.feature_keys(member_cfg)
        member = method.fit_features(
            {key: checked[key][train] for key in keys}, member_cfg, weights_sha256=weights_sha256, **identity
        )
        stats.append(_held_out_statistics(member, {key: checked[key][held] for key in keys}))
        if config.refit:
            member = method.fit_features(
                {key: checked[key] for key in keys}, member_cfg, weights_sha256=weights_sha256, **identity
            )
        members.append(member)
    return FusionModel(
        members=tuple(members),
        stats=tuple(stats),
        config=config,
        weights_sha256=weights_sha256,
        n_train=n,
        **identity,
    )
