"""Two transactions made to overlap: the first runs until it calls a chosen function, and waits
there while the second runs to its end, each in its own thread with its own database
connection. Tests using it need ``django_db(transaction=True)``: the threads see only what is
committed.

On PostgreSQL the second runs while the first holds its row locks: if the second blocks on one
of them, the first waits ``grace`` seconds, goes on and commits, and the second runs after it.
On SQLite (``BEGIN IMMEDIATE``) the second always waits for the first's whole transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def race(
    monkeypatch,
    *,
    pause_before: tuple[Any, str],
    first: Callable[[], Any],
    second: Callable[[], Any],
    grace: float = 1.5,
) -> tuple[Any, Any]:
    """Run ``first`` until it calls ``pause_before`` (an object and the name of a function on
    it), then ``second`` while ``first`` waits there. Returns what each returned or raised."""
    owner, name = pause_before
    original = getattr(owner, name)
    reached, second_done = threading.Event(), threading.Event()
    threads: dict[str, threading.Thread] = {}
    hit: list[bool] = []

    def paused(*args, **kwargs):
        if threading.current_thread() is threads["first"] and not reached.is_set():
            hit.append(True)
            reached.set()
            second_done.wait(grace)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, paused)
    outcomes: list[Any] = [None, None]

    def run(index: int, call: Callable[[], Any], done: threading.Event | None) -> None:
        try:
            outcomes[index] = call()
        except Exception as exc:  # noqa: BLE001 - the caller asserts on it
            outcomes[index] = exc
        finally:
            connection.close()
            reached.set()  # a first that never reached the pause does not hang the test
            if done is not None:
                done.set()

    threads["first"] = threading.Thread(target=run, args=(0, first, None))
    threads["first"].start()
    assert reached.wait(30) and hit, f"the first never reached the pause: {outcomes[0]!r}"
    threads["second"] = threading.Thread(target=run, args=(1, second, second_done))
    threads["second"].start()
    for thread in threads.values():
        thread.join(60)
        assert not thread.is_alive(), "a racing transaction did not finish"
    return outcomes[0], outcomes[1]
