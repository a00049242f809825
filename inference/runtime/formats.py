"""Format adapters: bytes of a model file in, a module ready to run out."""

from __future__ import annotations

import ctypes
import io
import mmap
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch.export.passes import move_to_device_pass

from inference.runtime import architectures
from inference.runtime.signature import tensors_from_json


class LoadError(ValueError):
    """The file cannot be loaded as the format it claims; the message says why."""


@dataclass
class LoadedModel:
    module: Any  # callable on tensors
    input_names: list[str]
    example: dict[str, torch.Tensor] | None  # from the file itself, when it carries one
    parameter_count: int
    # Shapes the file fixes (-1 where a dimension is dynamic); None: batch assumed dynamic.
    input_shapes: dict[str, list[int]] | None = None
    # Keeps nothing from one call to the next: one host may serve every organisation (see
    # workers.services._batcher). A torch.export graph says so (it writes no buffer, parameter
    # or input and has no side-effect tokens); our built-in architectures are; TorchScript
    # can keep anything in its attributes, so it is never taken for stateless.
    stateless: bool = False


def _count(module) -> int:
    try:
        return sum(p.numel() for p in module.parameters())
    except (AttributeError, RuntimeError):
        return 0


def load(
    data: bytes,
    *,
    format: str,
    device: str,
    architecture: str = "",
    config: dict[str, Any] | None = None,
) -> LoadedModel:
    try:
        if format == "pt2":
            return _load_export(data, device)
        if format == "torchscript":
            return _load_torchscript(data, device)
        if format == "safetensors":
            return _load_safetensors(data, device, architecture, config or {})
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is the file's fault
        raise LoadError(f"Could not load the {format} file: {type(exc).__name__}: {exc}") from None
    raise LoadError(f"Unknown format '{format}'.")


def _load_export(data: bytes, device: str) -> LoadedModel:
    program = torch.export.load(io.BytesIO(data))
    names = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    example = None
    if program.example_inputs is not None:
        args, _kwargs = program.example_inputs
        if len(args) == len(names) and all(isinstance(a, torch.Tensor) for a in args):
            example = dict(zip(names, args, strict=True))
    shapes = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names and "val" in node.meta:
            shapes[node.name] = [d if isinstance(d, int) else -1 for d in node.meta["val"].shape]
    if device != "cpu":
        # Moves the constants and device arguments baked into the graph too (a tensor created
        # in ``forward`` is recorded with device="cpu"), which ``module().to(device)`` leaves.
        program = move_to_device_pass(program, device)
    stateless = _writes_nothing(program)
    module = program.module()
    return LoadedModel(module, names, example, _count(module), shapes or None, stateless)


def _writes_nothing(program) -> bool:
    """Whether an exported program can keep nothing from one call to the next: it returns
    only user outputs (no buffer or input mutation, no effect tokens), and every operation in
    its graphs is an aten operator that writes none of its arguments, draws no random numbers
    and reads no uninitialised memory. torch.export keeps in-place operators in its graphs
    (``aten.add_`` on a buffer), so each node is looked at. The random generator is state the
    process keeps: a call's input can set how far it moves, and the next caller can read that
    back from its own draws. ``empty`` hands out whatever the allocator freed last, which may
    be another caller's input. Anything else (a higher-order operator, an in-place one on a
    temporary, another namespace's) counts as state: the cost of a wrong "no" is only a host
    per organisation."""
    user_output = torch.export.graph_signature.OutputKind.USER_OUTPUT
    if any(spec.kind != user_output for spec in program.graph_signature.output_specs):
        return False
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if isinstance(graph, torch.fx.Graph) else ():
            if node.op in ("call_module", "call_method"):
                return False
            if node.op != "call_function" or node.target is operator.getitem:
                continue
            if not _keeps_nothing(node):
                return False
    return True


# Operators tagged as drawing random numbers that draw none when this argument is false or
# zero (how an exported model in eval mode calls them).
_RANDOM_ONLY_WITH = {
    "aten::dropout": "train",
    "aten::native_dropout": "train",
    "aten::feature_dropout": "train",
    "aten::alpha_dropout": "train",
    "aten::feature_alpha_dropout": "train",
    "aten::scaled_dot_product_attention": "dropout_p",
}


def _keeps_nothing(node) -> bool:
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        return False
    schema = target._schema
    if schema.is_mutable or "empty" in schema.name:  # empty, empty_like, new_empty_strided...
        return False
    if torch.Tag.nondeterministic_seeded not in target.tags:
        return True
    switch = _RANDOM_ONLY_WITH.get(schema.name)
    return switch is not None and not _argument(node, schema, switch)


