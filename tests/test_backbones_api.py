"""Backbone API: shapes and strides, preprocessing, pure(), jit caching, conversion checks, Lite0 on a cat."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from subspace_jax import backbones
from subspace_jax.backbones import REGISTRY, WeightsMismatchError, load_state_dict, preprocess
from subspace_jax.backbones.convert import expected_torch_shapes
from subspace_jax.backbones.registry import get_spec
from subspace_jax.engine.features import check_backbone
from subspace_jax.runner.feature_cache import FeatureKey

CAT_CLASSES = slice(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return backbones.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def resnet18_random():
    return backbones.load("resnet18", weights="random", seed=3)


def test_lite0_recognises_chelsea_the_cat(lite0):
    image = np.asarray(Image.fromarray(skdata.chelsea()).resize((224, 224), Image.BILINEAR))
    probabilities = np.asarray(jax.nn.softmax(lite0.classify(image[None])))[0]
    assert probabilities[CAT_CLASSES].sum() > 0.5


def test_lite0_metadata(lite0):
    assert lite0.name == "efficientnet_lite0"
    # sha256 of the packaged file; torchvision-style names carry its prefix
    assert lite0.weights_sha256.startswith("57934424") and len(lite0.weights_sha256) == 64
    assert lite0.level_channels == REGISTRY["efficientnet_lite0"].level_channels


@pytest.mark.parametrize("size", [256, 250])
def test_levels_have_strides_4_to_32_and_registry_channels(lite0, resnet18_random, size):
    images = np.zeros((2, size, size, 3), np.uint8)
    for backbone in (lite0, resnet18_random):
        features = backbone(images)
        assert set(features) == {"level1", "level2", "level3", "level4", "pooled"}
        for level, stride in zip(("level1", "level2", "level3", "level4"), (4, 8, 16, 32)):
            side = -(-size // stride)
            assert features[level].shape == (2, side, side, backbone.level_channels[level]), (
                backbone.name,
                level,
            )
            assert features[level].dtype == np.float32
        assert features["pooled"].shape == (2, backbone.level_channels["pooled"])
        np.testing.assert_allclose(
            features["pooled"], features["level4"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
        )


def test_uint8_and_float_images_agree(resnet18_random):
    images = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    as_uint8 = resnet18_random(images)
    as_float = resnet18_random(images.astype(np.float32))
    for key in as_uint8:  # two compiled programs: equal up to float32 reassociation
        scale = np.max(np.abs(as_uint8[key]))
        np.testing.assert_allclose(as_uint8[key], as_float[key], rtol=0, atol=1e-5 * scale, err_msg=key)


def test_preprocessing_matches_imagenet_and_tf_lite_conventions():
    image = np.array([[[[0, 128, 255]]]], np.uint8)
    resnet = np.asarray(preprocess(image, get_spec("resnet50")))[0, 0, 0]
    expected = (np.array([0, 128, 255]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(resnet, expected, rtol=1e-6)
    lite = np.asarray(preprocess(image, get_spec("efficientnet_lite0")))[0, 0, 0]
    np.testing.assert_allclose(lite, (np.array([0, 128, 255]) - 127.0) / 128.0, rtol=1e-6, atol=1e-6)


def test_pure_is_jittable_and_equals_call(resnet18_random):
    images = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    apply_fn, params = resnet18_random.pure()

    @jax.jit
    def users_pipeline(p, x):
        return apply_fn(p, x)["level2"].sum(axis=-1)

    np.testing.assert_allclose(
        users_pipeline(params, images), resnet18_random(images)["level2"].sum(axis=-1), rtol=1e-5, atol=1e-4
    )


def test_call_compiles_once_per_shape(resnet18_random):
    images = np.zeros((1, 40, 40, 3), np.uint8)
    resnet18_random(images)
    before = resnet18_random._features._cache_size()
    for _ in range(3):
        resnet18_random(images + 1)
    assert resnet18_random._features._cache_size() == before
    resnet18_random(np.zeros((1, 48, 48, 3), np.uint8))
    assert resnet18_random._features._cache_size() == before + 1


def test_random_init_is_seeded():
    a = backbones.load("resnet18", weights="random", seed=5)
    b = backbones.load("resnet18", weights="random", seed=5)
    c = backbones.load("resnet18", weights="random", seed=6)
    images = np.full((1, 32, 32, 3), 100, np.uint8)
    np.testing.assert_array_equal(a(images)["pooled"], b(images)["pooled"])
    assert not np.allclose(a(images)["pooled"], c(images)["pooled"])
    assert a.weights_sha256 == "random-seed5"


@pytest.mark.parametrize(
    "shape, dtype", [((32, 32, 3), np.uint8), ((1, 32, 32, 4), np.uint8), ((1, 32, 32, 3), np.int64)]
)
def test_bad_images_are_rejected(resnet18_random, shape, dtype):
    with pytest.raises(ValueError, match="images"):
        resnet18_random(np.zeros(shape, dtype))


def test_unknown_name():
    with pytest.raises(ValueError, match="resnet18"):
        backbones.load("vgg16")


def test_bn_folding_is_exact_algebra():
    """The folded forward pass equals the unfolded one on weights with non-trivial BatchNorm."""
    model, _ = backbones.build_model("resnet18", "random", seed=0)
    rng = np.random.default_rng(0)
    shapes = expected_torch_shapes(model)
    state = {key: rng.normal(0.0, 0.1, shape).astype(np.float32) for key, shape in shapes.items()}
    for key in state:
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shapes[key]).astype(np.float32)
        elif key.endswith(".weight") and len(shapes[key]) == 1:
            state[key] = rng.uniform(0.5, 1.5, shapes[key]).astype(np.float32)
    load_state_dict(model, state)
    pixels = rng.integers(0, 256, (1, 64, 64, 3)).astype(np.uint8)
    unfolded = np.asarray(model(preprocess(pixels, get_spec("resnet18")))["level4"])
    folded = np.asarray(backbones.Backbone(get_spec("resnet18"), model, "test")(pixels)["level4"])
    assert model.conv1.folded
    assert np.max(np.abs(folded - unfolded)) / np.max(np.abs(unfolded)) < 1e-5


def _valid_state(name: str) -> tuple[object, dict[str, np.ndarray]]:
    model, _ = backbones.build_model(name, "random")
    state = {key: np.zeros(shape, np.float32) for key, shape in expected_torch_shapes(model).items()}
    return model, state


def test_conversion_reports_every_mismatch_at_once():
    model, state = _valid_state("resnet18")
    del state["layer1.0.conv1.weight"]
    state["layer2.0.bn1.running_var"] = np.zeros((7,), np.float32)
    state["extra.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(WeightsMismatchError) as caught:
        load_state_dict(model, state, source="broken.pth")
    message = str(caught.value)
    assert "broken.pth" in message and "3 problem(s)" in message
    assert "missing: layer1.0.conv1.weight" in message
    assert "shape mismatch: layer2.0.bn1.running_var is (7,)" in message
    assert "unexpected: extra.weight" in message


def test_conversion_accepts_exact_state_and_batch_counters():
    model, state = _valid_state("efficientnet_lite0")
    state["_bn0.num_batches_tracked"] = np.array(0, np.int64)
    load_state_dict(model, state)  # no error: every tensor used, counters tolerated


def test_every_registered_model_matches_its_state_dict_key_count():
    # Counted by hand for torchvision's resnet18: 20 convs (stem, 8 blocks x 2, 3 downsamples), each with a
    # BatchNorm of 4 tensors (counters aside), and fc weight + bias: 20 + 80 + 2 = 102.
    model, _ = backbones.build_model("resnet18", "random")
    assert len(expected_torch_shapes(model)) == 102
    # Lite0 file: 296 tensors, of which 49 BatchNorm counters -> 247 used.
    model, _ = backbones.build_model("efficientnet_lite0", "random")
    assert len(expected_torch_shapes(model)) == 247


def test_micro_batching_matches_whole_batch():
    """Uneven batches are padded and cut back; results equal the whole-batch pass."""
    model, tag = backbones.build_model("efficientnet_lite0", "random", seed=1)
    chunked = backbones.Backbone(get_spec("efficientnet_lite0"), model, tag, micro_batch=2)
    images = np.random.default_rng(2).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    apply_fn, params = chunked.pure()
    chunked_out = chunked(images)
    whole = jax.jit(chunked._forward)(params, images)
    for key in chunked_out:
        assert chunked_out[key].shape == whole[key].shape
        np.testing.assert_allclose(
            chunked_out[key], whole[key], rtol=0, atol=1e-5 * float(np.abs(whole[key]).max())
        )
    np.testing.assert_allclose(
        chunked.classify(images), whole["logits"], rtol=0, atol=1e-5 * float(np.abs(whole["logits"]).max())
    )
    with pytest.raises(ValueError, match="micro_batch"):
        backbones.Backbone(get_spec("efficientnet_lite0"), model, tag, micro_batch=0)


def test_lite0_input_normalization_is_selectable_and_part_of_the_identity(lite0):
    """ImageNet mean/std on x equals the default TF (v - 127) / 128 on v = 127 + 128 (x / 255 - m) / s, the
    numpy transform giving the same network input; the two differ on x itself and name different features."""
    imagenet = backbones.load("efficientnet_lite0", normalization="imagenet")
    assert imagenet.name == "efficientnet_lite0:imagenet" and lite0.name == "efficientnet_lite0"
    assert backbones.load("efficientnet_lite0", normalization="tf").name == lite0.name
    assert get_spec("efficientnet_lite0:imagenet") == imagenet.spec
    x = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    v = (127.0 + 128.0 * (x / 255.0 - mean) / std).astype(np.float32)
    ours, reference, plain = imagenet(x), lite0(v), lite0(x)
    for key in ours:
        scale = float(np.abs(reference[key]).max())
        np.testing.assert_allclose(ours[key], reference[key], rtol=0, atol=1e-4 * scale, err_msg=key)
        assert np.abs(np.asarray(ours[key]) - np.asarray(plain[key])).max() > 1e-2 * scale, key
    keys = [
        FeatureKey.of(b, dataset="mtd", category="mtd", split="train", image_size=64, crop=None)
        for b in (lite0, imagenet)
    ]
    assert keys[0] != keys[1] and keys[0].weights_sha256 == keys[1].weights_sha256

    class Fitted:  # what a bank fit on the TF-normalised features records
        backbone_name, weights_sha256 = lite0.name, lite0.weights_sha256

    check_backbone(Fitted(), lite0)
    with pytest.raises(ValueError, match="was fit with"):
        check_backbone(Fitted(), imagenet)
    with pytest.raises(ValueError, match="normalization"):
        backbones.load("efficientnet_lite0", "random", normalization="caffe")
    with pytest.raises(ValueError, match="contradicts"):
        get_spec("efficientnet_lite0:imagenet", "tf")
