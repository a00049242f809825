"""The worker side of a model host: spawn it in the sandbox, feed it one model, send it
requests with a deadline each, and kill and replace it when it crashes, hangs or grows past
its memory limit.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import math
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from config.logs import current_request_id
from config.metrics import HOST_RESTARTS
from inference.runtime.protocol import PREFIX, FrameReader, pack, predicted
from workers import sandbox

logger = logging.getLogger(__name__)
output_logger = logging.getLogger("workers.host.output")
HOST_LOG_LINES = 200  # lines of a host's output logged per request
# What the worker keeps of one line of a host's output (the rest of a longer line is read and
# dropped): a model may print lines of any length, and the last 64 are kept per host.
HOST_LINE_BYTES = 2048
_warned_unsandboxed = False
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in the module only from Python 3.10 on Linux
PIPE_SIZE = 1 << 20
# How long a request to a CUDA host waits for its reply by polling before it sleeps in
# select(). On the H200 machine (16 vCPUs, a VM) polling for 2 ms took the added time of a warm
# GPU prediction from 735-808 µs to 469-498 µs (bench/runtime.py --device cuda --spin-us 0 vs
# 2000, same machine): a thread that sleeps while the GPU works pays a slow wake-up.
# select(..., 0) releases the GIL on every call: the worker's other threads run meanwhile.
# MM_HOST_SPIN_MICROSECONDS=0 turns it off.
CUDA_SPIN_SECONDS = int(os.environ.get("MM_HOST_SPIN_MICROSECONDS", "2000")) / 1e6
# CPU hosts poll only for the replies that come quickly: a prediction polls for twice the
# host's recent predictions' round trip (a moving average) when that is under this cap, and
# sleeps at once otherwise, so a slow model or a large batch (the busy case, where the cores
# are needed for forward passes) costs no polling. On the 2-vCPU VM the small CNN at batch 1
# added 182-296 µs over an in-process call polling so, against 252-478 µs sleeping at once
# (bench/runtime.py --quick against --spin-us 0, alternating, two hours of one day): each
# sleep is a wake-up the VM serves slowly. MM_HOST_CPU_SPIN_MICROSECONDS=0 turns it off.
CPU_SPIN_CAP_SECONDS = int(os.environ.get("MM_HOST_CPU_SPIN_MICROSECONDS", "1000")) / 1e6


# How long a host, having replied, looks for its next request before it sleeps in read(). A
# request that follows closely (the batcher's next batch under load, a client calling in a
# loop) then costs the host no wake-up: on this 2-vCPU VM that took an empty round trip from
# 445-540 µs to 123-212 µs (bench/runtime.py --quick, same hour). An idle host pays at most
# this much CPU per request. MM_HOST_POLL_MICROSECONDS=0 turns it off.
HOST_POLL_MICROSECONDS = int(os.environ.get("MM_HOST_POLL_MICROSECONDS", "200"))


# Whether a CPU host moves the weights it loads into memory advised for transparent huge
# pages (inference.runtime.formats.weights_in_huge_pages): a forward pass reading hundreds of
# MB of weights then misses the TLB far less. MM_HOST_HUGE_PAGES=0 turns it off.
HUGE_PAGE_WEIGHTS = os.environ.get("MM_HOST_HUGE_PAGES", "1") != "0"


# CPU a host may use between two health checks with no request between them (its polling
# after a reply, a ping): more is work a model left running after it answered.
IDLE_CPU_SECONDS = float(os.environ.get("MM_HOST_IDLE_CPU_SECONDS", "1.0"))
# Requests whose replies carry no payload (only a header).
NO_PAYLOAD = frozenset({"ping", "load", "validate"})


def default_spin_seconds(device: str) -> float | None:
    """The fixed polling of a device's hosts; None: adaptive (CPU, see above)."""
    return CUDA_SPIN_SECONDS if device.startswith("cuda") else None


def _null(_constant: str) -> None:
    return None


# NaN and infinities (Python's json writes them; a compression report's fidelity after a
# float16 cast that overflowed) are null: the database's JSON columns refuse them. One decoder
# for every frame: json.loads(..., parse_constant=...) builds a new one per call (~25 µs).
_decode_header = json.JSONDecoder(parse_constant=_null).decode


