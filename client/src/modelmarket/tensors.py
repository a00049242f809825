"""Prediction inputs to the API's JSON: numpy arrays, torch tensors, nested lists, or a dict of
input name to any of those; ``.npy``/``.npz``/``.json`` files for the command line.

Values are sent without a datatype, so the server casts them to the model's signature (a
float64 array saved by numpy runs a float32 model)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from modelmarket.errors import UsageError


def require_numpy():
    try:
        import numpy
    except ImportError:
        raise UsageError(
            "This needs numpy: pip install 'modelmarket-client[numpy]' (or pip install numpy)."
        ) from None
    return numpy


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "tolist")


def _numeric(value: Any, name: str) -> Any:
    """A numpy array, a torch tensor (converted through numpy, without importing torch) or a
    nested list, checked to hold numbers."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    if _is_array_like(value):
        if value.dtype.kind not in "biuf":
            raise UsageError(f"Input '{name}' has dtype {value.dtype}; send numbers.")
        return value
    if isinstance(value, list | tuple | int | float) and not isinstance(value, bool):
        return list(value) if isinstance(value, tuple) else value
    raise UsageError(f"Input '{name}' is a {type(value).__name__}; give an array or a list.")


def _json_numbers(values: Any, name: str) -> Any:
    """Nested lists as JSON carries them: NaN as ``null`` (the API reads it back as NaN);
    infinity, which JSON has no word for, refused."""
    if isinstance(values, float):
        if math.isnan(values):
            return None
        if math.isinf(values):
            raise UsageError(
                f"Input '{name}' holds infinity, which JSON cannot carry; send finite numbers "
                "(or NaN, sent as null)."
            )
        return values
    if isinstance(values, list):
        return [_json_numbers(value, name) for value in values]
    return values


def _lists(value: Any, name: str) -> Any:
    listed = value.tolist() if _is_array_like(value) else value
    if _is_array_like(value) and value.dtype.kind != "f":
        return listed  # integers and booleans are always finite
    return _json_numbers(listed, name)


# The v2 protocol's datatypes numpy has (it has no bfloat16).
NUMPY_DTYPES = {
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
}


def to_array(values: Any, datatype: str | None = None) -> Any:
    """An output's nested lists as a numpy array of its ``datatype`` (the server's
    ``output_datatypes``: without it a float32 output came back float64), ``null`` (how JSON
    carries NaN and the infinities) read as NaN: ``np.asarray`` made an array of Python
    objects of them, which no numpy function takes and ``.npy`` files refuse."""
    np = require_numpy()
    dtype = NUMPY_DTYPES.get(datatype or "")
    array = np.asarray(values)
    if array.dtype == object:
        array = np.asarray(values, dtype=np.float64)
    return array.astype(dtype, copy=False) if dtype else array


def to_payload(inputs: Any) -> Any:
    """The ``input`` field of a prediction request. A dict maps input names to values; any
    other value is the model's only input. Arrays go as flat data with a shape (compact and
    exact); a bare array as nested lists, which the server reads as the only input."""
    if isinstance(inputs, dict):
        if not inputs:
            raise UsageError("The input is empty.")
        payload = {}
        for name, value in inputs.items():
            if isinstance(value, dict):  # already the API's {"data", "shape"} form
                payload[str(name)] = value
                continue
            value = _numeric(value, str(name))
            if _is_array_like(value):
                data = _lists(value.reshape(-1), str(name))
                value = {"data": data, "shape": list(value.shape)}
            else:
                value = _lists(value, str(name))
            payload[str(name)] = value
        return payload
    return _lists(_numeric(inputs, "input"), "input")


def load_input(path: str) -> Any:
    """Read a prediction input from a file: ``.npy`` (the only input), ``.npz`` (one array per
    input name) or ``.json`` (the API's own input format); ``-`` reads JSON from stdin."""
    if path == "-":
        import sys

        return parse_json(sys.stdin.read(), "stdin")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"No input file {path}.")
    suffix = file.suffix.lower()
    if suffix == ".json":
        return parse_json(file.read_text(), path)
    if suffix in (".npy", ".npz"):
        np = require_numpy()
        try:
            loaded = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UsageError(f"{path} is not a numpy file we can read: {exc}.") from None
        if suffix == ".npz":
            with loaded:
                return {name: loaded[name] for name in loaded.files}
        return loaded
    raise UsageError(f"Give the input as .npy, .npz or .json, not {suffix or 'no extension'}.")


def parse_json(text: str, where: str = "--data") -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"The input in {where} is not JSON: {exc}.") from None


def save_output(arrays: dict[str, Any], path: str, datatypes: dict[str, str] | None = None) -> None:
    """Write outputs to ``.npy`` (the only output) or ``.npz`` (all, by name), or ``.json``;
    arrays in their ``datatypes``."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".json":
        file.write_text(json.dumps(arrays))
        return
    np = require_numpy()
    types = datatypes or {}
    values = {name: to_array(value, types.get(name)) for name, value in arrays.items()}
    if suffix == ".npy":
        if len(values) != 1:
            raise UsageError(f"The model has {len(values)} outputs; save them to a .npz file.")
        np.save(file, next(iter(values.values())))
    elif suffix == ".npz":
        np.savez(file, **values)
    else:
        raise UsageError(f"Save the output as .npy, .npz or .json, not {suffix or 'nothing'}.")
