"""What every method shares: its config's common fields and their validators, and the fitted-model base.

- ``BaseConfig`` holds what every method's config has (the backbone, the input size, the levels and the
  map smoothing) and checks it; ``SubspaceConfig`` and the baselines' configs extend it. Its ``_check_*``
  helpers are the one place a config field is validated, so every config names the field and the
  expected value the same way: ``SubspaceConfig.k: expected an int in [1, 2147483647], got 0``.
- ``BaselineConfig`` adds the nearest-neighbour search's block sizes of PatchCore and SPADE.
- ``FittedModel`` is the base of every fitted model (a frozen dataclass pytree whose arrays are leaves
  and whose config, backbone identity and thresholds are static): ``score``, ``predict``,
  ``with_thresholds``, ``partition_specs`` (what ``subspace_jax.sharding`` splits over a mesh) and
  ``nbytes``. Its class's ``scorer`` (``subspace_jax.engine.scorer.StagedScorer``) says how it scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from subspace_jax._checks import MAX_INT, is_int
from subspace_jax.backbones.registry import NORMALIZATIONS
from subspace_jax.backbones.registry import REGISTRY as _BACKBONE_REGISTRY
from subspace_jax.backbones.registry import get_spec as _backbone_spec
from subspace_jax.engine import batches
from subspace_jax.engine import scorer as scorer_lib
from subspace_jax.eval import calibration
from subspace_jax.eval.calibration import Thresholds
from subspace_jax.ops import execution as execution_lib
from subspace_jax.ops import maps as maps_lib

BACKBONE_NAMES = tuple(_BACKBONE_REGISTRY)
LEVELS = (1, 2, 3, 4)
SEED_RANGE = (-(2**63), 2**63 - 1)  # what jax.random.key accepts
MAX_IMAGE_SIZE = 8192  # a side beyond this does not fit a backbone pass on any device we know
MAX_DISTANCE_BLOCK = 1 << 28  # nearest-neighbour search block, elements (1 GiB of float32)


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
      sigma: Gaussian smoothing of the fused map in pixels (0 disables it), at most a quarter of the
        map's side.
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
        self._check_int("image_size", 32, MAX_IMAGE_SIZE)
        if self.crop is not None and (not is_int(self.crop) or not 32 <= self.crop <= self.image_size):
            self._fail("crop", f"None or an int in [32, image_size={self.image_size}]")
        levels = (self.levels,) if is_int(self.levels) else self.levels
        if (
            not isinstance(levels, (tuple, list))
            or not levels
            or not all(is_int(level) and level in LEVELS for level in levels)
            or len(set(levels)) != len(levels)
        ):
            self._fail("levels", "a non-empty sequence of distinct levels from {1, 2, 3, 4}")
        object.__setattr__(self, "levels", tuple(sorted(int(level) for level in levels)))
        # The blur's kernel reaches 4σ: beyond the map's side it only averages the reflected map.
        self._check_number("sigma", 0.0, self.output_size / 4, high_inclusive=True)

    # --- validators (each raises ValueError naming the config class and the field) -------------

    def _fail(self, name: str, expected: str) -> None:
        raise ValueError(f"{type(self).__name__}.{name}: expected {expected}, got {getattr(self, name)!r}")

    def _check_choice(self, name: str, options: tuple) -> None:
        if getattr(self, name) not in options:
            self._fail(name, f"one of {options}")

    def _check_int(self, name: str, minimum: int, maximum: int = MAX_INT) -> None:
        """An int in [minimum, maximum] (sizes, counts and loop bounds become int32 under jit, and
        every field is bounded by what the computation can do); stored as a Python int."""
        value = getattr(self, name)
        if not is_int(value) or not minimum <= value <= maximum:
            self._fail(name, f"an int in [{minimum}, {maximum}]")
        object.__setattr__(self, name, int(value))

    def _check_seed(self, name: str) -> None:
        """An int ``jax.random.key`` accepts (the int64 range); stored as a Python int."""
        value = getattr(self, name)
        if not is_int(value) or not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
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


@dataclasses.dataclass(frozen=True)
class BaselineConfig(BaseConfig):
    """Fields and checks PatchCore and SPADE share (frozen, hashable: static under jit).

    Attributes:
      backbone: one of ``BACKBONE_NAMES``.
      image_size, crop: input resolution, as for ``SubspaceConfig`` (maps are ``crop or image_size``).
      levels: backbone levels used (1..4); any sequence of distinct levels, stored sorted.
      sigma: Gaussian smoothing of the maps in output pixels (0 disables it).
      query_chunk, bank_chunk: nearest-neighbour search block sizes; the search never holds more than a
        (query_chunk, bank_chunk) float32 distance block.
    """

    query_chunk: int = 2048
    bank_chunk: int = 8192

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_int("query_chunk", 1)
        self._check_int("bank_chunk", 1)
        if self.query_chunk * self.bank_chunk > MAX_DISTANCE_BLOCK:
            self._fail(
                "bank_chunk",
                f"an int with query_chunk · bank_chunk <= {MAX_DISTANCE_BLOCK} (a 1 GiB float32 distance "
                f"block; query_chunk is {self.query_chunk})",
            )


class FittedModel:
    """Base of every fitted model: a frozen dataclass registered as a pytree, with the static fields
    ``config``, ``backbone_name``, ``weights_sha256`` (None when unknown) and ``thresholds``.

    A fitted model is a value: nothing is attached to it after fitting, and ``with_thresholds`` returns
    a copy. The backbone that built it is identified by name and weights hash and travels beside it:
    ``score`` takes it as ``backbone=``, else uses the cached backbone of that identity.
    """

    scorer: ClassVar[Any]  # the method's subspace_jax.engine.scorer.StagedScorer
    n_train: int  # a field or property of every model: N, the number of training images (bank rows)

    @property
    def nbytes(self) -> int:
        """Bytes of every array the model holds (its banks, Gram matrices, coresets, projections)."""
        return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(self) if hasattr(leaf, "nbytes")))

    # --- checkpoints (subspace_jax.serving.checkpoint): a model as named arrays plus static values ----

    _IDENTITY: ClassVar[frozenset[str]] = frozenset(
        {"config", "backbone_name", "weights_sha256", "thresholds"}
    )

    @classmethod
    def static_names(cls) -> list[str]:
        """Static fields besides the config, the backbone identity and the thresholds."""
        return [
            f.name
            for f in dataclasses.fields(cls)
            if f.metadata.get("static") and f.name not in cls._IDENTITY
        ]

    @classmethod
    def array_names(cls) -> list[str]:
        """The array (leaf) fields."""
        return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("static")]

    def arrays(self) -> dict[str, Any]:
        """Every array the model holds by name: ``"banks/level2"`` for a dict field's entry, ``"bank"``
        for an array field (None fields hold none)."""
        flat: dict[str, Any] = {}
        for name in self.array_names():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, Mapping):
                flat |= {f"{name}/{key}": leaf for key, leaf in value.items()}
            else:
                flat[name] = value
        return flat

    def static_values(self) -> dict[str, Any]:
        """The static fields of ``static_names`` (JSON-ready: ints)."""
        return {name: getattr(self, name) for name in self.static_names()}

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
    ) -> Any:
        """The model ``arrays()`` and ``static_values()`` describe (arrays may be ShapeDtypeStructs, for a
        template); ValueError naming what does not fit this class."""
        fields = set(cls.array_names())
        strays = sorted(name for name in arrays if name.split("/")[0] not in fields or name.count("/") > 1)
        if strays:
            raise ValueError(f"arrays {strays} are no fields of {cls.__name__}")
        expected = cls.static_names()
        if (
            not isinstance(static, Mapping)
            or sorted(static) != sorted(expected)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in static.values())
        ):
            raise ValueError(f"'static' is {static!r}; {cls.__name__} needs {expected} as ints >= 1")
        nested: dict[str, Any] = {}
        for name, value in arrays.items():
            field, _, key = name.partition("/")
            if key:
                nested.setdefault(field, {})[key] = value
            else:
                nested[field] = value
        return cls(
            **{name: nested.get(name) for name in cls.array_names()},
            config=config,
            backbone_name=backbone_name,
            weights_sha256=weights_sha256,
            **static,
            thresholds=thresholds,
        )

    def check_finite(self) -> Any:
        """This model, after checking that every array it holds is finite: finite training features
        can still overflow float32 arithmetic (squared norms of features of 1e19 are inf), and a
        model holding inf or NaN would score every image NaN. ValueError naming the array otherwise."""
        for path, leaf in jax.tree_util.tree_leaves_with_path(self):
            if isinstance(leaf, jax.core.Tracer):  # traced (eval_shape): no values to check
                continue
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
                if not bool(jnp.isfinite(leaf).all()):
                    name = jax.tree_util.keystr(path)
                    raise ValueError(
                        f"features: the fitted {type(self).__name__} holds NaN or inf in {name}: the "
                        "training features overflow float32 arithmetic; check their scale (value_range)"
                    )
        return self

    def partition_specs(self) -> Any:
        """This model with a ``PartitionSpec`` in place of each array: ``P("bank")`` for arrays split by
        rows over a mesh's bank axis, ``P()`` for replicated ones. By default everything is replicated."""
        return jax.tree_util.tree_map(lambda _: P(), self)

    def with_thresholds(self, thresholds: Any) -> Any:
        """A copy of this model carrying ``thresholds`` (``subspace_jax.Thresholds`` from
        ``sj.calibrate``, or None) for ``predict``; the scorer never reads them."""
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise ValueError(f"thresholds: expected subspace_jax.Thresholds, got {type(thresholds).__name__}")
        if thresholds is self.thresholds:
            return self
        return dataclasses.replace(self, thresholds=thresholds)

    def score(
        self,
        inputs: Any,
        batch_size: int = execution_lib.DEFAULT_BATCH_SIZE,
        *,
        backbone: Any = None,
        timings: dict[str, float] | None = None,
        progress: bool = True,
        mesh: Any = None,
        memory_budget_bytes: int | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps and image scores, in batches (``subspace_jax.engine.scorer.score_in_batches``).

        Args:
          inputs: uint8 (B, S, S, 3) images, an iterable of such batches, a list of image paths (read,
            resized to ``image_size`` and centre-cropped), or backbone features (a dict level key ->
            (B, ...) arrays); S = ``config.output_size``.
          batch_size: images per compiled call; the last batch is padded, so there is one compilation.
          backbone: the backbone to use (checked against the weights the model was fit with); default:
            the cached backbone of that identity (``subspace_jax.backbones.for_weights``).
          timings: when given, the backbone and each stage run as separately jitted functions and their
            wall-clock seconds are added under the stage names (the first call includes compilation).
          progress: show a progress bar over batches.
          mesh: a ``jax.sharding.Mesh`` (``subspace_jax.sharding.make_mesh(data, bank)``): images are split
            over its "data" axis and, for models that shard their bank, bank rows over its "bank" axis.
            With several processes each passes its own share of the images and gets its own rows back.
          memory_budget_bytes: transient bytes one vectorised step may hold (``subspace_jax.ops.execution``);
            None: the backend's default. Results do not depend on it.
          value_range: (lo, hi), the scale of float images (e.g. (0, 1)); uint8 images and paths need
            none. Never guessed: float images without it are refused.

        Returns:
          maps (B, S, S) float32 and scores (B,) float32, as numpy arrays; ValueError naming the image
          whose map or score is not finite.
        """
        execution = None
        if memory_budget_bytes is not None:
            execution = execution_lib.default_execution(memory_budget_bytes)
        return scorer_lib.score_in_batches(
            self,
            inputs,
            batch_size=batch_size,
            backbone=backbone,
            timings=timings,
            progress=progress,
            desc=f"{self.config.method} score",
            mesh=mesh,
            execution=execution,
            value_range=value_range,
        )

    def predict(
        self,
        images: Any,
        batch_size: int = execution_lib.DEFAULT_BATCH_SIZE,
        *,
        progress: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Maps, scores, normalised scores (0.5 = threshold), decisions and masks of ``images`` under the
        model's thresholds (``subspace_jax.eval.calibration.Prediction``); ValueError without thresholds.
        The thresholds bound false alarms on nominal images; they do not control recall."""
        thresholds = calibration.require_thresholds(self)
        maps, scores = self.score(images, batch_size, progress=progress, **kwargs)
        return calibration.decide(maps, scores, thresholds)


def check_features(
    features: Mapping[str, Any], keys: Sequence[str], *, name: str = "features"
) -> dict[str, Any]:
    """A backbone feature dict holding ``keys`` with one batch size, as float32 arrays; level maps must
    be (N, h, w, c) and "pooled" (N, c); NaN and inf are refused naming the key and image."""
    if not isinstance(features, Mapping):
        raise ValueError(f"{name}: expected a dict of backbone features, got {type(features).__name__}")
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(f"{name}: missing {missing}; has {sorted(features)}")
    out = {k: jnp.asarray(features[k], dtype=jnp.float32) for k in keys}
    sizes = {k: v.shape[0] if v.ndim else None for k, v in out.items()}
    for k, v in out.items():
        want = 2 if k == "pooled" else 4
        if v.ndim != want:
            shape = "(N, c)" if want == 2 else "(N, h, w, c)"
            raise ValueError(f"{name}[{k!r}]: expected shape {shape}, got {v.shape}")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name}: all entries must have the same batch size, got {sizes}")
    if next(iter(sizes.values())) == 0:
        raise ValueError(f"{name}: expected at least one image, got an empty batch")
    batches.check_finite_features(out, name)
    return out


