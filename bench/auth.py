"""Per-request cost of API-key authentication and tenant resolution.

Times one trivial DRF view through Django's whole WSGI path (every middleware, URL resolution,
rendering) in two variants: open (no authentication, ``AllowAny``) and with the project's
defaults (``ApiKeyAuthentication`` + ``TenantMember``). Both get the same request, with the same
``Authorization: Bearer`` header, so the difference is what authentication and tenant
resolution add to every API request. Target: under 50 µs.

    python bench/auth.py [--quick] [--json PATH] [--profile]

It runs against its own temporary SQLite database, ``var/`` directory and Redis, and leaves
nothing behind.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script, the project is not on the path

TARGET_ADDED_US = 50.0
OPEN_PATH = "/bench/open/"
AUTH_PATH = "/bench/auth/"
# The project's auth code; the profile shows these functions and what they call.
AUTH_MODULES = tuple(
    str(REPO / "accounts" / name) for name in ("authentication.py", "permissions.py", "secrets.py")
)

# Django resolves ROOT_URLCONF by import path, so this module is the URLConf; the views are
# added once Django is set up (DRF reads settings as soon as it is imported).
urlpatterns: list = []


@dataclass(frozen=True)
class Plan:
    rounds: int
    requests_per_round: int
    warmup: int


FULL = Plan(rounds=12, requests_per_round=4000, warmup=1000)
QUICK = Plan(rounds=6, requests_per_round=1000, warmup=300)


@dataclass(frozen=True)
class Summary:
    median_us: float
    p90_us: float


@contextmanager
def isolated_environment() -> Iterator[None]:
    """Point settings at a throwaway var/ dir, database and Redis before Django reads them.

    With ``REDIS_URL`` unset, settings would start a daemonized Redis that outlives the bench;
    this one is our child process and is terminated on the way out.
    """
    from config import embedded

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    sock, redis = embedded.start_redis(tmp / "redis", daemonize=False)
    try:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            # As in production: with DEBUG every SQL query is also recorded, billed to auth.
            DJANGO_DEBUG="0",
            MM_VAR_DIR=str(tmp),
            DATABASE_URL=f"sqlite:///{tmp / 'bench.sqlite3'}",
            REDIS_URL=f"unix://{sock}",
        )
        yield
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def set_up_django() -> str:
    """Migrate, install the bench views and return a fresh API key's secret."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import override_settings
    from django.urls import path
    from rest_framework.permissions import AllowAny
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from accounts import services
    from accounts.models import Scope, User

    # Keep the connection whatever DATABASE_CONN_MAX_AGE says: the connect would otherwise be
    # billed to auth, the first thing in a request to touch the database.
    connection.settings_dict["CONN_MAX_AGE"] = None
    call_command("migrate", verbosity=0)

    class AuthView(APIView):
        """The project's default authentication and permission classes, like every API view."""

        required_scope = Scope.MODELS_READ

        def get(self, request):
            return Response({"ok": True})

    class OpenView(AuthView):
        authentication_classes = []
        permission_classes = [AllowAny]

    urlpatterns[:] = [
        path(OPEN_PATH.lstrip("/"), OpenView.as_view()),
        path(AUTH_PATH.lstrip("/"), AuthView.as_view()),
    ]
    override_settings(ROOT_URLCONF=__name__).enable()

    # No password: hashing one takes about a second and the bench never signs in.
    owner = User.objects.create_user(email="bench@example.com")
    tenant = services.tenant_create(slug="bench", name="Bench", owner=owner, actor=services.SYSTEM)
    _key, secret = services.api_key_create(
        tenant=tenant, name="bench", scopes=[Scope.MODELS_READ], actor=services.SYSTEM
    )
    return secret


def requester(secret: str, path: str) -> Callable[[], int]:
    """One GET through the WSGI handler, as gunicorn would call it; returns the status code."""
    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "HTTP_ACCEPT": "application/json",
        "HTTP_AUTHORIZATION": f"Bearer {secret}",
        "REMOTE_ADDR": "203.0.113.7",
        # https, or production settings (SECURE_SSL_REDIRECT) would answer every request 301.
        "wsgi.url_scheme": "https",
        "wsgi.errors": sys.stderr,
    }

    def start_response(status: str, headers: list) -> None:
        pass

    def call() -> int:
        response = handler({**environ, "wsgi.input": io.BytesIO()}, start_response)
        response.close()  # sends request_finished, as a WSGI server does
        return response.status_code

    return call


def timed(call: Callable[[], int], n: int) -> list[int]:
    """Nanoseconds per call, with the collector off so its pauses land between rounds."""
    clock = time.perf_counter_ns
    times = [0] * n
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            start = clock()
            call()
            times[i] = clock() - start
    finally:
        gc.enable()
    return times


