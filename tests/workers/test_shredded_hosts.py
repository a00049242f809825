"""Crypto-shredding reaches the worker's memory: a deleted organisation's model, decrypted
into a model host that the worker keeps warm, does not stay loaded once its keys are gone."""

from __future__ import annotations

import pytest

from accounts import services as accounts
from marketplace.vault.store import tenant_destroy
from tests.workers.conftest import validated
from workers.pool import HOSTS
from workers.services import version_key, worker_device

pytestmark = pytest.mark.django_db


def test_a_destroyed_organisations_loaded_model_is_killed_at_the_next_health_check(
    tenant, outsider, model_files, fresh_hosts
):
    example = {"example_input": {"input": {"shape": [1, 4]}}}
    shredded = validated(tenant, "secret", model_files["torchscript"], **example)
    kept = validated(outsider, "other", model_files["torchscript"], **example)
    loaded = HOSTS.loaded(worker_device())
    host = loaded.get(version_key(shredded))
    assert host is not None and host.alive

    tenant_destroy(tenant=tenant, actor=accounts.SYSTEM)
    HOSTS.health_check()

    assert loaded.keys() == [version_key(kept)]
    assert not host.alive
    assert loaded.get(version_key(kept)).alive
