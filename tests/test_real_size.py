"""Every user workflow once at a real size: a bank of 240 images at 256 px, the default flags.

Tiny banks take other code paths than real ones: on CPU the reconstruction gathers each test image's
λ candidates once λ <= N/2 (λ = 50: from N = 100 on), and export with a symbolic batch broke only there.
One synthetic category (MVTec layout, 240 good training images, 256 px) goes through ``subspace-jax fit``
(default flags: the offline backbone, the calibration split), ``predict``, ``export`` (symbolic batch,
run at batch sizes 3 and 5 against ``model.score``), ``evaluate`` and the benchmark runner.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from subspace_jax import cli
from subspace_jax.data import registry as datasets
from subspace_jax.data import synthetic
from subspace_jax.data.images import read_image
from subspace_jax.ops import execution
from subspace_jax.runner import main as runner_main
from subspace_jax.serving import checkpoint

N_TRAIN, N_TEST, SIZE = 240, 8, 256


@pytest.fixture(scope="module")
def real_size(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real-size")
    synthetic.write_mvtec_tree(root / "data", ("shape",), n_train=N_TRAIN, n_test=N_TEST, image_size=SIZE)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli.main(["--quiet", "fit", "data/shape/train/good", "--out", "model"]) == 0
        assert cli.main(["--quiet", "predict", "model", "data/shape/test", "--out", "pred"]) == 0
        assert cli.main(["--quiet", "export", "model", "model.jaxexport"]) == 0
        evaluate = ["evaluate", "model", "--dataset", "folder", "--data-root", "data/shape", "--out", "eval"]
        assert cli.main(["--quiet", *evaluate]) == 0
    finally:
        os.chdir(cwd)
    return root


def test_fit_with_default_flags_takes_the_gathered_path_and_states_its_rate(real_size):
    model = checkpoint.load(real_size / "model")
    meta = json.loads((real_size / "model" / checkpoint.METADATA_FILE).read_text())
    held_out = len(meta["thresholds"]["nominal_scores"])
    assert model.n_train + held_out == N_TRAIN and model.config.image_size == SIZE
    # The path tiny banks never reach: on CPU each image's λ candidates are gathered once λ <= N/2.
    cpu = execution.default_execution(device=jax.devices("cpu")[0])
    assert cpu.gathers(8, model.config.lam, model.n_train)
    # The rate stated is the one the held-out images can resolve: the requested r when n >= 1/r - 1,
    # else 1 / (n + 1).
    requested = meta["thresholds"]["false_alarm_rate"]
    resolvable = requested if held_out >= 1.0 / requested - 1 else 1.0 / (held_out + 1)
    assert meta["thresholds"]["achieved_rate"] == pytest.approx(resolvable)


def test_predict_writes_one_row_and_one_mask_per_image(real_size):
    with open(real_size / "pred" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = sorted((real_size / "data" / "shape" / "test").rglob("*.png"))
    assert len(rows) == len(images) == N_TEST
    for row in rows:
        mask = read_image(real_size / "pred" / "masks" / row["path"].split("data/shape/test/", 1)[-1])
        assert mask.shape[:2] == (SIZE, SIZE)


def test_export_with_a_symbolic_batch_equals_the_model_at_batch_3_and_5(real_size):
    scorer = jax.export.deserialize((real_size / "model.jaxexport").read_bytes())
    model = checkpoint.load(real_size / "model")
    _, test = synthetic.generate("shape", 4, 5, SIZE, 7)
    expected_maps, expected_scores = model.score(test.images, batch_size=5, progress=False)
    scale = float(np.abs(expected_maps).max())
    for b in (3, 5):
        maps, scores = scorer.call(test.images[:b])
        np.testing.assert_allclose(np.asarray(maps), expected_maps[:b], rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(np.asarray(scores), expected_scores[:b], rtol=1e-5, atol=1e-5 * scale)


def test_evaluate_reports_metrics_for_every_test_image(real_size):
    metrics = json.loads((real_size / "eval" / "metrics.json").read_text())
    assert metrics["n_test"] == N_TEST
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and 0.0 <= metrics["false_alarm_rate"] <= 1.0


def test_the_runner_on_a_category_of_real_size(real_size, tmp_path):
    spec = dataclasses.replace(datasets.get("mvtec"), categories=("shape",))
    argv = ["--data-root", str(real_size / "data"), "--backbone", "efficientnet_lite0", "--no-progress"]
    assert runner_main(spec, [*argv, "--out", str(tmp_path / "out")]) == 0
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["categories"]["shape"]
    assert entry["n_train"] == N_TRAIN and 0.0 <= entry["pixel_auroc"] <= 1.0
