"""Push notifications of finished predictions over Redis pub/sub, so a waiting request is
woken the moment its result is written instead of polling the database.

The worker publishes on ``mm:prediction:<id>`` either ``done`` or, for a result small enough
to carry, the result itself (``publish_result``): the waiting request then answers without
reading the database again. Each web process holds one subscription (``PSUBSCRIBE
mm:prediction:*``) on one connection, read by one thread that hands each message to the
request waiting for it; a request registers (``expect``) before its prediction is queued, so
no result can slip past. If that connection drops, every waiter is told to check the database
(a result published meanwhile is lost with the connection) and the thread reconnects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import time
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

PREFIX = "mm:prediction:"
# Results larger than this are announced with ``done`` and read from the database, so that
# every web process does not receive every large output.
MAX_INLINE_BYTES = 64 * 1024
_RESULT = b"R"  # + 4-byte header length + JSON header + output bytes


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, health_check_interval=30)


def _channel(prediction_id: str) -> str:
    return f"{PREFIX}{prediction_id}"


def publish_done(prediction_id: str) -> None:
    client().publish(_channel(prediction_id), b"done")


def publish_result(prediction_id: str, header: dict[str, Any], output: bytes | None) -> None:
    """Announce a finished prediction with its result (``header``: the fields the worker
    wrote; ``output``: the encoded outputs), or only ``done`` when the output is large."""
    if output is not None and len(output) > MAX_INLINE_BYTES:
        return publish_done(prediction_id)
    head = json.dumps(header, separators=(",", ":")).encode()
    message = b"".join([_RESULT, struct.pack(">I", len(head)), head, output or b""])
    client().publish(_channel(prediction_id), message)


def _parse(data: bytes) -> tuple[dict, bytes] | None:
    if not data.startswith(_RESULT):
        return None
    (length,) = struct.unpack_from(">I", data, 1)
    header = json.loads(data[5 : 5 + length])
    return header, data[5 + length :]


class Waiter:
    """One request's wait for one prediction."""

    def __init__(self, prediction_id: str, listener: Listener):
        self.channel = _channel(prediction_id).encode()
        self.listener = listener
        self.event = threading.Event()
        self.message: bytes | None = None  # None after a reconnect: check the database

    def deliver(self, message: bytes | None) -> None:
        self.message = message
        self.event.set()


class Listener:
    """The process's one subscription, read by a daemon thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.waiters: dict[bytes, Waiter] = {}
        self.subscribed = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="prediction-results").start()

    def expect(self, waiter: Waiter) -> None:
        with self.lock:
            self.waiters[waiter.channel] = waiter

    def forget(self, waiter: Waiter) -> None:
        with self.lock:
            if self.waiters.get(waiter.channel) is waiter:
                del self.waiters[waiter.channel]

    def _run(self) -> None:
        while True:
            pubsub = None
            try:
                # socket_timeout None: the thread blocks on the socket until a message comes.
                pubsub = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=None).pubsub()
                pubsub.psubscribe(f"{PREFIX}*")
                while True:
                    message = pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self.subscribed.set()
                        self._recheck_all()  # anything published while we were away
                    elif message["type"] == "pmessage":
                        with self.lock:
                            waiter = self.waiters.get(message["channel"])
                        if waiter is not None:
                            waiter.deliver(message["data"])
            except Exception as exc:  # noqa: BLE001 - the thread must outlive Redis restarts
                if self.subscribed.is_set():  # once per outage
                    logger.warning("prediction results: subscription lost (%s); reconnecting", exc)
                self.subscribed.clear()
                self._recheck_all()
                time.sleep(0.5)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # already broken
                        pubsub.close()

    def _recheck_all(self) -> None:
        with self.lock:
            waiters = list(self.waiters.values())
        for waiter in waiters:
            waiter.deliver(None)


_listener: Listener | None = None
_listener_lock = threading.Lock()


def listener(timeout: float = 1.0) -> Listener | None:
    """This process's listener, started on first use (after a fork, afresh); None while it
    cannot subscribe (Redis down), and callers fall back to a subscription of their own."""
    global _listener
    current = _listener
    if current is None or current.pid != os.getpid():
        with _listener_lock:
            if _listener is None or _listener.pid != os.getpid():
                _listener = Listener()
            current = _listener
    if not current.subscribed.wait(timeout):
        return None
    return current


def expect(prediction_id: str, shared: Listener | None = None) -> Waiter | None:
    """Register with ``shared`` (by default this process's listener) for the result of
    ``prediction_id`` before it is queued."""
    shared = shared or listener()
    if shared is None:
        return None
    waiter = Waiter(prediction_id, shared)
    shared.expect(waiter)
    return waiter


def wait_result(waiter: Waiter, timeout: float, is_done) -> tuple[dict, bytes] | bool:
    """Wait for the registered prediction: its result ``(header, output)`` when the worker
    sent it along, True when it finished (read it from the database), False when ``timeout``
    passed. ``is_done()`` is asked after a reconnect."""
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            if not waiter.event.wait(remaining):
                return False
            waiter.event.clear()
            message, waiter.message = waiter.message, None
            if message is not None:
                return _parse(message) or True
            if is_done():
                return True
        return False
    finally:
        waiter.listener.forget(waiter)


def wait_done(prediction_id: str, timeout: float, is_done) -> bool:
    """Block until the prediction is finished or ``timeout`` passes, on a subscription of
    its own (for a prediction this request did not queue). ``is_done()`` is checked once after
    subscribing, which closes the race with a result written just before."""
    pubsub = client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(_channel(prediction_id))
    try:
        if is_done():
            return True
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if pubsub.get_message(timeout=remaining) is not None:
                return True
        return False
    finally:
        pubsub.close()
