"""A compression job's parameters, checked before the job is queued.

No torch here: the web process checks parameters against what it knows of the version (its
format, built-in architecture and signature) and never imports torch. Bad values raise
:class:`BadParams` (the caller's typo: 400); a method that cannot apply to this version raises
:class:`~inference.compression.NotApplicable` with the reason (422). The host runs exactly
the normalised parameters returned here.
"""

from __future__ import annotations

from typing import Any

from inference.compression import NotApplicable

METHODS = ("quantize", "prune", "distill")
# A student's training (weights, gradients, the optimiser's two moments) fits a host's memory.
MAX_STUDENT_PARAMETERS = 100_000_000
SCHEMES = ("dynamic_int8", "weight_only_int8", "fp16", "bf16")
PRUNE_KINDS = ("structured", "unstructured")
STRUCTURED = ("mlp", "small_cnn")
GENERATORS = ("normal", "uniform")

# Config keys of the built-in architectures (students): what a publisher may set, and what is
# derived from the teacher's signature.
STUDENT_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "mlp": ({"hidden", "dropout"}, {"in_features", "classes"}),
    "small_cnn": ({"channels", "hidden"}, {"in_channels", "image_size", "classes"}),
    "resnet": ({"width", "stages", "blocks"}, {"in_channels", "image_size", "classes"}),
    "transformer": (
        {"d_model", "heads", "layers", "dim_feedforward"},
        {"features", "seq_len", "classes"},
    ),
}
# Student settings that are lists (and how long they may be); every other is one integer.
LIST_KEYS = {("mlp", "hidden"): range(1, 33), ("small_cnn", "channels"): range(2, 3)}
LIST_EXAMPLES = {("mlp", "hidden"): "[64, 32]", ("small_cnn", "channels"): "[16, 32]"}
NEEDS_MODULES = (
    "{method} needs the model's modules, which a {format} archive compiles away. It applies to "
    "versions uploaded as a safetensors state dict with a built-in architecture; distillation "
    "works with any format, and a torch.export (pt2) graph takes the fp16 and bf16 casts."
)
GRAPH_CASTS = ("fp16", "bf16")


class BadParams(ValueError):
    """A parameter is missing, unknown or out of range; the message names it."""


def check(
    method: str,
    params: dict[str, Any] | None,
    *,
    format: str,
    architecture: str = "",
    config: dict[str, Any] | None = None,
    signature: dict[str, Any] | None = None,
    has_labels: bool = False,
) -> dict[str, Any]:
    """The normalised parameters of ``method`` for a version with this format, architecture,
    config and signature (``has_labels``: the publisher sent hard labels with its data)."""
    if method not in METHODS:
        raise BadParams(f"Unknown method '{method}'; choose one of {', '.join(METHODS)}.")
    params = dict(params or {})
    if method == "quantize":
        return _quantize(params, format, architecture, config or {}, signature)
    if method == "prune":
        return _prune(params, format, architecture, config or {})
    return _distill(params, signature, has_labels)


