"""The registry at its edges: odd uploads that are refused with the right 4xx, versions that
may not be yanked, what another organisation is told of a model's versions, alias names that
look like numbers, a yank racing an alias move, and an empty PATCH racing a new version."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import services as accounts
from accounts.exceptions import ServiceError
from accounts.models import ALL_SCOPES
from accounts.tenancy import Access
from marketplace import listings
from marketplace import services as registry
from marketplace.models import Model, ModelVersion
from marketplace.vault import store
from tests.marketplace.conftest import put_range, sha256

# Row locks (select_for_update) are no-ops on SQLite: the races here are decided by them on
# PostgreSQL, where one of these once failed with "FOR UPDATE cannot be applied to the
# nullable side of an outer join".
pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
CHUNK = 1000


@pytest.fixture(autouse=True)
def _small_chunks(settings, isolated_store):
    settings.UPLOAD_CHUNK_SIZE = CHUNK


def version_of(model, status: str, *, failure_reason: str = "") -> ModelVersion:
    """A version made the way completion makes it (the model's counter moves), then set to
    ``status`` as validation would."""
    artifact = store.artifact_create(tenant=model.tenant, chunks=[b"weights %d" % model.pk])
    version = registry._version_create(
        model=model, artifact=artifact, format="pt2", actor=accounts.SYSTEM
    )
    ModelVersion.objects.filter(pk=version.pk).update(status=status, failure_reason=failure_reason)
    version.refresh_from_db()
    return version


def point(model: Model, alias: str, number: int) -> None:
    """Point ``alias`` of ``model`` at its version ``number``, as an admin would."""
    registry.alias_set(
        model=model,
        name=alias,
        version=ModelVersion.objects.get(model=model, number=number),
        access=Access(tenant=model.tenant, scopes=ALL_SCOPES),
        actor=accounts.SYSTEM,
    )


def public_model(tenant, name="resnet") -> Model:
    model = registry.model_create(tenant=tenant, name=name, actor=accounts.SYSTEM)
    listings.listing_publish(model=model, actor=accounts.SYSTEM, visibility="public", title="R")
    return model


def upload_started(api, data: bytes) -> dict:
    """An upload session for ``data`` on a new model acme/classifier, nothing sent yet."""
    api.post("/api/v1/models", {"name": "classifier"}, format="json")
    return api.post(
        "/api/v1/models/acme/classifier/uploads",
        {"filename": "m.pt2", "format": "pt2", "size": len(data), "sha256": sha256(data)},
        format="json",
    ).json()


def uploaded(api, data: bytes) -> dict:
    """An upload of ``data`` to a new model acme/classifier, every chunk sent."""
    upload = upload_started(api, data)
    for start in range(0, len(data), CHUNK):
        assert (
            put_range(api, upload, data, start, min(start + CHUNK, len(data)) - 1).status_code
            == 200
        )
    return upload


def test_a_content_range_with_a_number_of_thousands_of_digits_is_400(api, tenant):
    data = b"x" * 2500
    upload = upload_started(api, data)

    response = api.generic(
        "PUT",
        upload["upload_url"],
        data[:CHUNK],
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes 0-999/{'9' * 5000}",
    )

    assert response.status_code == 400
    assert "Content-Range: bytes START-END/TOTAL" in response.json()["detail"]


def test_a_zip_of_a_zip_version_we_cannot_read_is_not_a_model_file(api, tenant):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
    data = bytearray(buffer.getvalue())
    entry = data.index(b"PK\x01\x02")
    data[entry + 6 : entry + 8] = (248).to_bytes(2, "little")  # "needs zip version 24.8"
    upload = uploaded(api, bytes(data))

    response = api.post(f"{upload['upload_url']}/complete")

    assert response.status_code == 415
    assert not ModelVersion.objects.exists()


def test_a_header_nested_past_any_real_one_is_not_a_model_file(api, tenant):
    header = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    upload = uploaded(api, len(header).to_bytes(8, "little") + header)

    response = api.post(f"{upload['upload_url']}/complete")

    assert response.status_code == 415  # not "the JSON body is nested too deeply"
    assert not ModelVersion.objects.exists()


def test_only_a_published_version_can_be_yanked(tenant, api, outsider_api):
    model = public_model(tenant)
    version_of(model, "ready")
    version_of(model, "failed", failure_reason="our internal path /srv/x failed")
    base = "/api/v1/models/acme/resnet"

    yank = api.post(f"{base}/versions/2/yank", {"reason": "broken upload"}, format="json")
    seen = outsider_api.get(f"{base}/versions")

    assert yank.status_code == 409 and "only a ready or deprecated" in yank.json()["detail"]
    assert [v["number"] for v in seen.json()["results"]] == [1]
    assert "/srv/x" not in seen.content.decode()


def test_another_organisation_is_told_the_latest_version_it_can_open(tenant, api, outsider_api):
    model = public_model(tenant)
    version_of(model, "ready")
    version_of(model, "failed", failure_reason="bad")
    base = "/api/v1/models/acme/resnet"

    theirs = outsider_api.get(base).json()["latest_version"]

    assert theirs == 1 and outsider_api.get(f"{base}/versions/1").status_code == 200
    assert api.get(base).json()["latest_version"] == 2  # the publisher sees its own newest


def test_the_models_list_costs_as_many_queries_for_five_models_as_for_one(
    tenant, outsider, outsider_api
):
    """Another organisation's page of models shows each one's aliases and the newest version
    it can open without two more queries per model."""

    def shared(name: str) -> None:
        model = public_model(tenant, name)
        ready = version_of(model, "ready")
        version_of(model, "failed", failure_reason="bad")
        registry.alias_set(
            model=model,
            name="production",
            version=ready,
            access=Access(tenant=tenant, scopes=ALL_SCOPES),
            actor=accounts.SYSTEM,
        )
        listings.model_share(model=model, tenant_slug=outsider.slug, actor=accounts.SYSTEM)

    shared("first")
    outsider_api.get("/api/v1/models")  # the key's first use is looked up, then cached
    with CaptureQueriesContext(connection) as for_one:
        one = outsider_api.get("/api/v1/models").json()["results"]
    for n in range(4):
        shared(f"more-{n}")
    with CaptureQueriesContext(connection) as for_five:
        five = outsider_api.get("/api/v1/models").json()["results"]

    assert len(one) == 1 and len(five) == 5
    assert all(m["latest_version"] == 1 and m["aliases"] == {"production": 1} for m in five)
    assert len(for_five.captured_queries) == len(for_one.captured_queries)


@pytest.mark.parametrize("name", ["2024", "1"])
def test_an_alias_named_like_a_version_number_is_refused(api, tenant, name):
    model = registry.model_create(tenant=tenant, name="resnet", actor=accounts.SYSTEM)
    version_of(model, "ready")
    version_of(model, "ready")

    moved = api.put(f"/api/v1/models/acme/resnet/aliases/{name}", {"version": 2}, format="json")

    assert moved.status_code == 400 and "a number names a version" in moved.json()["detail"]
    assert not model.aliases.exists()


def test_an_alias_cannot_move_onto_a_version_yanked_meanwhile(tenant):
    from inference.services import version_for

    model = registry.model_create(tenant=tenant, name="resnet", actor=accounts.SYSTEM)
    version_of(model, "ready")
    looked_up = ModelVersion.objects.get(model=model, number=1)  # read before the yank
    registry.version_yank(
        version=ModelVersion.objects.get(pk=looked_up.pk), reason="bad", actor=accounts.SYSTEM
    )

    with pytest.raises(ServiceError, match="is yanked"):
        registry.alias_set(
            model=model,
            name="production",
            version=looked_up,
            access=Access(tenant=tenant, scopes=ALL_SCOPES),
            actor=accounts.SYSTEM,
        )
    with pytest.raises(ServiceError):
        version_for(model, None, access=None)  # no alias: nothing runs by default


def test_an_empty_patch_racing_a_new_version_leaves_the_version_counter_alone(
    api, tenant, monkeypatch
):
    from marketplace.api import serializers as s

    model = registry.model_create(tenant=tenant, name="resnet", actor=accounts.SYSTEM)
    version_of(model, "ready")
    is_valid = s.ModelUpdateSerializer.is_valid

    def is_valid_while_a_version_is_made(self, *args, **kwargs):
        result = is_valid(self, *args, **kwargs)
        version_of(Model.objects.get(pk=model.pk), "ready")
        return result

    monkeypatch.setattr(s.ModelUpdateSerializer, "is_valid", is_valid_while_a_version_is_made)

    assert api.patch("/api/v1/models/acme/resnet", {}, format="json").status_code == 200
    assert Model.objects.get(pk=model.pk).next_version == 3


def past_its_sunset(tenant) -> Model:
    """acme/resnet, public, whose version 1 was deprecated with a sunset that has come."""
    from datetime import timedelta

    from django.utils import timezone

    model = public_model(tenant)
    version = version_of(model, "ready")
    registry.version_deprecate(
        version=version,
        sunset_at=timezone.now() + timedelta(days=1),
        reason="use v2",
        actor=accounts.SYSTEM,
    )
    ModelVersion.objects.filter(pk=version.pk).update(sunset_at=timezone.now())
    return model


def test_the_catalogue_offers_no_version_past_its_sunset(tenant, outsider_api):
    past_its_sunset(tenant)

    shown = outsider_api.get("/api/v1/catalogue/acme/resnet").json()
    still_described = outsider_api.get("/api/v1/models/acme/resnet/versions/1")

    assert shown["versions"] == []
    assert still_described.status_code == 200
    assert still_described.json()["status"] == "deprecated"


def test_the_catalogue_shows_an_old_version_an_alias_points_at(tenant, outsider_api):
    # It lists the newest 20: production left on version 1 of 22 vanished from the page.
    from django.test import Client

    model = public_model(tenant)
    for _ in range(22):
        version_of(model, "ready")
    point(model, "production", 1)

    shown = outsider_api.get("/api/v1/catalogue/acme/resnet").json()["versions"]
    page = Client().get("/catalogue/acme/resnet/").content.decode()

    assert [v["number"] for v in shown] == [*range(22, 2, -1), 1]
    assert shown[-1]["aliases"] == ["production"]
    assert '<span class="tag">production</span>' in page


def test_a_version_past_its_sunset_is_410_with_the_alias_to_use(tenant):
    from inference.services import version_for

    model = past_its_sunset(tenant)
    version_of(model, "ready")
    point(model, "stable", 2)

    with pytest.raises(ServiceError) as refused:
        version_for(model, "1", access=None)
    default = version_for(model, None, access=None)  # no production alias: the newest that runs

    assert refused.value.status_code == 410
    assert "reached its sunset on" in refused.value.message and "use v2" in refused.value.message
    assert "Use the alias 'stable' instead." in refused.value.message
    assert default.number == 2


def three_chunks_stored(tenant):
    """An open upload of a small safetensors file with its three chunks stored, and the
    file's bytes."""
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    data = len(header).to_bytes(8, "little") + header + b"\0" * (2500 - 8 - len(header))
    model = registry.model_create(tenant=tenant, name="resnet", actor=accounts.SYSTEM)
    session = registry.upload_session_create(
        model=model,
        filename="w.safetensors",
        format="safetensors",
        architecture="mlp",
        size=len(data),
        sha256=sha256(data),
        actor=accounts.SYSTEM,
    )
    for index in range(3):
        registry.upload_part_store(
            session=session, index=index, chunks=[data[index * CHUNK : (index + 1) * CHUNK]]
        )
    return session, data


def test_a_chunk_sent_again_while_the_upload_completes_never_breaks_the_version(
    tenant, monkeypatch, django_capture_on_commit_callbacks
):
    from marketplace.models import UploadSession
    from marketplace.vault import uploads

    monkeypatch.setattr(registry, "_enqueue_validation", lambda version_id: None)
    session, data = three_chunks_stored(tenant)
    take_over = uploads.artifact_take_over

    def take_over_then_a_put_lands(**kwargs):
        artifact = take_over(**kwargs)
        registry.upload_part_store(  # a client's retry of chunk 2, with other bytes
            session=UploadSession.objects.get(pk=session.pk),
            index=2,
            chunks=[b"\1" * (len(data) - 2 * CHUNK)],
        )
        return artifact

    monkeypatch.setattr(uploads, "artifact_take_over", take_over_then_a_put_lands)

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ServiceError) as refused:
        registry.upload_complete(
            session=UploadSession.objects.get(pk=session.pk), actor=accounts.SYSTEM
        )

    assert refused.value.status_code == 409
    assert "sent again while the upload was being completed" in refused.value.message
    assert not ModelVersion.objects.exists()
    assert UploadSession.objects.get(pk=session.pk).status == "open"  # complete it again