def _argument(node, schema, name: str):
    """The value a call node passes for ``name`` (the schema's default where it passes
    none)."""
    for index, argument in enumerate(schema.arguments):
        if argument.name == name:
            if name in node.kwargs:
                return node.kwargs[name]
            if index < len(node.args):
                return node.args[index]
            return argument.default_value if argument.has_default_value() else True
    return True


HUGE_PAGE = 2 << 20  # x86-64's transparent huge page


def weights_in_huge_pages(module: Any) -> int:
    """Move a CPU model's weights (parameters and buffers of 2 MiB or more) into one anonymous
    mapping advised for transparent huge pages (``madvise(MADV_HUGEPAGE)``); returns the
    bytes moved. A forward pass reads every weight once, and over 4 KiB pages a model of
    hundreds of MB misses the TLB at every page: on the 2-vCPU VM the 200 MB MLP's forward
    at batch 1 took 10.8-11.0 ms with its weights as loaded and 9.9-10.6 ms moved (4 pairs).

    Only weights, once, at load: PyTorch's own switch (``THP_MEM_ALLOC_ENABLE``) advises every
    allocation of 2 MiB or more, activations too, whose page faults can then stall on memory
    compaction in the middle of a prediction. Left as they are: TorchScript modules (their
    attributes are the script's business), tensors that share storage with another (a view,
    tied weights seen twice) and anything not dense, contiguous and on the CPU. Without the
    kernel's support (THP off, no ``MADV_HUGEPAGE``) the weights still move, into ordinary
    pages, and the model runs as before."""
    if isinstance(module, torch.jit.ScriptModule) or not hasattr(mmap, "MADV_HUGEPAGE"):
        return 0
    tensors, storages = [], {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storages.get(storage.data_ptr(), 0) + 1
        tensors.append((tensor, storage))
    movable = [
        tensor
        for tensor, storage in tensors
        if tensor.nbytes >= HUGE_PAGE
        and storages[storage.data_ptr()] == 1
        and storage.nbytes() == tensor.nbytes
        and tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and tensor.is_contiguous()
    ]
    if not movable:
        return 0
    sizes = [-(-tensor.nbytes // 64) * 64 for tensor in movable]
    span = -(-sum(sizes) // HUGE_PAGE) * HUGE_PAGE
    region = mmap.mmap(-1, span + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    offset = -ctypes.addressof(ctypes.c_char.from_buffer(region)) % HUGE_PAGE
    region.madvise(mmap.MADV_HUGEPAGE, offset, span)
    with torch.no_grad():
        for tensor, size in zip(movable, sizes, strict=True):
            moved = torch.frombuffer(region, dtype=torch.uint8, count=tensor.nbytes, offset=offset)
            moved = moved.view(tensor.dtype).view(tensor.shape)
            moved.copy_(tensor)
            tensor.data = moved  # the tensors keep the mapping alive
            offset += size
    return sum(tensor.nbytes for tensor in movable)


def _load_torchscript(data: bytes, device: str) -> LoadedModel:
    module = torch.jit.load(io.BytesIO(data), map_location=device)
    module.eval()
    names = [a.name for a in module.forward.schema.arguments[1:]]
    return LoadedModel(module, names, None, _count(module))


def _load_safetensors(data: bytes, device: str, name: str, config: dict) -> LoadedModel:
    from safetensors.torch import load as load_tensors

    if "compression" in config:  # made by a compression job: int8, half or sparse weights
        from inference.compression import artifacts
        from inference.compression.evaluate import parameter_count

        try:
            module = artifacts.decode(data, name, config).to(device)
        except ValueError as exc:
            raise LoadError(f"The compressed {name} does not load: {exc}") from None
        config = artifacts.split_config(config)[0]
        shape = architectures.ARCHITECTURES[name].example_shape(config)
        names = [architectures.input_name(config)]
        example = tensors_from_json({names[0]: {"shape": list(shape)}}, names)
        return LoadedModel(module, names, example, parameter_count(module), stateless=True)
    module = architectures.build(name, config)
    state = load_tensors(data)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LoadError(
            f"The state dict does not fit {name} with this config: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}."
        )
    module.eval().to(device)
    shape = architectures.ARCHITECTURES[name].example_shape(config)
    names = [architectures.input_name(config)]
    example = tensors_from_json({names[0]: {"shape": list(shape)}}, names)
    return LoadedModel(module, names, example, _count(module), stateless=True)
