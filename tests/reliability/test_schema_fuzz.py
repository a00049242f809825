"""schemathesis against the project's own OpenAPI schema, with a real API key: generated
requests to every operation never get a 500, and every answer conforms to the schema."""

from __future__ import annotations

import time

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config.wsgi import application
from tests.conftest import key_client
from tests.inference.conftest import Classifier, export, ready_version, signature

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Real names, so generated calls reach past the 404 of a made-up model.
PATH_VALUES = {"owner": "acme", "name": "clf"}


@pytest.fixture
def wsgi_keeps_the_test_connection():
    """The WSGI handler closes the database connection after each request; the test's
    transaction lives on it (Django's own test client unhooks the same signals)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_generated_requests_get_no_500_and_conforming_answers(
    scenario, knobs, tenant, wsgi_keeps_the_test_connection
):
    record = scenario(
        "schemathesis against /api/schema/",
        injected=f"up to {knobs['schema_examples']} generated requests per operation of the "
        "OpenAPI schema (positive and negative data), with an all-scopes key of acme, on the "
        f"WSGI app in-process; at most {knobs['schema_seconds']} s in all",
        expected="no 500; content types and bodies as the schema declares (error statuses the "
        "schema does not list are counted apart)",
    )
    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    secret = key_client(tenant).secret
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    auth = {"Authorization": f"Bearer {secret}"}

    calls, server_errors, nonconforming, operations = 0, [], {}, 0
    undocumented: dict[str, set[int]] = {}
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + knobs["schema_seconds"]
    skipped = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if time.monotonic() > deadline:
            skipped += 1
            continue
        operations += 1
        names = {p.name for p in operation.path_parameters}
        fixed = {k: v for k, v in PATH_VALUES.items() if k in names}

        @given(case=operation.as_strategy(path_parameters=fixed or None))
        @settings(
            max_examples=knobs["schema_examples"],
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case):
            nonlocal calls
            response = case.call(headers=auth)
            calls += 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            label = f"{case.operation.method.upper()} {case.operation.path}"
            if response.status_code >= 500:
                server_errors.append(f"{label} -> {response.status_code}")
                return
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as group:
                for failure in group.exceptions:
                    if response.status_code >= 400 and failure.title == "Undocumented status code":
                        # Every /api/ operation's `default` response covers its errors (read
                        # against the Error component); only a /v2 status the protocol does
                        # not declare lands here, counted (a figure), not failed.
                        undocumented.setdefault(label, set()).add(response.status_code)
                        continue
                    message = " ".join(str(failure.message).split())[:300]
                    nonconforming.setdefault(label, set()).add(
                        f"{failure.title} ({response.status_code}): {message}"
                    )

        exercise()

    record.figures = {
        "operations": operations,
        "operations left for lack of time": skipped,
        "requests": calls,
        "5xx": len(server_errors),
        "operations with non-conforming answers": len(nonconforming),
        "operations whose 4xx answers the schema does not declare": len(undocumented),
        "undeclared 4xx statuses": ", ".join(
            str(s) for s in sorted({s for v in undocumented.values() for s in v})
        ),
        "statuses": ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
    }
    problems = server_errors[:10] + [
        f"{k}: {', '.join(sorted(v))}" for k, v in sorted(nonconforming.items())
    ]
    observed = "no 500; every answer, errors included, conforms to its operation's schema"
    if undocumented:
        observed += f"; {len(undocumented)} operations answer error statuses it does not declare"
    record.observed = "; ".join(problems) if problems else observed
    assert not server_errors, server_errors
    assert not nonconforming, "\n".join(problems)
