"""Model hosts kept by a worker process: a few pre-started idle hosts (hiding the interpreter
and torch import time) and a cache of hosts with a model loaded, keyed by version (and, for
predictions, by the consumer organisation: ``workers.services.prediction_host_key``), evicting
the least recently used by bytes per device."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from django.conf import settings

from config.metrics import MODEL_CACHE
from workers import sandbox
from workers.host import HostFailure, ModelHost

logger = logging.getLogger(__name__)


def new_host(device: str) -> ModelHost:
    limits = sandbox.Limits(
        memory_bytes=None if device.startswith("cuda") else settings.MODEL_HOST_ADDRESS_SPACE,
        cpu_seconds=settings.MODEL_HOST_CPU_SECONDS,
        threads=settings.MODEL_HOST_THREADS,
    )
    return ModelHost(
        device=device,
        limits=limits,
        rss_limit=settings.MODEL_HOST_MEMORY_LIMIT,
        require_sandbox=settings.REQUIRE_SANDBOX,
    )


class IdleHosts:
    """Started hosts waiting for a model; refilled in the background after each take."""

    def __init__(self, device: str, size: int):
        self.device, self.size = device, size
        self._ready: collections.deque[ModelHost] = collections.deque()
        self._lock = threading.Lock()
        self._filling = False

    def take(self) -> ModelHost:
        with self._lock:
            while self._ready:
                host = self._ready.popleft()
                if host.alive:
                    break
            else:
                host = None
        self.refill()
        return host if host is not None else new_host(self.device).start()

    def refill(self) -> None:
        with self._lock:
            if self._filling or len(self._ready) >= self.size:
                return
            self._filling = True
        threading.Thread(target=self._fill, daemon=True, name="host-prestart").start()

    def _fill(self) -> None:
        try:
            while len(self._ready) < self.size:
                host = new_host(self.device).start()
                with self._lock:
                    self._ready.append(host)
        except HostFailure:
            logger.exception("could not pre-start a model host")
        finally:
            self._filling = False

    def close(self) -> None:
        with self._lock:
            while self._ready:
                self._ready.popleft().kill()


class LoadedHosts:
    """Hosts with a model loaded, by version key, least recently used evicted first once
    their memory exceeds ``capacity_bytes``: each model's bytes plus what a host process
    costs by itself (``MODEL_HOST_OVERHEAD_BYTES``: the interpreter and torch), so many small
    models cannot grow the hosts' memory without bound. A host retired in the middle of a
    request still counts until it is gone: it holds its memory until it has answered."""

    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes
        self._hosts: collections.OrderedDict[str, ModelHost] = collections.OrderedDict()
        self._retiring: list[ModelHost] = []
        self._lock = threading.Lock()

    def get(self, key: str) -> ModelHost | None:
        with self._lock:
            host = self._hosts.get(key)
            if host is None:
                return None
            if not host.alive or host.requests >= settings.MODEL_HOST_MAX_REQUESTS:
                # Dead, or recycled after many requests so slow leaks in a model's runtime
                # never accumulate: the next caller loads a fresh host.
                del self._hosts[key]
                self._retire(host)
                return None
            self._hosts.move_to_end(key)
            return host

    def put(self, key: str, host: ModelHost) -> None:
        """Keep ``host`` under ``key``. The hosts it replaces or evicts are retired: one in
        the middle of a request (another version's prediction) finishes it first."""
        with self._lock:
            old = self._hosts.pop(key, None)
            if old is not None and old is not host:
                self._retire(old)
            self._hosts[key] = host
            while len(self._hosts) > 1 and self.used() > self.capacity:
                _, evicted = self._hosts.popitem(last=False)
                self._retire(evicted)

    def adopt(self, key: str, new_key: str) -> None:
        """Keep the host under ``key`` under ``new_key`` instead, unless one is there."""
        with self._lock:
            if new_key not in self._hosts and key in self._hosts:
                self._hosts[new_key] = self._hosts.pop(key)

    def drop(self, key: str) -> None:
        with self._lock:
            host = self._hosts.pop(key, None)
            if host is not None:
                self._retire(host)

    def _retire(self, host: ModelHost) -> None:
        host.retire()
        if host.alive:  # busy: killed once it has answered
            self._retiring.append(host)

    def hosts(self) -> list[ModelHost]:
        with self._lock:
            return list(self._hosts.values())

    def used(self) -> int:
        overhead = settings.MODEL_HOST_OVERHEAD_BYTES
        self._retiring = [h for h in self._retiring if h.alive]
        return sum(h.loaded_bytes + overhead for h in [*self._hosts.values(), *self._retiring])

    def keys(self) -> list[str]:
        return list(self._hosts)

    def close(self) -> None:
        with self._lock:
            for host in [*self._hosts.values(), *self._retiring]:
                host.kill()
            self._hosts.clear()
            self._retiring.clear()


class Hosts:
    """Everything a worker process keeps, per device, with a background health check that
    pings every host and kills the ones that do not answer."""

    def __init__(self):
        self._idle: dict[str, IdleHosts] = {}
        self._loaded: dict[str, LoadedHosts] = {}
        self._pinger: threading.Thread | None = None

    def _ensure_pinger(self) -> None:
        if self._pinger is None and settings.MODEL_HOST_PING_SECONDS > 0:
            self._pinger = threading.Thread(
                target=self._ping_forever, daemon=True, name="host-health"
            )
            self._pinger.start()

    def _ping_forever(self) -> None:
        import time

        while True:
            time.sleep(settings.MODEL_HOST_PING_SECONDS)
            try:
                self.health_check()
            except Exception:  # noqa: BLE001 - a failed check must never stop the checks
                logger.exception("model host health check failed")

    def health_check(self) -> None:
        """Ping every loaded host, and drop the hosts whose version is gone."""
        self.ping_all()
        self.drop_deleted_versions()

    def drop_deleted_versions(self) -> int:
        """Retire the loaded hosts whose version no longer exists, or whose data key was
        destroyed: its organisation was deleted (crypto-shredding; one with billing history
        keeps its versions' rows), and its decrypted weights must not outlive its keys in a
        host's memory. Nothing asks for such a host again, so until now it
        stayed loaded until other models evicted it. Returns how many were dropped."""
        from django.db import close_old_connections

        from marketplace.models import ModelVersion, TenantKey

        # A key is workers.services.version_key: "<version public id>:<sha256 prefix>". The
        # keys are a copy, taken under no lock: hosts come and go meanwhile.
        loaded = [
            (group, key, key.split(":", 1)[0])
            for group in list(self._loaded.values())
            for key in group.keys()  # noqa: SIM118 - LoadedHosts.keys(): a copy, not a dict view
        ]
        if not loaded:
            return 0
        try:  # one query for every device's hosts
            live = set(
                ModelVersion.objects.filter(
                    public_id__in={version_id for _, _, version_id in loaded}
                )
                .exclude(artifact__key__status=TenantKey.Status.DESTROYED)
                .values_list("public_id", flat=True)
            )
        finally:
            close_old_connections()
        gone = [(group, key) for group, key, version_id in loaded if version_id not in live]
        for group, key in gone:
            group.drop(key)
        return len(gone)

    def ping_all(self) -> int:
        """Ping every loaded host; returns how many failed (and were killed)."""
        failed = 0
        for group in list(self._loaded.values()):
            for host in group.hosts():
                if host.alive and not host.ping():
                    logger.warning("model host %s failed its health check", host.proc.pid)
                    failed += 1
        return failed

    def idle(self, device: str) -> IdleHosts:
        if device not in self._idle:
            self._idle[device] = IdleHosts(device, settings.MODEL_HOST_PRESTART)
        return self._idle[device]

    def loaded(self, device: str) -> LoadedHosts:
        self._ensure_pinger()  # validation warms hosts too: they get checked as well
        if device not in self._loaded:
            self._loaded[device] = LoadedHosts(settings.MODEL_CACHE_BYTES)
        return self._loaded[device]

    def get_or_load(self, device: str, key: str, load: Callable[[ModelHost], None]) -> ModelHost:
        host = self.loaded(device).get(key)  # (loaded() starts the health check)
        MODEL_CACHE.labels("hit" if host is not None else "miss").inc()
        if host is not None:
            return host
        host = self.idle(device).take()
        try:
            load(host)
        except BaseException:
            host.kill()
            raise
        self.loaded(device).put(key, host)
        return host

    def close(self) -> None:
        """Kill every host; the next use starts afresh, sized by the settings then."""
        for group in [*self._idle.values(), *self._loaded.values()]:
            group.close()
        self._idle.clear()
        self._loaded.clear()


HOSTS = Hosts()
