"""torchvision ResNets (v1.5: the bottleneck's stride sits on its 3x3 convolution) as Flax NNX modules.

``ResNet(x)`` takes normalised images (B, H, W, 3) and returns the outputs of the four stages,
``level1``..``level4`` at strides 4, 8, 16, 32, and ``pooled`` (B, C4), the global average of level 4
that torchvision's classifier reads. Attribute names follow torchvision's so each layer knows the torch
keys it is loaded from.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .layers import ConvNorm, Linear, global_average


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, in_channels: int, planes: int, stride: int, *, prefix: str, rng: np.random.Generator, **_: int
    ):
        self.conv1 = ConvNorm(
            in_channels,
            planes,
            3,
            stride=stride,
            padding=1,
            torch_conv=f"{prefix}.conv1",
            torch_norm=f"{prefix}.bn1",
            rng=rng,
        )
        self.conv2 = ConvNorm(
            planes, planes, 3, padding=1, torch_conv=f"{prefix}.conv2", torch_norm=f"{prefix}.bn2", rng=rng
        )
        self.downsample = _downsample(in_channels, planes, stride, prefix, rng)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.conv1(x))
        y = self.conv2(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50 and wider)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        *,
        prefix: str,
        rng: np.random.Generator,
        base_width: int = 64,
    ):
        width = planes * base_width // 64
        out = planes * self.expansion
        self.conv1 = ConvNorm(
            in_channels, width, 1, torch_conv=f"{prefix}.conv1", torch_norm=f"{prefix}.bn1", rng=rng
        )
        self.conv2 = ConvNorm(
            width,
            width,
            3,
            stride=stride,
            padding=1,
            torch_conv=f"{prefix}.conv2",
            torch_norm=f"{prefix}.bn2",
            rng=rng,
        )
        self.conv3 = ConvNorm(
            width, out, 1, torch_conv=f"{prefix}.conv3", torch_norm=f"{prefix}.bn3", rng=rng
        )
        self.downsample = _downsample(in_channels, out, stride, prefix, rng)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.conv1(x))
        y = nnx.relu(self.conv2(y))
        y = self.conv3(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return nnx.relu(y + shortcut)


def _downsample(
    in_channels: int, out_channels: int, stride: int, prefix: str, rng: np.random.Generator
) -> ConvNorm | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return ConvNorm(
        in_channels,
        out_channels,
        1,
        stride=stride,
        torch_conv=f"{prefix}.downsample.0",
        torch_norm=f"{prefix}.downsample.1",
        rng=rng,
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(3, stride=2, padding=1)``: padding never wins the max. (B,H,W,C) -> (B,H/2,W/2,C)."""
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


class ResNet(nnx.Module):
    """A torchvision ResNet; ``__call__`` gives the level dict, ``logits`` the ImageNet classifier."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        base_width: int = 64,
        num_classes: int = 1000,
        rng: np.random.Generator,
    ):
        self.conv1 = ConvNorm(3, 64, 7, stride=2, padding=3, torch_conv="conv1", torch_norm="bn1", rng=rng)
        in_channels = 64
        stages = []
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(depth):
                stride = 2 if (index > 0 and j == 0) else 1
                blocks.append(
                    block(
                        in_channels,
                        planes,
                        stride,
                        prefix=f"layer{index + 1}.{j}",
                        rng=rng,
                        base_width=base_width,
                    )
                )
                in_channels = planes * block.expansion
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = Linear(in_channels, num_classes, torch_name="fc", rng=rng)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """x (B, H, W, 3) normalised -> {"level1": (B, H/4, W/4, C1), ..., "level4": (B, H/32, W/32, C4),
        "pooled": (B, C4)} (spatial sizes rounded up)."""
        x = max_pool_3x3_s2(nnx.relu(self.conv1(x)))
        out = {}
        for level, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            for block in stage:
                x = block(x)
            out[f"level{level}"] = x
        out["pooled"] = global_average(x)
        return out

    def logits(self, pooled: jax.Array) -> jax.Array:
        """(B, C4) -> (B, num_classes)."""
        return self.fc(pooled)


def resnet18(rng: np.random.Generator) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), rng=rng)


def resnet50(rng: np.random.Generator) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), rng=rng)


def wide_resnet50_2(rng: np.random.Generator) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), base_width=128, rng=rng)
