from __future__ import annotations

from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from accounts.tenancy import Access

UNDECLARED = "(undeclared)"  # a scope nobody holds


def required_scope(view, method: str) -> str | None:
    """A view declares ``required_scope`` as one scope, or a dict by HTTP method. HEAD needs
    what GET needs (Django answers it with the view's ``get``); OPTIONS, which describes the
    view and reads no data, needs none; a method the view handles but its dict leaves out
    needs a scope nobody holds."""
    scope = getattr(view, "required_scope", None)
    if not isinstance(scope, dict):
        return scope
    if method == "HEAD":
        method = "GET"
    if method in scope or "*" in scope:
        return scope.get(method, scope.get("*"))
    if method == "OPTIONS" or not hasattr(view, method.lower()):
        return None  # OPTIONS, or a 405 to come
    return UNDECLARED


class TenantMember(BasePermission):
    """Fails closed: the request must act for an active tenant and hold the view's scope."""

    def has_permission(self, request, view) -> bool:
        access = request.auth
        if not isinstance(access, Access):
            if request.user is not None and request.user.is_authenticated:
                raise exceptions.PermissionDenied(
                    "You are not a member of any organisation; create or join one first."
                )
            return False  # DRF answers 401 with WWW-Authenticate
        if not access.tenant.is_active:
            raise exceptions.PermissionDenied(
                f"The organisation '{access.tenant.slug}' is suspended"
                f"{access.tenant.suspended_because}. "
                "Contact support to reactivate it."
            )
        scope = required_scope(view, request.method)
        if scope == UNDECLARED:
            raise exceptions.PermissionDenied(f"{request.method} is not open to this caller.")
        if scope is not None and not access.has_scope(scope):
            who = "API key" if access.key is not None else "role"
            raise exceptions.PermissionDenied(
                f"This request needs the '{scope}' scope, which your {who} lacks."
            )
        return True


class PublicOrTenantMember(BasePermission):
    """Open to callers without credentials (the public catalogue); one that brings a key or
    a member's session acts for its organisation and is held to ``TenantMember`` (a
    suspended organisation's key is 403 here as everywhere)."""

    def has_permission(self, request, view) -> bool:
        if not isinstance(request.auth, Access):
            return True
        return TenantMember().has_permission(request, view)
