"""The dashboard shell: sign-up, organisations, members, invitations, API keys, audit log."""

from __future__ import annotations

import json
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from rest_framework.permissions import SAFE_METHODS

from accounts import services, throttle
from accounts.exceptions import ServiceError
from accounts.forms import (
    ApiKeyForm,
    EmailAuthenticationForm,
    InvitationForm,
    RoleForm,
    SignupForm,
    TenantCreateForm,
)
from accounts.models import ApiKey, AuditEvent, Invitation, Membership
from accounts.tenancy import SESSION_TENANT_KEY, client_ip, request_actor


def error_text(exc: ValidationError | PermissionDenied | ServiceError) -> str:
    """A refusal as one message for a person: every message of a ValidationError, a
    service's own message, or the permission's."""
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    if isinstance(exc, ServiceError):
        return exc.message
    return str(exc) or "You do not have permission to do that."


def org_switched(request: HttpRequest) -> HttpResponse | None:
    """A refusal of a form sent for another organisation than the session's: the dashboard's
    forms carry ``org``, the organisation they were rendered for (``templates/_org.html``), and
    the session's organisation decides whose key, member, model or bill a form's URL means. A
    member of two organisations who switched in another tab would otherwise change the other's
    (revoke its key, move its model's alias, set its spend cap). A POST without ``org`` (a
    script's) is taken as it is."""
    sent = request.POST.get("org") if request.method == "POST" else None
    tenant = getattr(request, "tenant", None)
    if sent is None or tenant is None or sent == tenant.slug:
        return None
    messages.error(
        request,
        f"That form was sent from a page of {sent[:64]}, but you have switched to {tenant.slug} "
        "since (in another tab?). Nothing was changed: switch back, then send it again.",
    )
    return redirect("dashboard:home")


