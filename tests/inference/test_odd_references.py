"""Odd version references and identifiers, in the API, the dashboard and the OIP endpoints:
each is a 4xx (or the page with a message), never a 500."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from django.test import Client

from inference.models import CompressionJob, Prediction

pytestmark = pytest.mark.django_db

ODD = ["²", "1²", "٣", "99999999999999999999", "0" * 5000 + "1"]


@pytest.mark.parametrize("ref", ODD)
def test_a_version_reference_that_is_no_number_is_a_404(api, classifier, ref):
    response = api.get(f"/api/v1/models/acme/clf/versions/{ref}")

    assert response.status_code == 404
    assert "has no version or alias" in response.json()["detail"]


def test_a_version_number_past_the_databases_integer_is_a_404(api, classifier):
    response = api.post(
        "/api/v1/models/acme/clf/versions/99999999999999999999/deprecate",
        {"sunset": "2027-01-01"},
        format="json",
    )

    assert response.status_code == 404


@pytest.mark.parametrize("ref", ODD[:3])
def test_the_playground_shows_the_default_version_for_an_odd_reference(alice, classifier, ref):
    client = Client()
    client.force_login(alice)

    response = client.get("/dashboard/playground/acme/clf/", {"version": ref})

    assert response.status_code == 200
    assert "has no version or alias" in response.content.decode()


@pytest.mark.parametrize(
    "fields",
    [
        {"version": "abc"},
        {"version": "1.5"},
        {"version": "²"},
        {"version": "1", "params": "[" * 100_000},
    ],
)
def test_starting_a_compression_job_with_bad_fields_says_what_is_wrong(alice, classifier, fields):
    client = Client()
    client.force_login(alice)

    response = client.post(
        "/dashboard/compression/start/clf/", {"method": "quantize", **fields}, follow=True
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "Choose a version to compress." in page or "Parameters are a JSON object" in page


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/models/acme/a%00b",
        "/dashboard/models/a%00b/",
        "/dashboard/audit/?action=a%00b",
        "/v2/models/acme/a%00b",
    ],
)
def test_a_nul_character_in_a_url_is_a_400(api, alice, url):
    client = Client()
    client.force_login(alice)

    for response in (client.get(url), api.get(url)):
        assert response.status_code == 400
        assert "NUL characters are not allowed" in response.content.decode()
        # In the error shape of the API or of the v2 protocol (it was text/plain).
        if url.startswith("/api/"):
            assert response.json()["code"] == "invalid"
        elif url.startswith("/v2/"):
            assert response.json()["error"].startswith("NUL characters")


def test_a_nul_character_in_a_form_field_is_a_400_and_changes_nothing(alice, tenant):
    client = Client()
    client.force_login(alice)

    client.post("/dashboard/switch/", {"tenant": "acme"})
    response = client.post("/dashboard/switch/", {"tenant": "ac\x00me"})

    assert response.status_code == 400
    assert client.session["mm_tenant"] == "acme"


# --- odd tensors, parameters and headers (found by an audit; each was a 500) ----------------

X = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}


def _post(api, url: str, body, **headers):
    return api.generic(
        "POST", url, json.dumps(body).encode(), content_type="application/json", **headers
    )


@pytest.mark.parametrize("datatype", [["FP32"], {"a": 1}, 32])
def test_an_oip_datatype_that_is_no_name_is_a_400(api, classifier, datatype):
    response = _post(api, "/v2/models/acme/clf/infer", {"inputs": [{**X, "datatype": datatype}]})

    assert response.status_code == 400
    assert "is not supported; use one of" in response.json()["error"]


def test_an_oip_header_length_of_odd_digits_is_a_400(api, classifier):
    response = _post(
        api,
        "/v2/models/acme/clf/infer",
        {"inputs": [X]},
        HTTP_INFERENCE_HEADER_CONTENT_LENGTH="²",
    )

    assert response.status_code == 400 and "does not fit a body" in response.json()["error"]


@pytest.mark.parametrize(
    "url, body",
    [
        ("/v2/models/acme/clf/versions/²/infer", {"inputs": [X]}),
        ("/api/v1/predictions", {"model": "acme/clf", "version": "²", "input": [[1, 2, 3, 4]]}),
    ],
)
def test_running_an_odd_version_reference_is_a_404(api, classifier, url, body):
    assert _post(api, url, body).status_code == 404


@pytest.mark.parametrize(
    "value",
    [
        {"data": [[300, 1, 2, 3]], "datatype": "UINT8"},
        {"data": [[10**30, 1, 2, 3]], "datatype": "INT64"},
        [[10**400, 1, 2, 3]],
    ],
)
def test_an_input_value_out_of_its_datatypes_range_is_a_400_naming_it(api, classifier, value):
    response = _post(api, "/api/v1/predictions", {"model": "acme/clf", "input": {"x": value}})

    assert response.status_code == 400
    assert "Input 'x' is not a" in response.json()["detail"]


def test_an_empty_batch_is_a_400_not_a_billed_call(api, classifier):
    response = _post(
        api,
        "/api/v1/predictions",
        {"model": "acme/clf", "input": {"x": {"data": [], "shape": [0, 4]}}},
    )

    assert response.status_code == 400 and "no rows" in response.json()["detail"]
    assert not Prediction.objects.exists()


@pytest.mark.parametrize(
    "method, params, data",
    [
        ("prune", {"amount": 10**400}, None),
        ("distill", {"student": {"architecture": ["mlp"]}}, None),
        ("distill", {"epochs": 10**400, "student": {"architecture": "mlp"}}, None),
        (
            "distill",
            {"student": {"architecture": "mlp"}},
            {"inputs": [[0.1, 0.2, 0.3, 0.4]] * 40, "labels": [10**30] * 40},
        ),
        ("quantize", {"scheme": ["bf16"]}, None),
    ],
)
def test_compression_parameters_of_the_wrong_kind_are_a_400(api, classifier, method, params, data):
    body = {"model": "acme/clf", "version": "1", "method": method, "params": params}
    if data is not None:
        body["data"] = data

    response = _post(api, "/api/v1/compression-jobs", body)

    assert response.status_code == 400, response.json()
    assert not CompressionJob.objects.exists()


def test_a_forged_cursor_on_the_versions_list_is_invalid_not_a_500(api, classifier):
    for position in (b"p=x", b"p=1.5", b"p=", b"p=%C2%B2"):
        cursor = base64.b64encode(position).decode()
        response = api.get(f"/api/v1/models/acme/clf/versions?cursor={cursor}")
        assert response.status_code == 400, position
        assert "cursor: This cursor was not given" in response.json()["detail"]


def test_a_content_length_that_is_no_number_is_no_500(api, classifier):
    response = _post(
        api,
        "/api/v1/predictions",
        {"model": "acme/clf", "input": [[1, 2, 3, 4]]},
        CONTENT_LENGTH="12abc",
    )

    assert response.status_code == 400


def test_a_non_finite_output_is_null_in_json_and_the_prediction_still_reads(api, classifier):
    """A model may answer NaN or infinities, which JSON cannot hold: DRF refused to render
    them and the prediction, already billed, answered 500 on every read."""
    from inference import tensors

    prediction = Prediction.objects.create(
        tenant=classifier.model.tenant,
        model=classifier.model,
        version=classifier,
        status=Prediction.Status.SUCCEEDED,
        output_data=tensors.encode(
            {"output": np.array([[np.nan, np.inf, -np.inf], [1, 2, 3]], np.float32)}
        ),
    )

    one = api.get(f"/api/v1/predictions/{prediction.public_id}")
    listed = api.get("/api/v1/predictions")

    assert one.status_code == 200 and listed.status_code == 200
    assert one.json()["output"] == {"output": [[None, None, None], [1.0, 2.0, 3.0]]}


def test_binary_tensors_sent_as_a_form_reach_the_protocol_view(api, classifier):
    """curl --data-binary says application/x-www-form-urlencoded; the bytes of the tensors
    (here "=" then NUL) are no form field to refuse."""
    data = np.array([[0.046875, 1.0, 2.0, 3.0]], np.float32).tobytes()
    assert b"=\x00" in data
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "nope",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()

    response = api.generic(
        "POST",
        "/v2/models/acme/clf/infer",
        header + data,
        content_type="application/x-www-form-urlencoded",
        HTTP_INFERENCE_HEADER_CONTENT_LENGTH=str(len(header)),
    )

    assert "NUL characters" not in response.content.decode(errors="replace")
    assert response.status_code == 400 and "nope" in response.json()["error"]


@pytest.fixture
def flags(tenant):
    """A model taking a BOOL mask and INT64 ids (no request here reaches its forward)."""
    from tests.inference.conftest import Classifier, export, ready_version

    sig = {
        "inputs": [
            {"name": "mask", "datatype": "BOOL", "shape": [-1, 2]},
            {"name": "ids", "datatype": "INT64", "shape": [-1, 2]},
        ],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}],
    }
    return ready_version(tenant, "flags", export(Classifier()), "pt2", sig)


@pytest.mark.parametrize(
    "mask, ids, message",
    [
        (
            [["false", True]],
            [[1, 2]],
            "Input 'mask' is not a BOOL tensor: BOOL values are true or false",
        ),
        ([[0, 1]], [[1, 2]], "BOOL values are true or false"),
        ([[None, True]], [[1, 2]], "BOOL values are true or false"),
        (
            [[True, False]],
            [[1.7, 2]],
            "Input 'ids' is not a INT64 tensor: INT64 values are whole numbers",
        ),
        ([[True, False]], [["7", 2]], "INT64 values are numbers"),
        ([[True, False]], [[True, False]], "INT64 values are numbers"),
        # Mixed with numbers, numpy took true for 1 (the model saw 1; a review helper's did).
        ([[True, False]], [[True, 0]], "INT64 values are numbers, not true or false"),
    ],
)
def test_bool_and_integer_inputs_take_only_values_of_their_kind(api, flags, mask, ids, message):
    # numpy's cast read "false", 2 and null as booleans and cut 1.7 to 1: the model ran on
    # input the caller never sent.
    rest = _post(
        api, "/api/v1/predictions", {"model": "acme/flags", "input": {"mask": mask, "ids": ids}}
    )
    oip = _post(
        api,
        "/v2/models/acme/flags/infer",
        {
            "inputs": [
                {"name": "mask", "datatype": "BOOL", "shape": [1, 2], "data": mask},
                {"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": ids},
            ]
        },
    )

    assert rest.status_code == 400 and message in rest.json()["detail"]
    assert oip.status_code == 400 and message.split(": ")[-1] in oip.json()["error"]
    assert not Prediction.objects.exists()


@pytest.mark.parametrize(
    "x, message",
    [
        ([["1.5", 1, 2, 3]], "Input 'x' is not a FP32 tensor: FP32 values are numbers, not text."),
        ([["nan", 1, 2, 3]], "FP32 values are numbers, not text"),
        ([[True, False, True, True]], "FP32 values are numbers, not true or false"),
        # Mixed with numbers or a null, numpy read them as numbers and said nothing.
        ([[True, 0.5, 1, 2]], "FP32 values are numbers, not true or false"),
        ([[None, True, 1, 2]], "FP32 values are numbers, not true or false"),
        ([[None, "1.5", 0, 1]], "FP32 values are numbers, not text"),
        # Past FP32's range: it became an infinity, and every output null.
        ([[1e39, 1, 2, 3]], "FP32 values lie within ±3.403e+38; 1e+39 does not."),
    ],
)
def test_float_inputs_take_only_numbers_in_their_range(api, classifier, x, message):
    rest = _post(api, "/api/v1/predictions", {"model": "acme/clf", "input": {"x": x}})
    oip = _post(
        api,
        "/v2/models/acme/clf/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x}]},
    )

    assert rest.status_code == 400 and message in rest.json()["detail"]
    assert oip.status_code == 400 and message.split(": ")[-1] in oip.json()["error"]
    assert not Prediction.objects.exists()


@pytest.mark.parametrize(
    "x, message",
    [
        ({"shape": [1, 4]}, 'Input \'x\' has no "data": give its values as {"data": [...]'),
        (None, "Input 'x' is null; give its values as a nested list."),
        (
            {"data": [[1, 2, 3, 4]], "datatype": ["FP32"]},
            "Input 'x': datatype is a name, one of FP32, FP16, FP64, INT64, INT32, INT16, INT8, "
            "UINT8, BOOL; got a list.",
        ),
        (
            {"data": [[1, 2, 3, 4]], "datatype": "BF16"},
            "Input 'x': datatype BF16 is not supported over JSON; use one of FP32,",
        ),
    ],
)
def test_an_input_without_values_or_with_an_odd_datatype_is_told_what_to_send(
    api, classifier, x, message
):
    # They said "cannot reshape array of size 1", "received FP32[]", "unhashable type: 'list'"
    # and "Input 'x' is not a BF16 tensor: Input 'x': datatype BF16 ..".
    response = _post(api, "/api/v1/predictions", {"model": "acme/clf", "input": {"x": x}})

    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert not response.json()["detail"].endswith("..")


def test_a_gzip_body_cut_short_is_400_saying_so(api, classifier):
    import gzip

    body = gzip.compress(json.dumps({"inputs": []}).encode())[:8]

    response = api.generic(
        "POST",
        "/v2/models/acme/clf/infer",
        body,
        content_type="application/json",
        HTTP_CONTENT_ENCODING="gzip",
    )

    assert response.status_code == 400
    assert response.json()["error"] == "The body is not valid gzip data: it ends too soon."


def test_a_float_scalar_given_as_null_is_nan_as_null_is_among_values():
    # It was refused as "is null", though a null among a list's values is NaN.
    import math

    from inference import tensors
    from inference.runtime.spec import Signature

    signature = Signature.from_json(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "k", "datatype": "FP32", "shape": []},
            ],
            "outputs": [],
        }
    )

    arrays = tensors.from_json({"x": [[1.0, None]], "k": None}, signature)

    assert arrays["k"].shape == () and math.isnan(arrays["k"])
    assert math.isnan(arrays["x"][0, 1])
    with pytest.raises(tensors.InputError, match="Input 'x' is null"):
        tensors.from_json({"x": None, "k": 1.0}, signature)


def _gzipped_infer(api, body: bytes):
    return api.generic(
        "POST",
        "/v2/models/acme/clf/infer",
        body,
        content_type="application/json",
        HTTP_CONTENT_ENCODING="gzip",
    )


def test_a_gzip_body_of_several_members_is_read_whole_and_junk_after_it_is_400(api, classifier):
    import gzip

    text = json.dumps(
        {"inputs": [{"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    ).encode()
    members = gzip.compress(text[:20]) + gzip.compress(text[20:])  # as `cat a.gz b.gz`

    read = _gzipped_infer(api, members)
    junk = _gzipped_infer(api, gzip.compress(text) + b"trailing")

    # Read whole, it gets as far as the input's name (it said "not valid JSON").
    assert read.status_code == 400 and "Unknown input(s) nope" in read.json()["error"]
    assert junk.status_code == 400  # the junk was dropped without a word
    assert junk.json()["error"] == (
        "The body has 8 bytes after its gzip data; send the gzip data alone."
    )


def test_whole_numbers_written_as_floats_are_integers(api, flags):
    from inference import tensors

    response = _post(
        api,
        "/api/v1/predictions",
        {"model": "acme/flags", "input": {"mask": [[True, False]], "ids": [[3.0, -2]]}},
    )

    assert response.status_code in (201, 202), response.json()
    arrays = tensors.decode(Prediction.objects.get().input_data)
    assert arrays["ids"].tolist() == [[3, -2]] and arrays["mask"].tolist() == [[True, False]]


@pytest.mark.parametrize(
    "url, body",
    [
        ("/api/v1/predictions", {"model": "acme/clf", "input": [[1, 2, 3, 4]]}),
        (
            "/api/v1/compression-jobs",
            {
                "model": "acme/clf",
                "version": "1",
                "method": "quantize",
                "params": {"scheme": "fp16"},
            },
        ),
    ],
)
def test_an_idempotency_key_longer_than_kept_is_a_400(api, classifier, url, body):
    # It was cut to 255 characters: two keys sharing those were one, and the second request
    # answered with the first's result, or a 409 about a body it never sent.
    key = "k" * 255
    response = _post(api, url, body, HTTP_IDEMPOTENCY_KEY=key + "2")

    assert response.status_code == 400
    assert "At most 255 characters; this one has 256." in response.json()["detail"]
    assert not Prediction.objects.exists() and not CompressionJob.objects.exists()
    assert _post(api, url, body, HTTP_IDEMPOTENCY_KEY=key).status_code in (200, 201)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/predictions",
        "/api/v1/keys",
        "/api/v1/members",
        "/api/v1/audit-events",
        "/api/v1/abuse-flags",
        "/api/v1/models",
        "/api/v1/compression-jobs",
    ],
)
def test_a_forged_cursor_on_any_list_is_a_400_naming_it(api, path):
    """A date past what converts to UTC was a 500 on every cursor list; an undecodable cursor
    a 404 "not found" (read as a missing endpoint); a date that is no date a 400 that did not
    say which parameter."""
    from urllib.parse import urlencode

    def cursor(**fields) -> str:  # as DRF encodes one
        return base64.b64encode(urlencode(fields).encode()).decode()

    forged = [cursor(p="9999-12-31 23:59:59.999999-14:00"), cursor(p="0001-01-01 00:00:00+14:00")]
    forged += [cursor(p="abc"), cursor(p="2026-13-45"), cursor(o="-5"), "abc"]
    for forgery in forged:
        response = api.get(path, {"cursor": forgery})
        assert response.status_code == 400, (forgery, response.content[:300])
        assert "cursor" in response.json()["errors"], response.json()
    first = api.get(path, {"cursor": cursor(p="2026-11-30 10:00:00+00:00")})
    assert first.status_code == 200 and "results" in first.json()
