from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Tenant
from accounts.services import SYSTEM
from marketplace.tasks import rotate_tenant_key
from marketplace.vault.store import tenant_key_rotate_begin, tenant_key_rotate_run


class Command(BaseCommand):
    help = (
        "Give an organisation a new data key and re-encrypt its artifacts under it in a "
        "background job. Resumable: run it again after a crash to finish."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="Organisation slug.")
        parser.add_argument(
            "--now",
            action="store_true",
            help="Re-encrypt in this process instead of a Celery worker.",
        )

    def handle(self, *args, tenant, now, **options):
        tenant_obj = Tenant.objects.filter(slug=tenant).first()
        if tenant_obj is None:
            raise CommandError(f"No organisation with slug '{tenant}'.")
        new_key = tenant_key_rotate_begin(tenant=tenant_obj, actor=SYSTEM)
        self.stdout.write(f"{tenant}: new data key {new_key.public_id}.")
        if now:
            moved = tenant_key_rotate_run(tenant=tenant_obj)
            self.stdout.write(f"Re-encrypted {moved} artifact(s); retired keys destroyed.")
        else:
            transaction.on_commit(lambda: rotate_tenant_key.delay(tenant_obj.slug))
            self.stdout.write("Re-encryption queued on the 'default' queue.")
