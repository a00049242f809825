from django.core.management.base import BaseCommand, CommandError

from accounts.models import Tenant
from accounts.services import SYSTEM
from marketplace.vault.store import tenant_destroy


class Command(BaseCommand):
    help = (
        "Delete an organisation for good. Its data keys are destroyed first, so its model "
        "artifacts can never be decrypted again, from any copy (crypto-shredding)."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Organisation slug.")
        parser.add_argument(
            "--yes", action="store_true", help="Confirm; nothing happens without it."
        )

    def handle(self, *args, tenant, yes, **options):
        tenant_obj = Tenant.objects.filter(slug=tenant).first()
        if tenant_obj is None:
            raise CommandError(f"No organisation with slug '{tenant}'.")
        if not yes:
            raise CommandError(f"This destroys {tenant} and all its models. Re-run with --yes.")
        shredded, kept = tenant_destroy(tenant=tenant_obj, actor=SYSTEM)
        if kept:
            self.stdout.write(
                f"Erased {tenant}: {shredded} artifact(s) crypto-shredded, its members, keys "
                "and listings gone; its billing records are kept, under the suspended "
                "organisation."
            )
        else:
            self.stdout.write(f"Destroyed {tenant}: {shredded} artifact(s) crypto-shredded.")
