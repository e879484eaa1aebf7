"""Inference-only building blocks shared by the ports: convolution + BatchNorm, and the classifier.

Every module that holds weights names the torch tensors it is loaded from (``torch_shapes``) and
converts them itself (``assign_torch``), so :mod:`.convert` can check a whole state dict against a model
generically. Random initialisation (He-normal kernels, identity BatchNorm) uses a numpy generator:
it exists for tests and benchmarks, and numpy keeps building a 69M-parameter model to about a second
where one jax.random call per tensor shape costs several. Layout is NHWC activations and HWIO kernels,
XLA's native layout on CPU, GPU and TPU.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Padding = str | Sequence[tuple[int, int]]


def relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 6.0)


def _as_param_array(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """float32 numpy copy; parameters stay in host memory until the Backbone puts them on the device once."""
    array = np.array(array, dtype=np.float32)
    if array.shape != shape:  # convert.py checks shapes first; this guards direct callers
        raise ValueError(f"expected an array of shape {shape}, got {array.shape}")
    return array


def _explicit_padding(size: int, kernel: int, stride: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(padding, str):  # TF "SAME": output ceil(size / stride), the odd pixel of padding after
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    return padding


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Depthwise convolution (B, H, W, C) * (kh, kw, 1, C) as a sum of kh*kw shifted, scaled copies.

    Same result as ``conv_general_dilated(..., feature_group_count=C)``; XLA's CPU backend runs grouped
    convolutions 3-15x slower than this single fused elementwise loop (measured on Lite0's layers).
    """
    kh, kw = kernel.shape[:2]
    height, width = x.shape[1:3]
    pad_h = _explicit_padding(height, kh, stride, padding if isinstance(padding, str) else padding[0])
    pad_w = _explicit_padding(width, kw, stride, padding if isinstance(padding, str) else padding[1])
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            window = jax.lax.slice(
                x,
                (0, i, j, 0),
                (x.shape[0], i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, x.shape[3]),
                (1, stride, stride, 1),
            )
            term = window * kernel[i, j, 0]
            total = term if total is None else total + term
    return total


