"""API authentication: ``Authorization: Bearer mm_live_…`` keys, and the dashboard session."""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication

from accounts import keycache, secrets
from accounts.models import ApiKey
from accounts.tenancy import Access, client_ip, session_access

LAST_USED_RESOLUTION = timedelta(minutes=1)
# Compared against when the prefix is unknown, so a miss costs the same as a wrong secret.
_DUMMY_DIGEST = "0" * 64


class KeyPrincipal:
    """``request.user`` for API-key requests: the key acts for its tenant, not for a person."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False

    def __init__(self, key: ApiKey):
        self.key = key
        self.pk = None

    def __str__(self) -> str:
        return self.key.masked


def verify_api_key(secret: str, *, ip: str | None) -> ApiKey:
    prefix = secrets.parse_api_key(secret)
    if prefix is None:
        raise exceptions.AuthenticationFailed(
            "Malformed API key: expected a key of the form mm_live_… as issued by Modelmarket."
        )
    key = keycache.get(prefix)
    if key is None:
        key = ApiKey.objects.select_related("tenant").filter(prefix=prefix).first()
        if key is not None:
            keycache.put(key)
    expected = key.digest if key is not None else _DUMMY_DIGEST
    if (
        not hmac.compare_digest(expected, secrets.digest(secret, settings.API_KEY_HMAC_KEY))
        or key is None
    ):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    now = timezone.now()
    if key.revoked_at is not None:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= now:
        raise exceptions.AuthenticationFailed(
            f"This API key expired at {key.expires_at.isoformat()}; create a new one."
        )
    if not key.allows_ip(ip):
        raise exceptions.PermissionDenied(f"This API key may not be used from {ip}.")
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        # At most one write a minute per key; a conditional update so concurrent requests race
        # harmlessly.
        ApiKey.objects.filter(pk=key.pk, last_used_at=key.last_used_at).update(last_used_at=now)
        key.last_used_at = now
    return key


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer":
            raise exceptions.AuthenticationFailed(
                "Unsupported authorization scheme; send 'Authorization: Bearer <API key>'."
            )
        credential = credential.strip()
        if not credential:
            raise exceptions.AuthenticationFailed("The Authorization header has no API key.")
        key = verify_api_key(credential, ip=client_ip(request))
        access = Access(tenant=key.tenant, scopes=frozenset(key.scopes), user=None, key=key)
        return KeyPrincipal(key), access

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="modelmarket"'


class TenantSessionAuthentication(SessionAuthentication):
    """The dashboard's session, acting in the organisation chosen in the tenant switcher."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        return user, session_access(request._request)
