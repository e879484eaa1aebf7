"""The map and score options of experiments/mtd_tuning.py (issue 14) against independent numpy computations:
residual standardisation per level and per pixel, the relative residual (plain and offset), level
weights, top-k and max+pooled image scores."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "mtd_tuning.py"


@pytest.fixture(scope="module")
def tuning():
    spec = importlib.util.spec_from_file_location("mtd_tuning_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _maps(seed: int, n: int, scale: float) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "level2": scale * rng.gamma(2.0, 1.0, (n, 6, 6)),
        "level3": 10 * scale * rng.gamma(3.0, 1.0, (n, 3, 3)),
    }


def test_per_level_standardisation_uses_one_mean_and_std_of_all_nominal_pixels(tuning):
    held, test = _maps(0, 7, 1.0), _maps(1, 4, 2.0)
    out = tuning.standardise(test, held, "level")
    for key, ref in held.items():
        values = [float(v) for v in ref.ravel()]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        np.testing.assert_allclose(out[key], (test[key] - mean) / std, rtol=1e-10)
    # Held-out maps standardised by themselves: each level has mean 0 and std 1 over all its pixels.
    self_std = tuning.standardise(held, held, "level")
    for key in held:
        assert abs(self_std[key].mean()) < 1e-9 and abs(self_std[key].std() - 1) < 1e-9
    # The level with ten times larger residuals no longer dominates the sum.
    assert held["level3"].mean() > 5 * held["level2"].mean()


def test_per_pixel_standardisation_uses_the_statistics_of_each_pixel(tuning):
    held, test = _maps(2, 9, 1.0), _maps(3, 3, 1.5)
    out = tuning.standardise(test, held, "pixel")
    for key, ref in held.items():
        floor = 1e-6 * ref.std()  # keeps a pixel constant over the nominal images finite
        expected = np.empty_like(test[key])
        for i in range(ref.shape[1]):
            for j in range(ref.shape[2]):
                column = ref[:, i, j]
                mean = column.sum() / len(column)
                std = np.sqrt(((column - mean) ** 2).sum() / len(column))
                expected[:, i, j] = (test[key][:, i, j] - mean) / (std + floor)
        np.testing.assert_allclose(out[key], expected, rtol=1e-10)
    assert tuning.standardise(test, held, "none") is test


def test_relative_residual_divides_by_the_feature_norm_at_each_pixel(tuning):
    rng = np.random.default_rng(4)
    features = {
        "level2": rng.standard_normal((2, 5, 5, 8)),
        "level3": 30 * rng.standard_normal((2, 3, 3, 16)),
    }
    norms = {k: np.sqrt((v**2).sum(axis=-1)) for k, v in features.items()}
    maps = {k: 0.1 * n * rng.uniform(0.5, 1.5, n.shape) for k, n in norms.items()}
    out = tuning.relative_residual(maps, norms)
    for key in maps:
        for b, i, j in np.ndindex(*maps[key].shape):
            norm = float(np.linalg.norm(features[key][b, i, j]))
            assert out[key][b, i, j] == pytest.approx(maps[key][b, i, j] / norm, rel=1e-5)
    # Both levels end up on the same scale although level 3's features are about 40 times larger.
    assert maps["level3"].mean() > 10 * maps["level2"].mean()
    assert 0.5 < out["level3"].mean() / out["level2"].mean() < 2


def test_offset_relative_residual_adds_a_multiple_of_the_nominal_median_norm(tuning):
    rng = np.random.default_rng(6)
    maps = _maps(7, 3, 1.0)
    norms = {k: rng.uniform(1, 5, v.shape) for k, v in maps.items()}
    held_norms = {"level2": rng.uniform(2, 4, (5, 6, 6)), "level3": rng.uniform(20, 40, (5, 3, 3))}
    out = tuning.offset_relative_residual(maps, norms, held_norms, 0.5)
    for key in maps:
        values = sorted(float(v) for v in held_norms[key].ravel())
        half = len(values) // 2  # 180 values at level 2 (the mean of the middle two), 45 at level 3
        median = values[half] if len(values) % 2 else (values[half - 1] + values[half]) / 2
        for b, i, j in np.ndindex(*maps[key].shape):
            expected = maps[key][b, i, j] / (norms[key][b, i, j] + 0.5 * median)
            assert out[key][b, i, j] == pytest.approx(expected, rel=1e-12)
    # Offset 0 is the relative residual.
    zero = tuning.offset_relative_residual(maps, norms, held_norms, 0.0)
    relative = tuning.relative_residual(maps, norms)
    for key in maps:
        np.testing.assert_allclose(zero[key], relative[key], rtol=1e-5)


def test_weight_levels_scales_each_level_in_ascending_level_order(tuning):
    maps = {"level10": np.ones((1, 2, 2)), "level2": np.ones((1, 4, 4)), "level3": np.ones((1, 3, 3))}
    out = tuning.weight_levels(maps, (1.0, 2.0, 0.5))
    assert out["level2"].max() == 1.0 and out["level3"].max() == 2.0 and out["level10"].max() == 0.5
    with pytest.raises(ValueError, match="expected 3"):
        tuning.weight_levels(maps, (1.0, 2.0))


def test_image_scores_max_topk_pooled_and_z_scored_sum(tuning):
    rng = np.random.default_rng(5)
    maps, held = rng.standard_normal((4, 10, 10)), rng.standard_normal((6, 10, 10))
    pooled, held_pooled = rng.uniform(1, 2, 4), rng.uniform(1, 2, 6)
    scores = {kind: tuning.image_scores(kind, maps, pooled, held, held_pooled) for kind in tuning.SCORES}
    for b in range(4):
        ordered = sorted(maps[b].ravel().tolist(), reverse=True)
        assert scores["max"][b] == ordered[0]
        assert scores["top1%"][b] == pytest.approx(ordered[0])  # 1% of 100 pixels: one
        assert scores["pooled"][b] == pooled[b]
    top = tuning.topk_mean(maps, 0.05)  # 5 of 100 pixels
    for b in range(4):
        assert top[b] == pytest.approx(np.mean(sorted(maps[b].ravel().tolist())[-5:]), rel=1e-12)
    held_max = [float(h.max()) for h in held]
    mean_max = sum(held_max) / 6
    std_max = (sum((v - mean_max) ** 2 for v in held_max) / 6) ** 0.5
    mean_pooled = sum(held_pooled) / 6
    std_pooled = (sum((v - mean_pooled) ** 2 for v in held_pooled) / 6) ** 0.5
    expected = [
        (maps[b].max() - mean_max) / std_max + (pooled[b] - mean_pooled) / std_pooled for b in range(4)
    ]
    np.testing.assert_allclose(scores["max+pooled"], expected, rtol=1e-10)


def test_combining_image_and_pixel_atom_maps_sums_them_plain_or_z_scored_by_nominal_statistics(tuning):
    rng = np.random.default_rng(6)
    image, pixel = rng.gamma(2.0, 1.0, (3, 8, 8)), 50 + 20 * rng.gamma(2.0, 1.0, (3, 8, 8))
    held_image, held_pixel = rng.gamma(2.0, 1.0, (5, 8, 8)), 50 + 20 * rng.gamma(2.0, 1.0, (5, 8, 8))
    test, held = tuning.combine_modes([image, pixel], [held_image, held_pixel], "sum")
    np.testing.assert_allclose(test, image + pixel, rtol=1e-12)
    np.testing.assert_allclose(held, held_image + held_pixel, rtol=1e-12)

    def z(x, ref):
        values = ref.ravel().tolist()
        mean = sum(values) / len(values)
        return (x - mean) / (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5

    test, held = tuning.combine_modes([image, pixel], [held_image, held_pixel], "z")
    np.testing.assert_allclose(test, z(image, held_image) + z(pixel, held_pixel), rtol=1e-10)
    np.testing.assert_allclose(held, z(held_image, held_image) + z(held_pixel, held_pixel), rtol=1e-10)
    with pytest.raises(ValueError, match="mode"):
        tuning.combine_modes([image], [held_image], "max")


def test_variant_text_sets_the_pixel_atom_options_of_the_model_config(tuning):
    variant = tuning.parse_variant("k=5,reconstruction=pixel,radius=2,pixel_k=3,aggregate=3,levels=23")
    config = tuning.model_config(variant)
    assert (config.reconstruction, config.radius, config.pixel_k, config.levels) == ("pixel", 2, 3, (2, 3))
    assert variant.name() == "tf L23 k5 lam50 agg3 pixel r2k3"
    assert tuning.parse_variant("reconstruction=pixel").name() == "tf L234 k5 lam50 pixel"


def test_frontier_figure_writes_a_png_and_nothing_on_bad_rows(tuning, tmp_path):
    import json

    rows = [
        {"variant": "a", "fusion": "none", "score": s, "pro": 70.0, "pixel_ap": 20.0, "bank_bytes": 4e8}
        for s in ("max", "top1%")
    ] + [
        {"variant": "b", "fusion": "blend1", "score": "max", "pro": 76.0, "pixel_ap": 28.0, "bank_bytes": 4e7}
    ]
    source = tmp_path / "optionsA.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows))
    out = tuning.frontier_figure(
        [source], {"name": "PatchCore", "pro": 74.0, "pixel_ap": 30.0}, tmp_path / "f.png"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp*"))
    source.write_text("{not json")
    with pytest.raises(json.JSONDecodeError):
        tuning.frontier_figure(
            [source], {"name": "PatchCore", "pro": 74.0, "pixel_ap": 30.0}, tmp_path / "g.png"
        )
    assert not (tmp_path / "g.png").exists()


def test_dictionary_variant_sets_the_library_dictionary(tuning):
    variant = tuning.parse_variant("k=20,dictionary=256,dict_steps=3,bank_dtype=bfloat16")
    config = tuning.model_config(variant)
    assert (config.dictionary, config.dictionary_steps, config.k) == (256, 3, 20)
    assert variant.name() == "tf L234 k20 lam50 bfloat16 dict256-modx3"
