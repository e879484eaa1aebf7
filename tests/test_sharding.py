"""Scoring on many devices (``subspace_jax.sharding``), on 8 fake CPU devices in a subprocess.

One subprocess (the device count is fixed before JAX starts) scores tiny models on meshes of 1 to 8
devices, data- and bank-sharded, and compiles the 4-way bank-sharded scorer to read its per-device
memory and collectives; the tests below check what it reports. The reference is the one-device
scorer, itself checked against sklearn in ``test_model.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from subspace_jax import sharding
from tests.data_trees import write_mvtec_category

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    import subspace_jax as sj
    from subspace_jax import sharding
    from subspace_jax.methods.patchcore import PatchCoreConfig
    from subspace_jax.methods.spade import SpadeConfig
    from subspace_jax.ops.execution import Execution

    rng = np.random.default_rng(0)

    def feats(n, shapes):
        return {k: np.abs(rng.standard_normal((n,) + s)).astype(np.float32) for k, s in shapes.items()}

    small = {"level2": (4, 4, 8), "level3": (2, 2, 16), "pooled": (32,)}
    train, test = feats(10, small), feats(8, small)  # N = 10: padded to 12 on 4 bank shards, 16 on 8
    out = {"cases": [], "rows": {}}
    # Every case on the both-sharded mesh; image and pixel mode with subspace sampling also sharded
    # on one axis at a time, and image mode on 1, 2, 4 and 8 devices.
    cases = [("image", "subspace"), ("image", "random"), ("image", "none"), ("pixel", "subspace")]
    for recon, sampling in cases:
        cfg = sj.Config(backbone="efficientnet_lite0", image_size=32, levels=(2, 3), sampling_level="pooled",
                        sampling=sampling, lam=4, k=2, pixel_k=2, reconstruction=recon, sigma=1.0)
        model = sj.fit_features(train, cfg)
        ref_maps, ref_scores = jax.jit(sj.score_features)(model, test)
        meshes = [(2, 4)]
        if sampling == "subspace":
            meshes = [(2, 1), (1, 4), (2, 4)]
        if recon == "image" and sampling == "subspace":
            meshes = [(1, 1), (4, 1), (8, 1), (1, 2), (1, 8), (4, 2)] + meshes
        for data, bank in meshes:
            mesh = sharding.make_mesh(data, bank)
            sharded = sharding.shard_model(model, mesh)
            maps, scores = jax.jit(lambda m, f: sharding.score_features(m, f, mesh))(sharded, test)
            out["cases"].append(dict(
                reconstruction=recon, sampling=sampling, data=data, bank=bank,
                max_abs=float(np.max(np.abs(np.asarray(maps) - np.asarray(ref_maps)))),
                max_ref=float(np.max(np.abs(np.asarray(ref_maps)))),
                scores_max_abs=float(np.max(np.abs(np.asarray(scores) - np.asarray(ref_scores)))),
                map_shards=sorted({s.data.shape[0] for s in maps.addressable_shards}),
            ))
            if recon == "image" and sampling == "subspace":
                out["rows"][f"{data},{bank}"] = sorted(
                    {s.data.shape[0] for s in sharded.banks["level2"].addressable_shards}
                    | {s.data.shape[0] for s in sharded.sampling_bank.addressable_shards}
                )

    # Memory on 4 devices, bank sharded 4 ways: a bank large next to everything else.
    big = {"level2": (8, 8, 16), "level3": (4, 4, 32), "pooled": (64,)}
    train, test = feats(16, big), feats(4, big)
    out["memory"] = {}
    for sampling in ("subspace", "none"):  # gathered candidate rows / whole-bank masked product
        cfg = sj.Config(backbone="efficientnet_lite0", image_size=32, levels=(2, 3), sampling_level="pooled",
                        sampling=sampling, lam=3, k=2, sigma=1.0)
        model = sj.fit_features(train, cfg)
        one = jax.jit(sj.score_features).lower(model, test).compile().memory_analysis()
        mesh = sharding.make_mesh(1, 4)
        sharded = sharding.shard_model(model, mesh)
        fn = jax.jit(lambda m, f: sharding.score_features(m, f, mesh, execution=Execution(1)))
        compiled = fn.lower(sharded, test).compile()
        mem = compiled.memory_analysis()
        banks = list(model.banks.values()) + [b for b in [model.sampling_bank] if b is not None]
        grams = list(model.grams.values()) + [g for g in [model.sampling_gram] if g is not None]
        hlo = compiled.as_text()
        gathers = []
        for line in hlo.splitlines():
            if "all-gather(" in line or "all-gather-start(" in line:
                shape = re.search(r"= \\(?f32\\[([0-9,]*)\\]", line)
                if shape:
                    gathers.append(4 * int(np.prod([int(v) for v in shape.group(1).split(",") if v])))
        out["memory"][sampling] = dict(
            bank_bytes=int(sum(b.nbytes for b in banks)),
            gram_bytes=int(sum(g.nbytes for g in grams)),
            feature_bytes=int(sum(v.nbytes for v in test.values())),
            one_device_argument_bytes=int(one.argument_size_in_bytes),
            argument_bytes=int(mem.argument_size_in_bytes),
            temp_bytes=int(mem.temp_size_in_bytes),
            output_bytes=int(mem.output_size_in_bytes),
            all_gather_bytes=gathers,
            all_reduce=hlo.count("all-reduce("),
        )
    # Transient memory does not grow with the bank: the same program on a 4x larger bank.
    model = sj.fit_features(feats(64, big), sj.Config.from_dict({**cfg.to_dict(), "sampling": "subspace"}))
    sharded = sharding.shard_model(model, mesh)
    compiled = fn.lower(sharded, test).compile()
    out["memory"]["subspace"]["temp_bytes_4x_bank"] = int(compiled.memory_analysis().temp_size_in_bytes)

    # The baselines on a mesh: data-parallel scoring equals one device; their banks are not split.
    small = {"level1": (8, 8, 4), "level2": (4, 4, 8), "level3": (2, 2, 16), "pooled": (32,)}
    train, test = feats(6, small), feats(8, small)
    out["baselines"] = {}
    shared = dict(backbone="efficientnet_lite0", image_size=32, sigma=1.0)
    for config in (PatchCoreConfig(**shared, coreset_ratio=0.5), SpadeConfig(**shared, top_k_images=3)):
        model = sj.fit_features(train, config)
        ref_maps, ref_scores = model.score(test, progress=False)
        maps, scores = model.score(test, batch_size=8, mesh=sharding.make_mesh(8, 1), progress=False)
        refused = []
        for call in (lambda: sharding.shard_model(model, sharding.make_mesh(4, 2)),
                     lambda: model.score(test, mesh=sharding.make_mesh(1, 2), progress=False)):
            try:
                call()
            except ValueError as error:
                refused.append(str(error))
        out["baselines"][config.method] = dict(
            max_abs=float(np.max(np.abs(maps - ref_maps))), max_ref=float(np.max(np.abs(ref_maps))),
            scores_max_abs=float(np.max(np.abs(scores - ref_scores))), refused=refused,
        )
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_sharded_maps_equal_one_device(report):
    cases = report["cases"]
    assert {(c["reconstruction"], c["sampling"]) for c in cases} == {
        ("image", "subspace"),
        ("image", "random"),
        ("image", "none"),
        ("pixel", "subspace"),
    }
    for case in cases:
        assert case["max_ref"] > 1.0  # nonzero maps, so the comparison means something
        assert case["max_abs"] <= 1e-5 * case["max_ref"], case
        assert case["scores_max_abs"] <= 1e-5 * case["max_ref"], case
        assert case["map_shards"] == [8 // case["data"]], case  # outputs stay split over "data"


def test_maps_identical_across_1_2_4_8_devices(report):
    meshes = {
        (c["data"], c["bank"])
        for c in report["cases"]
        if (c["reconstruction"], c["sampling"]) == ("image", "subspace")
    }
    assert {d * b for d, b in meshes} == {1, 2, 4, 8}
    assert {(1, 1), (8, 1), (1, 8), (4, 2), (2, 4)} <= meshes


def test_each_device_holds_n_over_bank_rows(report):
    # N = 10 rows: padded to a multiple of the bank axis, then split evenly.
    expected = {1: 10, 2: 5, 4: 3, 8: 2}
    for mesh, rows in report["rows"].items():
        bank = int(mesh.split(",")[1])
        assert rows == [expected[bank]], (mesh, rows)


@pytest.mark.parametrize("sampling", ["subspace", "none"])
def test_bank_sharded_four_ways_holds_a_quarter_per_device(report, sampling):
    mem = report["memory"][sampling]
    bank = mem["bank_bytes"]
    replicated = mem["gram_bytes"] + mem["feature_bytes"]
    # The one-device program takes the whole bank as arguments; the sharded one a quarter of it.
    assert mem["one_device_argument_bytes"] >= bank
    assert mem["argument_bytes"] <= bank / 4 + replicated, mem
    assert mem["argument_bytes"] - replicated <= 0.30 * bank, mem
    # No collective gathers bank rows: the only all-gathers are of (B, N) correlations.
    row_bytes = bank / 16
    assert all(size < row_bytes for size in mem["all_gather_bytes"]), mem
    assert mem["all_reduce"] >= 1  # the partial correlations / reconstructions are summed
    if sampling == "subspace":
        # One image's candidate rows at a time: transient memory does not depend on the bank size.
        assert mem["temp_bytes_4x_bank"] == mem["temp_bytes"], mem


@pytest.mark.parametrize("method", ["patchcore", "spade"])
def test_baselines_score_data_parallel_and_refuse_to_split_their_bank(report, method):
    case = report["baselines"][method]
    assert case["max_ref"] > 0.1
    assert case["max_abs"] <= 1e-5 * case["max_ref"] and case["scores_max_abs"] <= 1e-5 * case["max_ref"], (
        case
    )
    assert len(case["refused"]) == 2, case
    model_class = {"patchcore": "PatchCoreModel", "spade": "SpadeModel"}[method]
    for message in case["refused"]:
        assert message.startswith(f"mesh: {model_class} cannot split its bank"), message


def test_process_shares_split_consecutively_and_gather_back():
    # 5 images over 2 processes: 3 + 2, the short share padded by repeating its last index.
    assert sharding.process_shares(5, 2, 0) == ([3, 2], [0, 1, 2])
    assert sharding.process_shares(5, 2, 1) == ([3, 2], [3, 4, 4])
    assert sharding.process_shares(7, 3, 2) == ([3, 3, 1], [6, 6, 6])
    assert sharding.process_shares(2, 3, 2) == ([1, 1, 0], [1])  # more processes than images
    assert sharding.process_shares(4) == ([4], [0, 1, 2, 3])  # this process alone
    with pytest.raises(ValueError, match="n: expected an int"):
        sharding.process_shares(0, 2, 0)
    local = np.arange(12).reshape(4, 3)
    np.testing.assert_array_equal(sharding.gather_shares(local, [3]), local[:3])


@pytest.mark.parametrize("text", ["host0:12345", "10.0.0.1:1", "[::1]:65535", "node-7.cluster:8476"])
def test_coordinator_addresses_are_checked(text):
    assert sharding.check_coordinator(text) == text


@pytest.mark.parametrize("text", ["host0", "host0:0", "host0:65536", ":80", "a b:1", 12345])
def test_bad_coordinator_addresses_name_the_flag(text):
    with pytest.raises(ValueError, match="--coordinator: expected HOST:PORT"):
        sharding.check_coordinator(text)


def test_make_mesh_and_parse_mesh_errors():
    with pytest.raises(ValueError, match="devices requested"):
        sharding.make_mesh(64, 64)
    with pytest.raises(ValueError, match="bank"):
        sharding.make_mesh(1, 0)
    assert sharding.parse_mesh("4,2") == (4, 2)
    assert sharding.parse_mesh("3") == (3, 1)
    with pytest.raises(ValueError, match="--mesh"):
        sharding.parse_mesh("4x2")
    mesh = sharding.make_mesh(1)
    assert mesh.axis_names == ("data", "bank") and np.asarray(mesh.devices).shape == (1, 1)


def test_two_process_mvtec_run_writes_the_same_metrics(tmp_path):
    """experiments/mvtec.py as one process, and as two jax.distributed processes (gloo, 2 fake devices
    each, one 4-device data mesh), on a tiny MVTec-layout tree: the same results.json metrics."""
    write_mvtec_category(tmp_path / "tree", "bottle")
    args = [sys.executable, str(ROOT / "experiments/mvtec.py"), "--data-root", str(tmp_path / "tree")]
    args += ["--categories", "bottle", "--backbone", "efficientnet_lite0", "--image-size", "64"]
    args += ["--lam", "2", "--k", "1", "--batch-size", "4", "--sigma", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    multi = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    dist = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--mesh", "4,1"]
    workers = [
        subprocess.Popen(
            args + ["--out", str(tmp_path / "two")] + dist + ["--process-id", str(i)],
            env=multi,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    one = subprocess.run(args + ["--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert one.returncode == 0, one.stderr[-3000:]
    assert [w.returncode for w in workers] == [0, 0], [log[-3000:] for log in logs]
    a = json.loads((tmp_path / "one/results.json").read_text())["categories"]["bottle"]
    b = json.loads((tmp_path / "two/results.json").read_text())["categories"]["bottle"]
    for key in ("pixel_auroc", "pro", "image_auroc", "pixel_ap", "n_train", "n_test"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert a["n_test"] == 5  # 5 test images split 3 + 3 (one repeated) over the two processes
    # Process 1 wrote nothing: only process 0's results exist (one folder, written once).
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["results.json", "results.md"]
