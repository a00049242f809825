"""Input and output signatures, and the checks that run before a model sees any input."""

from __future__ import annotations

from typing import Any

import torch

from inference.runtime.spec import InputError, Signature, TensorSpec, check_inputs

__all__ = [
    "DTYPES",
    "InputError",
    "Signature",
    "TensorSpec",
    "spec_of",
    "tensors_from_json",
    "validate_inputs",
]

# Names as in the Open Inference Protocol (KServe v2) datatypes.
DTYPES: dict[str, torch.dtype] = {
    "FP32": torch.float32,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP64": torch.float64,
    "INT64": torch.int64,
    "INT32": torch.int32,
    "INT16": torch.int16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Tensors cross the worker/host pipe as safetensors, whose header keeps this key for itself.
RESERVED_NAMES = frozenset({"__metadata__"})


def spec_of(name: str, tensor: torch.Tensor, fixed: list[int] | None = None) -> TensorSpec:
    """The spec of a tensor the model took or gave. The first dimension is the dynamic batch
    unless the file fixes the shape (``fixed``, as a ``torch.export`` archive does)."""
    if tensor.dtype not in DTYPE_NAMES:
        raise InputError(f"'{name}' has dtype {tensor.dtype}, which the API cannot carry.")
    if name in RESERVED_NAMES:
        raise InputError(
            f"The model names a tensor '{name}', which is reserved; rename that input or "
            "output and export the model again."
        )
    shape = list(tensor.shape)
    if fixed is not None:
        return TensorSpec(name, DTYPE_NAMES[tensor.dtype], list(fixed))
    return TensorSpec(name, DTYPE_NAMES[tensor.dtype], [-1, *shape[1:]] if shape else [])


def validate_inputs(signature: Signature, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The tensors in the model's argument order, after ``check_inputs``."""
    check_inputs(
        signature,
        {n: (DTYPE_NAMES.get(t.dtype, str(t.dtype)), list(t.shape)) for n, t in tensors.items()},
    )
    return [tensors[s.name] for s in signature.inputs]


def tensors_from_json(example: Any, input_names: list[str]) -> dict[str, torch.Tensor]:
    """An example input as JSON: ``{"name": [[...]]}`` (values, float32), ``{"name": {"data":
    [...], "datatype": "INT64"}}`` or ``{"name": {"shape": [1, 4], "datatype": "FP32"}}``
    (random values). A bare list is the model's only input."""
    if isinstance(example, list):
        if len(input_names) != 1:
            raise InputError(f"Give the example as an object keyed by {input_names}.")
        example = {input_names[0]: example}
    if not isinstance(example, dict):
        raise InputError("The example input is a JSON object of input name to values.")
    out = {}
    for name, value in example.items():
        if isinstance(value, dict):
            dtype = DTYPES.get(value.get("datatype", "FP32"))
            if dtype is None:
                raise InputError(f"Unknown datatype for '{name}'; use one of {sorted(DTYPES)}.")
            if "data" in value:
                out[name] = torch.tensor(value["data"], dtype=dtype)
            elif "shape" in value:
                shape = value["shape"]
                out[name] = (
                    torch.randn(shape).to(dtype)
                    if dtype.is_floating_point
                    else torch.zeros(shape, dtype=dtype)
                )
            else:
                raise InputError(f"Example '{name}' needs 'data' or 'shape'.")
        else:
            out[name] = torch.tensor(value, dtype=torch.float32)
    return out