def tenant_required(
    *, manage: bool = False, scope: str | None = None, while_suspended: bool = False
):
    """A signed-in member of the current organisation; ``manage`` needs owner or admin, and
    ``scope`` a role holding that API scope (as the API asks of a key for the same data).
    Pages of another organisation are never reachable: objects are looked up within
    ``request.tenant`` only. A suspended organisation can read its pages but change nothing,
    as its API keys can do nothing, except through views that take access away or settle
    its bills (``while_suspended``)."""

    def decorator(view):
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if request.membership is None:
                return redirect("dashboard:org_create")
            if manage and not request.membership.can_manage:
                raise PermissionDenied("Only owners and admins can open this page.")
            if scope is not None and scope not in request.membership.scopes:
                role = request.membership.get_role_display().lower()
                raise PermissionDenied(
                    f"Your role ({role}) does not include '{scope}', which this needs; ask an "
                    "owner or admin."
                )
            if refused := org_switched(request):
                return refused
            tenant = request.membership.tenant
            if not tenant.is_active and not while_suspended and request.method not in SAFE_METHODS:
                raise PermissionDenied(
                    f"The organisation '{tenant.slug}' is suspended{tenant.suspended_because}. "
                    "Nothing can be changed until support reactivates it."
                )
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def landing(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard:home")
    return render(request, "landing.html")


def _safe_next(request: HttpRequest) -> str | None:
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(
        target, {request.get_host()}, request.is_secure()
    ):
        return target
    return None


def signup(request: HttpRequest) -> HttpResponse:
    # An invitation's "Create an account" link passes the invited address.
    form = SignupForm(
        request.POST if request.method == "POST" else None,
        initial={"email": request.GET.get("email", "")},
    )
    if request.method == "POST" and form.is_valid():
        try:
            user = services.user_create(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                name=form.cleaned_data["name"],
            )
        except ValidationError as taken:  # signed up meanwhile (a double-clicked button)
            form.add_error(None, taken)
            return render(
                request, "registration/signup.html", {"form": form, "next": _safe_next(request)}
            )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        services.user_audit(user=user, action="user.login", ip=client_ip(request))
        return redirect(_safe_next(request) or "dashboard:org_create")
    return render(request, "registration/signup.html", {"form": form, "next": _safe_next(request)})


class PasswordResetView(auth_views.PasswordResetView):
    """The e-mail's link points at ``MM_SITE_URL``: Django's own builds it from the request's
    Host header, which the caller chooses, so a reset asked for with another allowed host
    (a wildcard domain, an internal name behind the proxy) sent the victim's token there."""

    def form_valid(self, form):
        # Over the limit it answers as always, sending nothing (accounts/throttle.py).
        if not throttle.reset_allowed(email=form.cleaned_data["email"], ip=client_ip(self.request)):
            return HttpResponseRedirect(self.get_success_url())
        self.extra_email_context = {"site_url": settings.SITE_URL.rstrip("/")}
        return super().form_valid(form)


class AuditedAccountForm:
    """For Django's account views: the act their valid form does is recorded as
    ``audit_action`` in the person's organisations' logs (``services.user_audit``)."""

    audit_action = ""

    def form_valid(self, form):
        response = super().form_valid(form)
        user = form.get_user() if hasattr(form, "get_user") else form.user
        services.user_audit(user=user, action=self.audit_action, ip=client_ip(self.request))
        return response


class PasswordResetConfirmView(AuditedAccountForm, auth_views.PasswordResetConfirmView):
    audit_action = "user.password_reset"

    def form_valid(self, form):
        # Whoever set it holds the mailbox: the address's failed sign-ins no longer count.
        # The lockout's message sends people here, and they were locked out still.
        response = super().form_valid(form)
        throttle.forget(form.user.email)
        return response


class PasswordChangeView(AuditedAccountForm, auth_views.PasswordChangeView):
    audit_action = "user.password_change"


class LoginView(AuditedAccountForm, auth_views.LoginView):
    authentication_form = EmailAuthenticationForm
    redirect_authenticated_user = True
    audit_action = "user.login"


@login_required
def org_create(request: HttpRequest) -> HttpResponse:
    form = TenantCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            tenant = services.tenant_create(
                slug=form.cleaned_data["slug"],
                name=form.cleaned_data["name"],
                owner=request.user,
                actor=request_actor(request),
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            request.session[SESSION_TENANT_KEY] = tenant.slug
            messages.success(request, f"Organisation {tenant.name} created.")
            return redirect("dashboard:home")
    return render(request, "dashboard/org_create.html", {"form": form})


@login_required
@require_POST
def switch_tenant(request: HttpRequest) -> HttpResponse:
    slug = request.POST.get("tenant", "")
    if not Membership.objects.filter(user=request.user, tenant__slug=slug).exists():
        raise Http404("No such organisation.")
    request.session[SESSION_TENANT_KEY] = slug
    return redirect(_safe_next(request) or "dashboard:home")


@tenant_required()
def home(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant
    context = {
        "member_count": tenant.memberships.count(),
        "active_key_count": tenant.api_keys.filter(ApiKey.active_q()).count(),
        "recent_events": tenant.audit_events.order_by("-created_at")[:5]
        if request.membership.can_manage
        else [],
    }
    return render(request, "dashboard/home.html", context)


# --- members ----------------------------------------------------------------------------------


@tenant_required()
def members(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant
    form = InvitationForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if not request.membership.can_manage:
            raise PermissionDenied("Only owners and admins can invite members.")
        if form.is_valid():
            try:
                invitation, _ = services.invitation_create(
                    tenant=tenant,
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                    actor=request_actor(request),
                )
            except (ValidationError, PermissionDenied) as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, f"Invitation sent to {invitation.email}.")
                return redirect("dashboard:members")
    # Invitees' addresses only for those who may invite (as the API lists them to admins).
    context = {
        "memberships": tenant.memberships.select_related("user").order_by("created_at"),
        "invitations": [i for i in tenant.invitations.order_by("-created_at") if i.is_pending]
        if request.membership.can_manage
        else [],
        "form": form,
        "role_form": RoleForm(),
    }
    return render(request, "dashboard/members.html", context)


@tenant_required()
@require_POST
def member_role(request: HttpRequest, member_id: str) -> HttpResponse:
    membership = get_object_or_404(Membership, tenant=request.tenant, public_id=member_id)
    form = RoleForm(request.POST)
    try:
        if not form.is_valid():
            raise ValidationError("Choose a valid role.")
        services.membership_change_role(
            membership=membership, role=form.cleaned_data["role"], actor=request_actor(request)
        )
        messages.success(
            request, f"{membership.user.email} is now {membership.get_role_display()}."
        )
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    return redirect("dashboard:members")


@tenant_required(while_suspended=True)
@require_POST
def member_remove(request: HttpRequest, member_id: str) -> HttpResponse:
    membership = get_object_or_404(Membership, tenant=request.tenant, public_id=member_id)
    leaving = membership.user_id == request.user.pk
    try:
        services.membership_remove(membership=membership, actor=request_actor(request))
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
        return redirect("dashboard:members")
    if leaving:
        request.session.pop(SESSION_TENANT_KEY, None)
        messages.success(request, f"You left {request.tenant.name}.")
        return redirect("dashboard:home")
    messages.success(request, f"{membership.user.email} was removed.")
    return redirect("dashboard:members")


@tenant_required(manage=True, while_suspended=True)
@require_POST
def invitation_revoke(request: HttpRequest, invitation_id: str) -> HttpResponse:
    invitation = get_object_or_404(Invitation, tenant=request.tenant, public_id=invitation_id)
    try:
        services.invitation_revoke(invitation=invitation, actor=request_actor(request))
    except (ServiceError, PermissionDenied) as exc:
        messages.error(request, error_text(exc))
    else:
        messages.success(request, f"Invitation to {invitation.email} revoked.")
    return redirect("dashboard:members")


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    invitation = services.invitation_by_token(token)
    if invitation is None or not invitation.is_pending:
        return render(request, "dashboard/invitation.html", {"invalid": True}, status=404)
    if not request.user.is_authenticated:
        return render(request, "dashboard/invitation.html", {"invitation": invitation})
    if request.method == "POST":
        try:
            membership = services.invitation_accept(
                token=token, user=request.user, ip=client_ip(request)
            )
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            request.session[SESSION_TENANT_KEY] = membership.tenant.slug
            messages.success(request, f"Welcome to {membership.tenant.name}.")
            return redirect("dashboard:home")
    return render(request, "dashboard/invitation.html", {"invitation": invitation})


# --- API keys ---------------------------------------------------------------------------------


@tenant_required(manage=True)
def keys(request: HttpRequest) -> HttpResponse:
    tenant = request.tenant
    form = ApiKeyForm(request.POST if request.method == "POST" else None)
    created = secret = None
    if request.method == "POST" and form.is_valid():
        try:
            created, secret = services.api_key_create(
                tenant=tenant,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                expires_at=form.cleaned_data["expires_at"],
                allowed_ips=form.cleaned_data["allowed_ips"],
                allowed_models=form.cleaned_data["allowed_models"],
                actor=request_actor(request),
            )
        except ValidationError as exc:
            # Beside the field it is about (an address the allowlist cannot take), where the
            # service names one of the form's.
            named = getattr(exc, "error_dict", {})
            form.add_error(
                None, exc if named and named.keys() <= form.fields.keys() else error_text(exc)
            )
        except PermissionDenied as exc:
            form.add_error(None, error_text(exc))
        else:
            form = ApiKeyForm()
    context = {
        "form": form,
        "created": created,
        # Rendered into this one response only; never stored in the session or the database.
        "secret": secret,
        "keys": tenant.api_keys.select_related("created_by").order_by("-created_at"),
    }
    return render(request, "dashboard/keys.html", context)


@tenant_required(manage=True, while_suspended=True)
@require_POST
def key_revoke(request: HttpRequest, key_id: str) -> HttpResponse:
    key = get_object_or_404(ApiKey, tenant=request.tenant, public_id=key_id)
    try:
        services.api_key_revoke(key=key, actor=request_actor(request))
    except ServiceError:  # revoked already (a second click): the row shows it
        key.refresh_from_db(fields=["revoked_at"])
        revoked = False
    else:
        revoked = True
    if request.htmx:
        # The row says so. A message would wait in the session and show on the next page.
        return render(request, "dashboard/_key_row.html", {"key": key})
    if revoked:
        messages.success(request, f"Key {key.name} revoked.")
    return redirect("dashboard:keys")


@tenant_required(manage=True)
@require_POST
def key_rotate(request: HttpRequest, key_id: str) -> HttpResponse:
    key = get_object_or_404(ApiKey, tenant=request.tenant, public_id=key_id)
    try:
        created, secret = services.api_key_rotate(key=key, actor=request_actor(request))
    except ValidationError as exc:
        messages.error(request, error_text(exc))
        return redirect("dashboard:keys")
    context = {
        "form": ApiKeyForm(),
        "created": created,
        "secret": secret,
        "rotated": key,
        "keys": request.tenant.api_keys.select_related("created_by").order_by("-created_at"),
    }
    return render(request, "dashboard/keys.html", context)


# --- audit log --------------------------------------------------------------------------------


@tenant_required(manage=True)
def audit(request: HttpRequest) -> HttpResponse:
    events = AuditEvent.objects.filter(tenant=request.tenant).order_by("-created_at")
    if action := request.GET.get("action"):
        events = events.filter(action=action)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    services.audit_name_targets(page.object_list)
    for event in page:
        event.details = [(key, _detail_text(value)) for key, value in event.data.items()]
    return render(request, "dashboard/audit.html", {"page": page, "action": action or ""})


def _detail_text(value: object) -> str:
    """An audit detail as a person reads it: a list of scopes as ``a, b``, not Python's
    ``['a', 'b']``; nothing as a dash."""
    if value is None:
        return "—"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)
