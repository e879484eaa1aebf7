"""Subspace-guided feature reconstruction: ``Config``, ``fit``, ``Model`` and the pure scorer.

Method (``docs/method.md``, "Image atoms and the bank"): every nominal training image is one atom per
reconstruction level; the bank ``D_l`` has one row ``vec(φ_l(x_i))`` per image. A test map is
rebuilt from at most ``k`` rows by orthogonal matching pursuit (Batch-OMP on the precomputed Gram
matrix); what cannot be rebuilt is the anomaly. Subspace-guided sampling first runs OMP with ``lam``
atoms at a high level (level 4 or the pooled vector) and restricts the low-level reconstruction to
the chosen images.

Layers, outermost first:

- ``fit(images, config)`` / ``Model.score(images)``: batching, progress bars, the backbone.
- ``score_images(model, apply_fn, params, images)``: one pure function, backbone included, for use
  inside a user's ``jax.jit``.
- ``score_features(model, features)``: the same from precomputed backbone features, the
  composition of the three stages ``sample_candidates`` → ``reconstruct_levels`` →
  ``subspace_jax.maps.maps_and_scores`` (upsample, fuse, blur; the image score is the map's maximum).
- ``SCORER``: those stages as separately jitted calls, for ``subspace_jax.scoring.score_in_batches``
  (``Model.score(timings=...)`` and the runner's per-stage times).

``Model`` is a pytree: its arrays are leaves and its ``Config`` and backbone identity are static
metadata, so ``jax.jit(score_features)(model, features)`` compiles once per configuration. A fitted
model is a value: ``bind`` returns a copy carrying a backbone and leaves the original unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Callable, ClassVar, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from subspace_jax.engine import batches as batching
from subspace_jax.engine import scorer as scoring
from subspace_jax.engine.batches import BackboneBinding, ImageSource
from subspace_jax.methods.base import BACKBONE_NAMES, LEVELS, BaseConfig, _is_int, level_key
from subspace_jax.methods.subspace import dictionary
from subspace_jax.ops import compress
from subspace_jax.ops import execution as execution_lib
from subspace_jax.ops import maps as maps_lib
from subspace_jax.ops import omp as omp_lib
from subspace_jax.ops.execution import Execution
from subspace_jax.ops.maps import FUSION_MODES

SAMPLING_MODES = ("subspace", "random", "none")
PROJECTIONS = ("none", "pca", "random")
RECONSTRUCTION_MODES = ("image", "pixel")
BANK_DTYPES = ("float32", "bfloat16")

__all__ = [
    "BACKBONE_NAMES",
    "BANK_DTYPES",
    "FUSION_MODES",
    "LEVELS",
    "RECONSTRUCTION_MODES",
    "SAMPLING_MODES",
    "SCORER",
    "Candidates",
    "Config",
    "Model",
    "extract_features",
    "fit",
    "fit_features",
    "image_pursuit",
    "level_key",
    "reconstruct_levels",
    "sample_candidates",
    "score_features",
    "score_images",
]

Array = jax.Array
Features = Mapping[str, Array]  # "level1".."level4" -> (B, h, w, c); "pooled" -> (B, c)


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Everything that defines a fitted model and its scorer (hashable: static under ``jit``).

    The fields shared with the baselines (backbone, image_size, crop, levels, sigma) and their checks
    come from ``subspace_jax.config_fields.BaseConfig``.

    Attributes:
      backbone: feature extractor, one of ``BACKBONE_NAMES``.
      image_size: images are resized to ``image_size`` × ``image_size``.
      crop: optional centre crop after resizing (the PatchCore protocol: 256 then 224); the
        anomaly maps have size ``crop or image_size``.
      levels: backbone levels (1..4, strides 4..32) reconstructed and fused into the map.
      sampling_level: level (1..4) or ``"pooled"`` whose features drive subspace-guided sampling.
      sampling: ``"subspace"`` (OMP with ``lam`` atoms at ``sampling_level``), ``"random"`` (``lam``
        training images drawn once from ``seed``, the same for every test image) or ``"none"``
        (all training images are candidates).
      lam: λ, the number of candidate images kept by sampling (ignored by ``"none"``).
      k: atoms per test map in image mode (at most ``lam`` when sampling).
      tol: relative OMP tolerance ε of every pursuit (sampling and reconstruction): it stops once
        ‖e‖² ≤ ε‖y‖² (0: ``k`` atoms unless the target is rebuilt exactly first).
      reconstruction: ``"image"`` (whole maps are atoms, the paper) or ``"pixel"`` (each pixel's
        feature vector is rebuilt from the candidate images' vectors in a window around it).
      radius: window radius r of pixel mode; atoms come from the (2r+1)² neighbourhood of m
        candidate images (m = lam, or N with ``sampling="none"``), so each pixel pursues over
        m·(2r+1)² atoms and one row's (w_l, m·(2r+1)², c_l) float32 block is held at a time:
        with "none" and a large N prefer sampling.
      pixel_k: atoms per pixel in pixel mode.
      normalize_selection: select atoms by normalised correlation (the least-squares fit always
        uses the raw features).
      fusion: how level maps are combined after upsampling: ``"sum"``, ``"mean"``, ``"product"``.
      sigma: Gaussian smoothing of the fused map in pixels (0 disables it).
      bank_dtype: storage dtype of the banks, ``"float32"`` or ``"bfloat16"``: bfloat16 halves the
        stored bank (and checkpoints); Gram matrices and all arithmetic stay float32, so scoring
        upcasts the bank inside the jitted function (a transient float32 copy on CPU).
      seed: seed of ``"random"`` sampling (and of ``"random"`` projections).
      aggregate: odd window size a; each reconstruction level's features (bank and test) are
        replaced by their mean over the a × a neighbourhood before reconstruction (PatchCore's local
        patch aggregation; 1 = off). Sampling features are not aggregated.
      projection: per-level channel projection of the reconstruction levels before reconstruction:
        ``"none"``, ``"pca"`` (top principal directions of the nominal training pixels, fitted at
        ``fit``) or ``"random"`` (seeded Gaussian); shrinks the banks to c′ channels.
      projection_channels: c′ per reconstruction level, in ``levels`` order (0 keeps that level's
        channels); required with a projection, empty without one.
      coreset: keep only this many training images, chosen by greedy k-center on the sampling-level
        features (``subspace_jax.compress.kcenter``); 0 keeps all N.
      score_fraction: image score = mean of the highest ``score_fraction`` of the map's pixels; 0 =
        the map's maximum (the paper).
      dictionary: replace the N training images by this many learned atoms (synthetic images fitted to
        the nominal features with the model's own pursuit; ``subspace_jax.dictionary``), so that every
        bank holds M rows instead of N; 0 keeps the images. Image reconstruction only; not with
        ``coreset`` (learning starts from its own k-center coreset).
      dictionary_steps: alternations of (codes, atoms) when learning the dictionary.

    ``k = 5`` and ``lam = 50`` come from the k × λ grid of ``experiments/mtd_grid.py`` on MTD
    (efficientnet_lite0, 256 px, levels 2-4, pooled sampling; k ∈ {1, 3, 5, 10}, λ ∈ {10, 20, 30,
    50}): the best point by PRO (pixel AUROC 82.2%, PRO 77.7%). The surface is flat: k = 1 is worst
    (PRO 76.3-76.5%), k ≥ 3 within 0.6 points, and larger λ helps slightly (λ = 100, 200 add
    0.1-0.2 points with k = 3, 5). λ = 50 is the top of the paper's range (10..50; its k was lost
    from our copy). The grid was scored on MTD's test set, so these are tuned on it.
    """

    method: ClassVar[str] = "subspace"

    sampling_level: int | str = 4
    sampling: str = "subspace"
    lam: int = 50
    k: int = 5
    tol: float = 0.0
    reconstruction: str = "image"
    radius: int = 1
    pixel_k: int = 5
    normalize_selection: bool = False
    fusion: str = "sum"
    bank_dtype: str = "float32"
    seed: int = 0
    aggregate: int = 1
    projection: str = "none"
    projection_channels: tuple[int, ...] = ()
    coreset: int = 0
    score_fraction: float = 0.0
    dictionary: int = 0
    dictionary_steps: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampling_level != "pooled" and not (
            _is_int(self.sampling_level) and self.sampling_level in LEVELS
        ):
            self._fail("sampling_level", "a level in {1, 2, 3, 4} or 'pooled'")
        self._check_choice("sampling", SAMPLING_MODES)
        self._check_int("lam", 1)
        self._check_int("k", 1)
        if self.sampling != "none" and self.reconstruction == "image" and self.k > self.lam:
            self._fail("k", f"at most lam={self.lam} (image mode picks k atoms among the lam sampled images)")
        self._check_number("tol", 0.0, 1.0)
        self._check_choice("reconstruction", RECONSTRUCTION_MODES)
        self._check_int("radius", 0)
        self._check_int("pixel_k", 1)
        self._check_bool("normalize_selection")
        self._check_choice("fusion", FUSION_MODES)
        self._check_choice("bank_dtype", BANK_DTYPES)
        self._check_seed("seed")
        self._check_int("aggregate", 1)
        if self.aggregate % 2 == 0:
            self._fail("aggregate", "an odd int >= 1")
        self._check_choice("projection", PROJECTIONS)
        channels = self.projection_channels
        if isinstance(channels, list):
            channels = tuple(channels)
            object.__setattr__(self, "projection_channels", channels)
        if not isinstance(channels, tuple) or not all(_is_int(c) and c >= 0 for c in channels):
            self._fail("projection_channels", "a tuple of ints >= 0")
        if self.projection == "none" and channels:
            self._fail("projection_channels", "() when projection is 'none'")
        if self.projection != "none" and len(channels) != len(self.levels):
            self._fail("projection_channels", f"one int per level of levels={self.levels}")
        self._check_int("coreset", 0)
        if (
            self.coreset
            and self.sampling == "subspace"
            and self.reconstruction == "image"
            and self.k > self.coreset
        ):
            self._fail("coreset", f"0 or at least k={self.k}")
        self._check_number("score_fraction", 0.0, 1.0)
        self._check_int("dictionary", 0)
        self._check_int("dictionary_steps", 1)
        if self.dictionary:
            if self.reconstruction != "image":
                self._fail("dictionary", "0 with reconstruction='pixel' (an atom is a whole synthetic image)")
            if self.coreset:
                self._fail("dictionary", "0 when coreset is set (learning starts from its own coreset)")
            if self.sampling == "subspace" and self.k > self.dictionary:
                self._fail("dictionary", f"0 or at least k={self.k}")

    @property
    def projected_channels(self) -> dict[str, int]:
        """Level key -> c′ for the levels this config projects (none without a projection)."""
        if self.projection == "none":
            return {}
        return {level_key(lv): c for lv, c in zip(self.levels, self.projection_channels) if c > 0}

    @property
    def feature_keys(self) -> tuple[str, ...]:
        """Backbone feature keys the model stores: the reconstruction levels, then the sampling level."""
        keys = tuple(level_key(level) for level in self.levels)
        if self.sampling == "subspace" and level_key(self.sampling_level) not in keys:
            keys += (level_key(self.sampling_level),)
        return keys


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Model(BackboneBinding):
    """A fitted model: per-level banks and Gram matrices (leaves) plus static metadata.

    Attributes:
      banks: level key -> (N, h_l, w_l, c_l) features of the N training images in ``bank_dtype``;
        the bank matrix of the paper is ``D_l = banks[key].reshape(N, d_l)``, d_l = h_l·w_l·c_l.
      grams: level key -> (N, N) float32 ``D_l D_lᵀ`` computed from float32 features.
      sampling_bank: (N, d_s) sampling-level features in ``bank_dtype``; None unless
        ``config.sampling == "subspace"``.
      sampling_gram: (N, N) float32 Gram matrix of the sampling-level features, or None.
      projections: level key -> (c_l, c′_l) float32 channel projection (``config.projection``), applied
        to that level's features (after aggregation) before reconstruction; empty (None when loaded
        from a checkpoint) without one.
      config: the ``Config`` (static).
      backbone_name: the backbone that produced the features (static).
      weights_sha256: hex sha256 of that backbone's weights, None when unknown (static).
      thresholds: ``calibration.Thresholds`` for ``predict``, None until calibrated (static; the
        scorer never sees it, so calibrating does not recompile scoring).
    """

    banks: dict[str, Array]
    grams: dict[str, Array]
    sampling_bank: Array | None
    sampling_gram: Array | None
    projections: dict[str, Array] | None
    config: Config = dataclasses.field(metadata=dict(static=True))
    backbone_name: str = dataclasses.field(metadata=dict(static=True))
    weights_sha256: str | None = dataclasses.field(metadata=dict(static=True))
    thresholds: Any = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def n_train(self) -> int:
        """N, the number of training images (atoms per level)."""
        return next(iter(self.grams.values())).shape[0]

    def score_features(
        self, features: Features, *, execution: Execution | None = None
    ) -> tuple[Array, Array]:
        """Score precomputed backbone features (see ``score_features``); jitted. Features holding NaN
        or inf are refused (ValueError naming the key and image)."""
        selected = _select_features(features, self.config)
        check_feature_shapes(self, selected)
        batching.check_finite_features(selected)
        return _score_features_jit(self._scorer(), selected, execution=execution)

    def _scorer(self) -> Model:
        # Thresholds are static metadata: strip them so that calibrated and uncalibrated models share
        # one compiled scorer.
        return self if self.thresholds is None else self._replace_thresholds(None)

    def _replace_thresholds(self, thresholds: Any) -> Model:
        model = dataclasses.replace(self, thresholds=thresholds)
        if getattr(self, "_backbone", None) is not None:  # keep the binding (no field, not copied)
            object.__setattr__(model, "_backbone", self._backbone)
        return model

    def with_thresholds(self, thresholds: Any) -> Model:
        """A copy of this model carrying ``thresholds`` (from ``sj.calibrate``) for ``predict``."""
        from subspace_jax.eval.calibration import Thresholds

        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise ValueError(f"thresholds: expected subspace_jax.Thresholds, got {type(thresholds).__name__}")
        return self._replace_thresholds(thresholds)

    def predict(self, images: ImageSource, batch_size: int = 8, *, progress: bool = True, **kwargs):
        """Maps, scores, normalised scores (0.5 = threshold), decisions and masks of ``images``
        under the model's thresholds: see ``subspace_jax.calibration.predict`` and ``Prediction``.
        The thresholds bound false alarms on nominal images; they do not control recall."""
        from subspace_jax.eval.calibration import predict

        return predict(self, images, batch_size, progress=progress, **kwargs)

    def score(
        self,
        images: ImageSource,
        batch_size: int = 8,
        *,
        backbone: Any = None,
        timings: dict[str, float] | None = None,
        progress: bool = True,
        mesh: Any = None,
        memory_budget_bytes: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps and image scores of ``images``.

        Args:
          images: uint8 (B, S, S, 3) array, an iterable of such batches, or a list of image paths
            (read, resized to ``image_size`` and centre-cropped); S = ``config.output_size``.
          batch_size: images per compiled call (at most the number of images); the last batch is
            padded so there is one compilation.
          backbone: the backbone to use; by default the one ``fit`` used, else loaded by name. Its
            weights must be the ones the bank was built with.
          timings: when given, the four stages run as separately jitted functions and their
            wall-clock seconds are added to ``timings["backbone" | "sampling" | "reconstruction" |
            "maps"]`` (the first call includes compilation); otherwise one fused function runs.
          progress: show a progress bar over batches.
          mesh: a ``jax.sharding.Mesh`` (``subspace_jax.sharding.make_mesh(data, bank)``): images are
            split over its "data" axis and the bank rows over its "bank" axis (the model is placed
            with ``sharding.shard_model`` unless it is already); ``batch_size`` is rounded up to a
            multiple of the data axis. With several processes (``jax.distributed``) each passes
            its own share of the images and gets its own rows back.
          memory_budget_bytes: transient bytes one vectorised reconstruction step may hold (the
            number of test images / pixels processed at once); None: the backend's default
            (``subspace_jax.execution``). Results do not depend on it.

        Returns:
          maps (B, S, S) float32 and scores (B,) float32 (the maximum of each map), as numpy arrays.
        """
        execution = None
        if memory_budget_bytes is not None:
            execution = execution_lib.default_execution(memory_budget_bytes)
        return scoring.score_in_batches(
            SCORER,
            self._scorer(),
            images,
            batch_size=batch_size,
            backbone=backbone,
            timings=timings,
            progress=progress,
            desc="score",
            mesh=mesh,
            execution=execution,
        )


# ---------------------------------------------------------------------------------------------
# Fitting


def fit_features(
    features: Features,
    config: Config,
    *,
    backbone_name: str | None = None,
    weights_sha256: str | None = None,
) -> Model:
    """Build a ``Model`` from precomputed backbone features of the N training images.

    Args:
      features: level key -> (N, h, w, c) (or (N, c) for "pooled") float arrays holding at least
        ``config.feature_keys``; extra keys are ignored.
      config: the model configuration.
      backbone_name: backbone that produced the features (default ``config.backbone``).
      weights_sha256: hex sha256 of its weights; needed by ``Model.score`` and checkpoints to
        verify the backbone, None for features of unknown origin.
    """
    if not isinstance(config, Config):
        raise ValueError(f"config: expected a subspace_jax.Config, got {type(config).__name__}")
    backbone_name = config.backbone if backbone_name is None else backbone_name
    feats = _select_features(features, config)
    batching.check_finite_features(feats)
    n = {key: value.shape[0] for key, value in feats.items()}
    if len(set(n.values())) != 1 or min(n.values()) < 1:
        raise ValueError(f"features: every level needs the same number N >= 1 of images, got {n}")
    dtype = jnp.dtype(config.bank_dtype)
    if config.coreset:
        sampling = feats[level_key(config.sampling_level)]
        if config.coreset > sampling.shape[0]:
            raise ValueError(
                f"config.coreset={config.coreset} exceeds the {sampling.shape[0]} training images"
            )
        keep = np.sort(compress.kcenter(np.asarray(sampling, np.float32), config.coreset))
        feats = {key: np.asarray(value)[keep] for key, value in feats.items()}
    values, projections = {}, {}
    for level in config.levels:
        key = level_key(level)
        value = feats[key]
        if value.ndim != 4:
            raise ValueError(f"features[{key!r}]: expected (N, h, w, c), got shape {value.shape}")
        value = _aggregate_in_chunks(value, config.aggregate)
        channels = config.projected_channels.get(key)
        if channels is not None:
            if channels > value.shape[-1]:
                raise ValueError(
                    f"config.projection_channels: {channels} for {key} exceeds its {value.shape[-1]} channels"
                )
            if config.projection == "pca":
                projections[key] = jnp.asarray(compress.pca_projection(value, channels))
            else:
                projections[key] = jnp.asarray(
                    compress.random_projection(value.shape[-1], channels, seed=config.seed + level)
                )
            value = _project(value, projections[key])
        values[key] = value
    sampling = feats[level_key(config.sampling_level)] if config.sampling == "subspace" else None
    if config.dictionary:
        values = {key: np.asarray(value, np.float32) for key, value in values.items()}
        values, sampling, _ = dictionary.learn_atoms(
            values, sampling, config, config.dictionary, config.dictionary_steps
        )
    banks = {key: jnp.asarray(value, dtype) for key, value in values.items()}
    grams = {key: _gram(value) for key, value in values.items()}
    sampling_bank = sampling_gram = None
    if sampling is not None:
        flat = sampling.reshape(sampling.shape[0], -1)
        sampling_bank = jnp.asarray(flat, dtype)
        sampling_gram = _gram(flat)
    return Model(
        banks, grams, sampling_bank, sampling_gram, projections, config, backbone_name, weights_sha256
    )


def _aggregate_in_chunks(features: Any, size: int) -> Any:
    """``compress.aggregate`` of (N, h, w, c) training features, 64 images at a time (bounded memory)."""
    if size == 1:
        return features
    return np.concatenate(
        [
            np.asarray(compress.aggregate(jnp.asarray(features[i : i + 64]), size))
            for i in range(0, len(features), 64)
        ]
    )


@jax.jit
def _project(features: Array, projection: Array) -> Array:
    """(..., c) @ (c, c′) at full float32 precision."""
    return jnp.matmul(jnp.asarray(features, jnp.float32), projection, precision=jax.lax.Precision.HIGHEST)


@jax.jit
def _gram(features: Array) -> Array:
    """(N, ...) float -> (N, N) float32 Gram matrix of the flattened rows, at full float32 precision."""
    flat = features.reshape(features.shape[0], -1).astype(jnp.float32)
    return jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)


def fit(
    images: ImageSource,
    config: Config,
    backbone: Any = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
    validation_fraction: float = 0.0,
    validation: ImageSource = None,
    false_alarm_rate: float = 0.01,
    seed: int = 0,
) -> Model:
    """Extract features of the nominal ``images`` and build the ``Model`` (no training).

    Args:
      images: uint8 (N, S, S, 3) array with S = ``config.output_size``, an iterable of such
        batches, or a list of image paths (read and resized like the dataset loaders:
        ``subspace_jax.data.read_image`` then ``resize_image(image, image_size, crop)``).
      config: the model configuration.
      backbone: a loaded backbone whose ``name`` is ``config.backbone``; loaded by name if None.
      batch_size: images per backbone call.
      progress: show a progress bar.
      validation_fraction: when > 0, this fraction of ``images`` (an array or a list of paths), drawn
        with ``seed``, is held out of the bank and calibrates thresholds (``sj.calibrate``) at
        ``false_alarm_rate``. They bound false alarms, not recall.
      validation: held-out defect-free images to calibrate on instead (excludes validation_fraction).
    """
    if validation is not None or validation_fraction:
        from subspace_jax.eval import calibration

        if validation is not None and validation_fraction:
            raise ValueError("validation, validation_fraction: give one of them, not both")
        if validation is None:
            images, validation = calibration.split_images(images, validation_fraction, seed)
        model = fit(images, config, backbone, batch_size=batch_size, progress=progress)
        thresholds = calibration.calibrate(
            model, validation, false_alarm_rate=false_alarm_rate, batch_size=batch_size, progress=progress
        )
        return model.with_thresholds(thresholds)
    if backbone is None:
        from subspace_jax import backbones

        if not isinstance(config, Config):
            raise ValueError(f"config: expected a subspace_jax.Config, got {type(config).__name__}")
        backbone = backbones.load(config.backbone)
    features = extract_features(
        images, config, backbone, batch_size=batch_size, progress=progress, desc="fit"
    )
    model = fit_features(
        features, config, backbone_name=backbone.name, weights_sha256=backbone.weights_sha256
    )
    return model.bind(backbone)


def extract_features(
    images: ImageSource,
    config: Config,
    backbone: Any,
    *,
    keys: tuple[str, ...] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, np.ndarray]:
    """Backbone features of ``images`` in batches, as host arrays (for ``fit_features`` or caches).

    Args:
      images: as for ``fit``.
      config: gives the image size and, by default, the keys (``config.feature_keys``).
      backbone: a loaded backbone whose ``name`` is ``config.backbone``.
      keys: feature keys to keep ("level1".."level4", "pooled"); the others are never computed.
      batch_size: images per compiled call; the last batch is padded (one compilation).
      progress: show a progress bar labelled ``desc``.

    Returns:
      key -> (N, h, w, c) float32 (or (N, c) for "pooled") numpy arrays.
    """
    if not isinstance(config, Config):
        raise ValueError(f"config: expected a subspace_jax.Config, got {type(config).__name__}")
    keys = config.feature_keys if keys is None else tuple(keys)
    return batching.extract_features(
        images, config, backbone, keys, batch_size=batch_size, progress=progress, desc=desc
    )


# ---------------------------------------------------------------------------------------------
# The pure scorer


def _full_float32(fn: Callable) -> Callable:
    """Run ``fn``'s matrix products at full float32 precision.

    Accelerators may round float32 products to TF32 or bfloat16 by default; residuals are small
    differences of large terms, so the pursuit and the reconstruction ask for full precision (on
    CPU this changes nothing).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapper


class Candidates(NamedTuple):
    """Training images a test image may be rebuilt from (output of ``sample_candidates``).

    indices: (B, m) int32 image indices into the bank (0 where unused).
    valid: (B, m) bool, False for unused slots.
    """

    indices: Array
    valid: Array


@_full_float32
def sample_candidates(model: Model, features: Features, *, execution: Execution | None = None) -> Candidates:
    """Per test image, the candidate training images of the reconstruction (pure, jittable).

    ``"subspace"``: OMP with ``lam`` atoms at the sampling level over all N images (m = lam);
    ``"random"``: ``lam`` images drawn once from ``seed``, the same for every test image;
    ``"none"``, or ``lam >= N``: all N images (m = N). ``execution`` only matters inside
    ``subspace_jax.sharding`` (its ``bank_axis``); results never depend on it.
    """
    check_feature_shapes(model, features)
    cfg = model.config
    n = model.n_train
    batch = next(iter(features.values())).shape[0]
    if cfg.sampling == "none" or cfg.lam >= n:
        indices = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
        return Candidates(indices, jnp.ones((batch, n), bool))
    if cfg.sampling == "random":
        chosen = jnp.sort(jax.random.choice(jax.random.PRNGKey(cfg.seed), n, (cfg.lam,), replace=False))
        indices = jnp.broadcast_to(chosen.astype(jnp.int32), (batch, cfg.lam))
        return Candidates(indices, jnp.ones((batch, cfg.lam), bool))
    if model.sampling_bank is None:
        raise ValueError(
            "model: subspace sampling needs the sampling-level bank, which this model lacks (it was fit "
            "with another sampling mode); refit it with sampling='subspace'"
        )
    axis = execution_lib.resolve(execution).bank_axis
    target = features[level_key(cfg.sampling_level)].reshape(batch, -1).astype(jnp.float32)
    result = _omp_on_bank(model.sampling_bank, model.sampling_gram, target, cfg.lam, None, cfg, axis)
    support = result.support
    return Candidates(jnp.maximum(support, 0).astype(jnp.int32), support >= 0)


# Bank rows may be sharded over a mesh axis (``subspace_jax.sharding``): inside ``shard_map`` each
# device holds rows [offset, offset + n_local) of the (possibly zero-padded) bank. The helpers below
# compute what involves rows where the rows live and combine the partial results with one collective
# over that axis, so the bank itself never moves. With ``axis=None`` they are the one-device code.


def _psum(x: Array, axis: str | None) -> Array:
    return x if axis is None else jax.lax.psum(x, axis)


def _take_rows(atoms: Array, indices: Array, axis: str | None) -> Array:
    """``atoms[indices]`` as float32 (indices global, any shape); with a sharded bank, the rows held
    on this device and zeros for the others, so ``_psum`` of anything linear in them completes it."""
    if axis is None:
        return atoms[indices].astype(jnp.float32)
    n_local = atoms.shape[0]
    local = indices - jax.lax.axis_index(axis) * n_local
    here = (local >= 0) & (local < n_local)
    rows = atoms[jnp.clip(local, 0, n_local - 1)].astype(jnp.float32)
    return jnp.where(here.reshape(here.shape + (1,) * (rows.ndim - here.ndim)), rows, 0.0)


def _bank_correlations(atoms: Array, targets: Array, n: int, axis: str | None) -> Array:
    """α = targets @ D[:n]ᵀ: (B, n) float32 for targets (B, d) and the first n bank rows.

    Sharded: each device correlates with its rows and the (B, n_local) blocks are gathered (B·N
    floats move, not the N·d bank)."""
    if axis is None:
        return targets @ atoms[:n].astype(jnp.float32).T
    local = targets @ atoms.astype(jnp.float32).T
    return jax.lax.all_gather(local, axis, axis=1, tiled=True)[:, :n]


def _bank_reconstruct(support: Array, coef: Array, atoms: Array, n: int, axis: str | None) -> Array:
    """Dᵀc: (B, d) from support and coef (B, k) over the first n bank rows (unused slots -1)."""
    if axis is None:
        return omp_lib.reconstruct(support, coef, atoms[:n])
    n_local = atoms.shape[0]
    used = support >= 0
    rows = jnp.broadcast_to(jnp.arange(support.shape[0])[:, None], support.shape)
    dense = jnp.zeros((support.shape[0], n_local * jax.lax.axis_size(axis)), jnp.float32)
    dense = dense.at[rows, jnp.where(used, support, 0)].add(jnp.where(used, coef, 0.0))
    mine = jax.lax.dynamic_slice_in_dim(dense, jax.lax.axis_index(axis) * n_local, n_local, axis=1)
    return jax.lax.psum(mine @ atoms.astype(jnp.float32), axis)


def check_feature_shapes(model: Model, features: Features) -> None:
    """ValueError naming the key unless test ``features`` fit the model's banks: one batch size B,
    each reconstruction level (B, h_l, w_l, c_l) like its bank, the sampling level holding d_s values
    per image like the sampling bank. Shapes are static, so this also runs under ``jit``."""
    cfg = model.config
    missing = [key for key in cfg.feature_keys if key not in features]
    if missing:
        raise ValueError(f"features: missing {missing}; this config needs {list(cfg.feature_keys)}")
    shapes = {key: tuple(np.shape(features[key])) for key in cfg.feature_keys}
    batch = {key: (shape[0] if shape else None) for key, shape in shapes.items()}
    if len(set(batch.values())) != 1 or None in batch.values():
        raise ValueError(f"features: every key needs the same batch size B, got {batch}")
    for level in cfg.levels:
        key = level_key(level)
        expected = tuple(model.banks[key].shape[1:])
        if key in (model.projections or {}):  # the bank holds c′ projected channels, the features c
            expected = expected[:-1] + (model.projections[key].shape[0],)
        if shapes[key][1:] != expected:
            raise ValueError(
                f"features[{key!r}]: expected (B, {', '.join(map(str, expected))}) like the bank, got "
                f"{shapes[key]}; were the images resized to the model's image_size/crop?"
            )
    if cfg.sampling == "subspace" and model.sampling_bank is not None:
        key = level_key(cfg.sampling_level)
        d = model.sampling_bank.shape[1]
        if int(np.prod(shapes[key][1:])) != d or len(shapes[key]) < 2:
            raise ValueError(
                f"features[{key!r}]: expected {d} values per image like the sampling bank, got shape "
                f"{shapes[key]}"
            )


def _omp_on_bank(
    bank: Array, gram: Array, targets: Array, k: int, candidates: Array | None, cfg: Config, axis=None
):
    """Batch-OMP of float32 targets (B, d) on a bank (N, d) with its Gram matrix (N, N)."""
    alpha = _bank_correlations(bank, targets, gram.shape[0], axis)
    return omp_lib.omp_gram(
        gram,
        alpha,
        k,
        candidates=candidates,
        tol=cfg.tol,
        target_norm_sq=jnp.sum(targets * targets, axis=-1),
        normalize_selection=cfg.normalize_selection,
    )


def _map_in_chunks(fn: Callable, xs: Any, width: int) -> Any:
    """``fn`` maps a chunk (leading axis ``width``) of the pytree ``xs`` (leading axis B) to a pytree
    with the same leading axis; apply it to ``ceil(B / width)`` chunks one after another (``lax.map``),
    the last one padded with copies of the first rows (results dropped)."""
    batch = jax.tree_util.tree_leaves(xs)[0].shape[0]
    width = max(1, min(width, batch))
    if width == batch:
        return fn(xs)
    chunks = -(-batch // width)
    pad = chunks * width - batch

    def split(x):
        if pad:
            x = jnp.concatenate([x, x[:pad]])
        return x.reshape((chunks, width) + x.shape[1:])

    out = jax.lax.map(fn, jax.tree_util.tree_map(split, xs))
    return jax.tree_util.tree_map(lambda y: y.reshape((chunks * width,) + y.shape[2:])[:batch], out)


@_full_float32
def reconstruct_levels(
    model: Model, features: Features, candidates: Candidates, *, execution: Execution | None = None
) -> dict[str, Array]:
    """Per reconstruction level, the (B, h_l, w_l) channel norm of the reconstruction residual.

    ``execution`` (``subspace_jax.execution``) sets the vectorisation widths and the gathered/masked
    choice; the default is the backend's. It never changes the result beyond float rounding.
    """
    cfg = model.config
    execution = execution_lib.resolve(execution)
    out = {}
    for level in cfg.levels:
        key = level_key(level)
        bank, target = model.banks[key], prepare_level(model, key, features[key])
        if target.shape[1:] != bank.shape[1:]:
            raise ValueError(
                f"features[{key!r}]: expected (B, {', '.join(map(str, bank.shape[1:]))}) like the bank, "
                f"got {target.shape}; were the images resized to the model's image_size/crop?"
            )
        if cfg.reconstruction == "image":
            out[key] = _image_level_map(bank, model.grams[key], target, candidates, cfg, execution)
        else:
            out[key] = _pixel_level_map(bank, target, candidates, cfg, execution)
    return out


def prepare_level(model: Model, key: str, features: Array) -> Array:
    """(B, h, w, c) test features of a reconstruction level -> what its bank holds: aggregated
    (``config.aggregate``), then projected to c′ channels when the model has a projection for it."""
    features = compress.aggregate(features, model.config.aggregate)
    if key in (model.projections or {}):
        features = jnp.matmul(jnp.asarray(features, jnp.float32), model.projections[key])
    return features


def _image_level_map(
    bank: Array, gram: Array, target: Array, candidates: Candidates, cfg: Config, execution: Execution
) -> Array:
    """Whole-map atoms: y_l ≈ D_lᵀc with ‖c‖₀ ≤ k among the candidates; returns (B, h, w) ‖e‖_c."""
    _, h, w, c = bank.shape
    batch = target.shape[0]
    y = target.reshape(batch, -1).astype(jnp.float32)
    _, residual = image_pursuit(bank.reshape(bank.shape[0], -1), gram, y, candidates, cfg, execution)
    return jnp.linalg.norm(residual.reshape(batch, h, w, c), axis=-1)


def image_pursuit(
    atoms: Array,
    gram: Array,
    targets: Array,
    candidates: Candidates,
    cfg: Config,
    execution: Execution | None = None,
) -> tuple[omp_lib.OMPResult, Array]:
    """Batch-OMP of targets on the candidate rows of a bank, and the residuals e = y − D_lᵀc.

    Args:
      atoms: (N, d) bank rows (any float dtype; upcast to float32 after gathering). Inside
        ``shard_map`` with ``execution.bank_axis`` set: this device's (N_pad / shards, d) rows.
      gram: (N, N) float32 ``atoms @ atoms.T`` (N real rows: padding rows are never candidates).
      targets: (B, d) float32.
      candidates: (B, m) from ``sample_candidates``; m = N means every image is a candidate.
      cfg: gives k, tol and normalize_selection.
      execution: vectorisation width, gathered/masked choice, bank axis (default: the backend's).

    Returns:
      the ``OMPResult`` (support (B, k) as bank indices, -1 unused) and the residuals (B, d) float32.

    Sampling exists to touch only the m candidate rows (``docs/method.md``, "Computation"). When
    ``execution.gathers`` (on CPU m ≤ N/2, the usual λ ≪ N) that is what happens: per test image
    the rows D[idx] (m, d) are gathered, α = D[idx] y (m,), Batch-OMP runs on the Gram submatrix
    G[idx][:, idx] (m, m) and the residual is rebuilt from the k chosen rows. W test images are
    processed at once (vmapped), W = ``memory_budget_bytes`` / (m·d·4) in [1, B], chunks one after
    another, so memory holds W (m, d) float32 blocks. Otherwise the correlations are one batched
    product α = y Dᵀ against the whole bank, with the non-candidates masked out: gathering is
    memory-bound and per image, the whole-bank product compute-bound and shared by the batch; on
    CPU the two cost the same near m = N/2 (``benchmarks/bench_gather.md``).
    """
    execution = execution_lib.resolve(execution)
    axis = execution.bank_axis
    atoms, gram = jnp.asarray(atoms), jnp.asarray(gram, jnp.float32)
    n = gram.shape[0]
    batch, m = candidates.indices.shape
    k = min(cfg.k, m)
    if not execution.gathers(batch, m, n):
        rows = jnp.arange(batch)[:, None]
        hits = jnp.zeros((batch, n), bool).at[rows, candidates.indices].max(candidates.valid)
        result = _omp_on_bank(atoms, gram, targets, k, hits, cfg, axis)
        return result, targets - _bank_reconstruct(result.support, result.coef, atoms, n, axis)
    # Candidates in bank order, unused slots last: ties in the pursuit then go to the lowest bank
    # index, as they do on the whole bank.
    order = jnp.sort(jnp.where(candidates.valid, candidates.indices, n), axis=1)
    valid = order < n
    indices = jnp.where(valid, order, 0)

    def one_image(y, idx, ok):
        rows = _take_rows(atoms, idx, axis)  # (m, d); sharded: this device's rows, zeros elsewhere
        local = omp_lib.omp_gram(
            gram[idx[:, None], idx[None, :]],
            _psum(rows @ y, axis)[None],
            k,
            candidates=ok,
            tol=cfg.tol,
            target_norm_sq=jnp.sum(y * y)[None],
            normalize_selection=cfg.normalize_selection,
        )
        support = jnp.where(local.support >= 0, idx[jnp.maximum(local.support, 0)], -1)
        # Only the k chosen rows are read again (not the m gathered ones); unused slots weigh 0.
        chosen = _take_rows(atoms, jnp.maximum(support[0], 0), axis)  # (k, d)
        residual = y - _psum(jnp.where(support[0] >= 0, local.coef[0], 0.0) @ chosen, axis)
        return local._replace(support=support), residual

    d = targets.shape[1]
    width = execution_lib.image_width(execution.memory_budget_bytes, batch, 4 * m * d)
    result, residual = _map_in_chunks(
        lambda chunk: jax.vmap(one_image)(*chunk), (targets, indices, valid), width
    )
    # Each image's pursuit ran on a batch of one: drop that axis.
    return jax.tree_util.tree_map(lambda x: x[:, 0], result), residual


def _pixel_level_map(
    bank: Array, target: Array, candidates: Candidates, cfg: Config, execution: Execution | None = None
) -> Array:
    """Per-pixel atoms: each target vector y[i, j] (c,) is rebuilt from the candidate images'
    vectors inside the (2r+1)² window around (i, j) by plain OMP with ``pixel_k`` atoms.

    Vectorised within ``execution.memory_budget_bytes``: the candidate maps of W test images are
    gathered at once ((W, m, h + 2r, w + 2r, c) float32) and P of their W·h·w pixels are pursued at
    once (vmapped, each over (m·(2r+1)², c) atoms); with a large budget that is every pixel of every
    image in the batch in one ``vmap``. With the bank sharded each device gathers the candidate rows
    it holds and one sum over the bank axis assembles them (only candidate rows move).
    """
    execution = execution_lib.resolve(execution)
    axis = execution.bank_axis
    _, h, w, c = bank.shape
    r = cfg.radius
    win = 2 * r + 1
    batch, m = candidates.indices.shape
    n_atoms = m * win * win
    k = min(cfg.pixel_k, n_atoms)
    inside = jnp.pad(jnp.ones((h, w), bool), r)  # window positions that fall inside the map
    per_image = 4 * m * (h + 2 * r) * (w + 2 * r) * c
    # The pixel's atoms, the correlations and the support rows of one plain pursuit, float32.
    per_pixel = 4 * (2 * n_atoms * c + k * c + n_atoms)
    images, pixels = execution_lib.pixel_widths(
        execution.memory_budget_bytes, batch, per_image, h * w, per_pixel
    )

    def image_chunk(chunk):
        y, indices, valid = chunk  # (W, h, w, c), (W, m), (W, m)
        blocks = _psum(_take_rows(bank, indices, axis), axis)  # (W, m, h, w, c)
        padded = jnp.pad(blocks, ((0, 0), (0, 0), (r, r), (r, r), (0, 0)))

        def one_pixel(task):
            b, i, j = task
            atoms = jax.lax.dynamic_slice(padded, (b, 0, i, j, 0), (1, m, win, win, c)).reshape(n_atoms, c)
            ok = jax.lax.dynamic_slice(inside, (i, j), (win, win))
            allowed = (valid[b][:, None, None] & ok[None]).reshape(-1)
            yij = y[b, i, j][None]
            result = omp_lib.omp(
                atoms, yij, k, candidates=allowed, tol=cfg.tol, normalize_selection=cfg.normalize_selection
            )
            residual = yij - omp_lib.reconstruct(result.support, result.coef, atoms)
            return jnp.linalg.norm(residual[0])

        width = y.shape[0]
        b, i, j = jnp.meshgrid(jnp.arange(width), jnp.arange(h), jnp.arange(w), indexing="ij")
        tasks = (b.reshape(-1), i.reshape(-1), j.reshape(-1))
        norms = _map_in_chunks(jax.vmap(one_pixel), tasks, pixels)
        return norms.reshape(width, h, w)

    chunk = (jnp.asarray(target, jnp.float32), candidates.indices, candidates.valid)
    return _map_in_chunks(image_chunk, chunk, images)


def score_features(
    model: Model,
    features: Features,
    out_size: tuple[int, int] | None = None,
    *,
    execution: Execution | None = None,
) -> tuple[Array, Array]:
    """Pure scorer on precomputed features: sampling -> reconstruction -> maps.

    Args:
      model: a fitted ``Model`` (a pytree; its config is static).
      features: level key -> (B, h_l, w_l, c_l) float features of the test images, holding the
        reconstruction levels and, for subspace sampling, the sampling level.
      out_size: (H, W) of the maps; default (S, S) with S = ``config.output_size``.
      execution: layout options (``subspace_jax.execution.Execution``: memory budget of the
        vectorised steps, gathered/masked choice); default: the backend's. Static under ``jit``.

    Returns:
      maps (B, H, W) float32 and scores (B,) float32.
    """
    cfg = model.config
    if out_size is None:
        out_size = (cfg.output_size, cfg.output_size)
    for key in cfg.feature_keys:
        chex.assert_rank(features[key], 2 if key == "pooled" else 4)
    chex.assert_equal_shape_prefix([features[key] for key in cfg.feature_keys], 1)
    candidates = sample_candidates(model, features, execution=execution)
    level_maps = reconstruct_levels(model, features, candidates, execution=execution)
    maps = maps_lib.fuse_maps(level_maps, out_size, fusion=cfg.fusion, sigma=cfg.sigma)
    return maps, image_scores(maps, cfg.score_fraction)


def image_scores(maps: Array, fraction: float) -> Array:
    """(B, H, W) maps -> (B,) scores: the maximum (``fraction = 0``) or the mean of the highest
    ``max(1, round(fraction·H·W))`` pixels of each map."""
    if fraction == 0:
        return maps_lib.image_scores(maps)
    flat = maps.reshape(maps.shape[0], -1)
    count = max(1, int(round(fraction * flat.shape[1])))
    return jnp.mean(jax.lax.top_k(flat, count)[0], axis=-1)


def score_images(
    model: Model,
    apply_fn: Callable,
    params: Any,
    images: Array,
    *,
    execution: Execution | None = None,
) -> tuple[Array, Array]:
    """Pure scorer on images, backbone included; compose it into your own ``jax.jit``::

        backbone = sj.backbones.load("efficientnet_lite0")
        model = sj.fit(train_images, sj.Config(backbone="efficientnet_lite0"), backbone)
        apply_fn, params = backbone.pure()

        @jax.jit
        def step(model, params, images):
            maps, scores = sj.model.score_images(model, apply_fn, params, images)
            return maps, scores

    Args:
      model: a fitted ``Model``.
      apply_fn, params: ``backbone.pure()`` of the backbone the model was fit with.
      images: (B, S, S, 3) uint8 (or float in [0, 255]) images, S = ``config.output_size``.
      execution: layout options, as for ``score_features``.

    Returns:
      maps (B, S, S) float32 and scores (B,) float32.
    """
    chex.assert_rank(images, 4)
    chex.assert_axis_dimension(images, 3, 3)
    features = apply_fn(params, images)
    return score_features(model, features, out_size=tuple(images.shape[1:3]), execution=execution)


_score_features_jit = jax.jit(score_features, static_argnames=("out_size", "execution"))
_score_images_jit = jax.jit(score_images, static_argnums=(1,), static_argnames=("execution",))
_sample_jit = jax.jit(sample_candidates, static_argnames=("execution",))
_reconstruct_jit = jax.jit(reconstruct_levels, static_argnames=("execution",))
_image_scores_jit = jax.jit(image_scores, static_argnums=(1,))


# Staged scoring (``Model.score(timings=...)`` and the runner): each stage is one jitted call. The map
# stage is static in (output size, fusion, sigma) only, so scoring another k or λ reuses its program.
def _sampling_stage(model: Model, features: Features, execution: Execution | None = None):
    return features, _sample_jit(model, features, execution=execution)


def _reconstruction_stage(
    model: Model, carry: tuple[Features, Candidates], execution: Execution | None = None
) -> dict[str, Array]:
    return _reconstruct_jit(model, *carry, execution=execution)


def _maps_stage(model: Model, level_maps: dict[str, Array], execution: Any = None) -> tuple[Array, Array]:
    cfg = model.config
    size = (cfg.output_size, cfg.output_size)
    if cfg.score_fraction == 0:
        return maps_lib.maps_and_scores_jit(level_maps, size, fusion=cfg.fusion, sigma=cfg.sigma)
    maps = maps_lib.fuse_maps_jit(level_maps, size, fusion=cfg.fusion, sigma=cfg.sigma)
    return maps, _image_scores_jit(maps, cfg.score_fraction)


SCORER = scoring.StagedScorer(
    stages=(
        ("sampling", _sampling_stage),
        ("reconstruction", _reconstruction_stage),
        ("maps", _maps_stage),
    ),
    feature_keys=lambda model: model.config.feature_keys,
    score_images=_score_images_jit,
)


# ---------------------------------------------------------------------------------------------
# Inputs


def _select_features(features: Features, config: Config) -> dict[str, Array]:
    if not isinstance(features, Mapping):
        raise ValueError(f"features: expected a dict level key -> array, got {type(features).__name__}")
    missing = [key for key in config.feature_keys if key not in features]
    if missing:
        raise ValueError(f"features: missing {missing}; this config needs {list(config.feature_keys)}")
    return {key: features[key] for key in config.feature_keys}
