"""Failed sign-ins and asked-for password resets, counted per address and per client address
over a window (``MM_SIGNIN_THROTTLE_MINUTES``).

- Past either limit of failed sign-ins, signing in is refused (the right password too) until
  the window has moved on. Every sign-in goes through Django's ``authenticate`` (the
  dashboard, the operators' console), so the check is an authentication backend placed first
  (``SignInThrottle``): it answers before the password is looked at, and its refusal is a
  failed sign-in like any other. Failures are recorded from Django's ``user_login_failed``
  signal, each also in the audit log of the organisations the address belongs to.
- Past either limit of password resets, the reset form answers as always and sends nothing:
  anyone could have mailed any address a reset link every second, and the form must not tell
  which addresses have accounts.

Rows live in the database, which every web process shares, and go once a day old.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from accounts.models import AuthAttempt, User
from accounts.tenancy import client_ip

Kind = AuthAttempt.Kind


def _limits(kind: str) -> tuple[int, int]:
    if kind == Kind.PASSWORD_RESET:
        return settings.PASSWORD_RESETS_PER_ACCOUNT, settings.PASSWORD_RESETS_PER_IP
    return settings.SIGNIN_FAILURES_PER_ACCOUNT, settings.SIGNIN_FAILURES_PER_IP


def over_limit(kind: str, email: str, ip: str | None) -> bool:
    since = timezone.now() - settings.SIGNIN_THROTTLE_WINDOW
    rows = AuthAttempt.objects.filter(kind=kind, created_at__gte=since)
    per_account, per_ip = _limits(kind)
    if rows.filter(email=email.strip().lower()).count() >= per_account:
        return True
    return bool(ip) and rows.filter(ip=ip).count() >= per_ip


def locked(email: str, ip: str | None) -> bool:
    """Whether signing in as ``email`` from ``ip`` is refused now."""
    return over_limit(Kind.SIGN_IN_FAILED, email, ip)


def refusal() -> str:
    minutes = max(1, round(settings.SIGNIN_THROTTLE_WINDOW.total_seconds() / 60))
    return (
        "Too many failed sign-ins for this address or from this network. Try again in "
        f"{minutes} minutes, or reset your password."
    )


def record(kind: str, *, email: str, ip: str | None) -> None:
    now = timezone.now()
    AuthAttempt.objects.create(kind=kind, email=email.strip().lower(), ip=ip, created_at=now)
    AuthAttempt.objects.filter(created_at__lt=now - timedelta(days=1)).delete()


def record_failure(*, email: str, ip: str | None) -> None:
    """A failed sign-in: counted, and audited for the organisations of the address (not once
    the limit holds: an attacker's further tries add nothing)."""
    from accounts.services import user_audit

    if locked(email, ip):
        return
    record(Kind.SIGN_IN_FAILED, email=email, ip=ip)
    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is not None:
        user_audit(user=user, action="user.login_failed", ip=ip)


def reset_allowed(*, email: str, ip: str | None) -> bool:
    """Whether a password reset e-mail may go to ``email`` now; counted when it may."""
    if over_limit(Kind.PASSWORD_RESET, email, ip):
        return False
    record(Kind.PASSWORD_RESET, email=email, ip=ip)
    return True


def forget(email: str) -> None:
    """A successful sign-in clears the address's failures."""
    AuthAttempt.objects.filter(kind=Kind.SIGN_IN_FAILED, email=email.strip().lower()).delete()


class SignInThrottle:
    """First of ``AUTHENTICATION_BACKENDS``: refuses any sign-in, right password or not,
    while the address or the client is over its limit of failures. It authenticates nobody
    and has no ``get_user`` (Django's ``BaseBackend`` has one), so sessions never name it."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username and locked(str(username), client_ip(request) if request else None):
            raise PermissionDenied(refusal())
        return None
