"""Usage and invoices from the command line (usage after predictions: test_publish_flow)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_no_invoices_yet(mm, tenant):
    run = mm("invoices")

    assert run.code == 0, run.err
    assert "No invoices yet." in run.out


def test_a_bad_period_is_exit_5(mm, tenant):
    run = mm("usage", "--period", "last-month")

    assert run.code == 5 and "YYYY-MM" in run.err
