"""Thresholds from defect-free images only: ``calibrate``, ``Thresholds`` and the decision rule ``decide``.

A user with good parts and no labelled defects chooses a false-alarm rate r; the image threshold is
set so that at most a fraction r of defect-free images are called anomalous, and the pixel threshold
so that at most a fraction r of defect-free pixels are marked. **A threshold set from nominal images
alone controls false alarms, not recall**: nothing in it says how many defects will be caught, which
depends on how far the defects' scores lie above the nominal ones. Measure recall on labelled defects
(``subspace-jax evaluate``) before relying on it.

Quantile definition. With n held-out nominal scores s_(1) ≤ ... ≤ s_(n), the threshold is the order
statistic t = s_(k), k = ⌈(1 − r)(n + 1)⌉, and an image is anomalous when its score is > t. For a new
nominal image exchangeable with the held-out ones, P(score > t) = (n + 1 − k)/(n + 1) ≤ r (the
split-conformal bound), and ≥ r − 1/(n + 1). When k > n, i.e. n < 1/r − 1, no order statistic reaches
the rate: the maximum is used, the achievable rate is then about 1/(n + 1) > r, and a warning says so.
The same rule over all map values of the held-out images gives the pixel threshold.

Normalised scores: ``normalize(s, t) = clip(s / (2 t), 0, 1)``, so 0 is a score of 0, 0.5 is the
threshold and 1 is twice the threshold or more (scores and maps are non-negative residual norms).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from subspace_jax._checks import check_int, check_number, is_int
from subspace_jax.ops.execution import DEFAULT_BATCH_SIZE

# Pixel thresholds at rates other than the calibrated one come from this table of the nominal pixel
# quantile function: rates log-spaced from 1e-6 to 0.5, linear interpolation in log(rate).
_TABLE_RATES = np.geomspace(1e-6, 0.5, 97)


# Rates below this are refused: no nominal set resolves them (1e-6 needs a million held-out images), and
# below the pixel table's range a pixel threshold could not be re-derived.
MIN_RATE = 1e-6


def order_statistic_rank(n: int, false_alarm_rate: float) -> int:
    """k = ⌈(1 − r)(n + 1)⌉ clamped to n: the rank of the threshold among n sorted nominal values."""
    return min(math.ceil((1.0 - false_alarm_rate) * (n + 1)), n)


def achieved_rate(n: int, false_alarm_rate: float) -> float:
    """The false-alarm rate n nominal values actually deliver at the requested rate r: a new nominal
    value exceeds s_(k) with probability (n + 1 − k)/(n + 1) (k = ``order_statistic_rank``), at most r
    when n ≥ 1/r − 1, else 1/(n + 1)."""
    return (n + 1 - order_statistic_rank(n, false_alarm_rate)) / (n + 1)


def images_needed(false_alarm_rate: float) -> int:
    """The fewest held-out nominal images that resolve ``false_alarm_rate``: ⌈1/r⌉ − 1."""
    return max(1, math.ceil(1.0 / false_alarm_rate - 1e-9) - 1)


def order_statistic_threshold(values: np.ndarray, false_alarm_rate: float, what: str = "scores") -> float:
    """s_(k) with k = ⌈(1 − r)(n + 1)⌉ (clamped to n, with a warning) of ``values`` (any shape).

    Anomalous means ``value > threshold``; see the module docstring for the guarantee.
    """
    rate = _check_rate(false_alarm_rate)
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    n = flat.size
    if n == 0:
        raise ValueError(f"{what}: expected at least one nominal value to calibrate on, got none")
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{what}: nominal values must be finite")
    k = order_statistic_rank(n, rate)
    if math.ceil((1.0 - rate) * (n + 1)) > n:
        warnings.warn(
            f"{what}: {n} nominal values cannot resolve a false-alarm rate of {rate:g} (needs at least "
            f"{images_needed(rate)}); using their maximum, so the rate achieved is "
            f"{achieved_rate(n, rate):.3g}",
            stacklevel=3,
        )
    return float(np.partition(flat, k - 1)[k - 1])


def _check_rate(rate: Any, name: str = "false_alarm_rate") -> float:
    return check_number(name, rate, MIN_RATE, 1.0)


def normalize(values: Any, threshold: float) -> np.ndarray:
    """``clip(values / (2 threshold), 0, 1)``: 0.5 at the threshold (values are non-negative)."""
    values = np.asarray(values, dtype=np.float32)
    if threshold <= 0:
        return np.where(values > threshold, 1.0, 0.5).astype(np.float32)
    return np.clip(values / np.float32(2.0 * threshold), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Decision thresholds calibrated on defect-free images (hashable: a static field of ``Model``).

    Attributes:
      image: image threshold; an image is anomalous when its score is > image.
      pixel: pixel threshold; a map pixel is anomalous when its value is > pixel.
      false_alarm_rate: the rate r both thresholds were set for.
      nominal_scores: the sorted image scores of the n held-out nominal images (so another rate can be
        chosen later without rescoring them).
      pixel_table: ((rate, pixel threshold), ...) of the nominal map values at log-spaced rates, for
        pixel thresholds at other rates (interpolated in log rate; exact at the table's rates).
      n_pixels: number of nominal map values the pixel threshold was set from.
    """

    image: float
    pixel: float
    false_alarm_rate: float
    nominal_scores: tuple[float, ...]
    pixel_table: tuple[tuple[float, float], ...]
    n_pixels: int

    @property
    def n_images(self) -> int:
        """n, the held-out nominal images the thresholds were set from."""
        return len(self.nominal_scores)

    @property
    def achieved_rate(self) -> float:
        """The image false-alarm rate the n held-out images deliver at ``false_alarm_rate``
        (``achieved_rate``): at most the requested rate when n ≥ 1/r − 1, else 1/(n + 1)."""
        return achieved_rate(self.n_images, self.false_alarm_rate)

    def describe_rate(self) -> str:
        """One line for people: the requested rate, and what the n held-out images deliver."""
        n, rate, achieved = self.n_images, self.false_alarm_rate, self.achieved_rate
        if achieved > rate:
            return (
                f"{achieved:.3g} (asked for {rate:g}, which needs {images_needed(rate)} held-out images; "
                f"{n} were held out)"
            )
        return f"{rate:g} (at most {achieved:.3g} with {n} held-out images)"

    def at_rate(self, false_alarm_rate: float) -> Thresholds:
        """The thresholds for another false-alarm rate, from the stored nominal statistics: the image
        threshold exactly (same order statistic), the pixel threshold interpolated from ``pixel_table``."""
        rate = _check_rate(false_alarm_rate)
        if rate == self.false_alarm_rate:
            return self
        rates = np.array([r for r, _ in self.pixel_table])
        values = np.array([v for _, v in self.pixel_table])
        if not rates[0] <= rate <= rates[-1]:
            raise ValueError(
                f"false_alarm_rate: {rate:g} lies outside the stored pixel quantile table "
                f"[{rates[0]:g}, {rates[-1]:g}]; calibrate again at this rate"
            )
        pixel = float(np.interp(np.log(rate), np.log(rates), values))
        image = order_statistic_threshold(np.array(self.nominal_scores), rate, "nominal_scores")
        return dataclasses.replace(self, image=image, pixel=pixel, false_alarm_rate=rate)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``Thresholds.from_dict`` inverts it (``achieved_rate`` is derived, for readers)."""
        out = dataclasses.asdict(self)
        out["achieved_rate"] = self.achieved_rate
        out["nominal_scores"] = list(self.nominal_scores)
        out["pixel_table"] = [list(pair) for pair in self.pixel_table]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        """Validated ``Thresholds`` from ``to_dict``'s output; ValueError naming the bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"thresholds: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        derived = data.pop("achieved_rate", None)
        if set(data) != names:
            raise ValueError(f"thresholds: expected the keys {sorted(names)}, got {sorted(data)}")

        def number(name: str) -> float:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"thresholds.{name}: expected a finite number, got {value!r}")
            return float(value)

        scores = data["nominal_scores"]
        table = data["pixel_table"]
        if not isinstance(scores, list) or not scores:
            raise ValueError("thresholds.nominal_scores: expected a non-empty list of numbers")
        if not isinstance(table, list) or not all(isinstance(p, list) and len(p) == 2 for p in table):
            raise ValueError("thresholds.pixel_table: expected a list of [rate, threshold] pairs")
        if not isinstance(data["n_pixels"], int) or data["n_pixels"] < 1:
            raise ValueError(f"thresholds.n_pixels: expected a positive int, got {data['n_pixels']!r}")
        if not table:
            raise ValueError("thresholds.pixel_table: expected at least one [rate, threshold] pair, got none")
        try:
            nominal = tuple(float(v) for v in scores)
            pairs = tuple((float(r), float(v)) for r, v in table)
        except (TypeError, ValueError) as error:
            raise ValueError(f"thresholds: non-numeric nominal_scores or pixel_table ({error})") from error
        if not all(math.isfinite(v) for v in nominal) or list(nominal) != sorted(nominal):
            raise ValueError("thresholds.nominal_scores: expected finite scores in ascending order")
        rates = [r for r, _ in pairs]
        if not all(0.0 < r < 1.0 and math.isfinite(v) for r, v in pairs) or rates != sorted(set(rates)):
            raise ValueError(
                "thresholds.pixel_table: expected increasing rates in (0, 1) with finite thresholds"
            )
        thresholds = cls(
            image=number("image"),
            pixel=number("pixel"),
            false_alarm_rate=_check_rate(number("false_alarm_rate"), "thresholds.false_alarm_rate"),
            nominal_scores=nominal,
            pixel_table=pairs,
            n_pixels=data["n_pixels"],
        )
        if derived is not None and derived != thresholds.achieved_rate:
            raise ValueError(
                f"thresholds.achieved_rate: {derived!r} does not follow from the rate and the "
                f"{thresholds.n_images} nominal scores ({thresholds.achieved_rate!r})"
            )
        return thresholds


