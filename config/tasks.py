"""Sending work to the Celery workers by task name."""

from __future__ import annotations


def send(task: str, *args, queue: str = "default") -> None:
    """Queue ``task`` with ``args`` on ``queue``. Every send goes through here for
    ``ignore_result``: without it ``send_task`` first waits on the result store, which with
    Redis down took 20 s and answered a 500 where the broker's failure is a 503 (and it does
    not read ``task_ignore_result``, so each call had to say so)."""
    from celery import current_app

    current_app.send_task(task, args=list(args), queue=queue, ignore_result=True)
