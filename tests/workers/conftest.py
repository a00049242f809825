"""Helpers for the worker's tests with real model hosts: uploads validated by the worker,
queued predictions, and concurrent runs that meet in one version's batcher."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inference import tensors
from inference.models import Prediction
from marketplace.models import ModelVersion


@pytest.fixture
def fresh_hosts(settings):
    """Hosts loaded on demand (none pre-started), with room for slow loads and requests on a
    busy machine; every host closed afterwards."""
    from workers.pool import HOSTS

    settings.MODEL_HOST_PRESTART = 0
    settings.MODEL_LOAD_TIMEOUT = 60
    settings.MODEL_REQUEST_TIMEOUT = 90
    yield
    HOSTS.close()


def validated(tenant, name: str, data: bytes, fmt: str = "torchscript", **fields) -> ModelVersion:
    """An upload of ``tenant`` validated by the worker (its host stays warm in the cache)."""
    from accounts import services as accounts
    from marketplace import services as registry
    from marketplace.vault.store import artifact_create
    from workers.services import version_validate

    model = registry.model_create(tenant=tenant, name=name, actor=accounts.SYSTEM)
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        format=fmt,
        status=ModelVersion.Status.VALIDATING,
        artifact=artifact_create(tenant=tenant, chunks=[data]),
        **fields,
    )
    version = version_validate(version_id=version.public_id)
    assert version.status == "ready", version.failure_reason
    return version


def queued(version: ModelVersion, x: np.ndarray | dict, tenant=None) -> Prediction:
    """A prediction of ``tenant`` (the model's own by default) on input ``x`` (the input named
    x, or a dict of inputs by name); another organisation is subscribed to the model first (the
    worker runs nothing a caller may not), its listing published, free, where it has none."""
    if tenant is not None and tenant != version.model.tenant:
        _subscribed(version.model, tenant)
    inputs = x if isinstance(x, dict) else {"x": x}
    return Prediction.objects.create(
        tenant=tenant or version.model.tenant,
        model=version.model,
        version=version,
        input_data=tensors.encode(inputs),
        batch_size=next(iter(inputs.values())).shape[0],
    )


def _subscribed(model, tenant) -> None:
    from accounts import services as accounts
    from marketplace.listings import listing_publish, listing_subscribe
    from marketplace.models import Entitlement, Listing

    listing = Listing.objects.filter(model=model).first() or listing_publish(
        model=model, actor=accounts.SYSTEM, visibility="public", title=model.name
    )
    if not Entitlement.objects.filter(model=model, tenant=tenant, revoked_at=None).exists():
        listing_subscribe(listing=listing, tenant=tenant, actor=accounts.SYSTEM)


def output_of(prediction: Prediction) -> np.ndarray:
    prediction.refresh_from_db()
    assert prediction.status == "succeeded", (prediction.status, prediction.error)
    return tensors.decode(prediction.output_data)["output"]


def run_concurrently(version: ModelVersion, first: Prediction, *others: Prediction) -> list[int]:
    """Run ``first``, and ``others`` while its forward pass is held back, so they all wait in
    the version's batcher at once, in the order given (as concurrent requests do under load).
    Returns the sizes of the batches ``others`` ran in, in order."""
    from django.db import connections

    from workers import services

    batcher = services._batcher(version)
    real, gate, entered = batcher._host, threading.Event(), threading.Event()
    before = len(batcher.batches)

    def gated(tenant):
        if not entered.is_set():
            entered.set()
            gate.wait(60)
        return real(tenant)

    batcher._host = gated

    def run(p):
        try:
            services.prediction_run(prediction_id=p.public_id)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(first,))]
    threads[0].start()
    assert entered.wait(60)
    deadline = time.monotonic() + 60
    for waiting, p in enumerate(others, 1):  # one at a time: they wait in this order
        threads.append(threading.Thread(target=run, args=(p,)))
        threads[-1].start()
        while batcher._jobs.qsize() < waiting:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    gate.set()
    for t in threads:
        t.join(120)
    batcher._host = real
    return batcher.batches[before + 1 :]