def thresholds_from_scores(image_scores: Any, maps: Any, false_alarm_rate: float = 0.01) -> Thresholds:
    """``Thresholds`` from the image scores (n,) and anomaly maps (n, H, W) of held-out nominal images."""
    rate = _check_rate(false_alarm_rate)
    scores = np.sort(np.asarray(image_scores, dtype=np.float64).reshape(-1))
    values = np.asarray(maps, dtype=np.float32).reshape(-1)
    image = order_statistic_threshold(scores, rate, "image scores")
    pixel = order_statistic_threshold(values, rate, "map values")
    # One partial sort for the whole table: the order statistics it needs, resolvable ones only.
    n = values.size
    ks = np.ceil((1.0 - _TABLE_RATES) * (n + 1)).astype(np.int64)
    usable = ks <= n
    table_values = np.partition(values, ks[usable] - 1)[ks[usable] - 1] if usable.any() else []
    table = tuple(
        (float(r), float(v)) for r, v in zip(_TABLE_RATES[usable], np.asarray(table_values, np.float64))
    )
    if not table:  # too few pixels for even the largest table rate: keep the calibrated point
        table = ((rate, pixel),)
    return Thresholds(
        image=image,
        pixel=pixel,
        false_alarm_rate=rate,
        nominal_scores=tuple(float(s) for s in scores),
        pixel_table=table,
        n_pixels=int(n),
    )


