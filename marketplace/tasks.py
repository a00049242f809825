from __future__ import annotations

from celery import shared_task

from accounts.models import Tenant


@shared_task(
    name="marketplace.rotate_tenant_key",
    queue="default",
    acks_late=True,
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 60,
)
def rotate_tenant_key(tenant_slug: str) -> int:
    """Re-encrypt a tenant's artifacts under its new key. Safe to run twice or after a crash:
    it resumes where the last run stopped."""
    from marketplace.vault.store import tenant_key_rotate_run

    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    if tenant is None:
        return 0
    return tenant_key_rotate_run(tenant=tenant)


@shared_task(
    name="marketplace.expire_uploads", queue="default", soft_time_limit=600, time_limit=660
)
def expire_uploads() -> int:
    """Expire abandoned upload sessions and delete their encrypted chunks."""
    from marketplace.services import upload_sessions_expire

    return upload_sessions_expire()