def test_a_chunk_still_arriving_when_the_upload_is_aborted_leaves_nothing_behind(tenant):
    from marketplace.models import Artifact, UploadPart, UploadSession

    data = b"x" * 2500
    model = registry.model_create(tenant=tenant, name="resnet", actor=accounts.SYSTEM)
    session = registry.upload_session_create(
        model=model,
        filename="m.pt2",
        format="pt2",
        size=len(data),
        sha256=sha256(data),
        actor=accounts.SYSTEM,
    )

    def body():
        yield data[:500]
        registry.upload_abort(session=UploadSession.objects.get(pk=session.pk))
        yield data[500:1000]

    with pytest.raises(ServiceError, match="This upload is failed"):
        registry.upload_part_store(session=session, index=0, chunks=body())

    assert not UploadPart.objects.filter(session=session, artifact__isnull=False).exists()
    assert not Artifact.objects.exists()


@pytest.mark.parametrize("when", ["before the parts are read", "before the header is written"])
def test_an_upload_aborted_while_it_completes_is_409_and_leaves_no_blob_behind(
    tenant, monkeypatch, when
):
    # The abort lands after the completion checked the upload was open. Before, a completion
    # that then read the deleted chunks was a 500 (FileNotFoundError), and one that wrote the
    # artifact's header blob after the abort's cleanup left that blob forever.
    from pathlib import Path

    from marketplace.models import Artifact, UploadSession
    from marketplace.vault import store, uploads
    from marketplace.vault.store import artifact_storage

    monkeypatch.setattr(registry, "_enqueue_validation", lambda version_id: None)
    session, _data = three_chunks_stored(tenant)

    def aborted_first(original):
        def call(*args, **kwargs):
            registry.upload_abort(session=UploadSession.objects.get(pk=session.pk))
            return original(*args, **kwargs)

        return call

    if when == "before the parts are read":
        monkeypatch.setattr(
            uploads, "artifact_take_over", aborted_first(uploads.artifact_take_over)
        )
    else:
        monkeypatch.setattr(store, "blob_write", aborted_first(store.blob_write))

    with pytest.raises(ServiceError) as refused:
        registry.upload_complete(
            session=UploadSession.objects.get(pk=session.pk), actor=accounts.SYSTEM
        )

    assert refused.value.status_code == 409
    assert refused.value.message == "This upload is failed; start a new one."
    assert not ModelVersion.objects.exists() and not Artifact.objects.exists()
    assert [p for p in Path(artifact_storage().location).rglob("*") if p.is_file()] == []


