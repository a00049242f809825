"""Every way a command can fail ends in one clear line (the API's own ``detail`` when the API
refused) and a non-zero exit code per kind of failure; never a traceback."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from modelmarket import errors

from accounts.models import Scope
from tests.client.conftest import api_key

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def assert_clean(run) -> None:
    assert "Traceback" not in run.err + run.out


def test_a_revoked_key_is_exit_3_with_the_apis_reason(mm, tenant, secret):
    from accounts import services
    from accounts.models import ApiKey

    services.api_key_revoke(key=ApiKey.objects.get(tenant=tenant), actor=services.SYSTEM)

    run = mm("models")

    assert run.code == errors.EXIT_AUTH == 3
    assert "This API key has been revoked." in run.err and "(HTTP 401)" in run.err
    assert_clean(run)


def test_a_malformed_key_is_exit_3(mm, monkeypatch):
    monkeypatch.setenv("MM_API_KEY", "not-a-key")

    run = mm("models")

    assert run.code == 3 and "Malformed API key" in run.err


def test_no_key_at_all_says_how_to_get_one(mm, monkeypatch):
    monkeypatch.delenv("MM_API_KEY")

    run = mm("models")

    assert run.code == 3
    assert "No API key found: set MM_API_KEY or run `mm login`." in run.err


def test_a_key_without_the_scope_is_exit_3_naming_it(mm, monkeypatch, tenant):
    monkeypatch.setenv("MM_API_KEY", api_key(tenant, scopes=[Scope.MODELS_READ]))

    run = mm("create", "newmodel")

    assert run.code == 3
    assert "models:write" in run.err and "(HTTP 403)" in run.err


def test_an_unknown_model_is_exit_4(mm, tenant):
    run = mm("versions", "acme/nothing-here")

    assert run.code == errors.EXIT_NOT_FOUND == 4
    assert "(HTTP 404)" in run.err and "Check the name" in run.err
    assert_clean(run)


def test_json_errors_are_json_on_stderr(mm, tenant):
    run = mm("model", "globex/secret", "--json")

    assert run.code == 4 and run.out == ""
    assert run.error()["status"] == 404 and run.error()["detail"]


def test_an_input_that_does_not_fit_is_exit_5_naming_the_shape(mm, classifier):
    run = mm("predict", "acme/clf", "--data", "[[1, 2, 3]]")

    assert run.code == errors.EXIT_REJECTED == 5
    assert "[-1, 4]" in run.err and "(HTTP 400)" in run.err
    assert_clean(run)


def test_a_model_that_raises_is_exit_7_with_its_message(celery_worker_process, mm, raising):
    run = mm("predict", "acme/raises", "--data", "[[999, 999, 999, 999]]")

    assert run.code == errors.EXIT_FAILED == 7
    # The model's own error, as the server reports it (TorchScript's trace included).
    assert run.err.startswith("Error: Prediction pred_") and "failed (model)" in run.err
    assert "input out of range" in run.err


def test_a_model_that_exists_already_is_exit_5(mm, classifier):
    run = mm("create", "clf")

    assert run.code == 5
    assert "acme/clf already exists." in run.err and "(HTTP 409)" in run.err


def test_a_pickle_is_refused_before_uploading(mm, tenant, tmp_path, model_files):
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(model_files["pickle"])

    run = mm("push", "acme/clf", pickled)

    assert run.code == errors.EXIT_USAGE == 2
    assert "pickled model" in run.err and "torch.export.save" in run.err


def test_a_missing_input_file_is_exit_2(mm, classifier, tmp_path):
    run = mm("predict", "acme/clf", "--input", tmp_path / "nope.npy")

    assert run.code == 2 and "No input file" in run.err


def test_an_unreachable_server_is_exit_6_after_retrying(mm, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("MM_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MM_MAX_RETRIES", "1")

    run = mm("models")

    assert run.code == errors.EXIT_UNAVAILABLE == 6
    assert f"Could not reach http://127.0.0.1:{port}" in run.err
    assert_clean(run)


def test_a_busy_server_is_retried_after_its_retry_after(
    celery_worker_process, mm, classifier, settings
):
    settings.MAX_QUEUE_DEPTH = 0  # every prediction: 503 with Retry-After: 1
    unblock = threading.Timer(1.5, setattr, (settings, "MAX_QUEUE_DEPTH", 1000))
    unblock.start()
    started = time.monotonic()

    run = mm("predict", "acme/clf", "--data", "[[1, 2, 3, 4]]", "--json")
    unblock.join()

    assert run.code == 0, run.err
    assert run.json()["status"] == "succeeded"
    assert time.monotonic() - started >= 1.5  # waited as told, and not given up


def test_a_busy_server_that_stays_busy_is_exit_6_with_its_reason(
    mm, classifier, settings, monkeypatch
):
    settings.MAX_QUEUE_DEPTH = 0
    monkeypatch.setenv("MM_MAX_RETRIES", "1")

    run = mm("predict", "acme/clf", "--data", "[[1, 2, 3, 4]]")

    assert run.code == 6
    assert "The inference queue is full" in run.err and "(HTTP 503)" in run.err


def test_an_unknown_prediction_is_named_and_not_blamed_on_a_model(mm, tenant):
    run = mm("prediction", "pred_nope")

    assert run.code == errors.EXIT_NOT_FOUND == 4
    assert "No prediction pred_nope in your organisation." in run.err
    assert "models you have no access to" not in run.err
