from django.conf import settings
from django.core.checks import Warning, register


@register("security", deploy=True)
def api_key_hmac_key_check(app_configs, **kwargs):
    """API keys are stored as digests under ``API_KEY_HMAC_KEY``; left unset, it is the
    session secret, and rotating that (as after a leak) invalidates every issued API key."""
    if settings.API_KEY_HMAC_KEY != settings.SECRET_KEY:
        return []
    return [
        Warning(
            "API keys are digested under DJANGO_SECRET_KEY (API_KEY_HMAC_KEY is not set).",
            hint="Set API_KEY_HMAC_KEY to a stable random value of its own: rotating "
            "DJANGO_SECRET_KEY would otherwise invalidate every issued API key.",
            id="accounts.W001",
        )
    ]
