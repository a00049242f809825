"""Micro-batching: concurrent predictions for the same version are merged into one forward
pass in the model host and split back, so a busy model runs at batched throughput.

A batch only ever holds one consumer tenant's jobs, with the same shapes after the batch
dimension and the same dtypes: a model sees every row of the batch it runs, so merging two
tenants' inputs would let it hand one tenant's rows to the other (see
``docs/decisions/0006-predictions-pipeline.md``). What the model answers for a merged batch is
checked before it is split: every output must have one row per input row, else each job runs
again alone."""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from config.logs import current_request_id
from config.metrics import BATCH_SIZE
from inference import tensors
from inference.runtime.spec import MAX_EMPTY_LISTS, TensorSpec, empty_too_wide
from workers.host import HostFailure, ModelFailure, ModelHost

logger = logging.getLogger(__name__)
# Room for the safetensors header of an output of ``max_output_bytes`` of tensors.
OUTPUT_HEADER_BYTES = 1 << 20
# A forward pass running this long, and five times longer than the version's usual ones, is
# taken for a model that hangs (``VersionBatcher.stalled``).
STALL_SECONDS = 2.0


@dataclass
class Breaker:
    """Stops running a version whose model host keeps failing: after ``trip_after`` requests
    in a row end in a timeout, a crash or the memory limit, the version's jobs fail at once for
    ``cooldown`` seconds instead of each holding a worker thread up to its deadline (a model
    that loops forever would otherwise take every thread the worker has, one request at a
    time). Then the next request is let through: success closes the breaker, another failure
    opens it again at once. ``on_trip(reason, seconds)`` tells the web, which refuses new
    requests for the version meanwhile (``inference.limits``)."""

    trip_after: int
    cooldown: float
    on_trip: Callable[[str, float], None] = lambda reason, seconds: None
    COUNTED = ("timeout", "crash", "memory")
    failures: int = 0
    open_until: float = 0.0
    reason: str = ""

    def refusal(self) -> HostFailure | None:
        remaining = self.open_until - time.monotonic()
        if remaining <= 0:
            return None
        return HostFailure(
            "unavailable",
            f"Not run: this version is paused for {remaining:.0f} s more because "
            f"{self.reason} It was not billed; send it again later.",
        )

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, exc: HostFailure) -> None:
        if exc.kind not in self.COUNTED:
            return
        self.failures += 1
        if self.failures < self.trip_after:
            return
        self.open_until = time.monotonic() + self.cooldown
        self.reason = (
            f"its last {self.failures} requests failed in the model host (the last: {exc})."
        )
        logger.warning("breaker open for %.0f s: %s", self.cooldown, self.reason)
        try:
            self.on_trip(self.reason, self.cooldown)
        except Exception:  # noqa: BLE001 - the worker's own refusals hold without the web's
            logger.exception("could not tell the web that the breaker opened")


@dataclass
class Job:
    arrays: dict[str, np.ndarray]
    rows: int
    tenant: Hashable = None  # the consumer's tenant: only its own jobs share a batch
    future: Future = field(default_factory=Future)
    request_id: str | None = field(default_factory=current_request_id)

    @property
    def group(self) -> tuple:
        """Jobs that may share a forward pass: one tenant, the same non-batch shapes and
        dtypes (a dynamic sequence length differs from one request to the next)."""
        return (
            self.tenant,
            tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(self.arrays.items())),
        )


