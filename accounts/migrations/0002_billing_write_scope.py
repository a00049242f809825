"""Keys made before the ``billing:write`` scope existed: a key holding ``admin`` could set the
spend cap, which now needs ``billing:write``, so it gets that scope too (keys never hold more
than their creator's role, and every role holding ``admin`` holds ``billing:write``)."""

from django.db import migrations


def grant(apps, schema_editor):
    ApiKey = apps.get_model("accounts", "ApiKey")
    for key in ApiKey.objects.all().only("pk", "scopes").iterator():
        if "admin" in key.scopes and "billing:write" not in key.scopes:
            key.scopes = sorted([*key.scopes, "billing:write"])
            key.save(update_fields=["scopes"])


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
