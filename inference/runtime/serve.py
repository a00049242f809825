"""The model host's main loop: one model, requests over stdin, replies over stdout.

Runs inside the sandbox (see ``workers.sandbox``) with an empty environment, no network and
no way to start processes. It receives the decrypted bytes of exactly one model and never
sees a key, a database or another tenant's weights. Nothing here imports Django.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from typing import Any

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_statm: int | None = None  # /proc/self/statm, opened once (a health check asks every time)


def _rss_bytes() -> int:
    global _statm
    if _statm is None:
        _statm = os.open("/proc/self/statm", os.O_RDONLY)
    return int(os.pread(_statm, 128, 0).split()[1]) * _PAGE_SIZE


def _device_bytes(device: str) -> int:
    """Bytes the model holds on its accelerator (0 on the CPU)."""
    if not device.startswith("cuda"):
        return 0
    import torch

    return int(torch.cuda.memory_allocated())


def _start_cuda() -> None:
    """Create the CUDA context while the host waits in the pre-started pool (about a second
    that a model's first load would otherwise pay). A failure is left for the load to report."""
    import torch

    try:
        torch.zeros(1, device="cuda")
    except Exception as exc:  # noqa: BLE001 - reported to the worker's log via stderr
        print(f"model host: CUDA did not start: {type(exc).__name__}: {exc}", file=sys.stderr)


MAX_OUTPUTS = 1024  # tensors a model may return


def outputs_to_dict(result: Any) -> dict:
    import torch

    if isinstance(result, torch.Tensor):
        return {"output": result}
    if isinstance(result, dict):
        outputs = {str(k): v for k, v in result.items()}
    elif isinstance(result, list | tuple):
        outputs = {f"output_{i}": v for i, v in enumerate(result)}
    else:
        raise TypeError(f"the model returned {type(result).__name__}, not tensors")
    for name, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            # Said here: later steps failed on it with "'tuple' object has no attribute 'dtype'".
            raise TypeError(
                f"the model's output '{name}' is a {type(value).__name__}, not a tensor; return "
                "a tensor, or a flat tuple, list or dict of tensors"
            )
    return outputs


class Host:
    def __init__(self) -> None:
        self.loaded = None
        self.signature = None
        self.device = "cpu"
        self.max_output_bytes: int | None = None
        self.emit = lambda header: None  # interim frames (progress) before a reply
        # Layouts of inputs (codec.decode_with_layout) that passed validate_inputs: a model's
        # requests repeat a few, and the check is skipped for them.
        self._valid_layouts: set[tuple] = set()

    def handle(self, header: dict, payload: bytes) -> tuple[dict, bytes]:
        op = header.get("op")
        if op == "ping":
            return {"ok": True, "rss": _rss_bytes(), "loaded": self.loaded is not None}, b""
        if op == "load":
            return self.load(header, payload), b""
        if op == "validate":
            return self.validate(header), b""
        if op == "predict":
            return self.predict(header, payload)
        if op == "compress":
            return self.compress(header, payload)
        return {"ok": False, "kind": "protocol", "error": f"unknown op {op!r}"}, b""

    def load(self, header: dict, payload: bytes) -> dict:
        from inference.runtime import formats
        from inference.runtime.signature import Signature

        if self.loaded is not None:
            return {"ok": False, "kind": "protocol", "error": "a host runs exactly one model"}
        self.device = header.get("device", "cpu")
        self.max_output_bytes = header.get("max_output_bytes")
        self.loaded = formats.load(
            payload,
            format=header["format"],
            device=self.device,
            architecture=header.get("architecture", ""),
            config=header.get("config") or {},
        )
        huge_page_bytes = 0
        if self.device == "cpu" and header.get("huge_pages"):
            huge_page_bytes = formats.weights_in_huge_pages(self.loaded.module)
        if header.get("signature"):
            self.signature = Signature.from_json(header["signature"])
            self._valid_layouts.clear()  # checked against another signature
        gc.freeze()  # the model's graph and modules too (a host runs one model): see main()
        return {
            "ok": True,
            "parameter_count": self.loaded.parameter_count,
            "input_names": self.loaded.input_names,
            "stateless": self.loaded.stateless,
            "huge_page_bytes": huge_page_bytes,
            "rss": _rss_bytes(),
            "device": self.device,
            "device_bytes": _device_bytes(self.device),
        }

    def _forward(self, tensors: list) -> tuple[dict, float]:
        import torch

        with torch.inference_mode():
            started = time.perf_counter()
            if self.device != "cpu":
                tensors = [t.to(self.device) for t in tensors]
            result = self.loaded.module(*tensors)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
        outputs = outputs_to_dict(result)
        # numpy (the worker, the web) has no bfloat16: such outputs are widened to float32,
        # exactly, for validation's signature and for every prediction alike.
        for name, value in outputs.items():
            if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
                outputs[name] = value.float()
        return outputs, elapsed * 1000

    def _rows_independent(self, ordered: list, outputs: dict) -> bool:
        """Whether each row of the outputs depends on its own row of the inputs alone, so that
        requests may be run together. The example is run together with a variant of itself
        (its float inputs scaled): each part must get what it gets alone. That refuses a model
        scoring each query against every item sent, one running a sequence along time, one
        taking statistics over the batch or mixing rows (reversing them). Any doubt, an error
        included, answers no: the model then runs one request at a time."""
        import torch

        # Half-precision weights or inputs round at about 1e-3 (fp16) to 8e-3 (bf16) of a value,
        # and a batch of another size may take other kernels: compared at float32's
        # tolerance, a plain bf16 MLP on a GPU was taken for mixing its rows. (bf16 outputs
        # reach here widened to float32, so the model's own dtypes say which.)
        low = (torch.float16, torch.bfloat16)
        half = any(t.dtype in low for t in ordered) or any(
            p.dtype in low for p in self.loaded.module.parameters()
        )
        rtol = 3e-2 if half else 1e-3

        def same(got, want) -> bool:
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                return False
            got, want = got.cpu(), want.cpu()
            if not got.dtype.is_floating_point:
                return torch.equal(got, want)
            got, want = got.float(), want.float()
            finite = want[torch.isfinite(want)]
            scale = float(finite.abs().max()) if finite.numel() else 1.0
            # Relative to the output's scale as well as to each value: rows mixed up differ
            # by about the scale, rounding by a small part of it.
            atol = rtol * 0.1 * scale + 1e-6
            return torch.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)

        def variant(t):
            # Float inputs scaled; integer ones (token ids) in reverse row order where there
            # are several, which a model taking statistics over the batch cannot tell apart
            # only when they are all alike.
            if t.dtype.is_floating_point:
                return t * 0.5 + 0.25
            return t.flip(0) if t.shape[0] > 1 else t

        try:
            if any(t.dim() == 0 or t.shape[0] == 0 for t in ordered):
                return False
            other = [variant(t) for t in ordered]
            alone, _ = self._forward(other)
            together, _ = self._forward(
                [torch.cat([a, b]) for a, b in zip(ordered, other, strict=True)]
            )
            for name, single in outputs.items():
                rows = single.shape[0] if single.dim() else 0
                pair = together.get(name)
                if not rows or not isinstance(pair, torch.Tensor) or pair.shape[0] != 2 * rows:
                    return False
                if not (same(pair[:rows], single) and same(pair[rows:], alone.get(name))):
                    return False
        except Exception:  # noqa: BLE001 - a model that cannot run so is not batched
            return False
        return True

    def validate(self, header: dict) -> dict:
        import torch

        from inference.runtime.signature import (
            InputError,
            Signature,
            spec_of,
            tensors_from_json,
        )

        if self.loaded is None:
            return {"ok": False, "kind": "protocol", "error": "no model loaded"}
        names = self.loaded.input_names
        if header.get("example") is not None:
            example = tensors_from_json(header["example"], names)
        elif self.loaded.example is not None:
            example = self.loaded.example
        else:
            raise InputError(
                "This model file carries no example input; give one with the upload "
                '(example_input, e.g. {"x": {"shape": [1, 4], "datatype": "FP32"}}).'
            )
        missing = [n for n in names if n not in example]
        if missing:
            raise InputError(f"The example input lacks {missing}; the model takes {names}.")
        ordered = [example[n] for n in names]
        for name in names:
            if example[name].dtype == torch.bfloat16:
                raise InputError(
                    f"The input '{name}' is BF16, which requests cannot carry (JSON and the "
                    "binary protocol have no BF16): take FP32 and cast it in the model."
                )
        outputs, _ = self._forward(ordered)  # warm-up, and the outputs' specs
        if len(outputs) > MAX_OUTPUTS:
            # Its signature would not even fit the reply ("a reply header of 2419035 bytes").
            raise InputError(
                f"The model returns {len(outputs)} tensors; at most {MAX_OUTPUTS} are served: "
                "stack them into fewer."
            )
        for name, tensor in outputs.items():
            if tensor.layout != torch.strided:
                # It ran here, then every prediction failed encoding it.
                raise InputError(
                    f"The model's output '{name}' is a {tensor.layout} tensor; return a dense "
                    "one (.to_dense())."
                )
        timings = [self._forward(ordered)[1] for _ in range(5)]
        fixed = self.loaded.input_shapes or {}
        batch_dynamic = all(shape[:1] == [-1] for shape in fixed.values()) if fixed else True
        inputs = [spec_of(n, example[n], fixed.get(n)) for n in names]
        batched = batch_dynamic and all(spec.shape[:1] == [-1] for spec in inputs)
        self.signature = Signature(
            inputs=inputs,
            outputs=[
                spec_of(n, t, None if batch_dynamic else list(t.shape)) for n, t in outputs.items()
            ],
            rows_independent=not batched or self._rows_independent(ordered, outputs),
        )
        self._valid_layouts.clear()  # checked against another signature
        return {
            "ok": True,
            "signature": self.signature.to_json(),
            "latency_ms": statistics.median(timings),
            "parameter_count": self.loaded.parameter_count,
        }

    def predict(self, header: dict, payload: bytes) -> tuple[dict, bytes]:
        from inference.runtime import codec, wire
        from inference.runtime.signature import validate_inputs

        if self.loaded is None or self.signature is None:
            return {"ok": False, "kind": "protocol", "error": "no validated model"}, b""
        inputs, layout = codec.decode_with_layout(payload)
        if layout in self._valid_layouts:  # names, dtypes and shapes checked before
            ordered = [inputs[spec.name] for spec in self.signature.inputs]
        else:
            ordered = validate_inputs(self.signature, inputs)
            if len(self._valid_layouts) >= wire.CACHE_LIMIT:
                self._valid_layouts.clear()
            self._valid_layouts.add(layout)
        outputs, compute_ms = self._forward(ordered)
        size = sum(t.numel() * t.element_size() for t in outputs.values() if hasattr(t, "numel"))
        if self.max_output_bytes is not None and size > self.max_output_bytes:
            # Refused before it is encoded, stored and billed (a tiny input can ask for any
            # size); "output": said to the caller as it is, the model's fault.
            error = (
                f"The model's output is {size / 2**20:.1f} MiB, over the limit of "
                f"{self.max_output_bytes / 2**20:g} MiB for one prediction."
            )
            return {"ok": False, "kind": "output", "error": error}, b""
        return {"ok": True, "compute_ms": compute_ms}, codec.encode(outputs)

    def compress(self, header: dict, payload: bytes) -> tuple[dict, bytes]:
        """Compress the model in ``payload`` (a version file, the parent, followed by
        ``data_bytes`` of the publisher's data as safetensors) and answer with the new
        version's file and its report; progress frames come first. The parent is loaded on the
        CPU, where the quantized kernels run."""
        from inference.compression import params as checks
        from inference.compression.run import compress
        from inference.runtime import formats

        if self.loaded is not None:
            return {"ok": False, "kind": "protocol", "error": "a host runs exactly one model"}, b""
        method = header["method"]
        signature = header.get("signature") or {}
        data_bytes = int(header.get("data_bytes") or 0)
        data = labels = None
        if data_bytes:
            from inference.runtime import codec

            tensors = codec.decode(payload[len(payload) - data_bytes :])
            data, labels = tensors["inputs"], tensors.get("labels")
            payload = payload[: len(payload) - data_bytes]
        params = checks.check(
            method,
            header.get("params"),
            format=header["format"],
            architecture=header.get("architecture", ""),
            config=header.get("config") or {},
            signature=signature,
            has_labels=labels is not None,
        )
        started = time.monotonic()

        def progress(phase: str, percent: float, loss: float | None) -> None:
            self.emit(
                {
                    "phase": phase,
                    "percent": round(percent, 2),
                    "loss": loss,
                    "elapsed": time.monotonic() - started,
                }
            )

        progress("load", 1.0, None)
        size = len(payload)
        self.loaded = formats.load(
            payload,
            format=header["format"],
            device="cpu",
            architecture=header.get("architecture", ""),
            config=header.get("config") or {},
        )
        del payload
        dims = list(signature["inputs"][0]["shape"][1:]) if signature else []
        if not dims or any(d < 1 for d in dims) or len(signature["inputs"]) != 1:
            from inference.compression import NotApplicable

            raise NotApplicable(
                "Compression measures the model on inputs generated from its signature: it "
                "needs one input with fixed dimensions after the batch."
            )
        result = compress(
            self.loaded.module,
            parent_size=size,
            method=method,
            params=params,
            architecture=header.get("architecture", ""),
            config=header.get("config") or {},
            input_dims=dims,
            format=header["format"],
            input_name=signature["inputs"][0]["name"],
            data=data,
            labels=labels,
            progress=progress,
            repeats=int(header.get("repeats", 20)),
        )
        reply = {
            "ok": True,
            "format": result.format,
            "architecture": result.architecture,
            "config": result.config,
            "report": result.report,
        }
        return reply, result.data


