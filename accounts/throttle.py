"""Failed sign-ins, counted per address and per client address over a window: past either
limit, signing in is refused (the right password too) until the window has moved on.

Every sign-in goes through Django's ``authenticate`` (the dashboard, the operators' console),
so the check is an authentication backend placed first (``SignInThrottle``): it answers
before the password is looked at, and its refusal is a failed sign-in like any other. The
failures are recorded from Django's ``user_login_failed`` signal, each also in the audit log
of the organisations the address belongs to. Rows live in the database, which every web
process shares, and go once a day old.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from accounts.models import SignInFailure, User
from accounts.tenancy import client_ip


def _recent(email: str, ip: str | None) -> tuple[int, int]:
    since = timezone.now() - settings.SIGNIN_THROTTLE_WINDOW
    rows = SignInFailure.objects.filter(created_at__gte=since)
    by_email = rows.filter(email=email).count()
    by_ip = rows.filter(ip=ip).count() if ip else 0
    return by_email, by_ip


def locked(email: str, ip: str | None) -> bool:
    by_email, by_ip = _recent(email.strip().lower(), ip)
    return by_email >= settings.SIGNIN_FAILURES_PER_ACCOUNT or by_ip >= (
        settings.SIGNIN_FAILURES_PER_IP
    )


def refusal() -> str:
    minutes = max(1, round(settings.SIGNIN_THROTTLE_WINDOW.total_seconds() / 60))
    return (
        "Too many failed sign-ins for this address or from this network. Try again in "
        f"{minutes} minutes, or reset your password."
    )


def record_failure(*, email: str, ip: str | None) -> None:
    """A failed sign-in: counted, and audited for the organisations of the address (not once
    the limit holds: an attacker's further tries add nothing)."""
    from accounts.services import user_audit

    email = email.strip().lower()
    if locked(email, ip):
        return
    now = timezone.now()
    SignInFailure.objects.create(email=email, ip=ip, created_at=now)
    SignInFailure.objects.filter(created_at__lt=now - timedelta(days=1)).delete()
    user = User.objects.filter(email__iexact=email).first()
    if user is not None:
        user_audit(user=user, action="user.login_failed", ip=ip)


def forget(email: str) -> None:
    """A successful sign-in clears the address's failures."""
    SignInFailure.objects.filter(email=email.strip().lower()).delete()


class SignInThrottle:
    """First of ``AUTHENTICATION_BACKENDS``: refuses any sign-in, right password or not,
    while the address or the client is over its limit of failures. It authenticates nobody
    and has no ``get_user`` (Django's ``BaseBackend`` has one), so sessions never name it."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username and locked(str(username), client_ip(request) if request else None):
            raise PermissionDenied(refusal())
        return None