def calibrate(
    model: Any,
    nominal_images: Any,
    *,
    false_alarm_rate: float = 0.01,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    **options: Any,
) -> Thresholds:
    """Thresholds at ``false_alarm_rate`` from defect-free images held out of the model's bank.

    Args:
      model: a fitted ``Model``.
      nominal_images: defect-free images that are *not* in the bank (an image of the bank rebuilds
        itself and scores near 0, which would put the thresholds far too low): uint8 (n, S, S, 3), an
        iterable of batches or a list of paths, as for ``Model.score``.
      false_alarm_rate: r in [1e-6, 1), the fraction of nominal images (and pixels) allowed above the
        thresholds; n ≥ 1/r − 1 images are needed to resolve it (see the module docstring;
        ``Thresholds.achieved_rate`` says what n images deliver).
      options: passed to ``model.score`` (e.g. ``value_range`` for float images).

    Raises ValueError when the images look like the model's own bank images (they score almost 0).

    Returns:
      ``Thresholds``; attach them with ``model.with_thresholds(thresholds)``. They bound false
      alarms on nominal images like the held-out ones; they say nothing about recall.
    """
    maps, scores = model.score(nominal_images, batch_size, progress=progress, **options)
    check_held_out(scores)
    return thresholds_from_scores(scores, maps, false_alarm_rate)


# A held-out nominal image scores like any other nominal image; an image of the bank rebuilds itself and
# scores near 0 (measured: 1e-4 against about 60 for the others). Calibrating on such images puts the
# threshold near 0 and flags every new image.
_IN_BANK_RATIO = 1e-3