def without_model_code(error: str) -> str:
    """A prediction's error as its caller may read it. TorchScript writes the model's own
    source into its errors (the lines around the failure, the publisher's file paths): a
    consumer is told the error that ended the traceback, not the publisher's code. The
    publisher sees the whole text where the caller is itself (validation, compression)."""
    if "Traceback of TorchScript" not in error:
        return error
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1].removeprefix("builtins.")


def main() -> None:
    from inference.compression import NotApplicable
    from inference.runtime.formats import LoadError
    from inference.runtime.protocol import FrameReader, write_frame
    from inference.runtime.signature import InputError

    # The protocol owns the original stdout; anything the model prints goes to stderr.
    reply = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    requests = FrameReader(0, int(os.environ.get("MM_HOST_POLL_MICROSECONDS", "0")) / 1e6)
    import torch

    # torch.export's loader imports ~1,300 modules on first use: pay that while the host waits
    # in the pre-started pool, not when a model's first request is waiting.
    import torch.export._trace  # noqa: F401
    import torch.export.pt2_archive._package  # noqa: F401

    threads = int(os.environ.get("MM_HOST_THREADS", "1"))
    torch.set_num_threads(threads)
    # The pool torch.jit.fork runs on, one thread per core by default: a model could start
    # work there that outlives its reply on every core (the worker's health check kills a
    # host working with no request; this bounds what it can take meanwhile).
    torch.set_num_interop_threads(threads)
    if os.environ.get("MM_HOST_DEVICE", "cpu").startswith("cuda"):
        _start_cuda()
    host = Host()
    host.emit = lambda header: write_frame(reply, {"ok": True, "progress": True, **header})
    # torch's ~320,000 objects leave the collector's full passes, each of which took about
    # 200 ms on our reference VM and stopped the prediction it fell in (``gc.freeze``).
    gc.freeze()
    write_frame(reply, {"ok": True, "ready": True, "pid": os.getpid()})
    while True:
        try:
            header, payload = requests.read_frame()
        except EOFError:
            return
        try:
            out, body = host.handle(header, payload)
        except (InputError, NotApplicable) as exc:
            out, body = {"ok": False, "kind": "input", "error": str(exc)}, b""
        except LoadError as exc:
            out, body = {"ok": False, "kind": "load", "error": str(exc)}, b""
        except Exception as exc:  # noqa: BLE001 - the model's own error, reported to the caller
            error = f"{type(exc).__name__}: {exc}"
            if header.get("op") == "predict":
                error = without_model_code(error)
            out, body = {"ok": False, "kind": "model", "error": error}, b""
        del payload
        write_frame(reply, out, body)


if __name__ == "__main__":
    sys.exit(main())
