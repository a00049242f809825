from __future__ import annotations

import pytest

from accounts.models import ApiKey, AuditEvent, Tenant, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client) -> User:
    staff = User.objects.create_superuser(email="ops@modelmarket.example", password="x")
    client.force_login(staff)
    return staff


def test_operator_suspends_a_tenant_and_its_keys_stop_working(client, operator, api, tenant):
    response = client.post(
        "/admin/accounts/tenant/",
        {
            "action": "suspend",
            "_selected_action": [tenant.pk],
        },
    )
    assert response.status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).status == "suspended"
    assert AuditEvent.objects.get(action="tenant.suspend").actor_label == operator.email
    assert api.get("/api/v1/organisation").status_code == 403

    client.post(
        "/admin/accounts/tenant/", {"action": "reactivate", "_selected_action": [tenant.pk]}
    )
    assert api.get("/api/v1/organisation").status_code == 200


def test_admin_key_page_never_shows_the_digest(client, operator, api):
    key = ApiKey.objects.get(prefix=api.secret.split("_")[2])
    page = client.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    assert key.prefix in page
    assert key.digest not in page


def test_console_is_staff_only(client, alice):
    client.force_login(alice)
    response = client.get("/admin/accounts/tenant/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
