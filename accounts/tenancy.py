"""The current tenant of a request, resolved once, and the one queryset mixin that scopes
every tenant-owned object to it."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from django.conf import settings
from django.http import Http404, HttpRequest

from accounts.models import ApiKey, Membership, Tenant, User

SESSION_TENANT_KEY = "mm_tenant"


@dataclass(frozen=True)
class Access:
    """What a request may touch: one tenant and a set of scopes, held by a member's session
    (scopes from the role) or by an API key (scopes of the key)."""

    tenant: Tenant
    scopes: frozenset[str]
    user: User | None = None
    key: ApiKey | None = None
    membership: Membership | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def session_access(request: HttpRequest) -> Access | None:
    """What a dashboard session may touch: its member's organisation, with the scopes of their
    role; None without a membership (signed out, or no organisation yet)."""
    membership = getattr(request, "membership", None)
    if membership is None:
        return None
    return Access(
        tenant=membership.tenant, scopes=membership.scopes, user=request.user, membership=membership
    )


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address: the socket's peer, or, where that is one of
    ``MM_TRUSTED_PROXIES``, the address X-Forwarded-For names past every trusted hop (read
    from the right: what is left of it any caller may have written). Trusting the header
    from anyone else would let callers pick their address past key allowlists and the
    sign-in throttle. (gunicorn's --forwarded-allow-ips sets the scheme, not REMOTE_ADDR: an
    earlier comment here said it did.)"""
    peer = _address(request.META.get("REMOTE_ADDR") or "")
    trusted = _trusted_proxies(tuple(settings.TRUSTED_PROXIES))
    if peer is None or not trusted or not _within(peer, trusted):
        return peer or request.META.get("REMOTE_ADDR") or None
    hops = [h for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    client = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # a malformed chain: the last hop a trusted proxy vouched for
        client = address
        if not _within(address, trusted):
            break
    return client


@functools.cache
def _trusted_proxies(networks: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def _address(text: str) -> str | None:
    """An address as proxies write it, plain: ``203.0.113.5:4711`` and ``[2001:db8::1]:443``
    without their ports, and an IPv4 address mapped into IPv6 (``::ffff:10.0.0.2``, a server
    bound to ``[::]``) as IPv4; None for what is no address."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _within(address: str, networks: tuple) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in networks)


def resolve_membership(request: HttpRequest) -> Membership | None:
    user = request.user
    if not user.is_authenticated:
        return None
    memberships = Membership.objects.select_related("tenant").filter(user=user)
    slug = request.session.get(SESSION_TENANT_KEY)
    membership = memberships.filter(tenant__slug=slug).first() if slug else None
    return membership or memberships.order_by("created_at", "pk").first()


class CurrentTenantMiddleware:
    """Puts ``request.membership`` and ``request.tenant`` on session requests. API-key requests
    are resolved by ``ApiKeyAuthentication`` instead, so they skip the session lookup.

    What a request with credentials gets back is that caller's own (an API key's secret once,
    a webhook signing secret, an organisation's data): unless the view said otherwise, it is
    ``Cache-Control: private, no-store``, kept by no proxy and by no browser cache."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest):
        credentials = bool(request.META.get("HTTP_AUTHORIZATION"))
        if credentials:
            request.membership = None
            request.tenant = None
        else:
            request.membership = resolve_membership(request)
            request.tenant = request.membership.tenant if request.membership else None
        response = self.get_response(request)
        if not response.has_header("Cache-Control") and (credentials or _signed_in(request)):
            response["Cache-Control"] = "private, no-store"
        return response


def _signed_in(request: HttpRequest) -> bool:
    # DRF sets the request's user to None where a view authenticates nobody (/v2/health).
    user = getattr(request, "user", None)
    return user is not None and user.is_authenticated


def request_tenant(request) -> Tenant:
    """The tenant of an API (DRF) or dashboard request; fails closed with a 404."""
    access = getattr(request, "auth", None)
    if isinstance(access, Access):
        return access.tenant
    tenant = getattr(request, "tenant", None)
    if tenant is None:
        raise Http404("No organisation selected.")
    return tenant


class TenantScopedMixin:
    """Every queryset of a tenant-owned model goes through ``get_queryset`` here, filtered by
    the request's tenant, so another tenant's object is simply not found (404).

    Subclasses set ``queryset`` (or override ``get_base_queryset``) and ``tenant_field`` when
    the path to the tenant is not ``tenant``. Rows that belong to a model set ``model_field``:
    an API key limited to some models then finds only theirs. Do not override
    ``get_queryset``; a view that truly needs unscoped rows names its method
    ``dangerously_unscoped_queryset``.
    """

    tenant_field = "tenant"
    model_field: str | None = None

    def get_base_queryset(self):
        return super().get_queryset()

    def get_queryset(self):
        queryset = self.get_base_queryset().filter(
            **{self.tenant_field: request_tenant(self.request)}
        )
        key = getattr(getattr(self.request, "auth", None), "key", None)
        if key is not None and self.model_field is not None:
            queryset = queryset.filter(key.models_q(self.model_field))
        return queryset

    def get_object(self):
        """The row, or a 404 naming what was not found (Django's said "No Prediction matches
        the given query.")."""
        from accounts.exceptions import NotFound

        try:
            return super().get_object()
        except Http404:
            what = self.get_base_queryset().model._meta.verbose_name
            given = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, "")
            raise NotFound(f"No {what} {given} in your organisation.") from None


def request_actor(request):
    """The audit actor of a request: the session's user or the API key, with the client IP."""
    from accounts.services import Actor

    access = getattr(request, "auth", None)
    ip = client_ip(request)
    if isinstance(access, Access):
        return Actor(user=access.user, key=access.key, ip=ip)
    user = (
        request.user if getattr(request, "user", None) and request.user.is_authenticated else None
    )
    return Actor(user=user, ip=ip)