def test_a_second_completion_while_the_first_runs_is_409_and_the_first_makes_the_version(
    tenant, api, monkeypatch
):
    # Before, completions raced for the same parts: losers answered 500 (the header blob "in
    # the way"), a 400 checksum mismatch of no bytes at all, or a 409 naming missing ranges.
    from marketplace.models import UploadSession
    from marketplace.vault import uploads

    monkeypatch.setattr(registry, "_enqueue_validation", lambda version_id: None)
    session, _data = three_chunks_stored(tenant)
    url = f"/api/v1/uploads/{session.public_id}/complete"
    take_over = uploads.artifact_take_over
    second = []

    def take_over_while_another_completes(**kwargs):
        second.append(api.post(url))
        return take_over(**kwargs)

    monkeypatch.setattr(uploads, "artifact_take_over", take_over_while_another_completes)
    first = api.post(url)

    assert first.status_code == 201, first.content
    assert second[0].status_code == 409
    assert second[0].json()["completing"] is True
    assert second[0]["Retry-After"] == "2"
    assert "Another request is completing this upload" in second[0].json()["detail"]
    assert ModelVersion.objects.count() == 1
    again = api.post(url)  # a retry whose first answer was lost
    assert again.status_code == 409
    assert again.json()["detail"] == "This upload is completed already, as version 1."
    assert again.json()["version"] == 1
    assert UploadSession.objects.get(pk=session.pk).completing_until is None


