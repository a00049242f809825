from datetime import datetime, timezone

from django.db import migrations, models


def mark_deleted(apps, schema_editor):
    """Organisations deleted before this field existed say so in their suspension reason
    ("Deleted on YYYY-MM-DD: ..."), written by ``marketplace.vault.store.tenant_destroy``."""
    Tenant = apps.get_model("accounts", "Tenant")
    for tenant in Tenant.objects.filter(suspended_reason__startswith="Deleted on "):
        day = tenant.suspended_reason[len("Deleted on ") :][:10]
        try:
            when = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        tenant.deleted_at = when
        tenant.save(update_fields=["deleted_at"])


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_auth_attempts"),
    ]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="deleted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(mark_deleted, migrations.RunPython.noop),
    ]