def check_held_out(scores: np.ndarray) -> None:
    """ValueError when the calibration images look like images of the model's bank: more than a tenth
    of them score below 1e-3 times the median score."""
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return
    scale = float(np.median(np.abs(scores)))
    tiny = np.abs(scores) <= _IN_BANK_RATIO * max(scale, float(np.max(np.abs(scores))))
    if tiny.sum() > max(0, scores.size // 10):
        raise ValueError(
            f"nominal_images: {int(tiny.sum())} of the {scores.size} calibration images score almost 0 (the "
            "model rebuilds them exactly): they look like images of the model's bank (its training images). "
            "Calibrate on defect-free images held out of fit (validation_fraction or validation=...)"
        )


class Prediction(NamedTuple):
    """What ``Model.predict`` returns (numpy arrays over the B images).

    maps: (B, S, S) float32 anomaly maps; scores: (B,) float32 image scores (map maxima);
    normalized_scores: (B,) float32 ``clip(score / (2 · image threshold), 0, 1)``, 0.5 = threshold;
    decisions: (B,) bool, score > image threshold; masks: (B, S, S) bool, map > pixel threshold in
    images decided anomalous (empty otherwise, so a mask never contradicts its decision).
    """

    maps: np.ndarray
    scores: np.ndarray
    normalized_scores: np.ndarray
    decisions: np.ndarray
    masks: np.ndarray


def decide(maps: np.ndarray, scores: np.ndarray, thresholds: Thresholds) -> Prediction:
    """Apply ``thresholds`` to maps (B, H, W) and scores (B,)."""
    maps = np.asarray(maps, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    decisions = scores > thresholds.image
    masks = (maps > thresholds.pixel) & decisions[:, None, None]
    return Prediction(maps, scores, normalize(scores, thresholds.image), decisions, masks)


def require_thresholds(model: Any) -> Thresholds:
    """``model.thresholds``; ValueError saying how to get them when the model has none."""
    thresholds = getattr(model, "thresholds", None)
    if thresholds is None:
        raise ValueError(
            "model: it has no thresholds; fit it with validation_fraction > 0 or a validation set, or "
            "attach sj.calibrate(model, nominal_images) with model.with_thresholds(...)"
        )
    return thresholds


def holdout_size(n: int, validation_fraction: float | str, false_alarm_rate: float) -> int:
    """How many of n images to hold out of the bank for calibration.

    A number in (0, 1): ``round(fraction · n)``, at least 1, leaving at least 1 in the bank. ``"auto"``:
    enough to resolve ``false_alarm_rate`` (``images_needed``: 99 for 1%), at least a tenth of the
    images, and at most half of them (the bank keeps the other half), so with fewer than twice the
    images needed the rate is not reached and ``achieved_rate`` says what is.
    """
    n = check_int("images", n, 2)
    if validation_fraction == "auto":
        wanted = max(round(0.1 * n), images_needed(_check_rate(false_alarm_rate)))
        return max(1, min(wanted, n // 2))
    fraction = check_number("validation_fraction", validation_fraction, 0.0, 1.0, low_inclusive=False)
    return min(n - 1, max(1, round(fraction * n)))


def holdout_split(
    n: int, validation_fraction: float | str, seed: int, false_alarm_rate: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train indices, validation indices) of n items, both sorted, with ``holdout_size``
    validation items."""
    if not is_int(n) or n < 2:
        raise ValueError(f"images: holding out a validation set needs at least 2 images, got {n}")
    seed = check_int("seed", seed, 0, 2**63 - 1)
    n_val = holdout_size(n, validation_fraction, false_alarm_rate)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_images(
    images: Any, validation_fraction: float | str, seed: int, false_alarm_rate: float = 0.01
) -> tuple[Any, Any]:
    """(training part, validation part) of an image array or a list of paths (``holdout_split``)."""
    if isinstance(images, (list, tuple)) or (hasattr(images, "shape") and hasattr(images, "__getitem__")):
        train_idx, val_idx = holdout_split(len(images), validation_fraction, seed, false_alarm_rate)
        if isinstance(images, (list, tuple)):
            return [images[i] for i in train_idx], [images[i] for i in val_idx]
        images = np.asarray(images)
        return images[train_idx], images[val_idx]
    raise ValueError(
        "images: validation_fraction needs an array or a list of paths to split; for an iterable of "
        "batches pass validation=... (held-out nominal images) instead"
    )