class VersionBatcher:
    """One thread per loaded version: takes the oldest waiting job with every waiting job of
    its group (``Job.group``) and, when there were any, gathers more for up to ``max_delay``
    seconds or ``max_batch`` rows; runs them as one request, and resolves each job with its
    own slice of the outputs and its share of the compute time. Jobs of other groups wait, in
    order, for the next batches: the oldest job always leads the next one, so none starves."""

    def __init__(
        self,
        *,
        host: Callable[[Hashable], ModelHost],
        drop_host: Callable[[Hashable], None],
        batchable: bool,
        max_batch: int,
        max_delay: float,
        timeout: float,
        outputs: list[TensorSpec] | None = None,
        max_output_bytes: int | None = None,
        breaker: Breaker | None = None,
    ):
        self._host, self._drop_host = host, drop_host
        self.breaker = breaker or Breaker(trip_after=1 << 30, cooldown=0)
        self.batchable, self.max_batch, self.max_delay = batchable, max_batch, max_delay
        self.timeout = timeout
        self.outputs = {spec.name: spec for spec in outputs or []}
        # The host refuses larger outputs itself; one that sends more anyway is killed.
        self.max_payload = max_output_bytes and max_output_bytes + OUTPUT_HEADER_BYTES
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._held: collections.deque[Job] = collections.deque()  # other groups', in order
        self.batches: list[int] = []  # sizes of recent batches, for metrics and tests
        self._forward_started: float | None = None  # the request in the host began then
        self._usual = 0.0  # moving average of recent requests' seconds
        threading.Thread(target=self._loop, daemon=True, name="batcher").start()

    def stalled(self) -> bool:
        """Whether the request in the host has run past ``STALL_SECONDS`` and five times this
        version's usual time: a model that hangs, which callers should not all wait on."""
        started = self._forward_started
        if started is None:
            return False
        return time.monotonic() - started > max(STALL_SECONDS, 5 * self._usual)

    def submit(
        self,
        arrays: dict[str, np.ndarray],
        rows: int,
        *,
        tenant: Hashable = None,
        log_id: str | None = None,
    ) -> Future:
        """``log_id``: what the model's output is logged under when no request is being
        served (the fast path's threads): the prediction's id."""
        job = Job(arrays, rows, tenant)
        job.request_id = job.request_id or log_id
        self._jobs.put(job)
        return job.future

    def _next_batch(self) -> list[Job]:
        while True:  # everything already waiting joins the held jobs, oldest first
            try:
                self._held.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        first = self._held.popleft() if self._held else self._jobs.get()
        # A job whose caller stopped waiting (cancelled its future) is dropped; the others
        # are marked running, after which they can no longer be cancelled.
        if not first.future.set_running_or_notify_cancel():
            return []
        batch, rows = [first], first.rows
        if not self.batchable:
            return batch
        waiting, self._held = self._held, collections.deque()
        for job in waiting:
            if job.future.cancelled():
                continue
            if job.group == first.group and rows + job.rows <= self.max_batch:
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
                    rows += job.rows
            else:
                self._held.append(job)
        # Alone, it runs at once (a quiet model is not held back by max_delay); with company,
        # it waits up to max_delay for more. Under load the jobs that arrive during a forward
        # pass make the next batch anyway.
        deadline = time.monotonic() + self.max_delay
        while len(batch) > 1 and rows < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                job = self._jobs.get(timeout=remaining)
            except queue.Empty:
                break
            if job.group == first.group and rows + job.rows <= self.max_batch:
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
                    rows += job.rows
            else:
                self._held.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                continue
            self.batches = [*self.batches[-99:], len(batch)]
            BATCH_SIZE.observe(len(batch))
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - never let the batcher thread die
                logger.exception("batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _forward(
        self, arrays: dict[str, np.ndarray], jobs: list[Job]
    ) -> tuple[dict[str, np.ndarray], float]:
        # The host is told which requests it serves, so its output is logged under them.
        request_id = ",".join(dict.fromkeys(job.request_id for job in jobs if job.request_id))
        refusal = self.breaker.refusal()
        if refusal is not None:
            raise refusal
        payload = tensors.encode(arrays)

        def ask() -> tuple[dict, bytes]:
            host = self._host(jobs[0].tenant)  # which may load the model first: not timed
            self._forward_started = time.monotonic()
            return host.request(
                {"op": "predict", "request_id": request_id},
                payload,
                timeout=self.timeout,
                max_payload=self.max_payload,
            )

        try:
            try:
                reply, body = ask()
            except HostFailure as exc:
                if exc.kind != "retired":
                    raise
                # The cache evicted the host after we looked it up, before it ran anything:
                # the next lookup loads the model afresh.
                reply, body = ask()
        except HostFailure as exc:
            self.breaker.failed(exc)
            raise
        finally:
            started, self._forward_started = self._forward_started, None
        # Only answers count towards the usual time: a timeout would hide the next hang.
        self._usual = 0.8 * self._usual + 0.2 * (time.monotonic() - started)
        self.breaker.succeeded()
        try:
            outputs = tensors.decode(body)
        except Exception as exc:  # noqa: BLE001 - what the model answered, not our fault
            raise ModelFailure(
                "output", f"The model's output could not be read ({type(exc).__name__})."
            ) from None
        self._check_types(outputs)
        return outputs, reply["compute_ms"]  # bounded by ModelHost.request

    def _check_types(self, outputs: dict[str, np.ndarray]) -> None:
        """An output of a datatype the API cannot carry, or other than its signature's, fails
        as the model's error: recorded and billed, it could not be read back. So do outputs
        other than the signature's (a model whose outputs change with its input: a caller
        asking for one it did not return got a 500, billed) and an output without values
        whose JSON would hold more than ``MAX_EMPTY_LISTS`` lists (any size costs 0 bytes)."""
        if self.outputs and outputs.keys() != self.outputs.keys():
            raise ModelFailure(
                "output",
                f"The model returned the output(s) {', '.join(sorted(outputs)) or 'none'}, "
                f"where its signature has {', '.join(sorted(self.outputs))}.",
            )
        for name, array in outputs.items():
            if empty_too_wide(array.shape):
                raise ModelFailure(
                    "output",
                    f"The model's output '{name}' has shape {list(array.shape)} and no values; "
                    f"an output without values may have at most {MAX_EMPTY_LISTS} rows.",
                )
            datatype = tensors.DATATYPE.get(array.dtype, str(array.dtype))
            spec = self.outputs.get(name)
            expected = spec.datatype if spec is not None else None
            if datatype not in tensors.NUMPY or expected not in (None, datatype):
                raise ModelFailure(
                    "output",
                    f"The model's output '{name}' is {datatype}, where its signature says "
                    f"{expected or 'one of ' + ', '.join(tensors.NUMPY)}.",
                )

    def _run(self, batch: list[Job]) -> None:
        if len(batch) == 1:
            return self._run_alone(batch[0])
        merged = {
            name: np.concatenate([job.arrays[name] for job in batch]) for name in batch[0].arrays
        }
        total = sum(job.rows for job in batch)
        try:
            outputs, compute_ms = self._forward(merged, batch)
        except ModelFailure:
            # One bad input can fail the whole batch: run each alone so only it fails.
            for job in batch:
                self._run_alone(job)
            return
        except HostFailure as exc:
            # The host died mid-batch: the others are retried alone on a fresh host (or fail
            # at once, if that made the breaker open).
            if exc.kind != "unavailable":
                self._drop_host(batch[0].tenant)
            for job in batch:
                self._run_alone(job)
            return
        if not all(out.ndim >= 1 and out.shape[0] == total for out in outputs.values()):
            # Not one output row per input row: the rows cannot be told apart, and a model
            # that mixes its rows up must not hand one request's rows to another.
            for job in batch:
                self._run_alone(job)
            return
        offset = 0
        for job in batch:
            part = {name: out[offset : offset + job.rows] for name, out in outputs.items()}
            offset += job.rows
            job.future.set_result((part, compute_ms * job.rows / total, len(batch)))

    def _run_alone(self, job: Job) -> None:
        try:
            outputs, compute_ms = self._forward(job.arrays, [job])
            self._check_rows(outputs, job.rows)
        except HostFailure as exc:
            if exc.kind != "unavailable":
                self._drop_host(job.tenant)
            job.future.set_exception(exc)
        except ModelFailure as exc:
            job.future.set_exception(exc)
        else:
            job.future.set_result((outputs, compute_ms, 1))

    def _check_rows(self, outputs: dict[str, np.ndarray], rows: int) -> None:
        """An output the signature gives a batch dimension has one row per input row."""
        if not self.batchable:
            return
        for name, out in outputs.items():
            spec = self.outputs.get(name)
            if spec is None or spec.shape[:1] != [-1]:
                continue
            got = out.shape[0] if out.ndim else "no"
            if got != rows:
                raise ModelFailure(
                    "output",
                    f"The model's output '{name}' has {got} rows for an input of {rows}; it "
                    "should have one row per input row.",
                )
