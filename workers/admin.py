"""The admin site itself: two-factor authentication for staff when ``MM_ADMIN_REQUIRE_2FA``
is on (django-otp; a staff member enrols a TOTP device under "TOTP devices" first), and the
link to the operations page."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.admin import AdminSite
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite


class OperatorsAdminSite(OTPAdminSite):
    """``admin.site``'s class: Django's admin, or django-otp's when the setting asks for a
    second factor (read per request, so the setting is all it takes)."""

    index_template = "admin/mm_index.html"
    site_header = "Modelmarket operations"

    @property
    def login_form(self):
        return OTPAdminAuthenticationForm if settings.ADMIN_REQUIRE_2FA else None

    @property
    def login_template(self):
        return OTPAdminSite.login_template if settings.ADMIN_REQUIRE_2FA else None

    def has_permission(self, request) -> bool:
        if settings.ADMIN_REQUIRE_2FA:
            return OTPAdminSite.has_permission(self, request)
        return AdminSite.has_permission(self, request)


admin.site.__class__ = OperatorsAdminSite