def baseline_scorer(
    match: Callable[[Any, Mapping[str, Any]], tuple[dict[str, Any], Any]],
    fusion: str,
    feature_keys: Callable[[Any], Sequence[str]],
    check: Callable[[Any, Mapping[str, Any]], dict[str, Any]],
    score_features: Callable[..., tuple[Any, Any]],
) -> scorer_lib.StagedScorer:
    """A nearest-neighbour method's two scoring stages: "matching", ``match(model, features) -> (level
    maps {"level<l>": (B, h_l, w_l)}, scores (B,))`` jitted, then "maps", the level maps fused into
    (B, S, S) by ``subspace_jax.ops.maps.fuse_maps`` (``fusion``, the config's sigma)."""
    match_jit = jax.jit(match)

    def matching(model: Any, features: Mapping[str, Any], *, execution: Any = None) -> Any:
        return match_jit(model, features)

    def maps(model: Any, carry: tuple[dict[str, Any], Any], *, execution: Any = None) -> Any:
        level_maps, scores = carry
        size = (model.config.output_size, model.config.output_size)
        return maps_lib.fuse_maps_jit(level_maps, size, fusion=fusion, sigma=model.config.sigma), scores

    return scorer_lib.StagedScorer(
        feature_keys=lambda model: tuple(feature_keys(model.config)),
        check_features=check,
        stages=(("matching", matching), ("maps", maps)),
        score_features=score_features,
    )
