"""Seal the webhook signing secrets stored in plaintext before (``whsec_`` + base64 of the
key) in the vault, as ``SealedSecret`` rows wrapped by the key-encryption key; 0013 then drops
the plaintext columns."""

import base64

from django.db import migrations

PURPOSE = "webhook-signing"


def seal(apps, schema_editor):
    Key = apps.get_model("inference", "WebhookSigningKey")
    Sealed = apps.get_model("marketplace", "SealedSecret")
    keys = list(Key.objects.all())
    if not keys:
        return  # a new installation: no KEK needed
    from marketplace.models import sealed_context
    from marketplace.vault.keys import kek_backend

    backend = kek_backend()
    for key in keys:
        for field, text in (("sealed", key.secret), ("previous_sealed", key.previous_secret)):
            if not text:
                continue
            row = Sealed(tenant_id=key.tenant_id, purpose=PURPOSE)
            value = base64.b64decode(text.removeprefix("whsec_"))
            context = sealed_context(key.tenant_id, row.public_id, PURPOSE)
            wrapped = backend.wrap(value, context=context)
            row.kek_id, row.wrapped = wrapped.kek_id, wrapped.blob
            row.save()
            setattr(key, field, row)
        key.secret = key.previous_secret = ""
        key.save()


def unseal(apps, schema_editor):
    Key = apps.get_model("inference", "WebhookSigningKey")
    keys = list(Key.objects.select_related("sealed", "previous_sealed"))
    if not keys:
        return
    from marketplace.models import sealed_context
    from marketplace.vault.keys import kek_backend

    backend = kek_backend()
    for key in keys:
        for field, text_field in (("sealed", "secret"), ("previous_sealed", "previous_secret")):
            row = getattr(key, field)
            if row is None:
                continue
            context = sealed_context(row.tenant_id, row.public_id, row.purpose)
            value = backend.unwrap(row.kek_id, bytes(row.wrapped), context=context)
            setattr(key, text_field, "whsec_" + base64.b64encode(value).decode())
            setattr(key, field, None)
            key.save()
            row.delete()


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0011_sealed_secret"),
    ]

    operations = [migrations.RunPython(seal, unseal)]
