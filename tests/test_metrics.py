"""Metrics against scikit-learn, a brute-force PRO reference, hand-derived PRO values and properties."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.measure
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from subspace_jax.eval import metrics


def random_case(rng: np.random.Generator, n_levels: int = 8, shape=(3, 7, 6)):
    """Integer-valued scores (many ties) and random masks holding both classes."""
    maps = rng.integers(0, n_levels, size=shape).astype(np.float64)
    masks = rng.random(shape) < 0.3
    masks.flat[0], masks.flat[1] = True, False
    return maps, masks


def brute_force_pro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """PRO straight from its definition: one binarisation per distinct score, regions from skimage.

    Independent of the implementation under test: no cumulative sums, no scipy labelling, and the
    integral is taken segment by segment with a clipped last segment.
    """
    regions = []
    for image_mask in masks:
        labelled = skimage.measure.label(image_mask, connectivity=2)
        regions += [labelled == k for k in range(1, labelled.max() + 1)]
    image_of_region = [
        i for i, m in enumerate(masks) for _ in range(skimage.measure.label(m, connectivity=2).max())
    ]
    n_ok = np.count_nonzero(~masks)
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fpr = np.count_nonzero(predicted & ~masks) / n_ok
        overlaps = [
            np.count_nonzero(predicted[i] & region) / np.count_nonzero(region)
            for i, region in zip(image_of_region, regions)
        ]
        points.append((fpr, float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            y_end = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_end) * (fpr_limit - x0)
    return area / fpr_limit


# ---------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_ap_f1_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    maps, masks = random_case(rng, n_levels=[3, 8, 50, 1000, 4][seed])
    labels, scores = masks.ravel(), maps.ravel()
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.pixel_ap(maps, masks) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    assert metrics.f1_max(maps, masks) == pytest.approx(f1.max(), abs=1e-12)


def test_pixel_metrics_equal_sklearn_on_continuous_float32_scores():
    rng = np.random.default_rng(7)
    maps = rng.standard_normal((4, 16, 16)).astype(np.float32)
    masks = rng.random((4, 16, 16)) < 0.1
    maps[masks] += 1.0
    labels, scores = masks.ravel(), maps.ravel()
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.pixel_ap(maps, masks) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_image_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=40).astype(np.float32)
    labels = rng.integers(0, 2, size=40)
    labels[:2] = [0, 1]
    assert metrics.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_metrics_return_python_floats():
    maps, masks = random_case(np.random.default_rng(0))
    for value in (
        metrics.pixel_auroc(maps, masks),
        metrics.pro(maps, masks),
        metrics.pixel_ap(maps, masks),
        metrics.f1_max(maps, masks),
        metrics.image_auroc(maps.max(axis=(1, 2)), [0, 1, 1]),
    ):
        assert type(value) is float and 0.0 <= value <= 1.0


# ---------------------------------------------------------------- PRO against a brute-force reference


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.07, 1.0])
def test_pro_matches_brute_force_definition(seed, fpr_limit):
    maps, masks = random_case(np.random.default_rng(seed), n_levels=[4, 12, 200, 3, 30, 9][seed])
    assert metrics.pro(maps, masks, fpr_limit) == pytest.approx(
        brute_force_pro(maps, masks, fpr_limit), abs=1e-12
    )


# ---------------------------------------------------------------- PRO on hand-built cases


def test_pro_is_one_for_a_perfectly_separated_region():
    # Every defective pixel scores above every defect-free one: the curve jumps to PRO 1 at FPR 0 and
    # stays there, so the area up to 0.3 is 0.3 and the normalised value exactly 1.
    maps = np.zeros((1, 8, 8))
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 2:5, 3:6] = True
    maps[0][masks[0]] = 5.0
    maps[0, 6, 6] = 1.0  # defect-free pixels need not be tied with each other
    assert metrics.pro(maps, masks) == 1.0


def test_pro_averages_regions_not_pixels():
    # Region A (4 px) scores above every normal pixel: found at FPR 0. Region B (12 px) scores below
    # all 100 normal pixels: only found at FPR 1. So PRO = (1 + 0) / 2 = 0.5 for every FPR < 1 and the
    # normalised area up to 0.3 is 0.5. (A pixel-wise overlap would give 4 / 16 = 0.25.)
    maps = np.zeros((1, 10, 12))
    masks = np.zeros((1, 10, 12), dtype=bool)
    masks[0, 0:2, 0:2] = True  # region A
    masks[0, 6:9, 6:10] = True  # region B
    normal = ~masks[0]
    maps[0][normal] = np.linspace(1.0, 2.0, np.count_nonzero(normal))
    maps[0, 0:2, 0:2] = 10.0
    maps[0, 6:9, 6:10] = 0.0
    assert np.count_nonzero(normal) == 104
    assert metrics.pro(maps, masks) == pytest.approx(0.5, abs=1e-15)


def test_pro_collapses_ties_between_normal_and_defective_pixels():
    # 10 defect-free pixels: two tie at 5 with the 2-pixel region, eight score 0. The tie group at 5
    # is one point, (FPR 0.2, PRO 1); the curve is (0,0) -> (0.2,1) -> (1,1). Area up to 0.3:
    # 0.5 * 0.2 * 1 + 0.1 * 1 = 0.2, normalised 0.2 / 0.3 = 2/3. Putting defective pixels first
    # inside the tie would give 1, putting them last 1/3.
    maps = np.zeros((1, 3, 4))
    masks = np.zeros((1, 3, 4), dtype=bool)
    masks[0, 0, 0:2] = True
    maps[0, 0, 0:4] = 5.0
    assert metrics.pro(maps, masks) == pytest.approx(2 / 3, abs=1e-15)


def test_pro_interpolates_the_end_point_on_a_sloped_segment():
    # Five normal pixels [5, 2, 2, 0, 0] and a 1-pixel region scoring 2. Points: (0,0), (0.2,0) at
    # score 5, the tie group at 2 gives (0.6,1), then (1,1). The segment (0.2,0)-(0.6,1) crosses
    # FPR 0.3 at PRO 0.25, so the area is 0.5 * 0.25 * 0.1 = 0.0125 and the PRO 0.0125/0.3 = 1/24.
    maps = np.array([[[5.0, 2.0, 2.0, 0.0, 0.0, 2.0]]])
    masks = np.array([[[False, False, False, False, False, True]]])
    assert metrics.pro(maps, masks) == pytest.approx(1 / 24, abs=1e-15)
    # With the limit at 0.6 the whole slope counts: 0.5 * 1 * 0.4 = 0.2, normalised 1/3.
    assert metrics.pro(maps, masks, fpr_limit=0.6) == pytest.approx(1 / 3, abs=1e-15)


def test_pro_uses_8_connectivity():
    # Two diagonal pixels form one region (8-connected), found at FPR 0; a separate single pixel
    # scores below all normals. 8-connectivity: regions {A, B} -> PRO 0.5. With 4-connectivity there
    # would be three regions, two found -> 2/3.
    maps = np.full((1, 6, 6), 1.0)
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True
    masks[0, 4, 4] = True
    maps[0, 0, 0] = maps[0, 1, 1] = 9.0
    maps[0, 4, 4] = 0.0
    maps[0][~masks[0]] = np.linspace(1, 2, 33)
    assert metrics.pro(maps, masks) == pytest.approx(0.5, abs=1e-15)


def test_pro_labels_regions_per_image():
    # The same position in two images holds two different regions: a 1-pixel one found at FPR 0 in
    # image 0, a 3-pixel one never found before FPR 1 in image 1 -> PRO (1 + 0) / 2 = 0.5. Labelling
    # the stack as one volume would merge them into one 4-pixel region with overlap 1/4.
    maps = np.zeros((2, 4, 4))
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1, 1] = True
    masks[1, 1, 0:3] = True
    maps[~masks] = np.linspace(1, 2, 28)
    maps[0, 1, 1] = 5.0
    maps[1, 1, 0:3] = 0.0
    assert metrics.pro(maps, masks) == pytest.approx(0.5, abs=1e-15)


def test_pro_counts_fpr_over_defect_free_images_too():
    # Image 0: 1-pixel region (score 3) and 9 normal pixels, one at 4 and eight at 0. Alone: points
    # (0,0), (1/9,0), (1/9,1), ... -> area up to 0.3 = 0.3 - 1/9, PRO = 1 - 1/(9*0.3) = 17/27.
    # Adding a good image whose 10 pixels score 0 makes the FPR step 1/19: PRO = 1 - 1/(19*0.3) = 47/57.
    image = np.array([[4.0, 0, 0, 0, 0], [0, 0, 0, 0, 3.0]])
    mask = np.zeros((2, 5), dtype=bool)
    mask[1, 4] = True
    assert metrics.pro(image[None], mask[None]) == pytest.approx(17 / 27, abs=1e-14)
    maps = np.stack([image, np.zeros((2, 5))])
    masks = np.stack([mask, np.zeros((2, 5), dtype=bool)])
    assert metrics.pro(maps, masks) == pytest.approx(47 / 57, abs=1e-14)


# ---------------------------------------------------------------- PRO properties


@st.composite
def maps_and_masks(draw):
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
    size = n * h * w
    levels = draw(st.integers(2, 40))
    scores = draw(st.lists(st.integers(0, levels), min_size=size, max_size=size))
    flags = draw(st.lists(st.booleans(), min_size=size, max_size=size).filter(lambda f: 0 < sum(f) < len(f)))
    return np.array(scores, dtype=np.float64).reshape(n, h, w), np.array(flags).reshape(n, h, w)


@settings(max_examples=60, deadline=None)
@given(maps_and_masks(), st.floats(0.01, 1.0))
def test_pro_is_a_fraction(case, fpr_limit):
    maps, masks = case
    assert 0.0 <= metrics.pro(maps, masks, fpr_limit) <= 1.0


@settings(max_examples=60, deadline=None)
@given(maps_and_masks())
def test_pro_and_auroc_are_invariant_under_increasing_transforms(case):
    maps, masks = case
    # Strictly increasing and exact enough on integers 0..40 that no two distinct scores merge.
    transformed = np.exp(0.3 * maps) + maps**3 - 7.0
    assert metrics.pro(transformed, masks) == pytest.approx(metrics.pro(maps, masks), abs=1e-12)
    assert metrics.pixel_auroc(transformed, masks) == pytest.approx(
        metrics.pixel_auroc(maps, masks), abs=1e-12
    )


@settings(max_examples=60, deadline=None)
@given(maps_and_masks(), st.integers(1, 4), st.floats(0.05, 0.3))
def test_pro_after_adding_low_scoring_good_images_rescales_the_fpr_axis(case, n_extra, fpr_limit):
    # Good images scoring below every other pixel only append FPR mass after every existing point:
    # each old point (x, y) moves to (c x, y) with c = n_ok / (n_ok + extra), and the curve is 1 from
    # FPR c on. Hence pro_new(limit) = pro_old(limit / c) whenever limit / c <= 1. In particular PRO
    # is unchanged when it was 1 (every region found before the first false positive).
    maps, masks = case
    extra_maps = np.full((n_extra, *maps.shape[1:]), maps.min() - 1.0)
    new_maps = np.concatenate([maps, extra_maps])
    new_masks = np.concatenate([masks, np.zeros_like(extra_maps, dtype=bool)])
    n_ok = np.count_nonzero(~masks)
    shrink = n_ok / (n_ok + extra_maps.size)
    expected = metrics.pro(maps, masks, min(fpr_limit / shrink, 1.0)) if fpr_limit / shrink <= 1.0 else None
    if expected is not None:
        assert metrics.pro(new_maps, new_masks, fpr_limit) == pytest.approx(expected, abs=1e-12)
    if metrics.pro(maps, masks, fpr_limit) == 1.0:
        assert metrics.pro(new_maps, new_masks, fpr_limit) == 1.0


@settings(max_examples=30, deadline=None)
@given(maps_and_masks(), st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_image_order(case, random):
    maps, masks = case
    order = list(range(len(maps)))
    random.shuffle(order)
    for metric in (metrics.pro, metrics.pixel_auroc, metrics.pixel_ap, metrics.f1_max):
        assert metric(maps[order], masks[order]) == pytest.approx(metric(maps, masks), abs=1e-12)


# ---------------------------------------------------------------- errors


PIXEL_METRICS = [metrics.pixel_auroc, metrics.pro, metrics.pixel_ap, metrics.f1_max]


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_shape_mismatch_is_an_error(metric):
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\)"):
        metric(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match=r"maps must have shape \(N, H, W\)"):
        metric(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool))


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_missing_class_is_an_error(metric):
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ValueError, match="no defective pixels"):
        metric(maps, np.zeros((2, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="no defect-free pixels"):
        metric(maps, np.ones((2, 4, 4), dtype=bool))


@pytest.mark.parametrize("metric", PIXEL_METRICS)
def test_nan_scores_are_an_error(metric):
    maps, masks = random_case(np.random.default_rng(0))
    maps[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="maps contains 1 NaN"):
        metric(maps, masks)


def test_non_binary_masks_are_an_error_but_0_1_integers_are_accepted():
    maps, masks = random_case(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"masks must be bool or hold only 0 and 1.*masks > 0"):
        metrics.pixel_auroc(maps, masks.astype(np.uint8) * 255)
    assert metrics.pro(maps, masks.astype(np.uint8)) == metrics.pro(maps, masks)


def test_image_auroc_errors():
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\)"):
        metrics.image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="labels has no defective images"):
        metrics.image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="scores contains 1 NaN"):
        metrics.image_auroc([0.1, np.nan], [0, 1])


def test_fpr_limit_out_of_range_is_an_error():
    maps, masks = random_case(np.random.default_rng(0))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fpr_limit must be a number in"):
            metrics.pro(maps, masks, bad)


def test_jax_arrays_are_accepted():
    maps, masks = random_case(np.random.default_rng(4))
    assert metrics.pro(jnp.asarray(maps, jnp.float32), jnp.asarray(masks)) == pytest.approx(
        metrics.pro(maps.astype(np.float32), masks), abs=1e-12
    )


# ---------------------------------------------------------------- evaluate: every metric at once


@pytest.mark.parametrize("seed", range(4))
def test_evaluate_equals_sklearn_and_each_metric(seed):
    rng = np.random.default_rng(seed)
    maps, masks = random_case(rng, n_levels=[3, 8, 50, 1000][seed], shape=(6, 9, 7))
    masks[0] = False  # a defect-free image: its pixels count as negatives everywhere
    scores = np.round(maps.max(axis=(1, 2)) + rng.random(6), 1)  # ties between images too
    labels = masks.any(axis=(1, 2))
    result = metrics.evaluate(maps, scores, masks, labels)
    assert list(result) == ["pixel_auroc", "pro", "image_auroc", "pixel_ap", "f1_max"]
    assert all(type(v) is float for v in result.values())
    flat_masks, flat_maps = masks.ravel(), maps.ravel()
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(flat_masks, flat_maps), abs=1e-12)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["pro"] == pytest.approx(brute_force_pro(maps, masks, 0.3), abs=1e-12)
    # Sharing one sort must not change a single bit against the metrics computed one by one.
    assert result == {
        "pixel_auroc": metrics.pixel_auroc(maps, masks),
        "pro": metrics.pro(maps, masks),
        "image_auroc": metrics.image_auroc(scores, labels),
        "pixel_ap": metrics.pixel_ap(maps, masks),
        "f1_max": metrics.f1_max(maps, masks),
    }


def test_evaluate_gives_no_image_auroc_for_one_label_class():
    maps, masks = random_case(np.random.default_rng(1))
    result = metrics.evaluate(maps, maps.max(axis=(1, 2)), masks, [1, 1, 1])
    assert result["image_auroc"] is None
    assert result["pro"] == metrics.pro(maps, masks)


def test_evaluate_validates_every_shape():
    maps, masks = random_case(np.random.default_rng(2))  # (3, 7, 6)
    scores, labels = maps.max(axis=(1, 2)), np.array([0, 1, 1])
    with pytest.raises(ValueError, match=r"maps must have shape \(N, H, W\)"):
        metrics.evaluate(maps[0], scores, masks, labels)
    with pytest.raises(ValueError, match=r"scores must have shape \(N,\)"):
        metrics.evaluate(maps, scores[:, None], masks, labels)
    with pytest.raises(ValueError, match=r"scores must have one value per map: shape \(3,\)"):
        metrics.evaluate(maps, scores[:2], masks, labels)
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\) = \(3, 7, 6\)"):
        metrics.evaluate(maps, scores, masks[:, :5], labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(3,\)"):
        metrics.evaluate(maps, scores, masks, labels[:2])
    with pytest.raises(ValueError, match="masks has no defective pixels"):
        metrics.evaluate(maps, scores, np.zeros_like(masks), labels)
    with pytest.raises(ValueError, match="scores contains 1 NaN"):
        metrics.evaluate(maps, np.array([0.1, np.nan, 0.2]), masks, labels)
