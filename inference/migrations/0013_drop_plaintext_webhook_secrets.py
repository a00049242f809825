import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0012_seal_webhook_secrets"),
    ]

    operations = [
        migrations.RemoveField(model_name="webhooksigningkey", name="secret"),
        migrations.RemoveField(model_name="webhooksigningkey", name="previous_secret"),
        migrations.AlterField(
            model_name="webhooksigningkey",
            name="sealed",
            field=models.OneToOneField(
                on_delete=django.db.models.deletion.RESTRICT,
                related_name="+",
                to="marketplace.sealedsecret",
            ),
        ),
    ]
