"""The ``subspace-jax`` console command end to end (fit -> predict -> export -> evaluate), the
exported artifact in a process with only jax and numpy, the HTML report, and MTD."""

from __future__ import annotations

import base64
import csv
import html.parser
import importlib.metadata
import io
import json
import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subspace_jax import cli
from subspace_jax.configs import flags
from subspace_jax.data import MTD, synthetic
from subspace_jax.data.files import collect_images
from subspace_jax.data.images import read_image
from subspace_jax.eval import calibration
from subspace_jax.serving import checkpoint, export
from subspace_jax.serving.predict import output_names

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
SUBCOMMANDS = ("fit", "predict", "export", "evaluate")


def console_entry() -> str:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts["subspace-jax"]


def run_console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the console script's entry point (as pyproject declares it) in a fresh interpreter, quietly
    (``COMMAND --quiet ...``; ``--quiet COMMAND ...`` is tested on its own, below)."""
    module, function = console_entry().split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-c", code, args[0], "--quiet", *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_console_script_is_declared():
    assert console_entry() == "subspace_jax.cli:main"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: subspace-jax {command}")
    if command == "fit":  # every Config field is a flag
        assert "--sampling-level" in text and "--val-fraction" in text and "--config" in text


def test_errors_are_one_line_with_a_nonzero_exit(tmp_path, capsys):
    code = cli.main(["predict", str(tmp_path / "missing"), str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and err.startswith("subspace-jax predict: error:")
    assert "missing" in err


@pytest.mark.parametrize("first", ["--quiet", "--debug"])
def test_the_common_flags_may_come_before_the_command(tmp_path, first, capsys):
    train = tmp_path / "train"
    train.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(train / f"{i}.png")
    args = ["--out", str(tmp_path / "model"), "--backbone", "efficientnet_lite0", "--image-size", str(SIZE)]
    args += [
        "--levels",
        "2",
        "3",
        "--sampling",
        "none",
        "--k",
        "2",
        "--val-fraction",
        "0",
        "--batch-size",
        "4",
    ]
    assert cli.main([first, "fit", str(train), *args]) == 0, capsys.readouterr().err
    assert checkpoint.load(tmp_path / "model").n_train == 4


def test_collect_images_order_and_output_names(tmp_path):
    for name in ("b/2.png", "b/1.png", "a/z.jpg", "a/z.png", "top.png"):
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    found = collect_images(
        [str(tmp_path / "in" / "b"), str(tmp_path / "in"), str(tmp_path / "in/*.png")], "X"
    )
    relative = [p.relative_to(tmp_path / "in").as_posix() for p in found]
    assert relative == ["b/1.png", "b/2.png", "a/z.jpg", "a/z.png", "top.png"]  # folder first, no repeats
    assert output_names(found) == ["b/1.png", "b/2.png", "a/z.png", "a/z_3.png", "top.png"]
    with pytest.raises(ValueError, match="matches nothing"):
        collect_images([str(tmp_path / "nothing*.png")], "X")


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.placeholders: list[str] = []  # images without a source (filled by the page's script)
        self.cards = 0
        self.svg = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            if "src" in attrs:
                self.sources.append(attrs["src"])
            else:
                self.placeholders.append(attrs.get("alt", ""))
        if tag == "a":
            self.sources.append(attrs["href"])
        if tag == "div" and "card" in (attrs.get("class") or "").split():
            self.cards += 1
        if tag == "svg":
            self.svg += 1


def check_report(path: Path) -> _Links:
    """The report parses, every embedded image decodes and every linked file exists."""
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.svg == 1 and parser.sources
    assert parser.placeholders == ["enlarged picture"]  # the click-to-enlarge view, empty until a click
    for source in parser.sources:
        assert not source.startswith(("http:", "https:", "//")), source  # nothing from the network
        if source.startswith("data:image/jpeg;base64,"):
            Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
        else:
            assert (path.parent / source).is_file(), source
    return parser


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Synthetic data; fit and predict through the console script, export and evaluate via cli.main."""
    root = tmp_path_factory.mktemp("cli")
    synthetic.write_mvtec_tree(root / "data", ("shape",), n_train=20, n_test=8, image_size=SIZE)
    wide = read_image(root / "data/shape/test/good/000.png")
    (root / "extra").mkdir()
    Image.fromarray(wide).resize((96, 80)).save(root / "extra" / "wide.png")  # not the model's size
    steps = {
        "fit": (
            "fit", "data/shape/train/good", "--out", "model", "--backbone", "efficientnet_lite0",
            "--image-size", str(SIZE), "--lam", "8", "--k", "3",
            "--val-fraction", "0.25", "--split-seed", "1",
        ),
        "predict": (
            "predict", "model", "data/shape/test", "extra/wide.png", "--out", "pred", "--batch-size", "4",
        ),
    }  # fmt: skip
    results = {}
    for name, args in steps.items():
        results[name] = run_console(*args, cwd=root)
        assert results[name].returncode == 0, (name, results[name].stderr[-3000:])
    # export and evaluate run in this process (cli.main, the console script's function): it saves two
    # interpreter starts and lets the export test reuse this process's compiled scorer.
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli.main(["--quiet", "export", "model", "model.jaxexport"]) == 0
        evaluate = ["evaluate", "model", "--dataset", "folder", "--data-root", "data/shape", "--out", "eval"]
        assert cli.main(["--quiet", *evaluate, "--batch-size", "5"]) == 0
    finally:
        os.chdir(cwd)
    return root, results