def test_a_completion_that_fails_lets_the_next_one_run_at_once(tenant, monkeypatch):
    from marketplace.models import UploadSession
    from marketplace.vault import uploads

    monkeypatch.setattr(registry, "_enqueue_validation", lambda version_id: None)
    session, _data = three_chunks_stored(tenant)
    take_over = uploads.artifact_take_over
    calls = []

    def fails_once(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the store is full")
        return take_over(**kwargs)

    monkeypatch.setattr(uploads, "artifact_take_over", fails_once)
    with pytest.raises(OSError):
        registry.upload_complete(
            session=UploadSession.objects.get(pk=session.pk), actor=accounts.SYSTEM
        )
    assert UploadSession.objects.get(pk=session.pk).completing_until is None

    version = registry.upload_complete(
        session=UploadSession.objects.get(pk=session.pk), actor=accounts.SYSTEM
    )
    assert version.number == 1


def test_a_completion_whose_process_died_holds_the_upload_only_until_its_lease_ends(
    tenant, api, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from marketplace.models import UploadSession

    monkeypatch.setattr(registry, "_enqueue_validation", lambda version_id: None)
    session, _data = three_chunks_stored(tenant)
    url = f"/api/v1/uploads/{session.public_id}/complete"
    held = UploadSession.objects.filter(pk=session.pk)
    held.update(completing_until=timezone.now() + timedelta(minutes=1))

    assert api.post(url).status_code == 409
    # Nor does the expiry task take an upload from under a completion still running.
    held.update(expires_at=timezone.now() + timedelta(seconds=30))
    assert registry.upload_sessions_expire(now=timezone.now() + timedelta(seconds=40)) == 0

    held.update(completing_until=timezone.now() - timedelta(seconds=1))
    assert api.post(url).status_code == 201


def test_aborting_an_aborted_upload_again_is_204(tenant, api):
    session, _data = three_chunks_stored(tenant)
    assert api.delete(f"/api/v1/uploads/{session.public_id}").status_code == 204
    assert api.delete(f"/api/v1/uploads/{session.public_id}").status_code == 204


def test_no_alias_moves_onto_a_version_past_its_sunset(tenant, api):
    # Before, production could be pointed at it, and every default call was then a 410.
    model = past_its_sunset(tenant)
    version_of(model, "ready")

    refused = api.put("/api/v1/models/acme/resnet/aliases/production", {"version": 1}, "json")
    moved = api.put("/api/v1/models/acme/resnet/aliases/production", {"version": 2}, "json")

    assert refused.status_code == 409
    assert "reached its sunset" in refused.json()["detail"]
    assert "point the alias at a version that does" in refused.json()["detail"]
    assert moved.status_code == 200
    assert [a.version.number for a in model.aliases.all()] == [2]


def test_a_version_past_its_sunset_stays_retired(tenant, api):
    # Before, deprecating it again with a later sunset ran it again.
    from datetime import timedelta

    from django.utils import timezone

    model = past_its_sunset(tenant)
    url = "/api/v1/models/acme/resnet/versions/1/deprecate"
    later = (timezone.now() + timedelta(days=30)).isoformat()

    refused = api.post(url, {"sunset_at": later, "reason": "one more month"}, format="json")
    called = api.post(
        "/api/v1/predictions", {"model": "acme/resnet", "version": "1", "input": {}}, format="json"
    )

    assert refused.status_code == 409
    assert "reached its sunset" in refused.json()["detail"]
    assert "stays retired" in refused.json()["detail"]
    assert called.status_code == 410
    assert model.versions.get(number=1).sunset_at < timezone.now()


def test_the_model_page_offers_no_alias_move_onto_a_version_past_its_sunset(tenant, alice):
    from django.test import Client

    model = past_its_sunset(tenant)
    version_of(model, "ready")
    client = Client()
    client.force_login(alice)

    page = client.get(f"/dashboard/models/{model.name}/").content.decode()
    choices = page.split('<select id="alias-version"', 1)[1].split("</select>", 1)[0]

    assert '<option value="2">v2</option>' in choices
    assert '<option value="1">' not in choices
