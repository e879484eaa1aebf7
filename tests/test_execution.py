"""Vectorisation widths (``subspace_jax.execution``): maps do not depend on the memory budget.

The reference for every width is the scorer with a budget of 1 byte (one test image, one pixel at a
time) and the per-pixel / per-image sklearn checks of ``test_model.py`` / ``test_model_gather.py``
cover that reference itself.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import subspace_jax as sj
from subspace_jax.ops import execution as execution_lib
from subspace_jax.ops.execution import Execution


def _features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "level2": np.abs(rng.standard_normal((n, 6, 6, 8))).astype(np.float32),
        "level3": np.abs(rng.standard_normal((n, 3, 3, 16))).astype(np.float32),
        "pooled": np.abs(rng.standard_normal((n, 24))).astype(np.float32),
    }


@pytest.mark.parametrize("reconstruction, sampling", [("image", "subspace"), ("pixel", "subspace")])
def test_maps_identical_for_every_width(reconstruction, sampling):
    rng = np.random.default_rng(3)
    train, test = _features(rng, 12), _features(rng, 5)
    config = sj.Config(
        backbone="efficientnet_lite0",
        image_size=32,
        levels=(2, 3),
        sampling_level="pooled",
        sampling=sampling,
        lam=4,
        k=3,
        pixel_k=2,
        reconstruction=reconstruction,
        sigma=1.0,
    )
    model = sj.fit_features(train, config)
    score = jax.jit(sj.score_features, static_argnames=("execution",))
    reference, _ = score(model, test, execution=Execution(1))
    # 1 byte: width 1; then a width in between (image mode: 2 of 5 images; pixel mode: one image's
    # candidate maps and part of its pixels), then "all" (every image / every pixel of the batch).
    block = 4 * 4 * 6 * 6 * 8  # one image's level-2 candidate block
    budgets = [2 * block + 1, 1 << 40]
    for budget in budgets:
        maps, _ = score(model, test, execution=Execution(budget))
        np.testing.assert_allclose(np.asarray(maps), np.asarray(reference), rtol=1e-6, atol=1e-6)
    # The widths really differ across these budgets.
    widths = {execution_lib.image_width(b, 5, block) for b in [1] + budgets}
    assert widths == {1, 2, 5}


def test_pixel_widths_cover_one_pixel_to_the_whole_batch():
    per_image, per_pixel = 1000, 10
    assert execution_lib.pixel_widths(1, 4, per_image, 36, per_pixel) == (1, 1)
    images, pixels = execution_lib.pixel_widths(2 * per_image + 300, 4, per_image, 36, per_pixel)
    assert (images, pixels) == (1, 36)  # half the budget holds one image; the rest 130 pixels, capped
    assert execution_lib.pixel_widths(1 << 30, 4, per_image, 36, per_pixel) == (4, 4 * 36)


def test_gathered_or_masked_by_backend():
    cpu = Execution(1 << 20)
    assert cpu.gathers(8, 50, 100) and not cpu.gathers(8, 51, 100)  # the CPU crossover m <= N/2
    accelerator = Execution(1 << 20, gather_below=None)
    assert accelerator.gathers(8, 50, 401) and not accelerator.gathers(8, 50, 400)  # B·m < N
    default = execution_lib.default_execution()
    assert default.memory_budget_bytes == execution_lib.CPU_BUDGET_BYTES  # this suite runs on CPU
    assert execution_lib.default_execution(123).memory_budget_bytes == 123
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        Execution(0)
    with pytest.raises(ValueError, match="gather_below"):
        Execution(10, gather_below=1.5)
