"""Tensors in the web process and the worker: JSON and the binary wire formats to numpy and
safetensors bytes, without importing torch (which only runs in model hosts)."""

from __future__ import annotations

from typing import Any

import numpy as np
from safetensors.numpy import load as _load
from safetensors.numpy import save as _save

from inference.runtime import wire
from inference.runtime.spec import InputError, Signature, check_inputs

NUMPY: dict[str, np.dtype] = {
    "FP32": np.dtype(np.float32),
    "FP16": np.dtype(np.float16),
    "FP64": np.dtype(np.float64),
    "INT64": np.dtype(np.int64),
    "INT32": np.dtype(np.int32),
    "INT16": np.dtype(np.int16),
    "INT8": np.dtype(np.int8),
    "UINT8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DATATYPE = {v: k for k, v in NUMPY.items()}
MAX_DIMS = 32  # dimensions of one tensor (numpy stops at 64; no model here needs more than a few)


_SAFETENSORS = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    # (ascontiguousarray makes a 0-d array 1-d: the shape is put back)
    arrays = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}
    if all(a.dtype in _SAFETENSORS and a.dtype.byteorder in "=|<" for a in arrays.values()):
        return wire.encode(
            (name, _SAFETENSORS[a.dtype], list(a.shape), wire.raw(a)) for name, a in arrays.items()
        )
    return _save(arrays)


_NUMPY_OF = {name: dtype.newbyteorder("<") for dtype, name in _SAFETENSORS.items()}
_layouts = wire.Layouts(viewable=_NUMPY_OF)
# A model host's output is read here, and safetensors takes headers of up to 100 MB, which
# cost ~35 times their size in memory to read: a hostile host's are refused at this size
# (a header of this many bytes names thousands of tensors).
MAX_HEADER_BYTES = 1 << 20


def decode(data: bytes) -> dict[str, np.ndarray]:
    """Read-only arrays: over ``data`` for a header seen before (see ``wire.Layouts``);
    otherwise ``safetensors`` reads and checks it (copies)."""
    if not data:
        return {}
    slots = _layouts.known(data)
    if slots is None:
        if len(data) >= 8 and int.from_bytes(data[:8], "little") > MAX_HEADER_BYTES:
            raise ValueError(f"a safetensors header over {MAX_HEADER_BYTES} bytes")
        arrays = _load(bytes(data))
        slots = _layouts.learn(data)
        for array in arrays.values():  # as the arrays of a header seen before are
            array.flags.writeable = False
        return {name: arrays[name] for name, *_ in slots}
    return {
        name: np.frombuffer(
            data, _NUMPY_OF[dtype], (end - start) // _NUMPY_OF[dtype].itemsize, start
        ).reshape(shape)
        for name, dtype, shape, start, end in slots
    }


def _dtype(datatype: Any, name: str) -> np.dtype:
    if not isinstance(datatype, str):
        raise InputError(
            f"Input '{name}': datatype is a name, one of {', '.join(NUMPY)}; got "
            f"{_json_kind(datatype)}."
        )
    dtype = NUMPY.get(datatype)
    if dtype is None:
        raise InputError(
            f"Input '{name}': datatype {datatype} is not supported over JSON; use one of "
            f"{', '.join(NUMPY)}."
        )
    return dtype


def values_as(values: Any, dtype: np.dtype) -> np.ndarray:
    """JSON values as an array of ``dtype``; ValueError, TypeError or OverflowError say why
    they are not. Floats take numbers and null (NaN) within the type's range; integer types
    take whole numbers only, and BOOL true and false only: numpy's own cast reads "false", 2
    or null as a boolean, "1.5" or true as a float, cuts 1.7 to 1 and makes 1e39 an FP32
    infinity, silently."""
    _check_leaves(values, dtype)
    if dtype.kind == "f":
        return _floats(values, dtype)
    array = np.asarray(values, dtype=dtype)
    if dtype.kind not in "biu" or not array.size:
        return array
    if dtype.kind == "b":  # its values are true and false alone (_check_leaves)
        return array
    given = np.asarray(values)
    if given.dtype.kind == "f":
        if not np.array_equal(given, np.trunc(given)):
            raise ValueError(f"{DATATYPE[dtype]} values are whole numbers")
    elif given.dtype.kind not in "iu":
        raise ValueError(f"{DATATYPE[dtype]} values are numbers")
    return array


def _leaf_types(values: Any) -> set[type]:
    """The types of the values in a nested list (its innermost lists read at C speed)."""
    if not isinstance(values, list):
        return {type(values)}
    if values and isinstance(values[0], list):
        found: set[type] = set()
        for item in values:
            found |= _leaf_types(item)
        return found
    return set(map(type, values))


