"""The lean encoder writes exactly what the safetensors loader reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference import tensors
from inference.runtime import codec


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.bfloat16,
    ],
)
def test_torch_tensors_round_trip(dtype):
    original = {
        "x": (torch.randn(3, 5) * 10).to(dtype),
        "empty": torch.zeros(0, 2, dtype=dtype),
        "scalar": torch.tensor(7).to(dtype),
        "t": torch.randn(4, 3).t().to(dtype),
    }
    decoded = codec.decode(codec.encode(original))
    assert decoded.keys() == original.keys()
    for name, tensor in original.items():
        assert decoded[name].dtype == dtype and torch.equal(decoded[name], tensor)


def test_numpy_arrays_round_trip_including_views():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    original = {"a": base[:, ::2], "b": np.array([True, False]), "c": base.astype(np.int64)}
    decoded = tensors.decode(tensors.encode(original))
    for name, array in original.items():
        assert np.array_equal(decoded[name], array) and decoded[name].dtype == array.dtype


def test_big_endian_arrays_fall_back_correctly():
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    assert np.array_equal(tensors.decode(tensors.encode({"x": array}))["x"], array)
