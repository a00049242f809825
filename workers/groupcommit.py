"""Group commit: the worker's writes for concurrent predictions share transactions.

Each prediction makes two writes (the claim, then the result with its usage record). On
SQLite every write transaction takes the one database lock, and a writer that finds it taken
sleeps in growing steps; under load most of a prediction's time went to those waits. Here a
thread that wants to write queues its write; if no other thread is committing, it becomes the
leader, takes every write queued by then and runs them in one transaction, each in its own
savepoint (a write that raises fails alone and its caller gets the exception); the others wait
for their results. Alone, a thread runs its own write at once in a plain transaction, as
before. Each write keeps its
own guarantees: a result and its usage record are still in one transaction, and hooks
registered with ``on_commit`` run once the shared transaction commits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from django.db import OperationalError, transaction

logger = logging.getLogger(__name__)


class _Write:
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn: Callable[[], Any]):
        self.fn, self.result, self.error, self.done = fn, None, None, False


class GroupCommit:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: list[_Write] = []
        self._leading = False
        self.rounds: list[int] = []  # writes per transaction, recent, for tests and tuning

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in a transaction shared with the writes queued alongside it. A write the
        database refuses with an operational error (a deadlock with another process's
        transaction, a lock wait that ran out) runs once more: the writes here are
        conditional updates, which are safe to run again."""
        try:
            return self._run(fn)
        except OperationalError:
            logger.warning(
                "group commit: a write failed on a lock; running it again", exc_info=True
            )
            return self._run(fn)

    def _run(self, fn: Callable[[], Any]) -> Any:
        write = _Write(fn)
        with self._cond:
            self._pending.append(write)
            while self._leading and not write.done:
                self._cond.wait()
            if not write.done:
                self._leading = True
                writes, self._pending = self._pending, []
        if not write.done:
            try:
                self._commit(writes)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if write.error is not None:
            raise write.error
        return write.result

    def _commit(self, writes: list[_Write]) -> None:
        self.rounds = [*self.rounds[-99:], len(writes)]
        try:
            with transaction.atomic():
                # A write alone (the usual case) has the transaction to itself: no savepoint,
                # and its failure rolls the transaction back instead.
                alone = len(writes) == 1
                for write in writes:
                    try:
                        with contextlib.nullcontext() if alone else transaction.atomic():
                            write.result = write.fn()
                    except Exception as exc:  # noqa: BLE001 - handed to its caller
                        write.error = exc
                        if alone:
                            raise
        except BaseException as exc:
            # Nothing was written: every write fails with the reason.
            for write in writes:
                if write.error is None:
                    write.result, write.error = None, exc
            raise_later = exc
        else:
            raise_later = None
        finally:
            for write in writes:
                write.done = True
        if raise_later is not None and not isinstance(raise_later, Exception):
            raise raise_later  # KeyboardInterrupt and the like


WRITES = GroupCommit()
