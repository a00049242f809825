"""Publishers create models, upload versions in resumable chunks, and move aliases."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditEvent, Scope
from marketplace.models import Artifact, Model, ModelVersion, UploadPart, UploadSession
from marketplace.services import version_record_validation
from tests.conftest import key_client
from tests.marketplace.conftest import put_range, sha256

pytestmark = pytest.mark.django_db

CHUNK = 1000


@pytest.fixture(autouse=True)
def _small_chunks(settings, isolated_store):
    settings.UPLOAD_CHUNK_SIZE = CHUNK


@pytest.fixture
def model(api):
    response = api.post(
        "/api/v1/models", {"name": "classifier", "task": "tabular-classification"}, format="json"
    )
    assert response.status_code == 201
    return response.json()


def start_upload(api, data: bytes, fmt: str = "pt2", **extra):
    body = {
        "filename": "model.pt2",
        "format": fmt,
        "size": len(data),
        "sha256": sha256(data),
        **extra,
    }
    return api.post("/api/v1/models/acme/classifier/uploads", body, format="json")


def send_chunk(api, upload: dict, data: bytes, index: int):
    start = index * upload["chunk_size"]
    return put_range(api, upload, data, start, min(start + upload["chunk_size"], len(data)) - 1)


def upload_all(api, data: bytes, fmt: str = "pt2", order=None) -> dict:
    upload = start_upload(api, data, fmt).json()
    count = -(-len(data) // upload["chunk_size"])
    for index in order or range(count):
        assert send_chunk(api, upload, data, index).status_code == 200
    return upload


def make_ready(number: int):
    version = ModelVersion.objects.get(model__name="classifier", number=number)
    return version_record_validation(
        version=version, ok=True, signature={"inputs": []}, parameter_count=67, latency_ms=0.1
    )


def test_chunks_in_any_order_become_a_validating_version(api, model, model_files):
    data = model_files["pt2"]
    count = -(-len(data) // CHUNK)
    order = list(range(count))
    random.Random(7).shuffle(order)
    upload = upload_all(api, data, order=order)

    completed = api.post(f"{upload['upload_url']}/complete")

    assert completed.status_code == 201, completed.json()
    version = completed.json()
    assert version["number"] == 1 and version["status"] == "validating"
    assert version["sha256"] == sha256(data) and version["size"] == len(data)
    assert version["format"] == "pt2" and version["operation"] == "upload"
    stored = ModelVersion.objects.get(public_id=version["id"]).artifact
    from marketplace.vault.store import artifact_read

    assert artifact_read(artifact=stored, purpose="validate") == data
    # The chunks were deleted once assembled; only the version's artifact remains.
    assert list(Artifact.objects.values_list("pk", flat=True)) == [stored.pk]
    assert UploadPart.objects.count() == 0


def test_retrying_a_chunk_is_safe(api, model, model_files):
    data = model_files["pt2"]
    upload = upload_all(api, data)
    assert send_chunk(api, upload, data, 0).status_code == 200  # a retry after a lost reply
    assert api.post(f"{upload['upload_url']}/complete").status_code == 201


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lambda chunk: chunk[:-10], "Chunk 1 should be 1000 bytes; received 990."),
        (lambda chunk: chunk + b"x", "Chunk 1 is longer than 1000 bytes."),
    ],
    ids=["cut-off", "too-long"],
)
def test_a_chunk_of_the_wrong_length_is_400_and_stores_nothing(
    api, model, model_files, body, message
):
    data = model_files["pt2"]
    upload = start_upload(api, data).json()
    chunk = data[1000:2000]

    response = put_range(api, upload, data, 1000, 1999, body=body(chunk))

    assert response.status_code == 400
    assert message in response.content.decode()
    assert api.get(upload["upload_url"]).json()["received_bytes"] == 0
    assert UploadPart.objects.count() == 0
    for index in range(-(-len(data) // CHUNK)):  # the chunk sent again in full, and the rest
        assert send_chunk(api, upload, data, index).status_code == 200
    assert api.post(f"{upload['upload_url']}/complete").status_code == 201


def test_status_lists_received_and_missing_ranges(api, model, model_files):
    data = model_files["pt2"]
    upload = start_upload(api, data).json()
    send_chunk(api, upload, data, 0)
    send_chunk(api, upload, data, 2)

    state = api.get(upload["upload_url"]).json()

    assert state["received_ranges"] == ["bytes 0-999", "bytes 2000-2999"]
    assert state["missing_ranges"][0] == "bytes 1000-1999"
    assert state["received_bytes"] == 2000


def test_a_completed_upload_reports_every_byte_received(api, model, model_files):
    """Asked again after completion (a client that lost the answer, a reloaded page), the
    session says the whole file arrived, not that all of it is missing."""
    data = model_files["pt2"]
    upload = start_upload(api, data).json()
    for index in range(-(-len(data) // CHUNK)):
        send_chunk(api, upload, data, index)
    assert api.post(f"{upload['upload_url']}/complete").status_code == 201

    state = api.get(upload["upload_url"]).json()

    assert state["status"] == "completed"
    assert state["received_ranges"] == [f"bytes 0-{len(data) - 1}"]
    assert state["missing_ranges"] == []
    assert state["received_bytes"] == len(data)


def test_completing_an_incomplete_upload_is_409_listing_missing_ranges(api, model, model_files):
    data = model_files["pt2"]
    upload = start_upload(api, data).json()
    send_chunk(api, upload, data, 1)

    response = api.post(f"{upload['upload_url']}/complete")

    assert response.status_code == 409
    assert response.json()["missing_ranges"][0] == "bytes 0-999"
    assert ModelVersion.objects.count() == 0


def test_checksum_mismatch_is_400_and_leaves_nothing(api, model, model_files):
    data = model_files["pt2"]
    upload = start_upload(api, data).json()
    corrupted = bytearray(data)
    corrupted[5] ^= 0xFF
    for index in range(-(-len(data) // CHUNK)):
        send_chunk(api, upload, bytes(corrupted), index)

    response = api.post(f"{upload['upload_url']}/complete")

    assert response.status_code == 400
    assert "Checksum mismatch" in response.json()["detail"]
    assert ModelVersion.objects.count() == 0
    assert Artifact.objects.count() == UploadPart.objects.count()  # only the chunks remain


@pytest.mark.parametrize("kind", ["pickle", "legacy_pickle"])
def test_pickled_module_is_refused_with_export_guidance(api, model, model_files, kind):
    data = model_files[kind]
    upload = upload_all(api, data, fmt="pt2")
    response = api.post(f"{upload['upload_url']}/complete")
    assert response.status_code == 415
    assert "torch.export" in response.json()["detail"]
    assert "pickle" in response.json()["detail"].lower()
    assert ModelVersion.objects.count() == 0


def test_the_export_guidance_exports_the_dynamic_batch_compression_needs(
    api, model, model_files, tmp_path
):
    # Its snippet exported a fixed batch of 1, which compression then refused ("needs an input
    # with a dynamic batch").
    import re

    import torch

    upload = upload_all(api, model_files["pickle"], fmt="pt2")
    detail = api.post(f"{upload['upload_url']}/complete").json()["detail"]
    snippet = re.search(r"`(ep = torch\.export\.export\(.*?)`", detail)[1]
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    example = torch.randn(2, 4)  # a batch of 2, as the guidance asks

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        exec(snippet, {"torch": torch, "model": net, "example": example})  # noqa: S102

    exported = torch.export.load(tmp_path / "model.pt2").module()
    assert "batch of 2 or more" in detail
    assert exported(torch.randn(5, 4)).shape == (5, 3)


def test_the_torchscript_guidance_keeps_a_models_control_flow(api, model, model_files, tmp_path):
    # It said torch.jit.trace (docs/client.md says torch.jit.script): a trace records the
    # branch its example took, so the saved model answered every input that way.
    import re

    import torch

    class Gate(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool(x.sum() > 0):
                return x * 2
            return -x

    upload = upload_all(api, model_files["pickle"], fmt="pt2")
    detail = api.post(f"{upload['upload_url']}/complete").json()["detail"]
    snippet = re.search(r"`(torch\.jit\.save\(.*?)`", detail)[1]

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        exec(snippet, {"torch": torch, "model": Gate(), "example": torch.ones(2, 4)})  # noqa: S102

    saved = torch.jit.load(tmp_path / "model.pt")
    assert saved(torch.ones(2, 4)).tolist() == [[2.0] * 4] * 2
    assert saved(-torch.ones(2, 4)).tolist() == [[1.0] * 4] * 2
    assert "torch.jit.script" in snippet


def test_declared_format_must_match_the_file(api, model, model_files):
    upload = upload_all(api, model_files["torchscript"], fmt="pt2")
    response = api.post(f"{upload['upload_url']}/complete")
    assert response.status_code == 415
    assert "TorchScript" in response.json()["detail"]


def test_a_zip_is_told_from_its_first_and_last_bytes_only(api, model, monkeypatch):
    """Completion reads the central directory of an archive only where it lies within the
    file's last ``SNIFF_BYTES``: one reaching further (an archive of very many entries) is
    refused as a file we do not recognise, and never read whole."""
    import io
    import zipfile

    from marketplace import services

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(100):
            archive.writestr(f"model/extra/{number:04d}", b"")
        archive.writestr("model/archive_format", b"pt2")
    data = buffer.getvalue()  # a central directory of about 6 KB

    taken = api.post(f"{upload_all(api, data)['upload_url']}/complete")
    monkeypatch.setattr(services, "SNIFF_BYTES", 2000)
    refused = api.post(f"{upload_all(api, data)['upload_url']}/complete")

    assert taken.status_code == 201
    assert refused.status_code == 415
    assert "not a model file we recognise" in refused.json()["detail"]


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04" + b"\0" * 10,  # shorter than a zip's end record
        # An end record whose directory would start before the file does.
        b"PK\x03\x04"
        + b"\0" * 40
        + b"PK\x05\x06"
        + b"\0" * 8
        + (999).to_bytes(4, "little")
        + b"\0" * 4
        + b"\0\0",
    ],
    ids=["tiny", "directory-before-the-start"],
)
def test_a_broken_zip_is_refused_as_an_unknown_file(api, model, data):
    upload = upload_all(api, data)

    response = api.post(f"{upload['upload_url']}/complete")

    assert response.status_code == 415
    assert "not a model file we recognise" in response.json()["detail"]
    assert ModelVersion.objects.count() == 0


def test_a_stored_chunk_that_cannot_be_read_fails_completion_as_itself(api, model, model_files):
    """The last chunk's blob is gone when completion reads the archive's directory from it:
    the storage error stands (it is not the publisher's file), and no version is made."""
    from marketplace.vault import store

    upload = upload_all(api, model_files["pt2"])
    last = UploadPart.objects.select_related("artifact").order_by("index").last()
    store.artifact_storage().delete(last.artifact.storage_name)

    with pytest.raises(FileNotFoundError):
        api.post(f"{upload['upload_url']}/complete")

    assert ModelVersion.objects.count() == 0


def test_a_chunk_stored_as_a_file_of_its_own_is_opened_once_to_tell_the_format(
    api, model, model_files, settings, opened_spans
):
    """A chunk sent again with other bytes is a vault file of its own, which opens whole:
    telling the format reads it once, however many reads of its vault chunks (100 bytes
    here) the archive's directory takes."""
    settings.ARTIFACT_CHUNK_SIZE = 100
    data = model_files["pt2"]
    upload = upload_all(api, data)
    last = -(-len(data) // CHUNK) - 1
    wrong = bytearray(data)
    wrong[last * CHUNK] ^= 0xFF
    send_chunk(api, upload, bytes(wrong), last)
    send_chunk(api, upload, data, last)  # the right bytes again: a file of its own

    response = api.post(f"{upload['upload_url']}/complete")

    assert response.status_code == 201
    spans = [span for index, span in opened_spans if index == last and span is not None]
    assert spans == [(0, len(data) - last * CHUNK)]


def test_torchscript_and_safetensors_are_accepted(api, model, model_files):
    ts = upload_all(api, model_files["torchscript"], fmt="torchscript")
    assert api.post(f"{ts['upload_url']}/complete").status_code == 201
    data = model_files["safetensors"]
    body = {
        "filename": "w.safetensors",
        "format": "safetensors",
        "size": len(data),
        "sha256": sha256(data),
        "architecture": "mlp",
        "architecture_config": {"in_features": 4, "hidden": [8], "classes": 3},
    }
    upload = api.post("/api/v1/models/acme/classifier/uploads", body, format="json").json()
    for index in range(-(-len(data) // CHUNK)):
        send_chunk(api, upload, data, index)
    version = api.post(f"{upload['upload_url']}/complete").json()
    assert version["format"] == "safetensors" and version["number"] == 2


def test_unknown_format_is_415_with_guidance(api, model):
    response = start_upload(api, b"x" * 10, fmt="onnx")
    assert response.status_code == 415
    assert "torch.export" in response.json()["detail"]


def test_over_the_size_limit_is_413(api, model, settings):
    settings.MAX_ARTIFACT_BYTES = 5000
    response = start_upload(api, b"x" * 5001)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "example, limit",
    [
        ({"x": [[0.5] * 300_000]}, "An example input is at most 1048576 bytes of JSON"),
        ({"x": json.loads("[" * 300 + "1" + "]" * 300)}, "nests at most 40 lists and objects"),
    ],
    ids=["over-a-mebibyte", "nested-past-any-tensor"],
)
def test_a_versions_example_input_has_the_listings_limits(api, model, model_files, example, limit):
    # A version's example goes to the host that validates it and fills the playground; it
    # was stored at any size or depth, where a listing's is capped.
    data = model_files["pt2"]

    refused = start_upload(api, data, example_input=example)
    small = start_upload(api, data, example_input={"x": [[1.0, 2.0, 3.0, 4.0]]})

    assert refused.status_code == 400
    assert limit in refused.json()["detail"]
    assert small.status_code == 201
    assert UploadSession.objects.count() == 1  # only the small one's


def test_misaligned_or_wrong_total_range_is_400(api, model, model_files):
    data = model_files["pt2"]
    upload = start_upload(api, data).json()
    bad = api.generic(
        "PUT",
        upload["upload_url"],
        data[10:1010],
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes 10-1009/{len(data)}",
    )
    assert bad.status_code == 400 and "multiples" in bad.json()["detail"]
    missing = api.generic(
        "PUT", upload["upload_url"], data[:1000], content_type="application/octet-stream"
    )
    assert missing.status_code == 400 and "Content-Range" in missing.json()["detail"]
    short = api.generic(
        "PUT",
        upload["upload_url"],
        data[:10],
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes 0-999/{len(data)}",
    )
    assert short.status_code == 400 and "received 10" in short.json()["detail"]
    assert UploadPart.objects.count() == 0 and Artifact.objects.count() == 0


def test_expired_uploads_are_cleaned_up(api, model, model_files):
    from marketplace.services import upload_sessions_expire

    data = model_files["pt2"]
    upload = start_upload(api, data).json()
    send_chunk(api, upload, data, 0)
    UploadSession.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    assert upload_sessions_expire() == 1
    assert Artifact.objects.count() == 0
    assert send_chunk(api, upload, data, 1).status_code == 409


def test_aborted_upload_leaves_nothing(api, model, model_files):
    data = model_files["pt2"]
    upload = start_upload(api, data).json()
    send_chunk(api, upload, data, 0)
    assert api.delete(upload["upload_url"]).status_code == 204
    assert Artifact.objects.count() == 0 and ModelVersion.objects.count() == 0


def test_alias_moves_are_recorded_and_rollback_moves_back(api, model, model_files):
    for _ in range(2):
        upload = upload_all(api, model_files["pt2"])
        api.post(f"{upload['upload_url']}/complete")
    make_ready(1)
    make_ready(2)

    assert (
        api.put(
            "/api/v1/models/acme/classifier/aliases/production", {"version": 1}, format="json"
        ).status_code
        == 200
    )
    api.put("/api/v1/models/acme/classifier/aliases/production", {"version": 2}, format="json")
    rollback = api.put(
        "/api/v1/models/acme/classifier/aliases/production", {"version": 1}, format="json"
    )

    assert rollback.json()["version"] == 1
    history = api.get("/api/v1/models/acme/classifier/aliases/production").json()
    assert [(h["from_version"], h["to_version"]) for h in history] == [(2, 1), (1, 2), (None, 1)]
    assert api.get("/api/v1/models/acme/classifier/versions/production").json()["number"] == 1
    assert AuditEvent.objects.filter(action="alias.move").count() == 3


def test_production_alias_needs_the_admin_role(tenant, model, api, model_files):
    upload = upload_all(api, model_files["pt2"])
    api.post(f"{upload['upload_url']}/complete")
    make_ready(1)
    developer = key_client(tenant, scopes=[Scope.MODELS_READ, Scope.MODELS_WRITE])

    refused = developer.put(
        "/api/v1/models/acme/classifier/aliases/production", {"version": 1}, format="json"
    )
    staging = developer.put(
        "/api/v1/models/acme/classifier/aliases/staging", {"version": 1}, format="json"
    )

    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    assert staging.status_code == 200


def test_alias_cannot_point_at_an_unvalidated_version(api, model, model_files):
    upload = upload_all(api, model_files["pt2"])
    api.post(f"{upload['upload_url']}/complete")
    response = api.put(
        "/api/v1/models/acme/classifier/aliases/staging", {"version": 1}, format="json"
    )
    assert response.status_code == 409 and "validating" in response.json()["detail"]


def test_deprecated_version_carries_deprecation_and_sunset_headers(api, model, model_files):
    upload = upload_all(api, model_files["pt2"])
    api.post(f"{upload['upload_url']}/complete")
    make_ready(1)
    sunset = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    before = int(timezone.now().timestamp())

    api.post(
        "/api/v1/models/acme/classifier/versions/1/deprecate",
        {"sunset_at": sunset.isoformat(), "reason": "v2 is better"},
        format="json",
    )
    deprecated = api.get("/api/v1/models/acme/classifier/versions/1")["Deprecation"]
    # RFC 9745: when it was deprecated, a structured-field date ("true" was a draft's).
    assert deprecated.startswith("@")
    assert before <= int(deprecated[1:]) <= before + 5
    first = timezone.now() - timedelta(days=2)  # as if the first deprecation were older
    ModelVersion.objects.filter(number=1).update(deprecated_at=first)
    later = (sunset + timedelta(days=30)).isoformat()
    api.post(  # a later sunset: still deprecated since the first time
        "/api/v1/models/acme/classifier/versions/1/deprecate",
        {"sunset_at": later, "reason": "v2 is better"},
        format="json",
    )
    response = api.get("/api/v1/models/acme/classifier/versions/1")

    assert response.json()["status"] == "deprecated"
    assert response["Deprecation"] == f"@{int(first.timestamp())}"  # kept by a new sunset
    assert response["Sunset"] == (sunset + timedelta(days=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")


def test_yanked_version_is_410_naming_the_alias_to_use(api, model, model_files):
    for _ in range(2):
        upload = upload_all(api, model_files["pt2"])
        api.post(f"{upload['upload_url']}/complete")
    make_ready(1)
    make_ready(2)
    api.put("/api/v1/models/acme/classifier/aliases/production", {"version": 2}, format="json")

    yanked = api.post(
        "/api/v1/models/acme/classifier/versions/1/yank",
        {"reason": "leaks training data"},
        format="json",
    )
    response = api.get("/api/v1/models/acme/classifier/versions/1")

    assert yanked.status_code == 200
    assert response.status_code == 410
    assert response.json()["use_alias"] == "production"
    assert "leaks training data" in response.json()["detail"]


def test_version_numbers_only_grow(api, model, model_files):
    numbers = []
    for _ in range(3):
        upload = upload_all(api, model_files["pt2"])
        numbers.append(api.post(f"{upload['upload_url']}/complete").json()["number"])
    assert numbers == [1, 2, 3]


def test_duplicate_model_name_is_409(api, model):
    response = api.post("/api/v1/models", {"name": "classifier"}, format="json")
    assert response.status_code == 409


def test_bad_model_name_is_400(api):
    response = api.post("/api/v1/models", {"name": "Not Valid!"}, format="json")
    assert response.status_code == 400 and "lowercase" in response.json()["detail"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/v1/models/acme/classifier"),
        ("get", "/api/v1/models/acme/classifier/versions"),
        ("get", "/api/v1/models/acme/classifier/aliases"),
        ("put", "/api/v1/models/acme/classifier/aliases/production"),
        ("post", "/api/v1/models/acme/classifier/uploads"),
        ("post", "/api/v1/models/acme/classifier/versions/1/yank"),
        ("get", "{upload}"),
        ("put", "{upload}"),
        ("delete", "{upload}"),
        ("post", "{upload}/complete"),
    ],
)
def test_outsider_sees_404_everywhere(api, outsider_api, model, model_files, method, path):
    upload = start_upload(api, model_files["pt2"]).json()
    response = getattr(outsider_api, method)(
        path.format(upload=upload["upload_url"]), {}, format="json"
    )
    assert response.status_code == 404
    assert UploadSession.objects.get().status == "open"


def test_safetensors_whose_header_length_ends_in_0x80_is_not_taken_for_a_pickle():
    import json

    from marketplace.services import sniff_format

    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (128 - len(header))  # header length 128: first byte 0x80
    data = len(header).to_bytes(8, "little") + header + b"\0" * 4
    assert data[0] == 0x80
    assert sniff_format(lambda at, n: data[at : at + n], len(data)) == "safetensors"


@pytest.mark.parametrize("data", [b"\x80", b"\x80\x07 not a pickle", b"\x80\x01" + b"\0" * 64])
def test_a_file_that_merely_starts_with_0x80_is_not_called_a_pickle(data):
    # A pickle starts with PROTO and a protocol of 2-5 (torch.save writes 2); any other file
    # beginning with 0x80 was refused as "a pickled file (torch.save)".
    from marketplace.services import sniff_format

    assert sniff_format(lambda at, n: data[at : at + n], len(data)) is None


def test_aborting_a_completed_upload_is_409_and_leaves_it_completed(api, model, model_files):
    upload = upload_all(api, model_files["pt2"])
    assert api.post(f"{upload['upload_url']}/complete").status_code == 201

    refused = api.delete(upload["upload_url"])  # before, a 204 that did nothing

    assert refused.status_code == 409
    assert refused.json()["detail"].startswith("This upload is completed (version 1)")
    assert UploadSession.objects.get().status == "completed"
    assert ModelVersion.objects.count() == 1


def test_a_version_an_alias_points_at_cannot_be_yanked(api, model, model_files):
    upload = upload_all(api, model_files["pt2"])
    api.post(f"{upload['upload_url']}/complete")
    make_ready(1)
    api.put("/api/v1/models/acme/classifier/aliases/production", {"version": 1}, format="json")

    response = api.post(
        "/api/v1/models/acme/classifier/versions/1/yank", {"reason": "x"}, format="json"
    )

    assert response.status_code == 409 and "production" in response.json()["detail"]
    assert ModelVersion.objects.get(number=1).status == "ready"


def test_another_organisation_sees_published_versions_without_the_publishers_members(
    tenant, alice, outsider_api
):
    from accounts import services as accounts
    from accounts.models import ALL_SCOPES
    from accounts.tenancy import Access
    from marketplace import listings
    from marketplace import services as registry
    from marketplace.vault.store import artifact_create

    model = registry.model_create(tenant=tenant, name="resnet", actor=accounts.SYSTEM)

    def version(number: int, status: str) -> ModelVersion:
        return ModelVersion.objects.create(
            model=model,
            number=number,
            format="pt2",
            status=status,
            failure_reason="our internal path /srv/x failed" if status == "failed" else "",
            artifact=artifact_create(tenant=tenant, chunks=[b"w%d" % number]),
            created_by=alice,
        )

    ready, _failed = version(1, "ready"), version(2, "failed")
    listings.listing_publish(model=model, actor=accounts.SYSTEM, visibility="public", title="R")
    registry.alias_set(
        model=model,
        name="staging",
        version=ready,
        access=Access(tenant=tenant, scopes=ALL_SCOPES),
        actor=accounts.Actor(user=alice),
    )
    base = "/api/v1/models/acme/resnet"

    versions = outsider_api.get(f"{base}/versions").json()["results"]
    failed = outsider_api.get(f"{base}/versions/2")
    history = outsider_api.get(f"{base}/aliases/staging").json()

    assert [(v["number"], v["created_by"]) for v in versions] == [(1, None)]
    assert outsider_api.get(f"{base}/versions/1").json()["created_by"] is None
    assert failed.status_code == 404 and "/srv/x" not in failed.content.decode()
    assert [move["actor"] for move in history] == ["acme"]
    assert "alice@" not in str(versions) + str(history)

    publisher = key_client(tenant)  # the publisher itself sees everything
    own = publisher.get(f"{base}/versions").json()["results"]
    assert [(v["number"], v["created_by"]) for v in own] == [
        (2, "alice@acme.example"),
        (1, "alice@acme.example"),
    ]
    assert publisher.get(f"{base}/aliases/staging").json()[0]["actor"] == "alice@acme.example"


def test_a_key_limited_to_other_models_cannot_reach_an_upload_of_this_one(api, tenant, model):
    upload = start_upload(api, b"x" * 64).json()
    limited = key_client(tenant, allowed_models=["acme/other"])

    assert limited.get(f"/api/v1/uploads/{upload['id']}").status_code == 404
    assert limited.post(f"/api/v1/uploads/{upload['id']}/complete").status_code == 404
    assert limited.delete(f"/api/v1/uploads/{upload['id']}").status_code == 404
    assert api.get(f"/api/v1/uploads/{upload['id']}").status_code == 200  # still there


def test_a_key_limited_to_other_models_creates_none_and_learns_no_names(api, tenant, model):
    limited = key_client(tenant, allowed_models=["acme/other"])

    new = limited.post("/api/v1/models", {"name": "newtwo"}, format="json")
    taken = limited.post("/api/v1/models", {"name": "classifier"}, format="json")
    allowed = limited.post("/api/v1/models", {"name": "other"}, format="json")

    assert new.status_code == 403 and "may not use acme/newtwo" in new.json()["detail"]
    assert taken.status_code == 403  # not a 409 that says the name exists
    assert allowed.status_code == 201
    assert sorted(Model.objects.values_list("name", flat=True)) == ["classifier", "other"]


@pytest.mark.parametrize(
    "architecture, said",
    [
        ("", "A safetensors upload names our built-in architectures"),
        ("nope", "'nope' is not one of our built-in architectures"),
    ],
)
def test_a_safetensors_upload_naming_no_built_in_architecture_is_400_before_any_byte(
    api, model, architecture, said
):
    # An unknown name used to be taken, and failed only in validation, after the whole upload.
    response = start_upload(api, b"x" * 64, fmt="safetensors", architecture=architecture)

    assert response.status_code == 400
    assert response.json()["errors"]["architecture"] == [
        f"{said}: mlp, resnet, small_cnn, transformer."
    ]
    assert not UploadSession.objects.exists()


def test_the_web_knows_every_built_in_architecture_the_host_builds():
    from inference.runtime.architectures import ARCHITECTURES
    from inference.runtime.spec import ARCHITECTURE_NAMES

    assert sorted(ARCHITECTURES) == list(ARCHITECTURE_NAMES)


def test_an_empty_file_is_refused_saying_so(api, model):
    """The dashboard showed DRF's "Ensure this value is greater than or equal to 1."."""
    empty = api.post(
        "/api/v1/models/acme/classifier/uploads",
        {"filename": "model.pt2", "format": "pt2", "size": 0, "sha256": "0" * 64},
        format="json",
    )

    assert empty.status_code == 400
    assert empty.json()["errors"]["size"] == [
        "The file is empty (0 bytes): choose the model's file."
    ]
