from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from marketplace.vault import add_primary_kek_to_file, remove_kek_from_file
from marketplace.vault.keys import kek_backend, kek_backend_forget, kek_ids_in_use, kek_rotate


class Command(BaseCommand):
    help = (
        "Re-wrap every tenant data key and sealed secret (webhook signing keys) under the "
        "primary key-encryption key (artifacts are not rewritten). With a key file, --new "
        "first adds a fresh primary KEK and --retire ID removes a KEK that no longer wraps "
        "any key. With MM_KEK_RING or KMS, put the new "
        "primary in the configuration first, then run this."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--new", action="store_true", help="Add a new primary KEK to the key file first."
        )
        parser.add_argument(
            "--retire",
            metavar="KEK_ID",
            help="After re-wrapping, remove this KEK from the key file.",
        )

    def handle(self, *args, new, retire, **options):
        file_based = not (settings.KEK_RING or settings.KMS_KEY_ID)
        if (new or retire) and not file_based:
            raise CommandError(
                "--new and --retire apply to a key file; change MM_KEK_RING or "
                "the KMS key in the configuration instead."
            )
        if new:
            kek_id = add_primary_kek_to_file(settings.KEK_FILE)
            kek_backend_forget()
            self.stdout.write(f"Added KEK {kek_id} to {settings.KEK_FILE} as the primary.")
        moved = kek_rotate()
        self.stdout.write(
            f"Re-wrapped {moved} tenant key(s) and sealed secret(s) under "
            f"{kek_backend().primary_id}."
        )
        in_use = kek_ids_in_use()
        for kek_id, count in sorted(in_use.items()):
            self.stdout.write(f"  {kek_id}: wraps {count} key(s)")
        if retire:
            if in_use.get(retire):
                raise CommandError(
                    f"KEK {retire} still wraps {in_use[retire]} key(s); not retired."
                )
            try:
                remove_kek_from_file(settings.KEK_FILE, retire)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            kek_backend_forget()
            self.stdout.write(f"Retired KEK {retire}.")
