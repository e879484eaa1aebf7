"""The fusion method (``subspace_jax.methods.fusion``): its config, its normalisations against numpy, the
staged and fused scorers, checkpoints, export, calibration, the command, the runner and data-sharded
scoring on fake devices.

The references are computed here from the members' own maps and scores (each member is a plain model of
its method, tested in its own module): held-out statistics with numpy's mean, std and quantile, the
normalised maps and the weighted sums in numpy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import subspace_jax as sj
from subspace_jax import cli, configs
from subspace_jax.data import registry as datasets
from subspace_jax.data import synthetic
from subspace_jax.data.mtd import MTD
from subspace_jax.methods import fusion, registry
from subspace_jax.methods.fusion import FusionConfig, FusionModel
from subspace_jax.methods.patchcore import PatchCoreConfig
from subspace_jax.methods.subspace import SubspaceConfig
from subspace_jax.ops import normalize
from subspace_jax.runner import main as runner_main
from subspace_jax.runner.workbench import Workbench
from subspace_jax.serving import checkpoint, export

ROOT = Path(__file__).resolve().parents[1]
SUB = SubspaceConfig(levels=(2, 3), sampling_level="pooled", lam=6, k=2, sigma=1.0)
PC = PatchCoreConfig(levels=(2, 3), coreset_ratio=0.5, sigma=1.0)
WEIGHTS, SCORE_WEIGHTS = (0.3, 0.7), (0.6, 0.4)


def features(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"level2": (8, 8, 8), "level3": (4, 4, 16), "pooled": (16,)}
    return {k: np.abs(rng.standard_normal((n,) + s)).astype(np.float32) for k, s in shapes.items()}


def tiny_config(**changes) -> FusionConfig:
    fields = dict(members=(SUB, PC), map_weights=WEIGHTS, score_weights=SCORE_WEIGHTS) | changes
    return FusionConfig(backbone="efficientnet_lite0", image_size=32, **fields)


@pytest.fixture(scope="module")
def fitted():
    train, test = features(20, 0), features(6, 1)
    return sj.fit_features(train, tiny_config()), train, test


def held_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented draw: a seeded permutation, its first round(fraction n) images held out."""
    order = np.random.default_rng(seed).permutation(n)
    count = min(n - 1, max(1, round(fraction * n)))
    return np.sort(order[count:]), np.sort(order[:count])


def subset(feats: dict, index: np.ndarray) -> dict:
    return {key: value[index] for key, value in feats.items()}


# --- config ---------------------------------------------------------------------------------------------


