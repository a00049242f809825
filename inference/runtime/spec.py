"""Signatures and input checks without torch: used by the web process (numpy) and by the
model host (torch) alike."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Open Inference Protocol (KServe v2) datatype names.
DATATYPES = ("FP32", "FP16", "BF16", "FP64", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL")

# The built-in architectures a safetensors upload may name: ``architectures.ARCHITECTURES``
# builds them in the model host, and the web checks a name against these without torch.
ARCHITECTURE_NAMES = ("mlp", "resnet", "small_cnn", "transformer")


# A tensor with no values is 0 bytes whatever its shape, so no byte limit holds it, yet its
# JSON form has a list for each row: an input of shape [10000000, 0] was a 78-byte request
# and a 30 MB answer that took the web process from 121 to 868 MiB ([2147483647, 0]: past
# 10 GB). A tensor without values may hold at most this many lists.
MAX_EMPTY_LISTS = 1 << 16


class InputError(ValueError):
    """The caller's input does not fit the signature; the message says what to fix."""


def json_lists(shape) -> int:
    """How many lists the nested-list JSON of a tensor of ``shape`` holds."""
    count = level = 1
    for size in list(shape)[:-1]:
        level *= size
        count += level
        if not level:
            break
    return count


def empty_too_wide(shape) -> bool:
    """A tensor of ``shape`` has no values and more lists than ``MAX_EMPTY_LISTS``."""
    return 0 in shape and json_lists(shape) > MAX_EMPTY_LISTS


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # -1 marks a dynamic dimension (the batch dimension, first)

    def describe(self) -> str:
        return f"{self.datatype}{self.shape}"


@dataclass(frozen=True)
class Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # Whether a row's outputs depend on that row alone, as validation found by running the
    # example twice over (``serve.rows_independent``): only then may the worker run several
    # requests as one batch. A retrieval model scoring each query against every item sent
    # (both inputs "[-1, 8]") gave one request scores against another's items.
    rows_independent: bool = True

    def to_json(self) -> dict[str, Any]:
        data = {
            "inputs": [asdict(s) for s in self.inputs],
            "outputs": [asdict(s) for s in self.outputs],
        }
        if not self.rows_independent:
            data["rows_independent"] = False
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Signature:
        return cls(
            [TensorSpec(**s) for s in data["inputs"]],
            [TensorSpec(**s) for s in data["outputs"]],
            rows_independent=data.get("rows_independent", True),
        )

    @property
    def batch_dynamic(self) -> bool:
        """Whether requests may be merged into one batch: every input's first dimension is
        the batch, and rows are independent."""
        return self.rows_independent and all(s.shape[:1] == [-1] for s in self.inputs)


def check_inputs(signature: Signature, received: dict[str, tuple[str, list[int]]]) -> int:
    """Check ``{name: (datatype, shape)}`` against the signature and return the batch size.

    Raises ``InputError`` naming the input and the expected and received shape and dtype.
    """
    expected = {s.name for s in signature.inputs}
    unknown = sorted(set(received) - expected)
    if unknown:
        raise InputError(
            f"Unknown input(s) {', '.join(unknown)}; the model takes "
            + ", ".join(f"'{s.name}' {s.describe()}" for s in signature.inputs)
            + "."
        )
    batch = None
    for spec in signature.inputs:
        if spec.name not in received:
            raise InputError(f"Missing input '{spec.name}' ({spec.describe()}).")
        datatype, shape = received[spec.name]
        got = f"{datatype}{list(shape)}"
        if datatype != spec.datatype:
            raise InputError(f"Input '{spec.name}' should be {spec.describe()}; received {got}.")
        fits = len(shape) == len(spec.shape) and all(
            want in (-1, have) for want, have in zip(spec.shape, shape, strict=True)
        )
        if not fits:
            raise InputError(
                f"Input '{spec.name}' should have shape {spec.shape} (-1: any batch size); "
                f"received {got}."
            )
        if empty_too_wide(shape):
            raise InputError(
                f"Input '{spec.name}' has shape {list(shape)} and no values; a tensor without "
                f"values may have at most {MAX_EMPTY_LISTS} rows. Send one with values."
            )
        if shape and spec.shape[:1] == [-1]:  # a fixed first dimension is no batch
            if batch not in (None, shape[0]):
                raise InputError(
                    f"All inputs need the same batch size; '{spec.name}' has {shape[0]}, "
                    f"others {batch}."
                )
            batch = shape[0]
    if batch == 0:
        raise InputError(
            "The inputs have no rows (a batch of 0); send at least one, e.g. "
            + ", ".join(f"'{s.name}' {s.describe()}" for s in signature.inputs)
            + "."
        )
    return batch or 1
