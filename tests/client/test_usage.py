"""Usage and invoices from the command line."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_usage_counts_this_months_predictions(celery_worker_process, mm, classifier):
    for _ in range(2):
        assert mm("predict", "acme/clf", "-d", "[[1, 2, 3, 4]]").code == 0

    usage = mm("usage", "--json")

    assert usage.code == 0, usage.err
    assert usage.json()["calls"] == 2
    assert [row["model"] for row in usage.json()["by_model"]] == ["acme/clf"]
    shown = mm("usage")
    assert "2 calls" in shown.out and "acme/clf" in shown.out


def test_no_invoices_yet(mm, tenant):
    run = mm("invoices")

    assert run.code == 0, run.err
    assert "No invoices yet." in run.out


def test_a_bad_period_is_exit_5(mm, tenant):
    run = mm("usage", "--period", "last-month")

    assert run.code == 5 and "YYYY-MM" in run.err