def summarize(times_ns: list[int]) -> Summary:
    ordered = sorted(times_ns)
    return Summary(
        median_us=ordered[len(ordered) // 2] / 1000, p90_us=ordered[len(ordered) * 9 // 10] / 1000
    )


def measure(
    calls: dict[str, Callable[[], int]], plan: Plan
) -> tuple[dict[str, list[int]], list[float]]:
    """Interleave the views in rounds, alternating which goes first, so drift and neighbours
    on a shared machine hit both alike. Returns all samples and the added µs of each round."""
    for name, call in calls.items():
        # A 200 from the auth view also proves the key resolved to a tenant: TenantMember
        # refuses a request without one.
        statuses = {call() for _ in range(plan.warmup)}
        if statuses != {200}:
            raise SystemExit(f"{name}: expected 200 from every request, got {sorted(statuses)}")
    samples: dict[str, list[int]] = {name: [] for name in calls}
    added_per_round = []
    for round_no in range(plan.rounds):
        medians = {}
        for name in sorted(calls, reverse=round_no % 2 == 1):
            times = timed(calls[name], plan.requests_per_round)
            samples[name] += times
            medians[name] = summarize(times).median_us
        added_per_round.append(medians["auth"] - medians["open"])
    return samples, added_per_round


def print_profile(call: Callable[[], int], n: int) -> None:
    """cProfile the authenticated request: the project's auth functions, and the time spent in
    what they call directly (counting only calls made from the auth functions)."""
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [call() for _ in range(n)])
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]  # {func: (cc, nc, tt, ct, callers)}
    own = {func for func in stats if func[0].startswith(AUTH_MODULES)}
    rows = {func: (stats[func][1], stats[func][3]) for func in own}
    for func, (*_, callers) in stats.items():
        edges = [edge for caller, edge in callers.items() if caller in own and func not in own]
        if edges:
            rows[func] = (sum(edge[1] for edge in edges), sum(edge[3] for edge in edges))
    # The profiler slows Python-heavy code (the ORM) more than C (HMAC): compare, don't add up.
    print(f"\ncProfile of {n:,} authenticated requests, inclusive time (inflated by the profiler)")
    print(f"{'µs/request':>10}{'calls/request':>15}  function")
    for func, (calls, seconds) in sorted(rows.items(), key=lambda row: -row[1][1])[:20]:
        filename, line, name = func
        where = f"{Path(filename).name}:{line} " if line else ""
        print(f"{seconds / n * 1e6:>10.1f}{calls / n:>15.3f}  {where}{name}")


def report(plan: Plan, views: dict[str, Summary], added_per_round: list[float]) -> dict:
    """Print the table and return the same figures for ``--json``."""
    open_, auth = views["open"], views["auth"]
    added = Summary(auth.median_us - open_.median_us, auth.p90_us - open_.p90_us)
    ratio = (auth.median_us / open_.median_us, auth.p90_us / open_.p90_us)
    met = added.median_us < TARGET_ADDED_US
    print(
        f"\nAPI-key authentication + tenant resolution, per request "
        f"({plan.rounds} interleaved rounds x {plan.requests_per_round:,} requests per view)"
    )
    print(f"{'':<46}{'median µs':>10}{'p90 µs':>10}")
    for label, summary in [
        ("open (no authentication, AllowAny)", open_),
        ("API key (ApiKeyAuthentication + TenantMember)", auth),
        ("added by authentication", added),
    ]:
        print(f"{label:<46}{summary.median_us:>10.1f}{summary.p90_us:>10.1f}")
    print(f"{'ratio':<46}{ratio[0]:>9.2f}x{ratio[1]:>9.2f}x")
    print(f"added per round: {min(added_per_round):.1f} to {max(added_per_round):.1f} µs")
    print(f"target, under {TARGET_ADDED_US:.0f} µs added: {'met' if met else 'NOT MET'}")
    return {
        "target_added_us": TARGET_ADDED_US,
        "target_met": met,
        "plan": asdict(plan),
        "views": {name: asdict(summary) for name, summary in views.items()},
        "added": {**asdict(added), "per_round_median_us": added_per_round},
        "ratio": {"median": ratio[0], "p90": ratio[1]},
        "environment": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, under a minute")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--profile", action="store_true", help="then profile the auth view")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL

    with isolated_environment():
        secret = set_up_django()
        calls = {"open": requester(secret, OPEN_PATH), "auth": requester(secret, AUTH_PATH)}
        samples, added_per_round = measure(calls, plan)
        views = {name: summarize(times) for name, times in samples.items()}
        figures = report(plan, views, added_per_round)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        if args.profile:
            print_profile(calls["auth"], plan.requests_per_round)


if __name__ == "__main__":
    main()