def _tmp_bytes(pid: int) -> int:
    """Bytes in use in the /tmp that process ``pid`` sees (the host's, in its sandbox)."""
    try:
        stat = os.statvfs(f"/proc/{pid}/root/tmp")
    except OSError:
        return 0
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def _billable_ms(reported, elapsed_seconds: float) -> float:
    """A prediction's compute time, billed per second: what the host timed around the model,
    within what the worker saw the request take. The host runs the publisher's code and may
    say anything (a hostile model could bill its consumers for hours, or for negative time),
    so its figure is kept between 0 and the round trip, which is the worker's own measure."""
    elapsed_ms = elapsed_seconds * 1000
    if not isinstance(reported, int | float) or not math.isfinite(reported):
        return elapsed_ms
    return min(max(float(reported), 0.0), elapsed_ms)


class HostFailure(Exception):
    """The host process failed (crash, hang, memory) — not the caller's input."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class ModelFailure(Exception):
    """The host answered with an error: bad input (``kind == "input"``), a file that does not
    load (``"load"``), or an exception raised by the model (``"model"``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class ModelHost:
    device: str = "cpu"
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    rss_limit: int | None = None  # bytes; checked while waiting on each request
    # Polling for a reply before sleeping; None: the device's default (adaptive on the CPU).
    spin_seconds: float | None = None
    require_sandbox: bool = False
    proc: subprocess.Popen | None = None
    loaded_bytes: int = 0
    huge_page_bytes: int = 0  # of the loaded model's weights (HUGE_PAGE_WEIGHTS)
    requests: int = 0
    _stderr: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    _reader: FrameReader | None = None  # the host's replies, with what was read ahead
    _busy: threading.Lock = field(default_factory=threading.Lock)
    _retired: bool = False  # killed as soon as no request is using it
    _sandboxed: bool = False  # started under bubblewrap
    _interrupt: Callable[[], bool] | None = None
    # The request id(s) of the request in flight, for the host's output in our logs.
    _log_id: str | None = None
    _log_lines: int = 0
    # Moving average of recent predictions' round trips (seconds), for the adaptive polling.
    _predict_seconds: float | None = None
    _polling: bool = False  # the request in flight is a prediction (pings never poll)
    # (requests, CPU seconds) at the end of the last health check: what the host did since.
    _checked: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        if self.spin_seconds is None:
            self.spin_seconds = default_spin_seconds(self.device)  # None again on the CPU

    def ping(self, timeout: float = 2.0) -> bool:
        """Health check for a host that is not busy; a host that fails it is killed. A busy
        host is skipped (its request has its own deadline). Besides answering, a host must
        stay within its memory limit and, with no request since the last check, must not
        have worked: a model can leave threads running after its reply (``torch.jit.fork``),
        which no request's deadline or memory watch sees."""
        if not self._busy.acquire(blocking=False):
            return True
        self._busy.release()
        requests = self.requests
        try:
            self.request({"op": "ping"}, timeout=timeout)
        except HostFailure:
            return False  # killed and counted where it failed
        except ModelFailure:
            self.kill()
            HOST_RESTARTS.labels("health_check").inc()
            return False
        rss = self.rss() if self.rss_limit else 0
        if rss > (self.rss_limit or 0):
            return self._failed_check("memory", f"over its memory limit, {rss >> 20} MiB")
        cpu, checked = self.cpu_seconds(), self._checked
        self._checked = (self.requests, cpu)
        if checked is not None and checked[0] == requests and cpu - checked[1] > IDLE_CPU_SECONDS:
            return self._failed_check("idle_work", f"{cpu - checked[1]:.1f} CPU s with no request")
        return True

    def _failed_check(self, kind: str, why: str) -> bool:
        logger.warning("model host %s killed at its health check: %s", self.proc.pid, why)
        self.kill()
        HOST_RESTARTS.labels(kind).inc()
        return False

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the host and everything it runs have used."""
        if not self.alive:
            return 0.0
        try:
            root = psutil.Process(self.proc.pid)
            times = [p.cpu_times() for p in [root, *root.children(recursive=True)]]
        except psutil.NoSuchProcess:
            return 0.0
        return sum(t.user + t.system for t in times)

    def start(self, timeout: float = 120.0) -> ModelHost:
        global _warned_unsandboxed
        seccomp_fd = None
        if sandbox.bubblewrap() is None:
            if self.require_sandbox:
                raise HostFailure("sandbox", "bubblewrap (bwrap) is required but not installed.")
            if not _warned_unsandboxed:
                logger.warning(
                    "bubblewrap is not installed: model hosts run as plain child processes "
                    "(empty environment, resource limits, seccomp) WITHOUT namespaces. "
                    "Install the 'bubblewrap' package before serving untrusted models."
                )
                _warned_unsandboxed = True
            preexec, new_session = sandbox.fallback_preexec, False
        else:
            seccomp_fd = sandbox.seccomp_memfd()
            preexec, new_session = None, True
            self._sandboxed = True
        argv, env = sandbox.host_command(
            limits=self.limits,
            device=self.device,
            seccomp_fd=seccomp_fd,
            poll_microseconds=HOST_POLL_MICROSECONDS,
        )
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                pass_fds=(seccomp_fd,) if seccomp_fd else (),
                preexec_fn=preexec,
                start_new_session=new_session,
            )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        self._reader = FrameReader(self.proc.stdout.fileno())
        for pipe in (self.proc.stdin, self.proc.stdout):
            # Room for a whole batch in the pipe: fewer wake-ups, faster model loads.
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
            # Our ends only (the host's are separate descriptions): a write goes straight in
            # and waits in select() only when the pipe is full.
            os.set_blocking(pipe.fileno(), False)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        header, _ = self._read_frame(time.monotonic() + timeout, max_payload=0)
        if not header.get("ready"):
            self.kill()
            raise HostFailure("protocol", f"the host did not start: {header}")
        return self

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        pid, stream = self.proc.pid, self.proc.stderr
        cut = False  # in the middle of a line already cut short
        for chunk in iter(lambda: stream.readline(HOST_LINE_BYTES), b""):
            was_cut, cut = cut, len(chunk) == HOST_LINE_BYTES and not chunk.endswith(b"\n")
            if was_cut:
                continue
            text = chunk.decode(errors="replace").rstrip() + (" [cut]" if cut else "")
            self._stderr.append(text)
            # The model's own output, under the request that made it; capped per request so a
            # chatty or hostile model cannot flood the logs.
            self._log_lines += 1
            if self._log_lines <= HOST_LOG_LINES:
                output_logger.info(
                    "%s", text[:500], extra={"request_id": self._log_id or "-", "host_pid": pid}
                )

    def stderr_tail(self, lines: int = 8) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill the process now. Its pipes are closed by whoever holds the host: here when
        no request is using them, else by that request as it leaves (closed under a thread
        reading them, their descriptor numbers could be reused by another file meanwhile)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.error("model host %s did not die", self.proc.pid)
        if self._busy.acquire(blocking=False):
            try:
                self._close_pipes()
            finally:
                self._busy.release()

    def retire(self) -> None:
        """Kill the host once the request it is serving (if any) has its answer: for a cache
        that evicts or replaces it while another thread is in the middle of a request."""
        self._retired = True
        if self._busy.acquire(blocking=False):
            try:
                self.kill()  # idle: at once (kill closes nothing while we hold the lock)
                self._close_pipes()
            finally:
                self._busy.release()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def rss(self) -> int:
        """Resident memory of the host and everything it runs, and what its files hold in its
        private /tmp (a tmpfs: memory too, which no process's RSS shows)."""
        if not self.alive:
            return 0
        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree)
        except psutil.NoSuchProcess:
            return 0
        # Under bubblewrap the interpreter (the innermost process) has /tmp to itself; the
        # fallback's child shares the machine's.
        return rss + (_tmp_bytes(tree[-1].pid) if self._sandboxed and len(tree) > 1 else 0)

    # --- requests -----------------------------------------------------------------------

    def request(
        self,
        header: dict,
        payload: bytes = b"",
        *,
        timeout: float,
        on_progress: Callable[[dict], None] | None = None,
        interrupt: Callable[[], bool] | None = None,
        max_payload: int | None = None,
    ) -> tuple[dict, bytes]:
        """Send one request and wait for its reply. Raises ``ModelFailure`` when the host
        reports an error, ``HostFailure`` (after killing the host) when it dies, hangs past
        ``timeout`` or outgrows ``rss_limit``.

        Long requests (compression) send progress frames before the reply; each goes to
        ``on_progress``. ``interrupt`` is polled while waiting: when it answers True the host
        is killed and ``HostFailure("cancelled")`` raised. A reply whose payload would exceed
        ``max_payload`` bytes is not read: the host is killed (``HostFailure("protocol")``).
        The replies to ``NO_PAYLOAD`` requests may carry none: a hostile host announcing
        exabytes there would otherwise have the worker read until its memory ran out."""
        with self._busy:  # one request on the pipe at a time (batcher, validation, pings)
            if self._retired:
                # Evicted between the caller's lookup and this request: nothing ran.
                raise HostFailure("retired", "the model host was retired")
            if not self.alive:
                raise HostFailure("crash", "the model host is not running")
            deadline = time.monotonic() + timeout
            self.requests += 1
            self._interrupt = interrupt
            self._log_id = header.get("request_id") or current_request_id()
            self._log_lines = 0
            self._polling = header.get("op") == "predict"
            if header.get("op") in NO_PAYLOAD:
                max_payload = 0
            started = time.perf_counter()
            try:
                self._write(pack(header, payload), deadline)
                reply, body = self._read_frame(deadline, max_payload)
                while reply.get("progress"):
                    if on_progress is not None:
                        on_progress(reply)
                    reply, body = self._read_frame(deadline, max_payload)
                if self._polling:
                    took, average = time.perf_counter() - started, self._predict_seconds
                    self._predict_seconds = took if average is None else 0.8 * average + 0.2 * took
                    reply["compute_ms"] = _billable_ms(reply.get("compute_ms"), took)
            finally:
                self._interrupt = None
                if self._retired:
                    self.kill()
                if not self.alive:
                    self._close_pipes()
        if not reply.get("ok"):
            raise ModelFailure(reply.get("kind", "model"), reply.get("error", "unknown error"))
        return reply, body

    def _write(self, parts: list[bytes], deadline: float) -> None:
        fd = self.proc.stdin.fileno()
        for part in parts:
            view = memoryview(part)
            while view:
                try:
                    written = os.write(fd, view[: 1 << 20])
                except BlockingIOError:
                    self._wait(fd, deadline, write=True)
                    continue
                except BrokenPipeError:
                    self._died()
                view = view[written:]

    def _read_exact(self, size: int, deadline: float) -> bytes:
        reader = self._reader
        try:
            return reader.read_exact(size, lambda: self._wait(reader.fd, deadline, write=False))
        except EOFError:
            self._died()

    def _read_frame(self, deadline: float, max_payload: int | None = None) -> tuple[dict, bytes]:
        header_len, payload_len = PREFIX.unpack(self._read_exact(PREFIX.size, deadline))
        if header_len > 1 << 20:
            self._malformed(f"a reply header of {header_len} bytes")
        if max_payload == 0 and payload_len:
            self._malformed(f"a payload of {payload_len} bytes with a reply that has none")
        if max_payload is not None and payload_len > max_payload:
            self._malformed(
                f"{payload_len / 2**20:.0f} MiB, over the limit of {max_payload / 2**20:.0f} MiB"
            )
        encoded = self._read_exact(header_len, deadline)
        header = predicted(encoded)
        if header is None:
            try:
                header = _decode_header(encoded.decode())
            except ValueError:  # not JSON, or not UTF-8
                header = None
            if not isinstance(header, dict):
                # Its payload is still in the pipe: the next request would read it as a frame.
                self._malformed("a reply header that is not a JSON object")
        return header, self._read_exact(payload_len, deadline) if payload_len else b""

    def _malformed(self, what: str):
        """The host broke the protocol (a hostile model may write anything): it is killed, as
        the pipe is out of step."""
        self.kill()
        HOST_RESTARTS.labels("protocol").inc()
        raise HostFailure("protocol", f"the model host sent {what}")

    def _spin(self) -> float:
        """How long to poll for the reply in flight before sleeping."""
        if self.spin_seconds is not None:
            return self.spin_seconds
        average = self._predict_seconds
        if not self._polling or average is None or average >= CPU_SPIN_CAP_SECONDS:
            return 0.0
        return min(CPU_SPIN_CAP_SECONDS, 2 * average)

    def _wait(self, fd: int, deadline: float, *, write: bool) -> None:
        spin = 0.0 if write else self._spin()
        if spin > 0:
            until = time.perf_counter() + spin
            while time.perf_counter() < until:
                if select.select([fd], [], [], 0)[0]:
                    return
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                HOST_RESTARTS.labels("timeout").inc()
                raise HostFailure("timeout", "the model did not answer before its deadline")
            readable, writable, _ = select.select(
                [] if write else [fd], [fd] if write else [], [], min(remaining, 0.25)
            )
            if readable or writable:
                return
            if self._interrupt is not None and self._interrupt():
                self.kill()
                raise HostFailure("cancelled", "the request was cancelled")
            if self.rss_limit and self.rss() > self.rss_limit:
                self.kill()
                HOST_RESTARTS.labels("memory").inc()
                raise HostFailure(
                    "memory",
                    f"the model used more than its memory limit of {self.rss_limit // 2**20} MiB",
                )
            if not self.alive:
                self._died()

    def _died(self):
        self.kill()
        HOST_RESTARTS.labels("crash").inc()
        code = self.proc.returncode
        detail = self.stderr_tail(3)
        how = f"was killed by signal {-code}" if code and code < 0 else f"exited with status {code}"
        if code == -signal.SIGKILL and self.limits.memory_bytes:
            how += " (possibly for exceeding its memory limit)"
        raise HostFailure("crash", f"the model host {how}" + (f": {detail}" if detail else ""))
