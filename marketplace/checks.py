from django.conf import settings
from django.core.checks import Warning, register


@register("security", deploy=True)
def kek_source_check(app_configs, **kwargs):
    """A production deployment keeps its key-encryption keys in KMS or the environment, not
    in a key file generated on the application server."""
    if settings.KMS_KEY_ID or settings.KEK_RING:
        return []
    return [
        Warning(
            "Key-encryption keys come from a key file on this server.",
            hint="Set MM_KMS_KEY_ID (AWS KMS) or MM_KEK_RING for production.",
            id="marketplace.W001",
        )
    ]