def test_fit_predict_writes_csv_masks_overlays_and_report(workspace):
    root, _ = workspace
    meta = json.loads((root / "model" / checkpoint.METADATA_FILE).read_text())
    thresholds = calibration.Thresholds.from_dict(meta["thresholds"])
    assert meta["n_train"] == 15 and thresholds.n_images == 5
    with open(root / "pred" / "predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "score", "normalized_score", "anomalous"]
    expected = [
        f"data/shape/test/{kind}/{i:03d}.png"
        for kind, i in [("blob", 0), ("color_spot", 0)] + [("good", i) for i in range(4)]
        + [("missing", 0), ("scratch", 0)]
    ] + ["extra/wide.png"]  # fmt: skip
    assert [row[0] for row in rows[1:]] == expected
    names = output_names([root / p for p in expected])
    assert names[0] == "data/shape/test/blob/000.png" and names[-1] == "extra/wide.png"
    n_anomalous = 0
    for (path, score, normalized, anomalous), name in zip(rows[1:], names):
        score = float(score)
        assert anomalous == ("true" if score > thresholds.image else "false")
        assert float(normalized) == pytest.approx(min(1.0, score / (2 * thresholds.image)), abs=1e-6)
        original = Image.open(root / path).size
        mask = np.asarray(Image.open(root / "pred" / "masks" / name))
        assert mask.shape == original[::-1] and set(np.unique(mask)) <= {0, 255}
        if anomalous == "false":
            assert not mask.any()
        assert Image.open(root / "pred" / "overlays" / name).size == original
        n_anomalous += anomalous == "true"
    assert 0 < n_anomalous < len(expected)
    links = check_report(root / "pred" / "report.html")
    assert links.cards == len(expected)
    text = (root / "pred" / "report.html").read_text()
    assert f"threshold {thresholds.image:.4g}" in text


def test_exported_artifact_runs_with_jax_and_numpy_only(workspace, tmp_path):
    root, _ = workspace
    model = cli._load_model(str(root / "model"), None)  # scores with the cached backbone evaluate used
    _, test = synthetic.generate("shape", 20, 8, SIZE, 0)
    np.save(tmp_path / "images.npy", test.images)
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nimport jax\nimport numpy as np\n"
        "scorer = jax.export.deserialize(open(sys.argv[1], 'rb').read())\n"
        "images = np.load(sys.argv[2])\nout = {}\n"
        "for b in (3, 5):\n"
        "    maps, scores = scorer.call(images[:b])\n"
        "    out[f'maps{b}'], out[f'scores{b}'] = np.asarray(maps), np.asarray(scores)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('subspace_jax', 'flax', 'orbax'))\n"
        "assert not loaded, loaded\n"
        "np.savez(sys.argv[3], **out)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(script), str(root / "model.jaxexport"), str(tmp_path / "images.npy"),
         str(tmp_path / "o.npz")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "o.npz")
    # One compiled call of the live model; its maps are per image, so the first 3 are the batch of 3's.
    all_maps, all_scores = model.score(test.images[:5], batch_size=5, progress=False)
    for b in (3, 5):
        maps, scores = all_maps[:b], all_scores[:b]
        scale = float(np.abs(maps).max())
        # The same program, compiled with the bank and weights as constants: equal to float32 rounding.
        np.testing.assert_allclose(out[f"maps{b}"], maps, rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(out[f"scores{b}"], scores, rtol=1e-5, atol=1e-5 * scale)


# The packages the README names for the inspection machine; their dependencies come with them.
SNIPPET_PACKAGES = ("jax", "jaxlib", "numpy", "flatbuffers", "pillow")


def readme_inspection_snippet() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    after = readme.split("`pip install jax numpy flatbuffers pillow`", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def only_these_distributions(names: tuple[str, ...], target: Path) -> None:
    """``target`` holds links to the top-level files of ``names`` and of everything they require
    (extras aside), found through the installed distributions' metadata."""
    todo, seen = list(names), set()
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for requirement in dist.requires or ():
            if "extra ==" not in requirement:
                todo.append(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
        tops = {Path(str(f)).parts[0] for f in dist.files or ()}
        for top in tops - {"..", "bin", "__pycache__"}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (target / top).exists():
                (target / top).symlink_to(source)


def test_readme_inspection_snippet_runs_with_only_the_packages_it_names(tmp_path):
    synthetic.write_mvtec_tree(tmp_path / "demo_data", ("shape",), n_train=12, n_test=8, image_size=SIZE)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        fit = ["fit", "demo_data/shape/train/good", "--out", "demo_model", "--image-size", str(SIZE)]
        fit += ["--lam", "4", "--k", "2", "--val-fraction", "0.25", "--false-alarm-rate", "0.25"]
        assert cli.main(["--quiet", *fit]) == 0
        assert cli.main(["--quiet", "export", "demo_model", "demo_model.jaxexport"]) == 0
    finally:
        os.chdir(cwd)
    site = tmp_path / "site"
    site.mkdir()
    only_these_distributions(SNIPPET_PACKAGES, site)
    (tmp_path / "snippet.py").write_text(readme_inspection_snippet())
    # -I -S: no site-packages, no PYTHONPATH, no user site; only the linked packages are importable.
    code = (
        f"import sys; sys.path.append({str(site)!r}); import runpy; runpy.run_path('snippet.py'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('subspace_jax', 'flax', 'orbax')))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    verdict, loaded = done.stdout.strip().splitlines()[-2:]
    assert loaded == "[]"
    score, decision = verdict.split()
    model = checkpoint.load(tmp_path / "demo_model")
    image = tmp_path / "demo_data/shape/test/scratch/000.png"
    _, expected = model.score([image], progress=False)
    assert float(score) == pytest.approx(float(expected[0]), rel=1e-3)
    assert decision == ("anomalous" if float(score) > model.thresholds.image else "ok")


def test_export_fixed_batch_and_several_platforms(workspace):
    model = cli._load_model(str(workspace[0] / "model"), None)
    exported = export.export_model(model, batch_size=2, platforms=("cpu", "cuda", "tpu"))
    assert exported.platforms == ("cpu", "cuda", "tpu")
    assert exported.in_avals[0].shape == (2, SIZE, SIZE, 3) and str(exported.in_avals[0].dtype) == "uint8"
    assert [a.shape for a in exported.out_avals] == [(2, SIZE, SIZE), (2,)]
    with pytest.raises(ValueError, match="platforms"):
        export.export_model(model, platforms=("gpu",))


def test_evaluate_metrics_agree_with_the_predictions(workspace):
    root, _ = workspace
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    with open(root / "pred" / "predictions.csv", newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    good = [row for path, row in rows.items() if "/good/" in path]
    defective = [row for path, row in rows.items() if path.startswith("data/") and "/good/" not in path]
    assert metrics["n_test"] == len(good) + len(defective) == 8
    assert metrics["false_alarm_rate"] == pytest.approx(np.mean([r["anomalous"] == "true" for r in good]))
    assert metrics["recall"] == pytest.approx(np.mean([r["anomalous"] == "true" for r in defective]))
    assert 0.0 <= metrics["pixel_iou"] <= 1.0 and math.isfinite(metrics["pixel_auroc"])
    assert metrics["f1"] <= metrics["f1_max_oracle"] + 1e-12
    check_report(root / "eval" / "report.html")


@pytest.mark.mtd
@pytest.mark.filterwarnings("ignore:image scores. 3 nominal values:UserWarning")
def test_mtd_fit_then_predict_at_original_sizes(mtd_root, tmp_path):
    dataset = MTD(mtd_root)
    train = [str(s.image_path) for s in dataset.samples("train")[:12]]
    test = dataset.samples("test")
    inputs = [s.image_path for s in test if s.label == 0][:2] + [s.image_path for s in test if s.label == 1][
        :3
    ]
    code = cli.main(
        ["fit", "--quiet", *train, "--out", str(tmp_path / "m"), "--backbone", "efficientnet_lite0"]
        + ["--image-size", str(SIZE), "--levels", "2", "3", "4", "--sampling-level", "pooled"]
        + ["--lam", "6", "--k", "3", "--val-fraction", "0.25"]
    )
    assert code == 0
    predict = ["--quiet", "predict", str(tmp_path / "m"), *map(str, inputs), "--out", str(tmp_path / "p")]
    code = cli.main(predict + ["--batch-size", "3"])  # the calibration's batch: no second compilation
    assert code == 0
    with open(tmp_path / "p" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == [str(p) for p in inputs]
    for row, name in zip(rows, output_names(inputs)):
        width, height = Image.open(row["path"]).size
        assert np.asarray(Image.open(tmp_path / "p" / "masks" / name)).shape == (height, width)
    check_report(tmp_path / "p" / "report.html")


def test_config_file_then_flags(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "k": 3, "lam": 9}))
    (tmp_path / "c.py").write_text(
        "import subspace_jax as sj\n\n\ndef get_config():\n"
        "    return sj.Config(backbone='efficientnet_lite0', levels=(2, 3, 4), sampling_level='pooled')\n"
    )

    def fit_config(argv):
        # What ``subspace-jax fit`` does: the config names the method, the flags override its fields.
        method, base = cli.method_and_base(argv)
        parser, names = cli.build_parser(method, base)
        return flags.config_from_namespace(base, parser.parse_args(argv), names)

    config = fit_config(["fit", "x", "--out", "m", "--config", str(tmp_path / "c.json"), "--k", "4"])
    assert (config.backbone, config.k, config.lam) == ("efficientnet_lite0", 4, 9)
    config = fit_config(["fit", "x", "--out", "m", "--config", str(tmp_path / "c.py")])
    assert config.levels == (2, 3, 4) and config.sampling_level == "pooled" and config.k == 5
    # A packaged config by name, and a baseline's config file with its own flags.
    assert fit_config(["fit", "x", "--out", "m", "--config", "mtd_paper", "--lam", "7"]).lam == 7
    (tmp_path / "spade.py").write_text(
        "from subspace_jax.methods.spade import SpadeConfig\n\n\ndef get_config():\n"
        "    return SpadeConfig(backbone='efficientnet_lite0', top_k_images=7)\n"
    )
    config = fit_config(
        ["fit", "x", "--out", "m", "--config", str(tmp_path / "spade.py"), "--top-k-images", "3"]
    )
    assert config.method == "spade" and config.top_k_images == 3
    with pytest.raises(ValueError, match="holds a spade config"):
        cli.method_and_base(["fit", "x", "--config", str(tmp_path / "spade.py"), "--method", "patchcore"])
