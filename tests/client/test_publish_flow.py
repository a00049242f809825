"""A publisher ships a model from the command line, through the real stack: the live web
server, Redis and a Celery worker validating and running it in a sandboxed model host."""

from __future__ import annotations

import hashlib
import io
import os
import stat

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_push_alias_publish_and_predict_from_the_command_line(
    celery_worker_process, mm, model_file, model_files, tmp_path
):
    pushed = mm("push", "acme/clf", model_file, "--json")

    assert pushed.code == 0, pushed.err
    result = pushed.json()
    assert result["version"]["status"] == "ready", result["version"]["failure_reason"]
    assert result["version"]["sha256"] == hashlib.sha256(model_files["pt2"]).hexdigest()
    assert result["upload"]["resumed_bytes"] == 0

    aliased = mm("alias", "set", "acme/clf", "production", "1")
    assert aliased.code == 0, aliased.err
    assert "production → version 1" in aliased.out

    published = mm(
        "publish",
        "acme/clf",
        "--visibility",
        "public",
        "--price-per-call",
        "0.002",
        "--title",
        "Tiny classifier",
        "--license",
        "MIT",
        "--json",
    )
    assert published.code == 0, published.err
    assert published.json()["visibility"] == "public"
    assert published.json()["price_per_call"] == "0.002000"

    x = np.random.default_rng(0).random((1, 4))  # float64: the server casts to the signature
    np.save(tmp_path / "x.npy", x)
    predicted = mm(
        "predict", "acme/clf", "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--json"
    )

    assert predicted.code == 0, predicted.err
    assert predicted.json()["status"] == "succeeded"
    assert predicted.json()["output_datatypes"] == {"output": "FP32"}
    module = torch.export.load(io.BytesIO(model_files["pt2"])).module()
    expected = module(torch.from_numpy(x).float()).detach().numpy()
    saved = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(saved, expected, atol=1e-5)
    assert saved.dtype == np.float32  # the model's float32, not JSON's float64

    shown = mm("predict", "acme/clf:production", "--data", "[[1, 2, 3, 4]]")
    assert shown.code == 0, shown.err
    assert "succeeded" in shown.out and "output [1, 3]" in shown.out

    versions = mm("versions", "acme/clf")
    assert "ready" in versions.out and "production" in versions.out

    usage = mm("usage", "--json")
    assert usage.code == 0, usage.err
    assert usage.json()["calls"] == 2
    assert [row["model"] for row in usage.json()["by_model"]] == ["acme/clf"]
    assert usage.json()["spend"] == [{"currency": "usd", "amount": "0.000000"}]  # its own
    assert "2 calls" in mm("usage").out and "0.000000 usd so far" in mm("usage").out


def test_an_async_prediction_is_fetched_later_and_a_retry_with_its_key_is_the_same_one(
    celery_worker_process, mm, classifier
):
    queued = mm("predict", "acme/clf", "-d", "[[4, 3, 2, 1]]", "--async", "--idempotency-key", "k1")
    prediction_id = queued.out.split()[0]
    assert queued.code == 0 and prediction_id.startswith("pred_"), queued.err

    done = mm("prediction", prediction_id, "--wait", "--json")
    again = mm("predict", "acme/clf", "-d", "[[4, 3, 2, 1]]", "--idempotency-key", "k1", "--json")

    assert done.code == 0, done.err
    assert done.json()["status"] == "succeeded" and len(done.json()["output"]["output"][0]) == 3
    assert again.code == 0 and again.json()["id"] == prediction_id


def test_login_saves_the_key_readable_by_its_owner_only(mm, mm_env, monkeypatch, tenant):
    secret = mm_env["MM_API_KEY"]
    monkeypatch.delenv("MM_API_KEY")
    monkeypatch.setattr("sys.stdin", io.StringIO(secret + "\n"))

    logged_in = mm("login")

    assert logged_in.code == 0, logged_in.err
    assert "Logged in to Acme (acme)" in logged_in.out
    config = os.path.join(mm_env["MM_CONFIG_DIR"], "config.json")
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    whoami = mm("whoami", "--json")
    assert whoami.code == 0 and whoami.json()["key_source"] == config


def test_nan_goes_to_the_api_and_comes_back_as_nan(
    celery_worker_process, mm, mm_env, classifier, tmp_path
):
    """The API carries NaN as null, both ways. The client raised a bare ValueError ("Out of
    range float values are not JSON compliant") for a NaN input, and gave back arrays of
    Python objects holding None, which numpy refused (np.isnan, a .npy file read back)."""
    from modelmarket import Client, errors

    x = np.array([[1.0, np.nan, 0.0, 2.0]], dtype=np.float32)
    with Client() as client:
        output = client.predict("acme/clf", {"x": x}).arrays()["output"]
        with pytest.raises(errors.UsageError, match="infinity, which JSON cannot carry"):
            client.predict("acme/clf", np.array([[1.0, np.inf, 0.0, 2.0]], dtype=np.float32))
    np.save(tmp_path / "x.npy", x)
    saved = mm(
        "predict", "acme/clf", "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")
    )

    assert output.dtype == np.float32 and output.shape == (1, 3) and np.isnan(output).all()
    assert saved.code == 0, saved.err
    assert np.isnan(np.load(tmp_path / "y.npy")).all()
