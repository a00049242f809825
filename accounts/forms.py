from __future__ import annotations

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.utils.text import slugify

from accounts import throttle
from accounts.models import ALL_SCOPES, MODEL_REF_RE, Role, Scope, User
from accounts.services import EMAIL_TAKEN
from accounts.tenancy import client_ip


class SignupForm(forms.Form):
    name = forms.CharField(max_length=150, required=False)
    email = forms.EmailField(max_length=254)
    password = forms.CharField(widget=forms.PasswordInput, strip=False)

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError(EMAIL_TAKEN)
        return email

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("email") and cleaned.get("password"):
            try:
                password_validation.validate_password(
                    cleaned["password"],
                    User(email=cleaned["email"], name=cleaned.get("name", "")),
                )
            except ValidationError as weak:  # beside the password, not at the top
                self.add_error("password", weak)
        return cleaned


class EmailAuthenticationForm(AuthenticationForm):
    username = forms.EmailField(
        label="Email", max_length=254, widget=forms.EmailInput(attrs={"autofocus": True})
    )

    def clean_username(self) -> str:
        # Addresses are stored lowercased at sign-up; authenticate matches them exactly.
        return self.cleaned_data["username"].strip().lower()

    def clean(self):
        try:
            return super().clean()
        except ValidationError:
            # Refused by the throttle (accounts/throttle.py), the right password or not: say so.
            email = self.cleaned_data.get("username") or ""
            if email and throttle.locked(email, client_ip(self.request) if self.request else None):
                raise ValidationError(throttle.refusal(), code="throttled") from None
            raise


class TenantCreateForm(forms.Form):
    name = forms.CharField(max_length=100, label="Organisation name")
    slug = forms.SlugField(
        max_length=50,
        required=False,
        help_text="Used in model addresses (slug/model). Leave empty to derive it from the name.",
    )

    def clean_slug(self) -> str:
        return self.cleaned_data["slug"].lower()

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("slug") and cleaned.get("name"):
            cleaned["slug"] = slugify(cleaned["name"]).replace("_", "-").strip("-")[:50]
            if not cleaned["slug"]:
                self.add_error("slug", "Choose a slug of letters, digits and hyphens.")
        return cleaned


class InvitationForm(forms.Form):
    email = forms.EmailField(max_length=254)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=[(s.value, f"{s.value} — {s.label}") for s in Scope],
        widget=forms.CheckboxSelectMultiple,
        initial=[Scope.MODELS_READ, Scope.INFERENCE],
    )
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional. UTC.",
    )
    allowed_ips = forms.CharField(
        required=False,
        label="Allowed IPs",
        help_text="Optional. Comma-separated IPs or CIDR networks.",
    )
    allowed_models = forms.CharField(
        required=False,
        label="Allowed models",
        help_text="Optional. Comma-separated owner/name (e.g. acme/resnet): the key reaches "
        "only these.",
    )

    def clean_scopes(self) -> list[str]:
        return sorted(set(self.cleaned_data["scopes"]) & ALL_SCOPES)

    def clean_allowed_models(self) -> list[str]:
        refs = _comma_separated(self.cleaned_data["allowed_models"])
        bad = [r for r in refs if not MODEL_REF_RE.fullmatch(r)]
        if bad:
            raise forms.ValidationError(
                f"{', '.join(bad)}: give each model as owner/name, e.g. acme/resnet."
            )
        return refs

    def clean_allowed_ips(self) -> list[str]:
        return _comma_separated(self.cleaned_data["allowed_ips"])


def _comma_separated(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
