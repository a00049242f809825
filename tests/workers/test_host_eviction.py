"""The worker's cache of loaded model hosts makes room for another model without cutting
short the prediction a host is serving."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from torch import nn

from tests.inference.conftest import Classifier, export, ready_version, scripted, signature
from tests.workers.conftest import queued, validated
from workers.pool import HOSTS
from workers.services import prediction_host_key, prediction_run, version_key

pytestmark = [
    pytest.mark.django_db(transaction=True),  # the prediction runs in its own thread
    pytest.mark.usefixtures("fresh_hosts"),
]


class Spin(nn.Module):
    """Loops x[0, 0] times: a forward pass as long as the caller asks."""

    def forward(self, x):
        n = int(x[0, 0].item())
        i = 0
        while i < n:
            i += 1
        return x * 2


def test_loading_other_models_keeps_a_busy_host_and_counts_it_until_it_is_gone(
    tenant, outsider, settings
):
    # Room for two hosts. The busy host is evicted when a third model loads; it finishes
    # the prediction it is serving, and until then its memory still counts, so the idle
    # host loaded after it goes too: three live hosts would be over the cache's budget
    # (before, the busy host left the count when it was evicted, not when it was gone).
    HOSTS.close()
    settings.MODEL_HOST_OVERHEAD_BYTES = 10**9  # each host "costs" 1 GB; the models are tiny
    settings.MODEL_CACHE_BYTES = 2 * 10**9 + 10**8
    settings.MODEL_HOST_PRESTART = 1
    busy = ready_version(tenant, "spin", scripted(Spin()), "torchscript", signature(4, 4))
    long_call = queued(busy, np.array([[100_000_000, 0, 0, 0]], np.float32))  # ~30 s
    runner = threading.Thread(target=prediction_run, kwargs={"prediction_id": long_call.public_id})
    runner.start()
    deadline = time.monotonic() + 90
    while not (
        (host := HOSTS.loaded("cpu").get(prediction_host_key(busy, tenant.pk))) is not None
        and host._busy.locked()
        and HOSTS.idle("cpu")._ready  # the refilled idle host, for the next model
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    second = validated(outsider, "clf", export(Classifier()), fmt="pt2")  # fits beside it
    second_host = HOSTS.loaded("cpu").hosts()[-1]
    assert HOSTS.loaded("cpu").keys() == [prediction_host_key(busy, tenant.pk), version_key(second)]
    third = validated(outsider, "clf2", export(Classifier()), fmt="pt2")  # evicts the busy one

    assert host._busy.locked() and host.alive  # still in the middle of the long call
    assert HOSTS.loaded("cpu").keys() == [version_key(third)]
    assert not second_host.alive  # made room: the busy host still holds its memory

    runner.join(120)
    long_call.refresh_from_db()
    assert long_call.status == "succeeded", long_call.error
    assert (second.status, third.status) == ("ready", "ready")
    assert not host.alive  # retired once its request was answered
