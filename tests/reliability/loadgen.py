"""A load client in its own process (so its threads do not share the web server's GIL):
``python -m tests.reliability.loadgen plan.json results.json``.

The plan names the server, how long to run, and one entry per client: its API key, the
models it calls, and its kind (``predict``: sync and async predictions, ``upload``: new
versions through resumable uploads). Every request is written to the results with its
kind, status, latency and, for predictions, the id and the final status."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
import time
from pathlib import Path

import requests

TERMINAL = ("succeeded", "failed", "canceled")


def timed(results, kind, session, method, url, **kwargs):
    started = time.perf_counter()
    retried = False
    try:
        try:
            response = session.request(method, url, timeout=60, **kwargs)
        except requests.ConnectionError:
            # Refused or reset before any answer (the test server's listen backlog is 10):
            # nothing reached the application, so a client sends it again, once.
            retried = True
            response = session.request(method, url, timeout=60, **kwargs)
    except requests.RequestException as exc:
        results.append({"kind": kind, "status": 0, "ms": 0, "error": type(exc).__name__})
        return None
    results.append(
        {
            "kind": kind,
            "status": response.status_code,
            "ms": (time.perf_counter() - started) * 1e3,
            "retried": retried,
        }
    )
    return response


def predictor(plan, client, results, deadline, rng):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {client['key']}"
    url = plan["url"]
    while time.monotonic() < deadline:
        model = rng.choice(client["models"])
        body = {"model": model, "input": {"x": [[rng.random() for _ in range(4)]]}}
        if rng.random() < 0.7:
            r = timed(
                results,
                "sync predict",
                session,
                "POST",
                f"{url}/api/v1/predictions",
                json=body,
                headers={"Prefer": "wait=30"},
            )
            if r is not None and r.status_code == 201:
                results[-1].update(id=r.json()["id"], final=r.json()["status"])
        else:
            r = timed(
                results,
                "async predict",
                session,
                "POST",
                f"{url}/api/v1/predictions",
                json=body,
            )
            if r is None or r.status_code != 201:
                continue
            entry, started = results[-1], time.perf_counter()
            entry["id"] = r.json()["id"]
            status = r.json()["status"]
            while status not in TERMINAL and time.perf_counter() - started < 60:
                time.sleep(0.2)
                polled = timed(
                    results,
                    "poll",
                    session,
                    "GET",
                    f"{url}/api/v1/predictions/{entry['id']}",
                )
                if polled is None or polled.status_code != 200:
                    break
                status = polled.json()["status"]
            entry.update(final=status, done_ms=(time.perf_counter() - started) * 1e3)


def uploader(plan, client, results, deadline, rng):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {client['key']}"
    url, owner = plan["url"], client["owner"]
    data = Path(plan["upload_file"]).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    n = 0
    while time.monotonic() < deadline:
        n += 1
        name = f"load-{client['index']}-{n}"
        r = timed(
            results,
            "upload",
            session,
            "POST",
            f"{url}/api/v1/models",
            json={"name": name},
        )
        r = timed(
            results,
            "upload",
            session,
            "POST",
            f"{url}/api/v1/models/{owner}/{name}/uploads",
            json={"filename": "m.pt2", "format": "pt2", "size": len(data), "sha256": digest},
        )
        if r is None or r.status_code != 201:
            continue
        upload = r.json()
        size = upload["chunk_size"]
        for start in range(0, len(data), size):
            end = min(start + size, len(data)) - 1
            timed(
                results,
                "upload",
                session,
                "PUT",
                f"{url}{upload['upload_url']}",
                data=data[start : end + 1],
                headers={
                    "Content-Range": f"bytes {start}-{end}/{len(data)}",
                    "Content-Type": "application/octet-stream",
                },
            )
        timed(
            results,
            "upload",
            session,
            "POST",
            f"{url}{upload['upload_url']}/complete",
        )
        time.sleep(rng.uniform(2, 5))


def main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    deadline = time.monotonic() + plan["seconds"]
    results: list[dict] = []
    threads = []
    for index, client in enumerate(plan["clients"]):
        client["index"] = index
        target = uploader if client["kind"] == "upload" else predictor
        rng = random.Random(index)
        threads.append(threading.Thread(target=target, args=(plan, client, results, deadline, rng)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:3])
