from datetime import UTC, datetime

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts import services
from accounts.management.commands._output import emit
from accounts.models import ALL_SCOPES, Tenant


class Command(BaseCommand):
    help = "Create an API key for an organisation and print it (the only time it is shown)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Organisation slug.")
        parser.add_argument("--scopes", nargs="+", required=True, choices=sorted(ALL_SCOPES))
        parser.add_argument("--name", default="cli")
        parser.add_argument("--expires", help="ISO 8601 date or datetime (UTC if no offset).")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args, tenant, scopes, name, expires, json, **options):
        tenant_obj = Tenant.objects.filter(slug=tenant).first()
        if tenant_obj is None:
            raise CommandError(f"No organisation with slug '{tenant}'.")
        expires_at = None
        if expires:
            try:
                expires_at = datetime.fromisoformat(expires)
            except ValueError:
                raise CommandError(f"--expires: '{expires}' is not an ISO 8601 date.") from None
            if timezone.is_naive(expires_at):
                expires_at = timezone.make_aware(expires_at, UTC)
        try:
            key, secret = services.api_key_create(
                tenant=tenant_obj,
                name=name,
                scopes=scopes,
                expires_at=expires_at,
                actor=services.SYSTEM,
            )
        except (ValidationError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from None
        emit(
            self,
            {
                "tenant": tenant_obj.slug,
                "id": key.public_id,
                "name": key.name,
                "scopes": key.scopes,
                "expires_at": key.expires_at,
                "key": secret,
            },
            as_json=json,
        )
