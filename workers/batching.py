"""Micro-batching: concurrent predictions for the same version are merged into one forward
pass in the model host and split back, so a busy model runs at batched throughput."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from config.logs import current_request_id
from config.metrics import BATCH_SIZE
from inference import tensors
from workers.host import HostFailure, ModelFailure, ModelHost

logger = logging.getLogger(__name__)


@dataclass
class Job:
    arrays: dict[str, np.ndarray]
    rows: int
    future: Future = field(default_factory=Future)
    request_id: str | None = field(default_factory=current_request_id)


class VersionBatcher:
    """One thread per loaded version: takes the first waiting job with every job already
    waiting and, when there were any, gathers more for up to ``max_delay`` seconds or
    ``max_batch`` rows; runs them as one request, and resolves each job with its own slice of
    the outputs and its share of the compute time."""

    def __init__(
        self,
        *,
        host: Callable[[], ModelHost],
        drop_host: Callable[[], None],
        batchable: bool,
        max_batch: int,
        max_delay: float,
        timeout: float,
    ):
        self._host, self._drop_host = host, drop_host
        self.batchable, self.max_batch, self.max_delay = batchable, max_batch, max_delay
        self.timeout = timeout
        self._jobs: queue.Queue[Job] = queue.Queue()
        self.batches: list[int] = []  # sizes of recent batches, for metrics and tests
        threading.Thread(target=self._loop, daemon=True, name="batcher").start()

    def submit(self, arrays: dict[str, np.ndarray], rows: int) -> Future:
        job = Job(arrays, rows)
        self._jobs.put(job)
        return job.future

    def _loop(self) -> None:
        while True:
            batch = [self._jobs.get()]
            rows = batch[0].rows
            deadline = time.monotonic() + self.max_delay
            while self.batchable and rows < self.max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    # Alone, it runs at once (a quiet model is not held back by max_delay);
                    # with company, it waits up to max_delay for more. Under load the jobs
                    # that arrive during a forward pass make the next batch anyway.
                    remaining = deadline - time.monotonic()
                    if len(batch) == 1 or remaining <= 0:
                        break
                    try:
                        job = self._jobs.get(timeout=remaining)
                    except queue.Empty:
                        break
                batch.append(job)
                rows += job.rows
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
        reply, body = self._host().request(
            {"op": "predict", "request_id": request_id},
            tensors.encode(arrays),
            timeout=self.timeout,
        )
        return tensors.decode(body), reply["compute_ms"]

    def _run(self, batch: list[Job]) -> None:
        if len(batch) == 1:
            return self._run_alone(batch[0])
        merged = {
            name: np.concatenate([job.arrays[name] for job in batch]) for name in batch[0].arrays
        }
        try:
            outputs, compute_ms = self._forward(merged, batch)
        except ModelFailure:
            # One bad input can fail the whole batch: run each alone so only it fails.
            for job in batch:
                self._run_alone(job)
            return
        except HostFailure:
            # The host died mid-batch: the others are retried alone on a fresh host.
            self._drop_host()
            for job in batch:
                self._run_alone(job)
            return
        total = sum(job.rows for job in batch)
        offset = 0
        for job in batch:
            part = {name: out[offset : offset + job.rows] for name, out in outputs.items()}
            offset += job.rows
            job.future.set_result((part, compute_ms * job.rows / total, len(batch)))

    def _run_alone(self, job: Job) -> None:
        try:
            job.future.set_result((*self._forward(job.arrays, [job]), 1))
        except HostFailure as exc:
            self._drop_host()
            job.future.set_exception(exc)
        except ModelFailure as exc:
            job.future.set_exception(exc)
