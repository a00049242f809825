from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts import services
from accounts.management.commands._output import emit
from accounts.models import User


class Command(BaseCommand):
    help = (
        "Create an organisation with an owner. A new owner is e-mailed a link to choose a "
        "password (valid three days)."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--owner", required=True, help="Owner's email address.")
        parser.add_argument("--name", help="Display name (defaults to the slug).")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args, slug, owner, name, json, **options):
        try:
            # One step: a taken slug leaves no owner account behind (and sends no e-mail).
            with transaction.atomic():
                user = User.objects.filter(email__iexact=owner).first()
                created_user = user is None
                if created_user:
                    user = User.objects.create_user(email=owner, password=None)
                tenant = services.tenant_create(
                    slug=slug, name=name or slug, owner=user, actor=services.SYSTEM
                )
                if created_user:
                    services.user_send_password_setup(user, tenant=tenant)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        emit(
            self,
            {
                "tenant": tenant.slug,
                "name": tenant.name,
                "owner": user.email,
                "owner_created": created_user,
                # A new owner has no password: they choose one from the link e-mailed now.
                "owner_emailed_password_link": created_user,
            },
            as_json=json,
        )
