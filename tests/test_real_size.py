"""Every user workflow once at a real size: a bank of 240 images at 256 px, the default flags.

Tiny banks take other code paths than real ones: on CPU the reconstruction gathers each test image's
λ candidates once λ <= N/2 (λ = 50: from N = 100 on), and export with a symbolic batch broke only there.
One synthetic category (MVTec layout, 240 good training images, 256 px) goes through ``subspace-jax fit``
(default flags: the offline backbone, the calibration split), ``predict``, ``export`` (symbolic batch,
run at batch sizes 3 and 5 against ``model.score``), ``evaluate`` and the benchmark runner.

Each step runs in a fresh interpreter, as a user runs it: the workflow's memory is then its own, not
added to what the test session has accumulated (in one long session the in-process fit of this size
crashed the interpreter after some 600 other tests, while it passes alone).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from subspace_jax.data import synthetic
from subspace_jax.data.images import read_image

REPO_ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST, SIZE = 240, 8, 256

# Run in a fresh interpreter inside the workspace: the checkpoint's facts, the exported artifact against
# model.score at batch sizes 3 and 5, and whether the scorer takes the gathered path.
CHECK_MODEL = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from subspace_jax.data import synthetic
    from subspace_jax.ops import execution
    from subspace_jax.serving import checkpoint, export

    model = checkpoint.load("model")
    scorer = jax.export.deserialize(export.verify_artifact("model.jaxexport"))
    images = synthetic.generate("shape", 4, 5, 256, 7)[1].images
    maps, scores = model.score(images, batch_size=5, progress=False)
    out = {"maps": maps, "scores": scores}
    for b in (3, 5):
        out[f"maps{b}"], out[f"scores{b}"] = (np.asarray(a) for a in scorer.call(images[:b]))
    np.savez("check.npz", **out)
    cpu = execution.default_execution(device=jax.devices("cpu")[0])
    facts = {
        "n_train": model.n_train,
        "image_size": model.config.image_size,
        "gathers": bool(cpu.gathers(8, model.config.lam, model.n_train)),
    }
    json.dump(facts, open("facts.json", "w"))
    """
)

RUNNER = textwrap.dedent(
    """
    import dataclasses, sys
    from subspace_jax.data import registry
    from subspace_jax.runner import main
    spec = dataclasses.replace(registry.get("mvtec"), categories=("shape",))
    argv = ["--data-root", "data", "--backbone", "efficientnet_lite0", "--no-progress", "--out", "run"]
    sys.exit(main(spec, argv))
    """
)


def run_python(*args: str, cwd: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, (args[:3], done.stderr[-3000:])


def run_command(*args: str, cwd: Path) -> None:
    run_python("-c", "import sys; from subspace_jax.cli import main; sys.exit(main())", *args, cwd=cwd)


@pytest.fixture(scope="module")
def real_size(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real-size")
    synthetic.write_mvtec_tree(root / "data", ("shape",), n_train=N_TRAIN, n_test=N_TEST, image_size=SIZE)
    run_command("--quiet", "fit", "data/shape/train/good", "--out", "model", cwd=root)
    run_command("--quiet", "predict", "model", "data/shape/test", "--out", "pred", cwd=root)
    run_command("--quiet", "export", "model", "model.jaxexport", cwd=root)
    evaluate = ["evaluate", "model", "--dataset", "folder", "--data-root", "data/shape", "--out", "eval"]
    run_command("--quiet", *evaluate, cwd=root)
    run_python("-c", CHECK_MODEL, cwd=root)
    return root


def test_fit_with_default_flags_takes_the_gathered_path_and_states_its_rate(real_size):
    facts = json.loads((real_size / "facts.json").read_text())
    thresholds = json.loads((real_size / "model" / "metadata.json").read_text())["thresholds"]
    held_out = len(thresholds["nominal_scores"])
    assert facts["n_train"] + held_out == N_TRAIN and facts["image_size"] == SIZE
    # The path tiny banks never reach: on CPU each image's λ candidates are gathered once λ <= N/2.
    assert facts["gathers"]
    # The rate stated is the one the held-out images can resolve: the requested r when n >= 1/r - 1,
    # else 1 / (n + 1).
    requested = thresholds["false_alarm_rate"]
    resolvable = requested if held_out >= 1.0 / requested - 1 else 1.0 / (held_out + 1)
    assert thresholds["achieved_rate"] == pytest.approx(resolvable)


def test_predict_writes_one_row_and_one_mask_per_image(real_size):
    with open(real_size / "pred" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = sorted((real_size / "data" / "shape" / "test").rglob("*.png"))
    assert len(rows) == len(images) == N_TEST
    for row in rows:
        mask = read_image(real_size / "pred" / "masks" / row["path"].split("data/shape/test/", 1)[-1])
        assert mask.shape[:2] == (SIZE, SIZE)


def test_export_with_a_symbolic_batch_equals_the_model_at_batch_3_and_5(real_size):
    out = np.load(real_size / "check.npz")
    scale = float(np.abs(out["maps"]).max())
    for b in (3, 5):
        np.testing.assert_allclose(out[f"maps{b}"], out["maps"][:b], rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(out[f"scores{b}"], out["scores"][:b], rtol=1e-5, atol=1e-5 * scale)


def test_evaluate_reports_metrics_for_every_test_image(real_size):
    metrics = json.loads((real_size / "eval" / "metrics.json").read_text())
    assert metrics["n_test"] == N_TEST
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and 0.0 <= metrics["false_alarm_rate"] <= 1.0


def test_the_runner_on_a_category_of_real_size(real_size):
    run_python("-c", RUNNER, cwd=real_size)
    entry = json.loads((real_size / "run" / "results.json").read_text())["categories"]["shape"]
    assert entry["n_train"] == N_TRAIN and 0.0 <= entry["pixel_auroc"] <= 1.0
