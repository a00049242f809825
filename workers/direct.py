"""The worker's side of the predictions fast path (see ``inference/dispatch.py``).

One thread takes prediction ids from ``mm:direct:<queue>`` with ``BLMOVE`` into this
worker's in-flight list, at most as many as it has threads free, and hands each to a pool
that runs ``prediction_run``, the same service as the Celery task, then drops the id from the
in-flight list. Another thread beats the heartbeat and moves the in-flight ids of workers
that stopped beating back to the front of the queue. Database connections stay open in the
pool's threads between predictions (a Celery task opens one per task).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from django.conf import settings
from django.db import connections

from config.metrics import TASKS
from inference import dispatch

logger = logging.getLogger(__name__)

TASK_NAME = "workers.run_prediction"  # what the metrics call it, either path
# How long a thread that requeued a prediction of a model that seems to hang waits before it
# takes more work (else, with only that model's work queued, it would spin).
DEFER_PAUSE_SECONDS = 0.05


class DirectConsumer:
    def __init__(self, queue: str, threads: int):
        self.queue = queue
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.source = dispatch.queue_key(queue)
        self.inflight = dispatch.inflight_key(queue, self.name)
        self.consumers = dispatch.consumers_key(queue)
        self.redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="direct")
        self.free = threading.Semaphore(threads)
        self.stopping = threading.Event()
        self.drained = threading.Event()

    def start(self) -> None:
        self._beat()  # alive before the first take, so nothing it takes looks orphaned
        threading.Thread(target=self._take_loop, daemon=True, name="direct-take").start()
        threading.Thread(target=self._beat_loop, daemon=True, name="direct-beat").start()

    def stop(self) -> None:
        """Take nothing more; once the running predictions finish, leave the consumer set."""
        self.stopping.set()

        def drain() -> None:
            self.pool.shutdown(wait=True)
            try:
                self._recover_from(self.name)  # normally empty by now
                self.redis.zrem(self.consumers, self.name)
            except redis.RedisError:
                logger.warning("direct consumer: could not leave cleanly", exc_info=True)
            self.drained.set()

        threading.Thread(target=drain, daemon=True, name="direct-drain").start()

    def _take_loop(self) -> None:
        while not self.stopping.is_set():
            self.free.acquire()
            try:
                taken = self.redis.blmove(self.source, self.inflight, 1, "RIGHT", "LEFT")
            except redis.RedisError:
                self.free.release()
                logger.warning("direct consumer: Redis unavailable; retrying", exc_info=True)
                time.sleep(0.5)
                continue
            if taken is None or self.stopping.is_set():
                if taken is not None:  # give it back: another worker runs it
                    self._give_back(taken)
                self.free.release()
                continue
            self.pool.submit(self._run, taken)

    def _run(self, taken: bytes) -> None:
        from workers.services import DEFERRED, prediction_run

        state = "SUCCESS"
        try:
            if prediction_run(prediction_id=taken.decode(), defer_when_stalled=True) == DEFERRED:
                # Its model seems to hang and enough threads wait on it already: to the back
                # of the queue, and a pause, so the threads go to other models' work.
                if self._to_back(taken):
                    state = "DEFERRED"
                    self.stopping.wait(DEFER_PAUSE_SECONDS)
                else:  # Redis failed: run it here after all
                    prediction_run(prediction_id=taken.decode())
        except Exception:  # noqa: BLE001 - as a failed Celery task: logged, not retried
            state = "FAILURE"
            logger.exception("prediction %s failed on the fast path", taken.decode())
            connections.close_all()  # the next run starts with a fresh connection
        finally:
            if state != "DEFERRED":
                self._done(taken)
            self.free.release()
            TASKS.labels(TASK_NAME, state).inc()

    def _done(self, taken: bytes) -> None:
        for attempt in range(5):
            try:
                self.redis.lrem(self.inflight, 1, taken)
                return
            except redis.RedisError:
                time.sleep(0.2 * (attempt + 1))
        # Left in flight: recovered (and found done) if this worker ever stops beating.
        logger.warning("direct consumer: %s left in the in-flight list", taken)

    def _to_back(self, taken: bytes) -> bool:
        """To the back of the queue (the end the web pushes to)."""
        return self._requeue(taken, back=True)

    def _give_back(self, taken: bytes) -> None:
        """To the front of the queue (the end taken next): another worker runs it."""
        self._requeue(taken, back=False)

    def _requeue(self, taken: bytes, *, back: bool) -> bool:
        """Move a taken id from this worker's in-flight list onto the queue, in one
        transaction; False if Redis failed (nothing moved)."""
        try:
            with self.redis.pipeline() as pipe:
                (pipe.lpush if back else pipe.rpush)(self.source, taken)
                pipe.lrem(self.inflight, 1, taken)
                pipe.execute()
        except redis.RedisError:
            logger.warning("direct consumer: could not requeue %s", taken, exc_info=True)
            return False
        return True

    def _beat(self) -> None:
        self.redis.zadd(self.consumers, {self.name: time.time() + dispatch.PRESUMED_DEAD_AFTER})

    def _beat_loop(self) -> None:
        while not self.drained.is_set():
            try:
                self.beat_once()
            except redis.RedisError:
                logger.warning("direct consumer: heartbeat failed", exc_info=True)
            self.drained.wait(dispatch.HEARTBEAT_SECONDS)

    def beat_once(self) -> None:
        """Beat, and requeue the in-flight work of consumers presumed dead."""
        self._beat()
        for dead in self.redis.zrangebyscore(self.consumers, "-inf", time.time()):
            if dead.decode() == self.name:
                continue  # late beats (Redis was away): its work is still running
            self._recover_from(dead.decode())
            self.redis.zrem(self.consumers, dead)

    def _recover_from(self, consumer: str) -> None:
        """Move a consumer's in-flight ids to the front of the queue, one atomic move each."""
        source = dispatch.inflight_key(self.queue, consumer)
        moved = 0
        while self.redis.lmove(source, self.source, "LEFT", "RIGHT") is not None:
            moved += 1
        if moved and consumer != self.name:
            logger.warning("direct consumer: requeued %d predictions of %s", moved, consumer)


_consumers: list[DirectConsumer] = []


def start(queue: str) -> DirectConsumer:
    consumer = DirectConsumer(queue, settings.INFERENCE_DIRECT_THREADS)
    consumer.start()
    _consumers.append(consumer)
    return consumer


def stop_all() -> None:
    for consumer in _consumers:
        consumer.stop()