def _check_leaves(values: Any, dtype: np.dtype) -> None:
    """Refuse text, and true or false, among numbers, and numbers among BOOL values: numpy
    reads a list of them as the numbers' type (true as 1, "1.5" as 1.5 where a null made it
    a list of objects) and says nothing."""
    leaves = _leaf_types(values) - {list}  # (a list beside a number: a shape error later)
    if dtype.kind == "b":
        if leaves - {bool}:
            raise ValueError("BOOL values are true or false")
        return
    if bool in leaves:
        raise ValueError(f"{DATATYPE[dtype]} values are numbers, not true or false")
    if str in leaves:
        raise ValueError(f"{DATATYPE[dtype]} values are numbers, not text")


def _floats(values: Any, dtype: np.dtype) -> np.ndarray:
    """Numbers, and nulls (NaN) among them: ``_check_leaves`` has refused the rest."""
    given = np.asarray(values)
    with np.errstate(over="ignore"):  # said below, with the value
        # O: nulls among the numbers, which only a cast from the values themselves reads
        array = np.asarray(values, dtype) if given.dtype.kind == "O" else given.astype(dtype)
    if np.isinf(array).any():
        # A finite number past the type's range (an infinity sent as one, /v2's Infinity, is
        # taken): it became an infinity, and the model's outputs with it.
        wide = given.astype(np.float64) if given.dtype.kind != "O" else np.asarray(values, float)
        past = np.isinf(array) & np.isfinite(wide)
        if past.any():
            raise ValueError(
                f"{DATATYPE[dtype]} values lie within ±{np.finfo(dtype).max:.4g}; "
                f"{wide[past][0]:g} does not"
            )
    return array


def from_json(payload: Any, signature: Signature) -> dict[str, np.ndarray]:
    """Inputs as JSON: ``{"name": nested list}`` (cast to the signature's datatype) or
    ``{"name": {"data": [...], "shape": [...], "datatype": "FP32"}}``. A bare nested list is
    the model's only input."""
    specs = {s.name: s for s in signature.inputs}
    if isinstance(payload, list) and len(specs) == 1:
        payload = {next(iter(specs)): payload}
    if not isinstance(payload, dict) or not payload:
        names = ", ".join(f"'{s.name}' {s.describe()}" for s in signature.inputs)
        raise InputError(f"Give the input as an object of input name to values: {names}.")
    arrays = {}
    for name, value in payload.items():
        spec = specs.get(name)
        datatype = spec.datatype if spec else "FP32"
        shape = None
        if isinstance(value, dict):
            if "data" not in value:
                raise InputError(
                    f'Input \'{name}\' has no "data": give its values as {{"data": [...], '
                    '"shape": [...], "datatype": "FP32"}, or as a nested list.'
                )
            datatype = value.get("datatype", datatype)
            shape = value.get("shape")
            value = value["data"]
        dtype = _dtype(datatype, name)
        # A null value is NaN, as among a list's values; only a float scalar (a 0-d input)
        # can be one alone: anything else given as null is a mistake said as one.
        if value is None and not (dtype.kind == "f" and spec is not None and not spec.shape):
            raise InputError(f"Input '{name}' is null; give its values as a nested list.")
        try:
            array = values_as(value, dtype)
            if shape is not None:
                array = array.reshape(shape)
        except (ValueError, TypeError, OverflowError) as exc:  # 300 as UINT8, 10**400, ...
            why = str(exc).rstrip(".")
            raise InputError(f"Input '{name}' is not a {datatype} tensor: {why}.") from None
        arrays[name] = array
    check(signature, arrays)
    return arrays


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def check(signature: Signature, arrays: dict[str, np.ndarray]) -> int:
    return check_inputs(
        signature,
        {n: (DATATYPE.get(a.dtype, str(a.dtype)), list(a.shape)) for n, a in arrays.items()},
    )


def to_json(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Outputs as nested lists. JSON has no NaN or infinities: they are ``null`` (as
    JavaScript's ``JSON.stringify`` writes them; a ``null`` in an input is NaN). The v2
    protocol writes them as Triton does (``NaN``, ``Infinity``), and its binary tensors carry
    them exactly."""
    return {name: json_values(array) for name, array in arrays.items()}


def datatypes(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Each output's datatype as the v2 protocol names it (``FP32``), which its nested lists
    do not carry."""
    return {name: DATATYPE[array.dtype] for name, array in arrays.items()}


def json_values(array: np.ndarray) -> list | Any:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        values = array.astype(object)
        values[~np.isfinite(array)] = None
        return values.tolist()
    return array.tolist()
