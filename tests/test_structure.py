"""One of each: the maps module, the staged scorer, the method registry, shared config fields, config
files, and fitted models as values (small synthetic features and a stand-in backbone, no weights); and the
package's shape: one definition of each concept, short modules, an acyclic import graph within the layer
contracts, no private modules used outside the package."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grimp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndimage

import subspace_jax as sj
from subspace_jax import backbones, configs
from subspace_jax.configs import flags
from subspace_jax.data import registry as datasets
from subspace_jax.engine import scorer as scoring
from subspace_jax.methods import registry as methods
from subspace_jax.methods.patchcore import PatchCoreConfig
from subspace_jax.methods.spade import SpadeConfig
from subspace_jax.methods.subspace import scorer as subspace_scorer
from subspace_jax.ops import maps as maps_lib
from subspace_jax.runner import command as runner_main
from subspace_jax.runner import evaluation, main

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"level1": (16, 16, 3), "level2": (8, 8, 4), "level3": (4, 4, 6), "pooled": (6,)}


def features(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.random((n, *shape), np.float32) for key, shape in SHAPES.items()}


def small_configs() -> dict[str, object]:
    shared = dict(backbone="resnet18", image_size=64)
    return {
        "subspace": sj.Config(**shared, levels=(2, 3), sampling_level="pooled", lam=4, k=2, sigma=1.0),
        "patchcore": PatchCoreConfig(**shared, levels=(2, 3), coreset_ratio=0.5, sigma=1.0),
        "spade": SpadeConfig(**shared, levels=(1, 2), top_k_images=3, sigma=1.0),
    }


class StandIn:
    """The backbones contract (name, weights_sha256, pure(), call) with block means of the image."""

    name = "resnet18"
    weights_sha256 = "0" * 64

    @staticmethod
    def _apply(params, images):
        x = jnp.asarray(images, jnp.float32) / 255.0 * params
        b, h, w, c = x.shape

        def pool(s):
            return x.reshape(b, h // s, s, w // s, s, c).mean(axis=(2, 4))

        return {"level1": pool(4), "level2": pool(8), "level3": pool(16), "pooled": x.mean(axis=(1, 2))}

    def pure(self):
        return StandIn._apply, jnp.float32(1.0)

    def __call__(self, images):
        return StandIn._apply(jnp.float32(1.0), images)


# --- maps -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["sum", "mean", "product"])
def test_fuse_maps_equals_resize_then_scipy_gaussian_filter(fusion):
    rng = np.random.default_rng(0)
    levels = [rng.uniform(0.5, 2.0, size=(2, s, s)).astype(np.float32) for s in (16, 8, 4)]
    ours = np.asarray(maps_lib.fuse_maps_jit(levels, (40, 40), fusion=fusion, sigma=2.0))
    up = [np.asarray(jax.image.resize(m, (2, 40, 40), "bilinear"), np.float64) for m in levels]
    fused = {"sum": sum(up), "mean": sum(up) / 3, "product": up[0] * up[1] * up[2]}[fusion]
    reference = np.stack([ndimage.gaussian_filter(m, 2.0, mode="reflect", truncate=4.0) for m in fused])
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    # A dict is fused in key order, like the sequence; the image score is each map's maximum.
    as_dict = {f"level{i + 2}": m for i, m in enumerate(levels)}
    maps, scores = maps_lib.maps_and_scores_jit(as_dict, (40, 40), fusion=fusion, sigma=2.0)
    np.testing.assert_array_equal(np.asarray(maps), ours)
    np.testing.assert_array_equal(np.asarray(scores), ours.max(axis=(1, 2)))


def test_fuse_maps_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fusion"):
        maps_lib.fuse_maps([jnp.zeros((1, 4, 4))], (8, 8), fusion="max", sigma=1.0)
    with pytest.raises(ValueError, match="level_maps"):
        maps_lib.fuse_maps({}, (8, 8), fusion="sum", sigma=1.0)
    with pytest.raises(AssertionError):  # chex: a level map must be (B, h, w)
        maps_lib.fuse_maps([jnp.zeros((1, 4, 4, 2))], (8, 8), fusion="sum", sigma=1.0)


def test_the_map_stage_does_not_compile_again_for_another_k_or_lam():
    train, test = features(8, 1), features(3, 2)
    base = small_configs()["subspace"]
    model = sj.fit_features(train, base)
    scoring.score_in_batches(model, test, batch_size=3, timings={}, progress=False)
    maps_programs = maps_lib.maps_and_scores_jit._cache_size()
    sample_programs = subspace_scorer._sample_jit._cache_size()
    for changes in ({"k": 3}, {"lam": 6}):
        other = sj.fit_features(train, dataclasses.replace(base, **changes))
        timings: dict[str, float] = {}
        scoring.score_in_batches(other, test, batch_size=3, timings=timings, progress=False)
        assert set(timings) == {"input", "sampling", "reconstruction", "maps"}
    # The config-dependent stages compiled once per config (so the counter does count), the maps never again.
    assert subspace_scorer._sample_jit._cache_size() == sample_programs + 2
    assert maps_lib.maps_and_scores_jit._cache_size() == maps_programs


# --- one scorer, one registry, shared fields ------------------------------------------------------


def test_registry_lists_the_methods_with_their_config_classes():
    assert methods.names() == ("subspace", "patchcore", "spade", "fusion")
    assert sj.method_names() == methods.names() and sj.get_method("spade") is methods.get("spade")
    assert methods.get("subspace").config_cls is sj.Config and methods.get("subspace").model_cls is sj.Model
    for name in methods.names():
        method = methods.get(name)
        assert method.name == name and method.config_cls.method == name
        assert methods.for_config(method.config_cls()) is method
        assert evaluation.resolve_method(name) is method
        assert method.scorer is method.model_cls.scorer
    train = features(6, 9)
    for name, config in small_configs().items():
        model = methods.get(name).fit_features(train, config)
        assert methods.for_model(model) is methods.get(name)
    with pytest.raises(ValueError, match="subspace, patchcore, spade"):
        methods.get("padim")
    with pytest.raises(ValueError, match="got dict"):
        methods.for_config({})
    with pytest.raises(ValueError, match="got SubspaceConfig"):
        methods.for_model(sj.Config())


def test_is_int_is_defined_once_in_the_repository():
    pattern = re.compile(r"def _?is_int\(")
    hits = [
        path
        for folder in ("subspace_jax", "experiments", "tests", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if pattern.search(path.read_text()) and path != Path(__file__).resolve()
    ]
    assert [p.relative_to(REPO).as_posix() for p in hits] == ["subspace_jax/_checks.py"]


@pytest.mark.parametrize("field", ["backbone", "image_size", "crop", "levels", "sigma"])
def test_shared_fields_are_checked_alike_by_every_config(field):
    bad = {"backbone": "vgg16", "image_size": 16, "crop": 300, "levels": (0,), "sigma": -1.0}[field]
    messages = []
    for method in map(methods.get, methods.names()):
        if method.name == "fusion" and field == "levels":
            continue  # a fusion's levels are derived from its members', not a parameter
        with pytest.raises(ValueError, match=f"^{method.config_cls.__name__}.{field}: expected") as info:
            method.config_cls(**{field: bad})
        messages.append(str(info.value).split(": ", 1)[1])
    assert len(set(messages)) == 1, messages


@pytest.mark.parametrize("name", ["subspace", "patchcore", "spade"])
def test_staged_scoring_times_every_stage_and_equals_the_fused_scorer(name):
    method = methods.get(name)
    config = small_configs()[name]
    train = features(6, 3)
    model = method.fit_features(train, config)
    test = features(5, 4)
    fused_maps, fused_scores = sj.score_features(model, test)
    timings: dict[str, float] = {}
    maps, scores = scoring.score_in_batches(model, test, batch_size=2, timings=timings, progress=False)
    # Host features are moved to the device once, timed as "input", then every stage runs.
    assert set(timings) == {"input", *method.scorer.stage_names} and min(timings.values()) > 0
    assert maps.dtype == np.float32 and scores.dtype == np.float32
    assert maps.shape == (5, 64, 64) and scores.shape == (5,)
    np.testing.assert_allclose(maps, np.asarray(fused_maps), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, np.asarray(fused_scores), rtol=1e-5, atol=1e-6)
    # From images: the backbone first, then the same stages.
    rng = np.random.default_rng(5)
    train_images = rng.integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    fitted = sj.fit(train_images, config, StandIn(), progress=False)
    timings = {}
    fitted.score(rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8), timings=timings, progress=False)
    assert set(timings) == {"backbone", *method.scorer.stage_names}


def test_the_pure_scorer_checks_ranks_at_trace_time():
    model = sj.fit_features(features(6, 6), small_configs()["subspace"])
    bad = dict(features(2, 7), level2=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(AssertionError):
        sj.score_features(model, bad)
    with pytest.raises(AssertionError):
        sj.score_images(model, StandIn._apply, jnp.float32(1.0), jnp.zeros((2, 64, 64)))


# --- fitted models are values -------------------------------------------------------------------------------


class OtherStandIn(StandIn):
    """The stand-in with another identity: the packaged backbone's name and weights nobody has (each test
    gives it its own hash: the backbone cache lives as long as the process)."""

    name = "efficientnet_lite0"


@pytest.mark.parametrize("name", ["subspace", "patchcore", "spade"])
def test_a_fitted_model_carries_nothing_but_its_fields_and_the_backbone_travels_beside_it(name):
    method = methods.get(name)
    backbone = StandIn()
    train = np.random.default_rng(8).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    model = method.fit_features(backbone(train), small_configs()[name], weights_sha256=StandIn.weights_sha256)
    assert set(vars(model)) == {field.name for field in dataclasses.fields(model)}
    assert not hasattr(model, "_backbone")
    maps, scores = model.score(train[:2], backbone=backbone, progress=False)
    assert maps.shape == (2, 64, 64) and scores.shape == (2,)
    assert set(vars(model)) == {field.name for field in dataclasses.fields(model)}  # scoring attached nothing
    with pytest.raises(ValueError, match="weights differ"):
        model.score(
            train[:2], backbone=type("Other", (StandIn,), {"weights_sha256": "1" * 64})(), progress=False
        )
    # Without backbone=, the backbone cache supplies the one of the model's identity once it knows it.
    unknown = type(
        "Unknown",
        (OtherStandIn,),
        {"weights_sha256": {"subspace": "7", "patchcore": "6"}.get(name, "5") * 64},
    )
    config = dataclasses.replace(small_configs()[name], backbone=OtherStandIn.name)
    other = method.fit_features(unknown()(train), config, weights_sha256=unknown.weights_sha256)
    with pytest.raises(ValueError, match="not the default ones"):
        other.score(train[:2], progress=False)
    backbones.remember(unknown())
    remembered_maps, _ = other.score(train[:2], progress=False)
    passed_maps, _ = other.score(train[:2], backbone=unknown(), progress=False)
    np.testing.assert_array_equal(remembered_maps, passed_maps)
    assert set(vars(other)) == {field.name for field in dataclasses.fields(other)}


def test_fit_remembers_its_backbone_so_the_model_scores_without_it():
    config = dataclasses.replace(small_configs()["spade"], backbone=OtherStandIn.name)
    identity = type("Fresh", (OtherStandIn,), {"weights_sha256": "4" * 64})
    train = np.random.default_rng(9).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    model = sj.fit(train, config, identity(), progress=False)
    assert (model.backbone_name, model.weights_sha256) == (OtherStandIn.name, "4" * 64)
    assert backbones.for_weights(OtherStandIn.name, "4" * 64).weights_sha256 == "4" * 64
    maps, _ = model.score(train[:2], progress=False)
    np.testing.assert_array_equal(maps, model.score(train[:2], backbone=identity(), progress=False)[0])


# --- config files ---------------------------------------------------------------------------------


def test_config_files_load_and_take_overrides():
    paper = configs.load(configs.CONFIG_DIR / "mtd_paper.py")
    assert paper == sj.Config(levels=(2, 3, 4), sampling_level="pooled") == configs.load("mtd_paper")
    assert configs.CONFIG_DIR == REPO / "subspace_jax" / "configs"
    # The MTD runner's default is the packaged mtd_default (issue 14); the paper's setting stays.
    default = configs.load("mtd_default")
    assert evaluation.default_config("subspace", "mtd") == default
    assert evaluation.default_config("patchcore", "mtd") == PatchCoreConfig()
    learned = configs.load(configs.CONFIG_DIR / "mtd_dictionary.py")
    assert learned == dataclasses.replace(default, dictionary=256)
    pixel = configs.load("mtd_subspace_pixel", k=3)
    assert pixel == dataclasses.replace(paper, reconstruction="pixel", k=3)
    assert set(configs.names()) >= {"mtd_default", "mtd_paper", "mtd_dictionary", "mtd_subspace_pixel"}
    for name in configs.names():
        config = configs.load(name)
        assert configs.load(configs.CONFIG_DIR / f"{name}.py") == config
        assert methods.for_config(config).config_cls is type(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "config file not found"),
        ("def get_config(:\n", "failed to run: SyntaxError"),
        ("CONFIG = 1\n", "defines no get_config"),
        ("def get_config():\n    return {'k': 3}\n", "returned no method config"),
        ("import subspace_jax as sj\ndef get_config():\n    return sj.Config(k=0)\n", "Config.k"),
    ],
)
def test_a_bad_config_file_is_named_in_the_error(tmp_path, text, message):
    path = tmp_path / "variant.py"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        configs.load(path)
    assert str(path) in str(info.value)


def test_one_line_overrides_take_the_type_of_each_config_field():
    base = configs.load("mtd_paper", backbone="efficientnet_lite0")
    text = (
        "k=10,lam=20,levels=2+3,tol=0.25,normalize_selection=true,sampling_level=4,projection=pca,"
        "projection_channels=8+32,backbone=efficientnet_lite0:imagenet,crop=224"
    )
    got = configs.parse_overrides(text, base)
    assert got == {
        "k": 10,
        "lam": 20,
        "levels": (2, 3),
        "tol": 0.25,
        "normalize_selection": True,
        "sampling_level": 4,
        "projection": "pca",
        "projection_channels": (8, 32),
        "backbone": "efficientnet_lite0:imagenet",
        "crop": 224,
    }
    assert [type(got[name]) for name in ("k", "tol", "normalize_selection")] == [int, float, bool]
    config = dataclasses.replace(base, **got)  # a valid config: the values have the fields' types
    assert config.projected_channels == {"level2": 8, "level3": 32} and config.output_size == 224
    assert config.backbone == "efficientnet_lite0:imagenet"
    assert configs.parse_overrides("", base) == {}
    assert configs.parse_overrides("sampling_level=pooled,crop=none", base) == {
        "sampling_level": "pooled",
        "crop": None,
    }
    for bad in ("kk=3", "k", "normalize_selection=yes"):
        with pytest.raises(ValueError, match=bad):
            configs.parse_overrides(bad, base)


def test_an_invalid_override_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="mtd_paper.py.*lamda"):
        configs.load(configs.CONFIG_DIR / "mtd_paper.py", lamda=3)
    with pytest.raises(ValueError, match="mtd_paper.*lamda"):
        configs.load("mtd_paper", lamda=3)


def test_the_runner_takes_a_config_file_and_flags_override_it(tmp_path, capsys):
    variant = tmp_path / "variant.py"
    variant.write_text(
        "from subspace_jax.methods.spade import SpadeConfig\n\n"
        "def get_config():\n    return SpadeConfig(top_k_images=7, levels=(2, 3))\n"
    )
    argv = ["--config", str(variant), "--top-k-images", "4", "--image-size", "128"]
    mtd = datasets.get("mtd")
    method, defaults = runner_main.method_and_defaults(mtd, argv)
    assert method.name == "spade" and defaults == SpadeConfig(top_k_images=7, levels=(2, 3))
    parser, names = runner_main.build_parser(mtd, method, defaults)
    config = flags.config_from_namespace(defaults, parser.parse_args(argv), names)
    assert config == SpadeConfig(top_k_images=4, levels=(2, 3), image_size=128)
    with pytest.raises(SystemExit):
        main("mtd", ["--config", str(variant), "--method", "patchcore"])
    assert "holds a spade config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main("mtd", ["--config", str(tmp_path / "absent.py")])
    assert f"{tmp_path / 'absent.py'}: config file not found" in capsys.readouterr().err


def test_experiments_import_the_installed_package_without_path_edits():
    scripts = sorted((REPO / "experiments").rglob("*.py"))
    assert scripts and not [p.name for p in scripts if "sys.path" in p.read_text()]


# --- the package's shape: one of each, short modules, layers without cycles ------------------------------

PACKAGE = REPO / "subspace_jax"


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize(
    "definition",
    [
        "def kcenter(",
        "def random_projection(",
        "def aggregate(",
        "def extract_features(",
        "def image_scores(",
    ],
)
def test_each_concept_is_defined_once_in_the_package(definition):
    pattern = re.compile(r"^\s*" + re.escape(definition), re.MULTILINE)
    hits = [path.relative_to(REPO).as_posix() for path in package_files() if pattern.search(path.read_text())]
    assert len(hits) == 1, (definition, hits)


def test_there_is_one_method_registry():
    pattern = re.compile(r"^\s*def register\(", re.MULTILINE)
    hits = [path.relative_to(REPO).as_posix() for path in package_files() if pattern.search(path.read_text())]
    assert hits == ["subspace_jax/methods/registry.py"]


def test_modules_and_scripts_stay_short():
    long_modules = {
        path.relative_to(REPO).as_posix(): n
        for path in package_files()
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert not long_modules, f"modules over 600 lines: {long_modules}"
    long_scripts = {
        path.relative_to(REPO).as_posix(): n
        for path in sorted((REPO / "experiments").rglob("*"))
        if path.is_file()
        and "__pycache__" not in path.parts
        and (n := len(path.read_text().splitlines())) > 250
    }
    assert not long_scripts, f"experiment files over 250 lines: {long_scripts}"


def strongly_connected_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the import graph's depth would not fit Python's recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for child in edges:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def test_strongly_connected_components_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set()}
    assert sorted(map(sorted, strongly_connected_components(graph))) == [["a", "b", "c"], ["d"], ["e"]]


def test_the_package_import_graph_has_no_cycle():
    imports = grimp.build_graph("subspace_jax")  # counts imports inside functions too
    graph = {module: set(imports.find_modules_directly_imported_by(module)) for module in imports.modules}
    assert len(graph) > 50 and "subspace_jax.methods.subspace.pursuit" in graph
    cycles = [sorted(component) for component in strongly_connected_components(graph) if len(component) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_layer_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's package, whatever is installed
    proc = subprocess.run([str(lint_imports)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def imported_modules(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, module, imported name or "") of every absolute import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def private_imports(source: str) -> list[str]:
    """The ``subspace_jax`` private modules ``source`` imports: a path component starting with "_", or a
    private name that is a module (``from subspace_jax import _io``)."""
    bad = []
    for line, module, name in imported_modules(ast.parse(source)):
        parts = module.split(".")
        if parts[0] != "subspace_jax":
            continue
        if any(part.startswith("_") for part in parts[1:]):
            bad.append(f"line {line}: {module}")
        elif name.startswith("_") and importlib.util.find_spec(f"{module}.{name}") is not None:
            bad.append(f"line {line}: from {module} import {name}")
    return bad


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        # IPython magics and shell escapes are not Python.
        lines += [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def test_private_imports_are_recognised():
    assert private_imports("import subspace_jax._io as io\nfrom subspace_jax import _checks") == [
        "line 1: subspace_jax._io",
        "line 2: from subspace_jax import _checks",
    ]
    assert private_imports("from subspace_jax.data import _x\nfrom subspace_jax import __version__") == []
    assert private_imports("import subspace_jax as sj\nfrom subspace_jax.ops import omp") == []


def test_scripts_notebooks_and_benchmarks_use_no_private_module():
    offenders = {}
    for folder, pattern in (("experiments", "*.py"), ("benchmarks", "*.py"), ("notebooks", "*.ipynb")):
        for path in sorted((REPO / folder).rglob(pattern)):
            source = notebook_code(path) if path.suffix == ".ipynb" else path.read_text()
            bad = private_imports(source)
            if bad:
                offenders[path.relative_to(REPO).as_posix()] = bad
    assert not offenders, offenders


def test_the_package_imports_its_own_modules_at_module_level_only():
    local = []
    for path in package_files():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            for node in ast.walk(function):
                relative = isinstance(node, ast.ImportFrom) and node.level > 0
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if relative or any(name.split(".")[0] == "subspace_jax" for name in names):
                    local.append(f"{path.relative_to(REPO).as_posix()}:{node.lineno}")
    assert not local, f"function-local imports of the package: {sorted(set(local))}"
