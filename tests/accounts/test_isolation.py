"""The outsider matrix: every endpoint, called with another tenant's ids, answers 404 and
changes nothing."""

from __future__ import annotations

import pytest

from accounts import services
from accounts.models import ApiKey, AuditEvent, Invitation, Membership

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme_ids(tenant, bob):
    key, _ = services.api_key_create(
        tenant=tenant, name="victim", scopes=["inference"], actor=services.SYSTEM
    )
    invitation, _ = services.invitation_create(
        tenant=tenant, email="new@acme.example", role="viewer", actor=services.SYSTEM
    )
    return {
        "member": Membership.objects.get(tenant=tenant, user=bob).public_id,
        "key": key.public_id,
        "invitation": invitation.public_id,
    }


@pytest.mark.parametrize(
    "method, url, body",
    [
        ("get", "/api/v1/members/{member}", None),
        ("patch", "/api/v1/members/{member}", {"role": "viewer"}),
        ("delete", "/api/v1/members/{member}", None),
        ("get", "/api/v1/keys/{key}", None),
        ("post", "/api/v1/keys/{key}/revoke", None),
        ("post", "/api/v1/keys/{key}/rotate", None),
        ("get", "/api/v1/invitations/{invitation}", None),
        ("post", "/api/v1/invitations/{invitation}/revoke", None),
    ],
)
def test_outsider_gets_404_and_changes_nothing(outsider_api, acme_ids, method, url, body):
    before = AuditEvent.objects.count()
    response = getattr(outsider_api, method)(url.format(**acme_ids), body, format="json")
    assert response.status_code == 404
    assert AuditEvent.objects.count() == before
    assert ApiKey.objects.get(public_id=acme_ids["key"]).revoked_at is None
    assert Invitation.objects.get(public_id=acme_ids["invitation"]).revoked_at is None
    assert Membership.objects.get(public_id=acme_ids["member"]).role == "developer"


@pytest.mark.parametrize(
    "url", ["/api/v1/members", "/api/v1/keys", "/api/v1/invitations", "/api/v1/audit-events"]
)
def test_lists_show_only_the_callers_tenant(outsider_api, acme_ids, url):
    body = outsider_api.get(url).json()
    text = str(body)
    assert "acme" not in text
    assert acme_ids["key"] not in text and acme_ids["member"] not in text


def test_outsider_sees_only_its_own_organisation(outsider_api):
    assert outsider_api.get("/api/v1/organisation").json()["organisation"]["slug"] == "globex"
