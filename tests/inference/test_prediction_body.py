"""A prediction's body reads the same whichever way it is validated: bodies of the usual shape
skip the serializer's field objects (PredictionCreateSerializer.read), every other body and
every error goes through them."""

from __future__ import annotations

import pytest
from rest_framework import serializers

from inference.api.predictions import PredictionCreateSerializer

X = {"x": [[0.5, 1.0]]}


def _serializer(body) -> dict:
    serializer = PredictionCreateSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "acme/digits", "input": X},
        {"model": "acme/digits", "version": "production", "input": X},
        {"model": "acme/digits", "version": "12", "input": [1, 2]},
        {"model": "acme/digits", "version": "", "input": X},
        {"model": "acme/digits.v2_b-c", "version": "1.2.0-rc.1+x", "input": "text"},
        # Not the usual shape: read by the serializer, which trims and fills in.
        {"model": " acme/digits ", "version": " staging ", "input": X},
        {"model": "acme/digits", "input": X, "webhook": "https://example.com/hook"},
        {"model": "acme/digits", "input": X, "webhook_events_filter": ["start"]},
        {"model": "acme/digits", "version": 3, "input": X},
        {"model": "acme/digits", "version": " staging", "input": X},
    ],
)
def test_a_valid_body_reads_as_the_serializer_reads_it(body):
    assert PredictionCreateSerializer.read(body) == _serializer(body)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "Acme/Digits", "input": X},
        {"model": "acme/digits", "version": "x" * 41, "input": X},
        {"model": "acme/digits", "input": None},
        {"model": "acme/digits"},
        {"model": "acme/digits", "input": X, "inputs": X},
        {"model": ["acme/digits"], "input": X},
        {"model": "acme/digits", "version": "a\x00", "input": X},
        ["acme/digits"],
    ],
)
def test_a_bad_body_is_refused_as_the_serializer_refuses_it(body):
    with pytest.raises(serializers.ValidationError) as refused:
        PredictionCreateSerializer.read(body)
    with pytest.raises(serializers.ValidationError) as expected:
        _serializer(body)

    assert refused.value.detail == expected.value.detail


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "ftps://example.com/hook"])
def test_a_webhook_that_is_not_http_is_refused_when_the_prediction_is_made(url):
    # Taken before, then every delivery failed ("must be http(s)") and was retried for 40 min.
    with pytest.raises(serializers.ValidationError) as refused:
        PredictionCreateSerializer.read({"model": "acme/digits", "input": X, "webhook": url})

    assert refused.value.detail["webhook"] == ["Webhook URLs must be http(s) URLs."]
