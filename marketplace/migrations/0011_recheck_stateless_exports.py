"""Validation took torch.export graphs that draw random numbers or read uninitialised memory
for stateless, and one host served them to every organisation: the versions it so marked go
back to a host per organisation (the safe side). Built-in architectures keep their mark."""

from django.db import migrations


def unmark(apps, schema_editor):
    Version = apps.get_model("marketplace", "ModelVersion")
    Version.objects.filter(format="pt2", stateless=True).update(stateless=False)


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0010_sealed_secret"),
    ]

    operations = [migrations.RunPython(unmark, migrations.RunPython.noop)]