def _only(params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadParams(
            f"Unknown parameter(s) {', '.join(unknown)}; this method takes "
            f"{', '.join(sorted(allowed))}."
        )


def _number(
    params: dict, name: str, default, low: float, high: float, *, integer: bool = False
) -> float | int:
    value = params.get(name, default)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadParams(f"{name} must be {'an integer' if integer else 'a number'}.")
    # NaN compares false and infinities fall outside; math.isfinite would overflow on an
    # integer past a float's range (10**400).
    if not low <= value <= high:
        raise BadParams(f"{name} must be between {low} and {high}, got {value}.")
    return value


def _choice(params: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = params.get(name, default)
    if not isinstance(value, str) or value not in choices:
        raise BadParams(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
    return value


def _built_in(method: str, format: str, architecture: str, config: dict) -> None:
    if format != "safetensors" or not architecture:
        raise NotApplicable(NEEDS_MODULES.format(method=method, format=format))
    if "compression" in config:
        raise NotApplicable(
            f"This version is already compressed ({config['compression']}); "
            f"{method.lower()} its parent instead."
        )


def _quantize(
    params: dict, format: str, architecture: str, config: dict, signature: dict | None
) -> dict:
    _only(params, {"scheme"})
    scheme = _choice(params, "scheme", "dynamic_int8", SCHEMES)
    if format == "pt2" and scheme in GRAPH_CASTS:
        # The graph is cast as a whole and exported again, where its operators allow.
        batched_input(signature)
        return {"scheme": scheme}
    _built_in("Quantization", format, architecture, config)
    if architecture == "transformer" and scheme.endswith("int8"):
        # torch's encoder layer reads its Linear layers' weights itself, which int8 layers
        # no longer have: every job failed in the host, blamed on the model.
        raise NotApplicable(
            f"{scheme} cannot quantize the built-in transformer (its encoder layers read "
            "their weights directly); use the fp16 or bf16 scheme, or distill it."
        )
    return {"scheme": scheme}


def _prune(params: dict, format: str, architecture: str, config: dict) -> dict:
    _only(params, {"kind", "amount", "norm"})
    kind = _choice(params, "kind", "structured", PRUNE_KINDS)
    amount = float(_number(params, "amount", 0.5, 0.01, 0.99))
    norm = int(_number(params, "norm", 1, 1, 2, integer=True))
    _built_in("Pruning", format, architecture, config)
    if kind == "structured" and architecture not in STRUCTURED:
        raise NotApplicable(
            f"Structured channel pruning rewires the built-in {' and '.join(STRUCTURED)} "
            f"architectures, not {architecture} (residual and attention layers cannot be "
            "rewired safely); use kind 'unstructured' instead."
        )
    return {"kind": kind, "amount": amount, "norm": norm}


def batched_input(signature: dict[str, Any] | None, what: str = "This method") -> list[int]:
    """The model's one FP32 input's shape after its dynamic batch dimension."""
    if not signature:
        raise NotApplicable("This version has no signature yet; wait until it is ready.")
    inputs = signature.get("inputs", [])
    if len(inputs) != 1 or inputs[0]["datatype"] != "FP32":
        raise NotApplicable(f"{what} needs a model with exactly one FP32 input.")
    shape = inputs[0]["shape"]
    if shape[:1] != [-1] or any(d < 1 for d in shape[1:]):
        raise NotApplicable(
            f"{what} needs an input with a dynamic batch and fixed other dimensions; "
            f"this model takes {shape}."
        )
    return shape[1:]


def teacher_shape(signature: dict[str, Any] | None) -> tuple[list[int], int]:
    """The teacher's input shape without the batch dimension, and its number of classes."""
    dims = batched_input(signature, "Distillation")
    outputs = signature.get("outputs", [])
    if len(outputs) != 1 or len(outputs[0]["shape"]) != 2 or outputs[0]["shape"][1] < 2:
        raise NotApplicable(
            "Distillation matches class scores: it needs a model with one output of shape "
            "[batch, classes]."
        )
    return dims, outputs[0]["shape"][1]


def _student(student: Any, dims: list[int], classes: int) -> dict[str, Any]:
    if not isinstance(student, dict) or set(student) - {"architecture", "config"}:
        raise BadParams('student must be {"architecture": ..., "config": {...}}.')
    name = student.get("architecture")
    if not isinstance(name, str) or name not in STUDENT_KEYS:
        raise BadParams(f"student.architecture must be one of {', '.join(STUDENT_KEYS)}.")
    config = student.get("config") or {}
    settable, derived = STUDENT_KEYS[name]
    if not isinstance(config, dict) or set(config) - settable - derived:
        raise BadParams(
            f"student.config for {name} takes {', '.join(sorted(settable))} "
            f"({', '.join(sorted(derived))} come from the teacher)."
        )
    fits = {
        "mlp": len(dims) == 1,
        "small_cnn": len(dims) == 3 and dims[1] == dims[2] and dims[1] % 4 == 0,
        "resnet": len(dims) == 3,
        "transformer": len(dims) == 2,
    }[name]
    if not fits:
        raise NotApplicable(f"A {name} student cannot take the teacher's input of shape {dims}.")
    filled = {
        "mlp": lambda: {"in_features": dims[0]},
        "small_cnn": lambda: {"in_channels": dims[0], "image_size": dims[1]},
        "resnet": lambda: {"in_channels": dims[0], "image_size": [max(d, 1) for d in dims[1:]]},
        "transformer": lambda: {"seq_len": dims[0], "features": dims[1]},
    }[name]()
    filled["classes"] = classes
    clashing = sorted(k for k in derived & set(config) if config[k] != filled[k])
    if clashing:
        raise BadParams(
            f"student.config.{', '.join(clashing)} must match the teacher "
            f"({', '.join(f'{k}={filled[k]}' for k in clashing)}): these come from the teacher."
        )
    config = {k: v for k, v in config.items() if k not in derived}
    for key, value in config.items():
        if key == "dropout":
            _number(config, key, 0.0, 0.0, 0.9)
            continue
        # A list where the architecture takes one (a scalar there failed in the host, as
        # "the model raised an error"), a number everywhere else.
        want = LIST_KEYS.get((name, key))
        if want is not None and not (isinstance(value, list) and len(value) in want):
            sizes = str(want.start) if len(want) == 1 else f"{want.start} to {want.stop - 1}"
            raise BadParams(
                f"student.config.{key} is a list of {sizes} integers, e.g. "
                f"{LIST_EXAMPLES[(name, key)]}."
            )
        if want is None and isinstance(value, list):
            raise BadParams(f"student.config.{key} is one integer, not a list.")
        ints = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8192 for v in ints):
            raise BadParams(f"student.config.{key} must be integers between 1 and 8192.")
    config = {**config, **filled}
    parameters = student_parameters(name, config)
    if parameters > MAX_STUDENT_PARAMETERS:
        # It failed in the host, as "the model used more memory than a model host allows",
        # which blamed the publisher's model.
        raise BadParams(
            f"This student would have {parameters:,} parameters; a student may have at most "
            f"{MAX_STUDENT_PARAMETERS:,} (it is meant to be smaller than its teacher). Use "
            "fewer or narrower layers."
        )
    return {"architecture": name, "config": config}


def student_parameters(name: str, c: dict[str, Any]) -> int:
    """The parameter count of the built-in architecture ``name`` with config ``c`` (with its
    defaults), counted without building it: the web process has no torch."""
    classes = c.get("classes", 10)
    if name == "mlp":
        widths = [c.get("in_features", 16), *c.get("hidden", [64, 64]), classes]
        return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    if name == "small_cnn":
        c1, c2 = c.get("channels", [16, 32])
        hidden, side = c.get("hidden", 128), c.get("image_size", 28) // 4
        convs = c1 * (c.get("in_channels", 1) * 9 + 1) + c2 * (c1 * 9 + 1)
        return convs + (c2 * side * side + 1) * hidden + (hidden + 1) * classes
    if name == "resnet":
        width, channels = c.get("width", 32), c.get("width", 32)
        total = width * c.get("in_channels", 3) * 9 + 2 * width
        for stage in range(c.get("stages", 2)):
            if stage:
                total += channels * channels * 2 * 9 + 4 * channels
                channels *= 2
            total += c.get("blocks", 2) * (2 * channels * channels * 9 + 4 * channels)
        return total + (channels + 1) * classes
    d, feedforward = c.get("d_model", 64), c.get("dim_feedforward", 128)
    layer = 4 * d * d + 4 * d + 2 * d * feedforward + feedforward + d + 4 * d
    total = (c.get("features", 16) + 1) * d + c.get("seq_len", 32) * d
    return total + c.get("layers", 2) * layer + (d + 1) * classes


def _distill(params: dict, signature: dict[str, Any] | None, has_labels: bool) -> dict:
    _only(
        params,
        {
            "student",
            "temperature",
            "epochs",
            "lr",
            "batch_size",
            "patience",
            "samples",
            "generator",
            "holdout",
            "seed",
            "hard_weight",
        },
    )
    if "student" not in params:
        raise BadParams('distill needs a student: {"architecture": "mlp", "config": {...}}.')
    checked = {
        "temperature": float(_number(params, "temperature", 4.0, 0.1, 100.0)),
        "epochs": _number(params, "epochs", 20, 1, 500, integer=True),
        "lr": float(_number(params, "lr", 1e-3, 1e-6, 1.0)),
        "batch_size": _number(params, "batch_size", 64, 1, 4096, integer=True),
        "patience": _number(params, "patience", 3, 1, 100, integer=True),
        "samples": _number(params, "samples", 4096, 16, 200_000, integer=True),
        "generator": _choice(params, "generator", "normal", GENERATORS),
        "holdout": float(_number(params, "holdout", 0.1, 0.01, 0.5)),
        "seed": _number(params, "seed", 0, 0, 2**31, integer=True),
        "hard_weight": float(_number(params, "hard_weight", 0.0, 0.0, 1.0)),
    }
    if checked["hard_weight"] > 0 and not has_labels:
        raise BadParams("hard_weight > 0 needs data with labels.")
    dims, classes = teacher_shape(signature)
    return {"student": _student(params["student"], dims, classes), **checked}