def test_members_take_the_fusions_backbone_and_size_and_the_config_round_trips():
    config = tiny_config()
    assert [m.backbone for m in config.members] == ["efficientnet_lite0"] * 2
    assert [m.image_size for m in config.members] == [32, 32]
    assert config.levels == (2, 3) and config.feature_keys == ("level2", "level3", "pooled")
    bigger = dataclasses.replace(config, image_size=64, crop=48)
    assert [(m.image_size, m.crop) for m in bigger.members] == [(64, 48)] * 2
    assert configs.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert [m.method for m in FusionConfig().members] == ["subspace", "patchcore"]
    data = config.to_dict()
    data["members"][1]["backbone"] = "resnet18"
    with pytest.raises(ValueError, match=r"members\[1\]\.backbone is 'resnet18'"):
        FusionConfig.from_dict(data)
    data = config.to_dict() | {"levels": [2]}
    with pytest.raises(ValueError, match="levels"):
        FusionConfig.from_dict(data)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"map_weights": (1.0,)}, r"FusionConfig.map_weights: expected \(\) or 2 finite numbers"),
        ({"score_weights": (0.0, 0.0)}, "FusionConfig.score_weights"),
        ({"map_weights": (1.0, -1.0)}, "FusionConfig.map_weights"),
        ({"normalization": "minmax"}, "FusionConfig.normalization: expected one of"),
        ({"score_rule": "max"}, "FusionConfig.score_rule"),
        ({"holdout_fraction": 1.0}, "FusionConfig.holdout_fraction"),
        ({"members": (SUB, FusionConfig())}, "is a fusion"),
        ({"members": (SUB, "patchcore")}, r"members\[1\] is str"),
        ({"members": (dataclasses.replace(SUB, image_size=256, sigma=16.0), PC)}, r"members\[0\]: Subspace"),
    ],
)
def test_bad_configs_name_the_field(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_config(**changes)


def test_a_budget_is_refused_and_fit_stream_is_none():
    assert registry.get("fusion").fit_stream is None and registry.get("fusion").within_budget is None
    with pytest.raises(ValueError, match="the fusion method takes no bank budget"):
        sj.fit(np.zeros((4, 32, 32, 3), np.uint8), tiny_config(), max_bank_bytes=10**6, progress=False)


# --- fitting and the normalisations against numpy -----------------------------------------------------------


def test_members_are_fitted_without_the_held_out_images(fitted):
    model, train, _ = fitted
    bank, held = held_out(20, 0.1, 0)
    assert model.n_train == 20 and [m.n_train for m in model.members] == [18, 18]
    for member, member_config in zip(model.members, model.config.members):
        alone = registry.for_config(member_config).fit_features(
            subset(train, bank), member_config, backbone_name=model.backbone_name
        )
        for name, value in alone.arrays().items():
            np.testing.assert_array_equal(np.asarray(member.arrays()[name]), np.asarray(value))
        maps, scores = member.score(subset(train, held), progress=False)
        stats = {k: np.asarray(v) for k, v in model.stats[model.members.index(member)].items()}
        np.testing.assert_allclose(stats["map"], [maps.mean(), maps.std()], rtol=1e-5)
        np.testing.assert_allclose(stats["score"], [scores.mean(), scores.std()], rtol=1e-5)
        quantiles = np.quantile(maps.astype(np.float64).ravel(), np.linspace(0, 1, fusion.QUANTILES))
        np.testing.assert_allclose(stats["quantiles"], quantiles, rtol=1e-5, atol=1e-6)


def numpy_rank(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """F(values): linear between the quantiles, outside continued with the slope of the outer 1%."""
    q = quantiles.astype(np.float64)
    probs = np.linspace(0, 1, q.size)
    low_slope = 0.01 / (q[10] - q[0])
    high_slope = 0.01 / (q[-1] - q[-11])
    out = np.interp(values, q, probs)
    out = np.where(values < q[0], (values - q[0]) * low_slope, out)
    return np.where(values > q[-1], 1 + (values - q[-1]) * high_slope, out)


def with_levels(carry, levels: dict):
    """A member's carry before its last stage with its level maps replaced (subspace: the dict itself;
    PatchCore: (level maps, scores))."""
    return (levels, carry[1]) if isinstance(carry, tuple) else levels


def level_normalised(member, feats: dict, level_stats: dict | None):
    """The member's level maps, and its last stage on them z-scored by ``level_stats`` (numpy)."""
    carry = feats
    for _, fn in member.scorer.stages[:-1]:
        carry = fn(member, carry)
    levels = {k: np.asarray(v, np.float64) for k, v in fusion.level_maps(carry).items()}
    if level_stats is None:
        return levels, None
    normed = {k: ((v - level_stats[k][0]) / level_stats[k][1]).astype(np.float32) for k, v in levels.items()}
    return levels, np.asarray(member.scorer.stages[-1][1](member, with_levels(carry, normed))[0], np.float64)


@pytest.mark.parametrize("normalization", fusion.NORMALIZATIONS)
@pytest.mark.parametrize("score_rule", fusion.SCORE_RULES)
def test_fused_maps_and_scores_equal_numpy(fitted, normalization, score_rule):
    base, train, test = fitted
    model = dataclasses.replace(
        base, config=dataclasses.replace(base.config, normalization=normalization, score_rule=score_rule)
    )
    _, held = held_out(20, 0.1, 0)
    held_feats = subset(train, held)
    expected_maps, expected_scores = 0.0, 0.0
    for member, w, v in zip(model.members, WEIGHTS, SCORE_WEIGHTS):
        keys = member.scorer.feature_keys(member)
        maps, scores = (np.asarray(x, np.float64) for x in member.score(test, progress=False))
        nominal_maps, nominal_scores = (
            np.asarray(x, np.float64) for x in member.score(held_feats, progress=False)
        )
        if normalization == "zscore":
            normed = (maps - nominal_maps.mean()) / nominal_maps.std()
        elif normalization == "quantile":
            normed = numpy_rank(maps, np.quantile(nominal_maps.ravel(), np.linspace(0, 1, fusion.QUANTILES)))
        else:
            levels, _ = level_normalised(member, {k: held_feats[k] for k in keys}, None)
            stats = {k: (x.mean(), x.std()) for k, x in levels.items()}
            _, nominal = level_normalised(member, {k: held_feats[k] for k in keys}, stats)
            _, test_maps = level_normalised(member, {k: test[k] for k in keys}, stats)
            normed = (test_maps - nominal.mean()) / nominal.std()
        if score_rule == "ratio":
            scores = scores / nominal_scores.mean()
        else:
            scores = (scores - nominal_scores.mean()) / nominal_scores.std()
        expected_maps = expected_maps + w * normed
        expected_scores = expected_scores + v * scores
    maps, scores = model.score(test, progress=False)
    scale = float(np.abs(expected_maps).max())
    assert scale > 0.5 and np.std(expected_maps) > 0.1  # not a constant
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)


def test_a_single_level_member_z_scored_per_level_equals_its_global_z_score(fitted):
    # Upsampling and the blur are affine and keep constants: for PatchCore's one level map, per-level
    # statistics then a global z-score give the global z-score of its map.
    model, _, test = fitted
    one = dataclasses.replace(
        model.config, members=model.config.members[1:], map_weights=(), score_weights=()
    )
    pc = dataclasses.replace(model, members=model.members[1:], stats=model.stats[1:], config=one)
    level = dataclasses.replace(pc, config=dataclasses.replace(one, normalization="level_zscore"))
    np.testing.assert_allclose(
        level.score(test, progress=False)[0], pc.score(test, progress=False)[0], rtol=1e-4, atol=1e-4
    )


def test_the_quantile_transform_is_increasing_beyond_the_nominal_range():
    quantiles = np.sort(np.random.default_rng(0).standard_normal(fusion.QUANTILES)).astype(np.float32)
    values = np.linspace(-8, 8, 301, dtype=np.float32)
    out = np.asarray(normalize.quantile_transform(values, quantiles))
    np.testing.assert_allclose(out, numpy_rank(values, quantiles), rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(out) > 0) and out[0] < 0 and out[-1] > 1


# --- the scorers ----------------------------------------------------------------------------------------


def test_staged_and_fused_scorers_agree_and_time_each_member(fitted):
    model, _, test = fitted
    timings: dict[str, float] = {}
    staged = model.score(test, timings=timings, progress=False)
    fused = jax.jit(sj.score_features)(model, test)
    assert {"subspace", "patchcore", "fusion"} <= set(timings)
    assert fusion.stage_names(model.config) == ("subspace", "patchcore", "fusion")
    carry = test
    for _, fn in model.scorer.stages:  # the generic two stages, as any StagedScorer user runs them
        carry = fn(model, carry)
    scale = float(np.abs(staged[0]).max())
    for other in (fused, carry):
        np.testing.assert_allclose(np.asarray(other[0]), staged[0], rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(np.asarray(other[1]), staged[1], rtol=1e-5, atol=1e-5)
    two = dataclasses.replace(model.config, members=(SUB, SUB), map_weights=(), score_weights=())
    assert fusion.stage_names(two) == ("subspace#0", "subspace#1", "fusion")


def test_checkpoint_round_trip_nests_the_members(fitted, tmp_path):
    model, _, test = fitted
    path = sj.save(model, tmp_path / "fusion")
    meta = json.loads((path / checkpoint.METADATA_FILE).read_text())
    assert meta["method"] == "fusion" and meta["static"] == {
        "n_train": 20,
        "members/0/n_train": 18,
        "members/1/n_train": 18,
    }
    assert {"members/0/banks/level2", "members/1/bank", "stats/1/quantiles"} <= set(meta["arrays"])
    loaded = sj.load(path)
    assert isinstance(loaded, FusionModel) and loaded.config == model.config
    maps, scores = model.score(test, progress=False)
    loaded_maps, loaded_scores = loaded.score(test, progress=False)
    np.testing.assert_allclose(loaded_maps, maps, atol=1e-6)
    np.testing.assert_allclose(loaded_scores, scores, atol=1e-6)
    arrays = model.arrays()
    identity = dict(config=model.config, backbone_name=model.backbone_name, weights_sha256=None)
    with pytest.raises(ValueError, match=r"members/2/bank"):
        FusionModel.from_arrays({**arrays, "members/2/bank": arrays["members/1/bank"]}, **identity,
                                static=model.static_values())  # fmt: skip
    with pytest.raises(ValueError, match="statistics"):
        partial = {k: v for k, v in arrays.items() if k != "stats/0/levels"}
        FusionModel.from_arrays(partial, **identity, static=model.static_values())


# --- images: calibration, export, checkpoint with thresholds ------------------------------------------


@pytest.fixture(scope="module")
def image_model():
    train, test = synthetic.generate("shape", 16, 6, 64, 0)
    config = FusionConfig(
        backbone="efficientnet_lite0",
        image_size=64,
        members=(SubspaceConfig(levels=(2, 3), sampling_level="pooled", lam=6, k=2), PatchCoreConfig()),
    )
    model = sj.fit(train.images, config, validation_fraction=0.25, false_alarm_rate=0.4, progress=False)
    return model, train, test


def test_calibration_thresholds_the_fused_score(image_model):
    model, train, test = image_model
    _, val = held_out(16, 0.25, 0)
    maps, scores = model.score(train.images[val], progress=False)
    t = model.thresholds
    assert t.n_images == 4 and t.image == pytest.approx(float(np.sort(scores)[2]), rel=1e-6)  # k = 3
    k = math.ceil(0.6 * (maps.size + 1))
    assert t.pixel == pytest.approx(float(np.partition(maps.ravel(), k - 1)[k - 1]), rel=1e-6)
    prediction = model.predict(test.images, progress=False)
    test_maps, test_scores = model.score(test.images, progress=False)
    np.testing.assert_array_equal(prediction.decisions, test_scores > t.image)
    assert 0 < prediction.decisions.sum() < len(test_scores) + 1


def test_export_equals_score_and_a_checkpoint_keeps_the_thresholds(image_model, tmp_path):
    model, _, test = image_model
    maps, scores = model.score(test.images, batch_size=6, progress=False)
    # A fixed batch: PatchCore's neighbour search cannot take a symbolic one (ops.neighbors: min(chunk, n)).
    exported = export.export_model(model, batch_size=6)
    out_maps, out_scores = exported.call(test.images)
    scale = float(np.abs(maps).max())
    np.testing.assert_allclose(np.asarray(out_maps), maps, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(out_scores), scores, rtol=1e-5, atol=1e-5 * scale)
    loaded = sj.load(sj.save(model, tmp_path / "m"))
    assert loaded.thresholds == model.thresholds
    np.testing.assert_allclose(loaded.score(test.images, batch_size=6, progress=False)[0], maps, atol=1e-6)


# --- the command and the runner ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:image scores. 4 nominal values:UserWarning")
def test_command_fit_predict_evaluate_export_with_mtd_fusion(tmp_path):
    synthetic.write_mvtec_tree(tmp_path / "data", ("shape",), n_train=16, n_test=8, image_size=128)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        fit = ["--quiet", "fit", "data/shape/train/good", "--config", "mtd_fusion", "--out", "model"]
        fit += ["--backbone", "efficientnet_lite0", "--image-size", "128", "--val-fraction", "0.25"]
        assert cli.main(fit) == 0
        assert cli.main(["--quiet", "predict", "model", "data/shape/test", "--out", "pred"]) == 0
        evaluate = ["evaluate", "model", "--dataset", "folder", "--data-root", "data/shape", "--out", "eval"]
        assert cli.main(["--quiet", *evaluate]) == 0
        assert cli.main(["--quiet", "export", "model", "model.jaxexport", "--batch-size", "4"]) == 0
    finally:
        os.chdir(cwd)
    model = sj.load(tmp_path / "model")
    expected = dataclasses.replace(configs.load("mtd_fusion"), backbone="efficientnet_lite0", image_size=128)
    assert model.config == expected and model.thresholds is not None
    rows = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0] == "path,score,normalized_score,anomalous"
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and metrics["n_test"] == 8
    scorer = jax.export.deserialize(export.verify_artifact(tmp_path / "model.jaxexport"))
    images = synthetic.generate("shape", 16, 8, 128, 0)[1].images[:4]
    maps, _ = model.score(images, batch_size=4, progress=False)
    np.testing.assert_allclose(
        np.asarray(scorer.call(images)[0]), maps, rtol=1e-5, atol=1e-5 * np.abs(maps).max()
    )


@pytest.mark.parametrize("start", [["--method", "fusion"], ["--config", "mtd_fusion"]])
def test_runner_takes_the_fusion(tmp_path, start):
    spec = dataclasses.replace(datasets.get("mvtec"), categories=("shape",))
    synthetic.write_mvtec_tree(tmp_path / "data", ("shape",), n_train=12, n_test=8, image_size=128)
    argv = ["--data-root", str(tmp_path / "data"), "--backbone", "efficientnet_lite0", "--image-size", "128"]
    argv += [*start, "--map-weights", "0.5", "0.5", "--out", str(tmp_path / "out"), "--no-progress"]
    assert runner_main(spec, argv) == 0
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["config"]["method"] == "fusion" and document["config"]["map_weights"] == [0.5, 0.5]
    entry = document["categories"]["shape"]
    assert 0.0 <= entry["pixel_auroc"] <= 1.0 and entry["n_train"] == 12
    assert {"subspace", "patchcore", "fusion"} <= set(entry["timings"])


# --- data-sharded scoring on 8 fake devices ---------------------------------------------------------------

SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    import subspace_jax as sj
    from subspace_jax import sharding
    sys.path.insert(0, "tests")
    from test_fusion import features, tiny_config

    model = sj.fit_features(features(20, 0), tiny_config(normalization="level_zscore"))
    test = features(8, 1)
    ref_maps, ref_scores = model.score(test, progress=False)
    maps, scores = model.score(test, batch_size=8, mesh=sharding.make_mesh(8, 1), progress=False)
    mesh = sharding.make_mesh(4, 1)
    pure = jax.jit(lambda m, f: sharding.score_features(m, f, mesh))(sharding.shard_model(model, mesh), test)
    refused = []
    for call in (lambda: sharding.shard_model(model, sharding.make_mesh(4, 2)),
                 lambda: model.score(test, mesh=sharding.make_mesh(1, 2), progress=False)):
        try:
            call()
        except ValueError as error:
            refused.append(str(error))
    print("RESULT" + json.dumps(dict(
        scale=float(np.abs(ref_maps).max()), mesh_maps=float(np.abs(maps - ref_maps).max()),
        mesh_scores=float(np.abs(scores - ref_scores).max()),
        pure_maps=float(np.abs(np.asarray(pure[0]) - ref_maps).max()),
        shards=sorted({s.data.shape[0] for s in pure[0].addressable_shards}), refused=refused,
    )))
    """
)


def test_data_sharded_scoring_equals_one_device_and_a_bank_axis_is_refused():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])
    assert out["scale"] > 0.5
    for key in ("mesh_maps", "mesh_scores", "pure_maps"):
        assert out[key] <= 1e-5 * out["scale"], out
    assert out["shards"] == [2]  # the 8 images split over the data axis of 4
    assert len(out["refused"]) == 2
    assert all(m.startswith("mesh: FusionModel cannot split its bank") for m in out["refused"]), out


# --- real MTD, small ------------------------------------------------------------------------------------


@pytest.mark.mtd
def test_mtd_fusion_on_a_few_mtd_images_is_the_weighted_sum_of_its_members(mtd_root):
    config = configs.load("mtd_fusion", backbone="efficientnet_lite0", image_size=128)
    backbone = sj.backbones.load_cached(config.backbone)
    bench = Workbench(
        MTD(mtd_root), "mtd", backbone, image_size=128, limits={"train": 24, "test": 12}, progress=False
    )
    train, test = bench.features("train"), bench.features("test")
    model = sj.fit_features(train, config, backbone_name=backbone.name)
    maps, scores = model.score(test, progress=False)
    outputs = [
        fusion.member_outputs(m, s, test, normalization=config.normalization, score_rule=config.score_rule)
        for m, s in zip(model.members, model.stats)
    ]
    expected_maps = sum(w * np.asarray(o[0], np.float64) for w, o in zip(config.weights, outputs))
    expected_scores = sum(v * np.asarray(o[1], np.float64) for v, o in zip(config.image_weights, outputs))
    scale = float(np.abs(expected_maps).max())
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert [m.method for m in config.members] == ["subspace", "patchcore"]
