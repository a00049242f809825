"""The test harness itself: a flush after a test that met the live worker's write (a
deadlock on PostgreSQL) is retried instead of leaving that test's rows to the next ones."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection
from django.test import TransactionTestCase

from accounts.models import Tenant

pytestmark = pytest.mark.postgres  # where the deadlocks happen


@pytest.mark.django_db(transaction=True)
def test_a_flush_that_met_a_deadlock_is_retried_and_empties_the_tables(monkeypatch, tenant):
    real_flush = connection.ops.execute_sql_flush
    attempts = []

    def deadlocked_once(sql_list):
        attempts.append(len(sql_list))
        if len(attempts) == 1:
            raise OperationalError("deadlock detected")
        return real_flush(sql_list)

    monkeypatch.setattr(connection.ops, "execute_sql_flush", deadlocked_once)

    TransactionTestCase("id")._fixture_teardown()

    assert len(attempts) == 2
    assert not Tenant.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_flush_that_fails_otherwise_is_not_retried(monkeypatch):
    from django.core.management.base import CommandError

    attempts = []

    def broken(sql_list):
        attempts.append(1)
        raise OperationalError("no such table: nowhere")

    monkeypatch.setattr(connection.ops, "execute_sql_flush", broken)

    with pytest.raises(CommandError):
        TransactionTestCase("id")._fixture_teardown()
    assert attempts == [1]
