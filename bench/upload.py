"""Upload throughput and web-process memory: a large artifact through the real upload API,
against writing the same bytes to disk in the same run.

The app runs as deployed (the Procfile's gunicorn: threaded workers; here one worker process
of 8 threads, so its memory is one process's) on 127.0.0.1, with its own temporary
``var/`` directory, SQLite database, Redis and key file. In interleaved rounds (alternating
which goes first) it times:

- disk write:  read the file in chunk-size pieces and write them to a new file (the baseline)
- transfer:    ``POST .../uploads``, then ``PUT`` every chunk with ``Content-Range`` over HTTP
               (``http.client``), ``--connections`` chunks at once (default 4, as ``mm push``
               sends them: each connection takes the next chunk not yet sent, read from the
               file as it is sent); the server hashes each chunk and seals it, as it streams
               in, as the chunks it will be in the finished artifact, and stores it as a part
               (with direct I/O where the file system allows)
- complete:    ``POST .../complete``: the server checks the SHA-256 (kept running as the
               chunks were stored, in order), tells the format from the chunks holding its
               header or zip directory (within the first and last 4 MiB), and makes the
               version's artifact of the stored parts as they are (no copy)
- end to end:  transfer + complete: from the first byte sent to the version created
- the same over 1 connection: the upload end to end with one chunk at a time (no target)

Each is reported twice: as written (the bytes are in the page cache, which for the disk write
is a memory copy) and on disk (``os.sync()`` inside the clock, after the write or after the
completion). Before each operation, outside the clock, dirty pages are flushed and the previous
version is deleted. The source file is read from the page cache by both.

The file is a valid-looking safetensors file (header length, JSON header, random payload)
declared as ``safetensors`` with architecture ``mlp``, so completion accepts it and creates a
``validating`` version (no worker runs; validation is only enqueued).

Targets: the upload end to end at least 0.5x the disk write; the web process's peak resident
memory (the worker's VmHWM, and psutil samples every 5 ms) under 256 MiB.

On the 2-vCPU development VM the disk write is bimodal: ~2-3 GB/s in some rounds, ~0.4 GB/s in
others, with several times the CPU, spent in the kernel copying into new page-cache pages (a
whole 1 GiB run can be all slow rounds; why is not known). The upload writes its parts with
direct I/O, which skips the page cache, and does not slow down with it. So the ratios are also
given against the disk write's fastest round: what the upload would face where the disk write
is always fast.

Also measured in the same run, alone in this process: SHA-256 and AES-256-GCM (sealing 1 MiB
chunks into a reused buffer, as the server does) over the same number of bytes, so that the
ratio can be read against what the server's per-byte work costs on this machine. From them, the
"ceiling" rows: the ratio an upload would reach if it did nothing but the disk write plus one
SHA-256 and one AES-GCM pass over the bytes, one after the other on one core. On a 2-core VM
that is about 0.55x on disk and 0.4x in the page cache, so the page-cache target cannot be met
without hashing and sealing on other cores while the bytes arrive.

    python bench/upload.py [--quick] [--json PATH] [--profile] [--connections N]
    python bench/upload.py --against DIR [--quick] [--json PATH] [--connections N]

``--profile`` then takes the server's work apart: the HTTP path alone (gunicorn and a bare WSGI
app that discards the body), the services in this process without HTTP, SHA-256 and AES-GCM
alone, and cProfile of the services.

``--against DIR`` compares this tree's upload with another checkout's (``git worktree add DIR
REV``; the same migrations) instead: two gunicorns, one from each tree, on one database, and
uploads alternating between them, so that both meet the same machine state. On the shared
VM whole runs drift by a quarter between minutes; paired uploads resolve a few percent. It
prints the median of the paired time ratios (this tree over the other) with its quartiles.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import http.client
import json
import os
import platform
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script, the project is not on the path

MiB = 1024 * 1024
TARGET_RATIO = 0.5
TARGET_PEAK_MIB = 256.0
OWNER, MODEL = "bench", "artifact"
# The safetensors JSON header, padded with spaces. Not 128: services.sniff_format takes a
# first byte of 0x80 for a pickle, and 128 is the header length's first (little-endian) byte.
HEADER_BYTES = 120


@dataclass(frozen=True)
class Plan:
    size: int
    rounds: int


FULL = Plan(size=1024 * MiB, rounds=3)
QUICK = Plan(size=128 * MiB, rounds=5)

DISK = "disk_write"
TRANSFER = "transfer"
COMPLETE = "complete"
END_TO_END = "end_to_end"
ONE = "end_to_end_one_connection"
DISK_SYNCED = "disk_write_on_disk"
END_TO_END_SYNCED = "end_to_end_on_disk"
ONE_SYNCED = "end_to_end_one_connection_on_disk"
LABELS = {
    DISK: "disk write (file -> file, chunk-size pieces)",
    TRANSFER: "transfer: create + PUT chunks over HTTP",
    COMPLETE: "complete: check SHA-256, take parts over",
    END_TO_END: "upload end to end (transfer + complete)",
    ONE: "the same over 1 connection",
    DISK_SYNCED: "disk write + os.sync()",
    END_TO_END_SYNCED: "upload end to end + os.sync()",
    ONE_SYNCED: "the same over 1 connection + os.sync()",
}
ORDER = [DISK, TRANSFER, COMPLETE, END_TO_END, ONE, DISK_SYNCED, END_TO_END_SYNCED, ONE_SYNCED]
# Chunks sent at once: what the project's client does (``mm push --workers``, default 4).
CONNECTIONS = 4
# CPU seconds (user + system): of the disk write, of the web worker during an upload, and of
# this process sending it. Unlike wall-clock time they barely move when other processes
# compete for the cores.
CPU_DISK = "cpu_disk_write"
CPU_WEB = "cpu_web_process_upload"
CPU_CLIENT = "cpu_client_upload"


@dataclass(frozen=True)
class Summary:
    median_mb_s: float
    min_mb_s: float
    max_mb_s: float
    median_s: float


# --- environment ----------------------------------------------------------------------------


@contextmanager
def isolated_environment() -> Iterator[Path]:
    """A throwaway var/ dir, database, key file and Redis, set in the environment before Django
    reads settings; the gunicorn child inherits the same environment."""
    from config import embedded

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-upload-"))
    sock, redis = embedded.start_redis(tmp / "redis", daemonize=False)
    try:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DJANGO_DEBUG="0",  # as in production
            DJANGO_SECURE_SSL_REDIRECT="0",  # plain http on 127.0.0.1
            DJANGO_LOG_LEVEL="WARNING",
            MM_VAR_DIR=str(tmp / "var"),
            DATABASE_URL=f"sqlite:///{tmp / 'bench.sqlite3'}",
            REDIS_URL=f"unix://{sock}",
            MM_KEK_FILE=str(tmp / "keyring.json"),
            MM_KEK_FILE_CREATE="1",
        )
        yield tmp
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def set_up_django() -> str:
    """Migrate, create an organisation with a model, and return an API key's secret."""
    import django

    django.setup()
    from django.core.management import call_command

    from accounts import services
    from accounts.models import Scope, User
    from marketplace.services import model_create

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user(email="bench@example.com")
    tenant = services.tenant_create(slug=OWNER, name="Bench", owner=owner, actor=services.SYSTEM)
    model_create(tenant=tenant, name=MODEL, actor=services.SYSTEM)
    _key, secret = services.api_key_create(
        tenant=tenant,
        name="bench",
        scopes=[Scope.MODELS_READ, Scope.MODELS_WRITE],
        actor=services.SYSTEM,
    )
    return secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebServer:
    """gunicorn serving config.wsgi as the Procfile does (gthread), with one worker process."""

    def __init__(
        self, tmp: Path, secret: str, app: str = "config.wsgi:application", chdir: Path = REPO
    ) -> None:
        self.port = free_port()
        self.log = (tmp / "gunicorn.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                app,
                "--chdir",
                str(chdir),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--threads",
                "8",
                "--timeout",
                "900",
            ],
            cwd=chdir,
            env=os.environ.copy(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(secret)
        import psutil

        workers = psutil.Process(self.proc.pid).children()
        if len(workers) != 1:
            raise SystemExit(f"expected one gunicorn worker, found {len(workers)}")
        self.worker = workers[0]

    def _wait_ready(self, secret: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                status, _ = request(self.port, secret, "GET", "/api/v1/models")
                if status == 200 or not secret:  # the bare sink app answers anything
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        print(Path(self.log.name).read_text()[-3000:], file=sys.stderr)
        raise SystemExit("gunicorn did not start; see its log above")

    def vm_hwm_mib(self) -> float:
        """The worker's peak resident memory as the kernel counts it (VmHWM)."""
        for line in Path(f"/proc/{self.worker.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        if self.proc.returncode not in (0, -15, None):
            print(Path(self.log.name).read_text()[-3000:], file=sys.stderr)


class MemorySampler(threading.Thread):
    """Samples a process's resident memory every few milliseconds and keeps the maximum."""

    def __init__(self, process) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:  # noqa: BLE001 - the process ended
                return
            time.sleep(0.005)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak / MiB


# --- the artifact and the operations --------------------------------------------------------


def write_artifact(path: Path, size: int) -> str:
    """A safetensors file of exactly ``size`` bytes: one U8 tensor of random bytes. Returns its
    SHA-256."""
    payload = size - 8 - HEADER_BYTES
    header = json.dumps(
        {"weight": {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}}
    ).encode()
    header = header.ljust(HEADER_BYTES, b" ")
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for piece in (HEADER_BYTES.to_bytes(8, "little"), header):
            digest.update(piece)
            f.write(piece)
        left = payload
        while left:
            piece = os.urandom(min(8 * MiB, left))
            digest.update(piece)
            f.write(piece)
            left -= len(piece)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def request(port: int, secret: str, method: str, url: str, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    try:
        conn.request(method, url, body=body, headers=auth_headers(secret, headers))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def auth_headers(secret: str, extra: dict | None = None) -> dict:
    return {"Authorization": f"Bearer {secret}", "Accept": "application/json", **(extra or {})}


def disk_write(src: Path, dst: Path, piece: int) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        while data := fin.read(piece):
            fout.write(data)


def upload(
    port: int, secret: str, path: Path, size: int, sha256: str, connections: int = 1
) -> tuple[float, float, str]:
    """Upload ``path`` through the API, its chunks over ``connections`` connections at once
    (each takes the next chunk not yet sent, as ``mm push`` does). Returns the transfer
    seconds, the completion seconds and the new version's id."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)

    def call(method: str, url: str, body=None, via=conn, **headers) -> dict:
        via.request(method, url, body=body, headers=auth_headers(secret, headers))
        response = via.getresponse()
        data = response.read()
        if response.status >= 300:
            raise SystemExit(f"{method} {url}: {response.status} {data[:500]!r}")
        return json.loads(data)

    start = time.perf_counter()
    session = call(
        "POST",
        f"/api/v1/models/{OWNER}/{MODEL}/uploads",
        json.dumps(
            {
                "filename": path.name,
                "format": "safetensors",
                "size": size,
                "sha256": sha256,
                "architecture": "mlp",
            }
        ),
        **{"Content-Type": "application/json"},
    )
    chunk, url = session["chunk_size"], session["upload_url"]
    starts = iter(range(0, size, chunk))
    starts_lock = threading.Lock()

    def send(via: http.client.HTTPConnection, fd: int) -> None:
        while True:
            with starts_lock:
                first = next(starts, None)
            if first is None:
                return
            data = os.pread(fd, chunk, first)
            call(
                "PUT",
                url,
                data,
                via=via,
                **{
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"bytes {first}-{first + len(data) - 1}/{size}",
                },
            )

    fd = os.open(path, os.O_RDONLY)
    try:
        if connections == 1:
            send(conn, fd)
        else:
            vias = [
                http.client.HTTPConnection("127.0.0.1", port, timeout=900)
                for _ in range(connections)
            ]
            with ThreadPoolExecutor(max_workers=connections) as pool:
                for done in [pool.submit(send, via, fd) for via in vias]:
                    done.result()
            for via in vias:
                via.close()
            # Idle for the whole transfer: the server's keep-alive may have closed it. A
            # closed connection reconnects on its next request.
            conn.close()
    finally:
        os.close(fd)
    transferred = time.perf_counter()
    version = call("POST", f"{url}/complete")
    completed = time.perf_counter()
    conn.close()
    if version["sha256"] != sha256 or version["size"] != size:
        raise SystemExit("the server stored different bytes than were sent")
    return transferred - start, completed - transferred, version["id"]


def delete_version(version_id: str) -> None:
    """Outside the clock: drop the version and its artifact so the disk does not fill up."""
    from marketplace.models import ModelVersion
    from marketplace.vault import store

    version = ModelVersion.objects.select_related("artifact").get(public_id=version_id)
    artifact = version.artifact
    version.delete()
    store.artifact_delete(artifact)


def chunk_size() -> int:
    from django.conf import settings

    return settings.UPLOAD_CHUNK_SIZE


Samples = dict[str, list[float]]


def measure(
    server: WebServer, secret: str, tmp: Path, plan: Plan, connections: int
) -> tuple[Samples, float]:
    """A warm-up (a small upload: imports, connections, the tenant's data key), then
    interleaved rounds. Returns seconds per operation and round, and the worker's RSS after
    the warm-up."""
    src, copy = tmp / "artifact.safetensors", tmp / "disk-write.out"
    warm = tmp / "warm-up.safetensors"
    warm_sha = write_artifact(warm, 16 * MiB)
    _t, _c, version = upload(server.port, secret, warm, 16 * MiB, warm_sha)
    delete_version(version)
    disk_write(warm, copy, chunk_size())
    baseline_mib = server.worker.memory_info().rss / MiB

    print(f"writing a {plan.size // MiB:,} MiB artifact…", file=sys.stderr)
    sha256 = write_artifact(src, plan.size)
    seconds: Samples = {name: [] for name in [*ORDER, CPU_DISK, CPU_WEB, CPU_CLIENT]}
    kinds = [DISK, "upload", "upload over one connection"]
    for round_no in range(plan.rounds):
        order = kinds[round_no % 3 :] + kinds[: round_no % 3]
        for name in order:
            copy.unlink(missing_ok=True)
            os.sync()
            if name == DISK:
                start, cpu = time.perf_counter(), time.thread_time()
                disk_write(src, copy, chunk_size())
                written = time.perf_counter()
                seconds[CPU_DISK].append(time.thread_time() - cpu)
                os.sync()
                seconds[DISK].append(written - start)
                seconds[DISK_SYNCED].append(time.perf_counter() - start)
            elif name == "upload over one connection":
                transfer, complete, version = upload(server.port, secret, src, plan.size, sha256)
                start = time.perf_counter()
                os.sync()
                synced = time.perf_counter() - start
                seconds[ONE].append(transfer + complete)
                seconds[ONE_SYNCED].append(transfer + complete + synced)
                delete_version(version)
            else:
                web, cpu = server.worker.cpu_times(), time.process_time()
                transfer, complete, version = upload(
                    server.port, secret, src, plan.size, sha256, connections
                )
                seconds[CPU_CLIENT].append(time.process_time() - cpu)
                after = server.worker.cpu_times()
                seconds[CPU_WEB].append(after.user - web.user + after.system - web.system)
                start = time.perf_counter()
                os.sync()
                synced = time.perf_counter() - start
                seconds[TRANSFER].append(transfer)
                seconds[COMPLETE].append(complete)
                seconds[END_TO_END].append(transfer + complete)
                seconds[END_TO_END_SYNCED].append(transfer + complete + synced)
                delete_version(version)
        print(
            f"round {round_no + 1}/{plan.rounds}: disk write {seconds[DISK][-1]:.2f} s "
            f"(+sync {seconds[DISK_SYNCED][-1]:.2f} s); upload {seconds[TRANSFER][-1]:.2f} s "
            f"+ complete {seconds[COMPLETE][-1]:.2f} s "
            f"(+sync {seconds[END_TO_END_SYNCED][-1]:.2f} s); "
            f"over 1 connection {seconds[ONE][-1]:.2f} s",
            file=sys.stderr,
        )
    copy.unlink(missing_ok=True)
    return seconds, baseline_mib


def summarize(size: int, seconds: list[float]) -> Summary:
    rates = [size / s / 1e6 for s in seconds]
    return Summary(
        statistics.median(rates), min(rates), max(rates), median_s=statistics.median(seconds)
    )


# --- profile --------------------------------------------------------------------------------


READ_BLOCK = 1024 * 1024  # the upload view's read size (marketplace.api.registry.READ_BLOCK)
ALT_BLOCK = 256 * 1024  # what --profile compares it with


def sink_app(environ, start_response):
    """A bare WSGI app that reads the request body as the upload view does and discards it:
    what the HTTP path alone costs. Served by ``--profile``; the read size comes from
    ``MM_BENCH_READ_BLOCK``."""
    block = int(os.environ.get("MM_BENCH_READ_BLOCK", READ_BLOCK))
    body = environ["wsgi.input"]
    left = int(environ.get("CONTENT_LENGTH") or 0)
    while left:
        data = body.read(min(block, left))
        if not data:
            break
        left -= len(data)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]


_what_if_app = None


def what_if_app(environ, start_response):
    """The project's app with the upload view reading ``MM_BENCH_READ_BLOCK`` bytes at a time
    instead of ``READ_BLOCK``: what that one constant costs. Served by ``--profile``."""
    global _what_if_app
    if _what_if_app is None:
        from config.wsgi import application
        from marketplace.api import registry

        registry.READ_BLOCK = int(os.environ["MM_BENCH_READ_BLOCK"])
        _what_if_app = application
    return _what_if_app(environ, start_response)


def put_chunks(port: int, path: Path) -> float:
    """Seconds to PUT the file's chunks to a bare app."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    chunk = chunk_size()
    start = time.perf_counter()
    with path.open("rb") as f:
        while data := f.read(chunk):
            conn.request("PUT", "/", body=data)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"sink answered {response.status}")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def served(tmp: Path, app: str, read_block: int, secret: str = ""):
    os.environ["MM_BENCH_READ_BLOCK"] = str(read_block)
    try:
        # From the repository root: served from bench/, bench/inference.py shadows the app.
        return WebServer(tmp, secret=secret, app=f"bench.upload:{app}")
    finally:
        del os.environ["MM_BENCH_READ_BLOCK"]


def in_memory(size: int) -> dict[str, float]:
    """Seconds for SHA-256, AES-GCM encrypt and AES-GCM decrypt of ``size`` bytes in 1 MiB
    pieces, into reused buffers as the server does: its cryptography per byte, without files,
    HTTP or Python copies."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, nonce, ad = AESGCM(os.urandom(32)), bytes(12), bytes(64)
    piece = os.urandom(MiB)
    sealed = aead.encrypt(nonce, piece, ad)
    out, back = bytearray(len(sealed)), bytearray(MiB)
    pieces = max(1, size // MiB)

    def sha256() -> None:
        digest = hashlib.sha256()
        for _ in range(pieces):
            digest.update(piece)

    def encrypt() -> None:
        for _ in range(pieces):
            aead.encrypt_into(nonce, piece, ad, out)

    def decrypt() -> None:
        for _ in range(pieces):
            aead.decrypt_into(nonce, sealed, ad, back)

    figures = {}
    for label, work in [
        ("SHA-256 (hashlib)", sha256),
        ("AES-GCM encrypt", encrypt),
        ("AES-GCM decrypt", decrypt),
    ]:
        start = time.perf_counter()
        work()
        figures[label] = time.perf_counter() - start
    return figures


def services_in_process(path: Path, size: int, sha256: str) -> dict[str, float]:
    """The server's work for one upload in this process (no HTTP): storing the chunks as the
    PUTs do, then ``upload_complete``; each timed, then each again under cProfile."""
    from accounts.services import SYSTEM
    from marketplace import services
    from marketplace.models import Model

    model = Model.objects.get(tenant__slug=OWNER, name=MODEL)

    def new_session():
        return services.upload_session_create(
            model=model,
            filename=path.name,
            format="safetensors",
            size=size,
            sha256=sha256,
            architecture="mlp",
            actor=SYSTEM,
        )

    def store_chunks(session) -> None:
        with path.open("rb") as f:
            for index in range(session.chunk_count):
                first, last = session.chunk_range(index)

                def body(left=last - first + 1):
                    while left:
                        data = f.read(min(READ_BLOCK, left))
                        left -= len(data)
                        yield data

                services.upload_part_store(session=session, index=index, chunks=body())

    figures: dict[str, float] = {}
    for profiled in (False, True):
        session = new_session()
        for label, work in [
            ("store chunks (upload_part_store)", lambda s=session: store_chunks(s)),
            (
                "upload_complete",
                lambda s=session: services.upload_complete(session=s, actor=SYSTEM),
            ),
        ]:
            os.sync()
            profiler = cProfile.Profile() if profiled else None
            start = time.perf_counter()
            result = profiler.runcall(work) if profiler else work()
            elapsed = time.perf_counter() - start
            if result is not None:
                delete_version(result.public_id)
            if profiler is None:
                figures[label] = elapsed
                continue
            print(
                f"\ncProfile of {label}, {size // MiB:,} MiB in-process ({elapsed:.2f} s profiled)"
            )
            stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
            rows = sorted(stats.items(), key=lambda row: -row[1][2])[:8]
            print(f"{'tottime s':>10}{'calls':>9}  function")
            for (filename, line, func), (_cc, calls, tottime, *_rest) in rows:
                where = f"{Path(filename).name}:{line} " if line else ""
                print(f"{tottime:>10.3f}{calls:>9}  {where}{func}")
    return figures


def read_block_a_b(tmp: Path, secret: str, path: Path, size: int, sha256: str) -> dict:
    """The read size of the request body, 1 MiB (the view's; gunicorn reads ahead up to 1 MiB
    per recv) against 256 KiB, on a bare app and on the real upload; three interleaved rounds
    each, best of three."""
    servers = {}
    try:
        for block in (READ_BLOCK, ALT_BLOCK):
            servers["sink", block] = served(tmp, "sink_app", block)
            servers["app", block] = served(tmp, "what_if_app", block, secret)
        best: dict[tuple[str, int], float] = {}
        for round_no in range(3):
            blocks = (READ_BLOCK, ALT_BLOCK) if round_no % 2 == 0 else (ALT_BLOCK, READ_BLOCK)
            for block in blocks:
                seconds = put_chunks(servers["sink", block].port, path)
                best["sink", block] = min(best.get(("sink", block), seconds), seconds)
                transfer, _complete, version = upload(
                    servers["app", block].port, secret, path, size, sha256
                )
                delete_version(version)
                best["app", block] = min(best.get(("app", block), transfer), transfer)
    finally:
        for server in servers.values():
            server.stop()
    return {
        f"HTTP alone: PUTs to a bare app reading {block // 1024} KiB": best["sink", block]
        for block in (READ_BLOCK, ALT_BLOCK)
    } | {
        f"transfer, the upload view reading {block // 1024} KiB"
        + (" (as now)" if block == READ_BLOCK else " (what if)"): best["app", block]
        for block in (READ_BLOCK, ALT_BLOCK)
    }


def profile(
    tmp: Path, secret: str, size: int, transfer_s: float, complete_s: float
) -> dict[str, dict]:
    path = tmp / "profile.safetensors"
    sha256 = write_artifact(path, size)
    parts = {"transfer over HTTP (median above)": transfer_s}
    parts.update(read_block_a_b(tmp, secret, path, size, sha256))
    timed = services_in_process(path, size, sha256)
    parts["store chunks in-process (no HTTP)"] = timed["store chunks (upload_part_store)"]
    parts["complete over HTTP (median above)"] = complete_s
    parts["upload_complete in-process"] = timed["upload_complete"]
    parts.update(in_memory(size))
    path.unlink()
    print(f"\nThe server's work taken apart, {size // MiB:,} MiB (best of 3 where paired)")
    print(f"{'seconds':>8}{'MB/s':>9}  part")
    figures = {}
    for label, seconds in parts.items():
        figures[label] = {"seconds": seconds, "mb_s": size / seconds / 1e6}
        print(f"{seconds:>8.2f}{size / seconds / 1e6:>9,.0f}  {label}")
    return figures


# --- report ---------------------------------------------------------------------------------


def report(
    plan: Plan,
    connections: int,
    ops: dict[str, Summary],
    seconds: Samples,
    memory: dict[str, float],
    alone: dict[str, float],
) -> dict:
    median = {name: s.median_mb_s for name, s in ops.items()}
    ratios = {
        "end_to_end_over_disk_write": median[END_TO_END] / median[DISK],
        "transfer_over_disk_write": median[TRANSFER] / median[DISK],
        "end_to_end_over_disk_write_on_disk": median[END_TO_END_SYNCED] / median[DISK_SYNCED],
        # Against the disk write's fastest round: on a VM the disk write is sometimes several
        # times slower (the page cache's new pages are first touched on the host), which a
        # median of few rounds does not always absorb.
        "end_to_end_over_fastest_disk_write_on_disk": (
            median[END_TO_END_SYNCED] / ops[DISK_SYNCED].max_mb_s
        ),
        "end_to_end_over_fastest_disk_write": median[END_TO_END] / ops[DISK].max_mb_s,
        "one_connection_over_disk_write": median[ONE] / median[DISK],
        "one_connection_over_disk_write_on_disk": median[ONE_SYNCED] / median[DISK_SYNCED],
    }
    met = {
        "page_cache": ratios["end_to_end_over_disk_write"] >= TARGET_RATIO,
        "on_disk": ratios["end_to_end_over_disk_write_on_disk"] >= TARGET_RATIO,
        "memory": memory["peak_mib"] < TARGET_PEAK_MIB,
    }

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    print(
        f"\nUpload of a {plan.size // MiB:,} MiB artifact through the API (gunicorn, 1 worker "
        f"of 8 threads, {chunk_size() // MiB} MiB chunks over HTTP on 127.0.0.1, "
        f"{connections} at once)\nagainst a disk write of the same bytes; {plan.rounds} "
        "interleaved rounds after a warm-up"
    )
    print(f"{'operation':<46}{'median MB/s':>12}{'min':>8}{'max':>8}{'median s':>10}")
    for name in ORDER:
        s = ops[name]
        if name == DISK_SYNCED:
            print("on disk: the same, with os.sync() inside the clock")
        print(
            f"{LABELS[name]:<46}{s.median_mb_s:>12,.0f}{s.min_mb_s:>8,.0f}{s.max_mb_s:>8,.0f}"
            f"{s.median_s:>10.2f}"
        )
    print(f"\n{'ratio of medians':<46}{'ratio':>12}  target")
    for key, label, note in [
        (
            "end_to_end_over_disk_write_on_disk",
            "on disk: upload end to end / disk write",
            f">= {TARGET_RATIO:.2f}x  {verdict(met['on_disk'])}",
        ),
        (
            "end_to_end_over_disk_write",
            "page cache: upload end to end / disk write",
            f">= {TARGET_RATIO:.2f}x  {verdict(met['page_cache'])}",
        ),
        ("transfer_over_disk_write", "page cache: transfer only / disk write", ""),
        (
            "end_to_end_over_fastest_disk_write_on_disk",
            "on disk: same / fastest disk write round",
            "",
        ),
        (
            "end_to_end_over_fastest_disk_write",
            "page cache: same / fastest disk write round",
            "",
        ),
        (
            "one_connection_over_disk_write_on_disk",
            "on disk: the same over 1 connection",
            "",
        ),
        ("one_connection_over_disk_write", "page cache: the same over 1 connection", ""),
    ]:
        print(f"{label:<46}{ratios[key]:>11.2f}x  {note}")

    print("\nWeb process (the gunicorn worker) resident memory")
    print(f"{'after the warm-up upload':<46}{memory['baseline_mib']:>11.1f} MiB")
    print(f"{'peak, sampled every 5 ms (psutil)':<46}{memory['sampled_peak_mib']:>11.1f} MiB")
    print(
        f"{'peak, VmHWM (kernel high-water mark)':<46}{memory['peak_mib']:>11.1f} MiB  "
        f"< {TARGET_PEAK_MIB:.0f} MiB  {verdict(met['memory'])}"
    )
    cpu = {name: statistics.median(seconds[name]) for name in (CPU_DISK, CPU_WEB, CPU_CLIENT)}
    print("\nCPU seconds (user + system), median per round")
    print(f"{'disk write (this thread)':<46}{cpu[CPU_DISK]:>11.2f} s")
    print(f"{'upload: web worker (all its threads)':<46}{cpu[CPU_WEB]:>11.2f} s")
    print(f"{'upload: this process (sending, sampling)':<46}{cpu[CPU_CLIENT]:>11.2f} s")
    ratios["cpu_disk_write_over_web_upload"] = cpu[CPU_DISK] / cpu[CPU_WEB]
    print(
        f"{'disk write CPU / web worker CPU':<46}"
        f"{ratios['cpu_disk_write_over_web_upload']:>11.2f}x  (the ratio with a core each)"
    )
    print("\nAlone in this process, the same bytes in 1 MiB pieces (best of 3)")
    for label, secs in alone.items():
        print(f"{label:<46}{plan.size / secs / 1e6:>12,.0f} MB/s")
    # The most the target allows for: an upload that did nothing but the disk write's work
    # plus hashing and sealing each byte once, one after the other on one core (no HTTP, no
    # framework, no database), as a ratio to the disk write.
    crypto_s = alone["SHA-256 (hashlib)"] + alone["AES-GCM encrypt"]
    for key, label, disk_s in [
        ("ceiling_on_disk", "on disk", ops[DISK_SYNCED].median_s),
        ("ceiling_page_cache", "page cache", ops[DISK].median_s),
    ]:
        ratios[key] = disk_s / (disk_s + crypto_s)
        print(
            f"{'ceiling, ' + label + ' (write + hash + seal)':<46}"
            f"{ratios[key]:>11.2f}x  (one core, nothing else)"
        )
    print(
        "\nMB = 10^6 bytes of the artifact per second. The upload receives every byte over "
        "HTTP, hashes it,\nencrypts it and writes it once (the parts become the artifact); "
        "the disk write reads and\nwrites it once."
    )
    print(
        f"targets: end to end >= {TARGET_RATIO:.2f}x disk write on disk: "
        f"{verdict(met['on_disk'])}, in the page cache: {verdict(met['page_cache'])}; "
        f"web process peak < {TARGET_PEAK_MIB:.0f} MiB: {verdict(met['memory'])}"
    )
    return {
        "targets": {
            "end_to_end_over_disk_write_min": TARGET_RATIO,
            "on_disk_met": met["on_disk"],
            "page_cache_met": met["page_cache"],
            "web_peak_mib_max": TARGET_PEAK_MIB,
            "web_peak_met": met["memory"],
        },
        "plan": {**asdict(plan), "chunk_bytes": chunk_size(), "connections": connections},
        "mb_per_s": {name: asdict(s) for name, s in ops.items()},
        "seconds_per_round": seconds,
        "ratios": ratios,
        "memory_mib": memory,
        "alone_mb_s": {label: plan.size / secs / 1e6 for label, secs in alone.items()},
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
    }


# --- against another tree --------------------------------------------------------------------


PAIRS = {FULL.size: 8, QUICK.size: 20}


def against(tmp: Path, secret: str, other: Path, plan: Plan, connections: int) -> dict:
    """Uploads of ``plan.size`` alternating between this tree's server and ``other``'s, in
    pairs (which goes first alternates too). Returns the figures and prints the table."""
    trees = {"this tree": REPO, "other tree": other.resolve()}
    servers = {name: WebServer(tmp, secret, chdir=tree) for name, tree in trees.items()}
    try:
        src = tmp / "artifact.safetensors"
        sha256 = write_artifact(src, plan.size)
        for server in servers.values():  # warm-up: imports, connections, the data key
            _t, _c, version = upload(server.port, secret, src, plan.size, sha256, connections)
            delete_version(version)
        seen: dict[str, dict[str, list[float]]] = {
            name: {"seconds": [], "complete": [], "cpu": []} for name in servers
        }
        names = list(servers)
        for pair in range(PAIRS[plan.size]):
            for name in names if pair % 2 == 0 else names[::-1]:
                server, into = servers[name], seen[name]
                before = server.worker.cpu_times()
                transfer, complete, version = upload(
                    server.port, secret, src, plan.size, sha256, connections
                )
                after = server.worker.cpu_times()
                into["seconds"].append(transfer + complete)
                into["complete"].append(complete)
                into["cpu"].append(after.user - before.user + after.system - before.system)
                delete_version(version)
        peaks = {name: server.vm_hwm_mib() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    ratios = [
        mine / theirs
        for mine, theirs in zip(
            seen["this tree"]["seconds"], seen["other tree"]["seconds"], strict=True
        )
    ]
    quartiles = statistics.quantiles(ratios, n=4)
    figures = {
        "size_bytes": plan.size,
        "pairs": len(ratios),
        "connections": connections,
        "other_tree": str(trees["other tree"]),
        "time_ratio_median": statistics.median(ratios),
        "time_ratio_quartiles": [quartiles[0], quartiles[2]],
        **{
            name.replace(" ", "_"): {
                "end_to_end_mb_s": plan.size / statistics.median(into["seconds"]) / 1e6,
                "complete_ms": statistics.median(into["complete"]) * 1000,
                "web_cpu_s": statistics.median(into["cpu"]),
                "peak_mib": peaks[name],
            }
            for name, into in seen.items()
        },
    }
    print(
        f"\nUpload of {plan.size // MiB:,} MiB, {len(ratios)} pairs alternating between two "
        f"trees ({connections} connections)\n"
        f"{'':34}{'this tree':>12}{'other tree':>12}"
    )
    rows = [
        ("end to end, median MB/s", "end_to_end_mb_s", "{:,.0f}"),
        ("complete, median ms", "complete_ms", "{:.1f}"),
        ("web worker CPU s, median", "web_cpu_s", "{:.3f}"),
        ("web peak (VmHWM) MiB", "peak_mib", "{:.0f}"),
    ]
    for label, key, form in rows:
        mine, theirs = figures["this_tree"][key], figures["other_tree"][key]
        print(f"{label:34}{form.format(mine):>12}{form.format(theirs):>12}")
    print(
        f"time, this tree / other tree: median of the pairs {figures['time_ratio_median']:.3f} "
        f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}); below 1 is faster\n"
        f"other tree: {trees['other tree']}"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 MiB, under a minute")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--profile", action="store_true", help="then take the server's work apart")
    parser.add_argument(
        "--connections",
        type=int,
        default=CONNECTIONS,
        help=f"chunks sent at once (default {CONNECTIONS}, as mm push)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="compare this tree's upload with another checkout's, in alternating pairs",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.against and not (args.against / "config" / "wsgi.py").is_file():
        parser.error(f"{args.against} is not a checkout of this project (no config/wsgi.py)")

    with isolated_environment() as tmp:
        secret = set_up_django()
        if args.against:
            figures = against(tmp, secret, args.against, plan, args.connections)
            if args.json:
                args.json.write_text(json.dumps(figures, indent=2) + "\n")
            return
        server = WebServer(tmp, secret)
        try:
            sampler = MemorySampler(server.worker)
            sampler.start()
            seconds, baseline_mib = measure(server, secret, tmp, plan, args.connections)
            memory = {
                "baseline_mib": baseline_mib,
                "sampled_peak_mib": sampler.stop(),
                "peak_mib": server.vm_hwm_mib(),
            }
        finally:
            server.stop()
        ops = {name: summarize(plan.size, seconds[name]) for name in ORDER}
        runs = [in_memory(plan.size) for _ in range(3)]
        alone = {label: min(run[label] for run in runs) for label in runs[0]}
        figures = report(plan, args.connections, ops, seconds, memory, alone)
        if args.profile:
            figures["profile"] = profile(
                tmp, secret, plan.size, ops[TRANSFER].median_s, ops[COMPLETE].median_s
            )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
