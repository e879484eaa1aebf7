"""torch state dict -> NNX model, with full checking: every expected tensor present with its shape, every
tensor in the file used. All mismatches are reported together in one :class:`WeightsMismatchError`."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flax import nnx

from .layers import ConvNorm, Linear

__all__ = ["WeightsMismatchError", "expected_torch_shapes", "load_state_dict"]

_TorchLoaded = (ConvNorm, Linear)


class WeightsMismatchError(ValueError):
    """A state dict does not fit the model: lists missing, unexpected and wrongly shaped tensors."""


def _torch_layers(model: nnx.Module) -> list[ConvNorm | Linear]:
    return [module for _, module in nnx.iter_modules(model) if isinstance(module, _TorchLoaded)]


def expected_torch_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Every torch key the model needs, with its torch-layout shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in _torch_layers(model):
        for key, shape in layer.torch_shapes().items():
            if key in shapes:
                raise RuntimeError(f"two layers claim the torch tensor '{key}'")
            shapes[key] = shape
    return shapes


def load_state_dict(
    model: nnx.Module, state_dict: Mapping[str, np.ndarray], *, source: str = "state dict"
) -> None:
    """Copy a torch state dict (numpy arrays) into ``model`` in place, after checking it fits exactly.

    ``source`` names the file in error messages. Raises :class:`WeightsMismatchError` listing every
    missing key, unexpected key and shape mismatch.
    """
    if not isinstance(state_dict, Mapping):
        raise WeightsMismatchError(
            f"{source}: expected a state dict (mapping of name -> tensor), got {type(state_dict).__name__}"
        )
    layers = _torch_layers(model)
    expected = expected_torch_shapes(model)
    ignorable = {key for layer in layers for key in layer.torch_ignored()}
    problems: list[str] = []

    def shape_of(value: object) -> str:
        # Only arrays are measured: np.shape of a nested list converts it, and a small file whose list
        # shares one sub-list many times (pickle memo) expands to gigabytes.
        return (
            str(value.shape) if isinstance(value, np.ndarray) else f"a {type(value).__name__}, not a tensor"
        )

    for key, shape in expected.items():
        if key not in state_dict:
            problems.append(f"missing: {key} (expected shape {shape})")
            continue
        value = state_dict[key]
        if not isinstance(value, np.ndarray):
            problems.append(f"not a tensor: {key} is {shape_of(value)}; the model needs shape {shape}")
            continue
        actual = tuple(value.shape)
        if actual != shape:
            problems.append(f"shape mismatch: {key} is {actual} in the file, the model needs {shape}")
        elif not np.issubdtype(value.dtype, np.floating):
            problems.append(f"dtype: {key} is {value.dtype}, expected floating point")
    for key in state_dict:
        if key not in expected and key not in ignorable:
            problems.append(f"unexpected: {key} ({shape_of(state_dict[key])}) is not used by the model")
    if problems:
        raise WeightsMismatchError(
            f"{source} does not fit {type(model).__name__} ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems)
        )
    for layer in layers:
        layer.assign_torch({key: state_dict[key] for key in layer.torch_shapes()})
