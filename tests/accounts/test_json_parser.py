"""The API reads a JSON body exactly as DRF's parser (the json module) does, whichever parser
takes it (orjson on the fast path): the same values with the same types, or the same refusal."""

from __future__ import annotations

import io
import json

import pytest
from rest_framework.exceptions import ParseError

from accounts.api.parsers import JSONParser
from tests.inference.conftest import classifier  # noqa: F401 - a fixture

BODIES = [
    b'{"model": "acme/digits", "input": {"x": [[0.5, -0.0, 1e-7, 3]]}}',
    b'{"a": 1, "a": 2}',  # the last of a repeated key
    b"[9223372036854775807, -9223372036854775808, 18446744073709551615]",
    b"[123456789012345678901234567890]",  # beyond 64 bits: an exact int, not a float
    b"[0.12345678901234567890123, 0.0012345678901234567, 1234567890123456789012.5]",
    b"[-12345678901234567890, 1234567890123456789e3, 1234567890123456789]",
    b"12345678901234567890123",
    b"[1e-400, 1E5, 4.9e-324, 1.7976931348623157e308]",
    b"[1e400]",  # json reads an infinity
    b'"caf\xc3\xa9"',
    b'{"tab": "\\t", "quote": "\\"", "e": "\\u00e9"}',
    b" [true, false, null] ",
    b"[" * 400 + b"]" * 400,  # deep, within both parsers
]


def _typed(value):
    """The value with every leaf's type, so that 1 and 1.0 differ."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


@pytest.mark.parametrize("body", BODIES)
def test_a_body_reads_as_the_json_module_reads_it(body):
    parsed = JSONParser().parse(io.BytesIO(body))

    assert _typed(parsed) == _typed(json.loads(body))


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"input": [1, NaN]}', "JSON has no NaN: send a finite number in input.1."),
        (b'{"x": "\\u0000"}', "cannot be stored: remove the one in x."),
        (b'{"x": 1', "JSON parse error"),
        (b"[1] trailing", "JSON parse error"),
        (b"\xef\xbb\xbf[1]", "JSON parse error"),  # a byte order mark, as DRF refuses it
    ],
)
def test_a_body_json_refuses_is_refused_saying_why(body, message):
    with pytest.raises(ParseError) as refused:
        JSONParser().parse(io.BytesIO(body))

    assert message in str(refused.value.detail)


def test_a_body_nested_beyond_what_json_follows_is_refused_as_json_refuses_it(api):
    """orjson reads 1,000 levels (its limit is 1,024), json in a request does not: the body is
    refused all the same, by the first recursion over it."""
    body = '{"name": ' + "[" * 1000 + "]" * 1000 + "}"

    response = api.generic("POST", "/api/v1/keys", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["detail"] == "The JSON body is nested too deeply."


@pytest.mark.usefixtures("classifier")
def test_an_input_nested_beyond_what_json_follows_is_a_400(api):
    body = '{"model": "acme/clf", "input": {"x": ' + "[" * 1000 + "]" * 1000 + "}}"

    response = api.generic("POST", "/api/v1/predictions", body, content_type="application/json")

    assert response.status_code == 400, response.content[:300]