class ConvNorm(nnx.Module):
    """Bias-free 2-D convolution followed by BatchNorm with running statistics (inference only).

    Input (B, H, W, in_channels) -> output (B, H', W', out_channels). ``padding`` is ``"SAME"`` (TF
    semantics: the odd pixel of padding goes after) or ``pad`` pixels on every side (torch semantics).
    After :meth:`fold_batchnorm` the normalisation is baked into the kernel and a bias, which is exact
    algebra and saves one pass over every activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int | str = 0,
        groups: int = 1,
        eps: float = 1e-5,
        torch_conv: str,
        torch_norm: str,
        rng: np.random.Generator,
    ):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} are not divisible by groups={groups}")
        self.stride = stride
        self.padding: Padding = (
            padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
        )
        self.groups = groups
        self.eps = eps
        self.torch_conv = torch_conv
        self.torch_norm = torch_norm
        kernel_shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
        fan_in = kernel_size * kernel_size * (in_channels // groups)
        kernel = rng.standard_normal(kernel_shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(np.zeros((out_channels,), np.float32))
        self.scale = nnx.Param(np.ones((out_channels,), np.float32))
        self.mean = nnx.BatchStat(np.zeros((out_channels,), np.float32))
        self.var = nnx.BatchStat(np.ones((out_channels,), np.float32))
        self.folded = False

    def torch_shapes(self) -> dict[str, tuple[int, ...]]:
        """Torch state-dict keys this layer is loaded from, with their torch-layout shapes."""
        if self.folded:
            raise RuntimeError("a folded layer cannot be loaded from torch weights")
        kh, kw, cin, cout = self.kernel.shape
        n, c = self.torch_norm, (cout,)
        return {
            f"{self.torch_conv}.weight": (cout, cin, kh, kw),
            f"{n}.weight": c,
            f"{n}.bias": c,
            f"{n}.running_mean": c,
            f"{n}.running_var": c,
        }

    def torch_ignored(self) -> tuple[str, ...]:
        """Keys allowed in the file but not needed for inference."""
        return (f"{self.torch_norm}.num_batches_tracked",)

    def assign_torch(self, tensors: dict[str, np.ndarray]) -> None:
        n = self.torch_norm
        weight = np.asarray(tensors[f"{self.torch_conv}.weight"])
        self.kernel[...] = _as_param_array(weight.transpose(2, 3, 1, 0), self.kernel.shape)
        self.scale[...] = _as_param_array(tensors[f"{n}.weight"], self.scale.shape)
        self.bias[...] = _as_param_array(tensors[f"{n}.bias"], self.bias.shape)
        self.mean[...] = _as_param_array(tensors[f"{n}.running_mean"], self.mean.shape)
        self.var[...] = _as_param_array(tensors[f"{n}.running_var"], self.var.shape)

    def fold_batchnorm(self) -> None:
        """Bake the BatchNorm into the kernel and bias (per-channel factor computed in float64)."""
        if self.folded:
            return
        factor = np.asarray(self.scale[...], np.float64) / np.sqrt(
            np.asarray(self.var[...], np.float64) + self.eps
        )
        bias = np.asarray(self.bias[...], np.float64) - np.asarray(self.mean[...], np.float64) * factor
        self.kernel[...] = np.asarray(self.kernel[...], np.float32) * factor.astype(np.float32)
        self.bias[...] = bias.astype(np.float32)
        self.scale[...] = np.ones_like(self.scale[...])
        self.mean[...] = np.zeros_like(self.mean[...])
        self.var[...] = np.ones_like(self.var[...])
        self.folded = True

    def _no_padding(self) -> bool:
        # "SAME" pads nothing for a 1x1 kernel, whatever the stride
        return self.padding == "SAME" or all(p == (0, 0) for p in self.padding)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        if self.groups > 1 and self.groups == x.shape[-1] == kernel.shape[-1]:
            y = depthwise_conv(x, kernel, self.stride, self.padding)
        elif kernel.shape[:2] == (1, 1) and self.groups == 1 and self._no_padding():
            # A 1x1 convolution is a matmul over channels; XLA's CPU dot is ~2x faster than its conv here.
            y = jnp.einsum("bhwc,cd->bhwd", x[:, :: self.stride, :: self.stride, :], kernel[0, 0])
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(self.stride, self.stride),
                padding=self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.folded:
            return y + self.bias[...]
        factor = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        return y * factor + (self.bias[...] - self.mean[...] * factor)


class Linear(nnx.Module):
    """Dense layer (B, in_features) -> (B, out_features), loaded from a torch ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, *, torch_name: str, rng: np.random.Generator):
        self.torch_name = torch_name
        bound = 1.0 / np.sqrt(in_features)
        self.kernel = nnx.Param(rng.uniform(-bound, bound, (in_features, out_features)).astype(np.float32))
        self.bias = nnx.Param(np.zeros((out_features,), np.float32))

    def torch_shapes(self) -> dict[str, tuple[int, ...]]:
        fan_in, fan_out = self.kernel.shape
        return {f"{self.torch_name}.weight": (fan_out, fan_in), f"{self.torch_name}.bias": (fan_out,)}

    def torch_ignored(self) -> tuple[str, ...]:
        return ()

    def assign_torch(self, tensors: dict[str, np.ndarray]) -> None:
        self.kernel[...] = _as_param_array(
            np.asarray(tensors[f"{self.torch_name}.weight"]).T, self.kernel.shape
        )
        self.bias[...] = _as_param_array(tensors[f"{self.torch_name}.bias"], self.bias.shape)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


def global_average(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C)."""
    return jnp.mean(x, axis=(1, 2))
