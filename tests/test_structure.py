"""One of each: the maps module, the staged scorer, the method registry, shared config fields, config
files, and fitted models as values. Small synthetic features and a stand-in backbone (no weights)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndimage

import subspace_jax as sj
from subspace_jax.configs import loading as config_files
from subspace_jax.engine import scorer as scoring
from subspace_jax.methods import registry as methods
from subspace_jax.methods.patchcore import PatchCoreConfig
from subspace_jax.methods.spade import SpadeConfig
from subspace_jax.methods.subspace import model as model_lib
from subspace_jax.ops import maps as maps_lib
from subspace_jax.runner import core, datasets

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
    scorer = methods.get("subspace").scorer
    model = sj.fit_features(train, base)
    scoring.score_in_batches(scorer, model, test, batch_size=3, timings={}, progress=False)
    maps_programs = maps_lib.maps_and_scores_jit._cache_size()
    sample_programs = model_lib._sample_jit._cache_size()
    for changes in ({"k": 3}, {"lam": 6}):
        other = sj.fit_features(train, dataclasses.replace(base, **changes))
        timings: dict[str, float] = {}
        scoring.score_in_batches(scorer, other, test, batch_size=3, timings=timings, progress=False)
        assert set(timings) == {"sampling", "reconstruction", "maps"}
    # The config-dependent stages compiled once per config (so the counter does count), the maps never again.
    assert model_lib._sample_jit._cache_size() == sample_programs + 2
    assert maps_lib.maps_and_scores_jit._cache_size() == maps_programs


# --- one scorer, one registry, shared fields ------------------------------------------------------


def test_registry_lists_the_three_methods_with_their_config_classes():
    assert methods.NAMES == ("subspace", "patchcore", "spade")
    assert methods.get("subspace").config_cls is sj.Config
    for name, method in methods.METHODS.items():
        assert method.name == name and method.config_cls.method == name
        assert methods.for_config(method.config_cls()) is method
        assert core.resolve_method(name) is method
    with pytest.raises(ValueError, match="subspace, patchcore, spade"):
        methods.get("padim")
    with pytest.raises(ValueError, match="got dict"):
        methods.for_config({})


def test_is_int_is_defined_once_in_the_repository():
    pattern = "def " + "_is_int("
    hits = [
        path
        for folder in ("subspace_jax", "experiments", "tests", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if pattern in path.read_text()
    ]
    assert [p.relative_to(REPO).as_posix() for p in hits] == ["subspace_jax/methods/base.py"]


@pytest.mark.parametrize("field", ["backbone", "image_size", "crop", "levels", "sigma"])
def test_shared_fields_are_checked_alike_by_every_config(field):
    bad = {"backbone": "vgg16", "image_size": 16, "crop": 300, "levels": (0,), "sigma": -1.0}[field]
    messages = []
    for method in methods.METHODS.values():
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
    fused_maps, fused_scores = model.score_features(test)
    timings: dict[str, float] = {}
    maps, scores = scoring.score_in_batches(
        method.scorer, model, test, batch_size=2, timings=timings, progress=False
    )
    assert set(timings) == set(method.scorer.stage_names) and min(timings.values()) > 0
    assert maps.dtype == np.float32 and scores.dtype == np.float32
    assert maps.shape == (5, 64, 64) and scores.shape == (5,)
    np.testing.assert_allclose(maps, np.asarray(fused_maps), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, np.asarray(fused_scores), rtol=1e-5, atol=1e-6)
    # From images: the backbone first, then the same stages.
    rng = np.random.default_rng(5)
    train_images = rng.integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    bound = method.fit(train_images, config, StandIn(), progress=False)
    timings = {}
    bound.score(rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8), timings=timings, progress=False)
    assert set(timings) == {"backbone", *method.scorer.stage_names}


def test_the_pure_scorer_checks_ranks_at_trace_time():
    model = sj.fit_features(features(6, 6), small_configs()["subspace"])
    bad = dict(features(2, 7), level2=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(AssertionError):
        model_lib.score_features(model, bad)
    with pytest.raises(AssertionError):
        model_lib.score_images(model, StandIn._apply, jnp.float32(1.0), jnp.zeros((2, 64, 64)))


# --- fitted models are values -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["subspace", "patchcore", "spade"])
def test_bind_returns_a_bound_copy_and_leaves_the_model_unchanged(name):
    method = methods.get(name)
    backbone = StandIn()
    train = np.random.default_rng(8).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    model = method.fit_features(backbone(train), small_configs()[name], weights_sha256=StandIn.weights_sha256)
    bound = model.bind(backbone)
    assert bound is not model and type(bound) is type(model)
    assert not hasattr(model, "_backbone")
    assert bound.bound_backbone().backbone is backbone
    for ours, theirs in zip(jax.tree_util.tree_leaves(bound), jax.tree_util.tree_leaves(model)):
        assert ours is theirs  # the same arrays: binding copies no bank
    with pytest.raises(ValueError, match="weights differ"):
        model.bind(type("Other", (StandIn,), {"weights_sha256": "1" * 64})())


# --- config files ---------------------------------------------------------------------------------


def test_config_files_load_and_take_overrides():
    paper = config_files.load(REPO / "experiments/configs/mtd_paper.py")
    assert paper == sj.Config(levels=(2, 3, 4), sampling_level="pooled")
    # The MTD runner's default is experiments/configs/mtd_default.py (issue 14); the paper's setting stays.
    default = config_files.load(REPO / "experiments/configs/mtd_default.py")
    assert core.default_config(datasets.MTD, methods.get("subspace")) == default
    assert core.default_config(datasets.MTD, methods.get("patchcore")) == PatchCoreConfig()
    learned = config_files.load(REPO / "experiments/configs/mtd_dictionary.py")
    assert learned == dataclasses.replace(default, dictionary=256)
    pixel = config_files.load(REPO / "experiments/configs/mtd_subspace_pixel.py", k=3)
    assert pixel == dataclasses.replace(paper, reconstruction="pixel", k=3)
    for path in sorted((REPO / "experiments/configs").glob("*.py")):
        config = config_files.load(path)
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
        config_files.load(path)
    assert str(path) in str(info.value)


def test_an_invalid_override_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="mtd_paper.py.*lamda"):
        config_files.load(REPO / "experiments/configs/mtd_paper.py", lamda=3)


def test_the_runner_takes_a_config_file_and_flags_override_it(tmp_path, capsys):
    variant = tmp_path / "variant.py"
    variant.write_text(
        "from subspace_jax.methods.spade import SpadeConfig\n\n"
        "def get_config():\n    return SpadeConfig(top_k_images=7, levels=(2, 3))\n"
    )
    argv = ["--config", str(variant), "--top-k-images", "4", "--image-size", "128"]
    method, defaults = core.method_and_defaults(datasets.MTD, argv)
    assert method.name == "spade" and defaults == SpadeConfig(top_k_images=7, levels=(2, 3))
    parser, names = core.build_parser(datasets.MTD, method, defaults)
    config = core.cli.config_from_namespace(defaults, parser.parse_args(argv), names)
    assert config == SpadeConfig(top_k_images=4, levels=(2, 3), image_size=128)
    with pytest.raises(SystemExit):
        core.main(datasets.MTD, ["--config", str(variant), "--method", "patchcore"])
    assert "holds a spade config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        core.main(datasets.MTD, ["--config", str(tmp_path / "absent.py")])
    assert f"{tmp_path / 'absent.py'}: config file not found" in capsys.readouterr().err


def test_experiments_import_the_installed_package_without_path_edits():
    scripts = sorted((REPO / "experiments").rglob("*.py"))
    assert scripts and not [p.name for p in scripts if "sys.path" in p.read_text()]
