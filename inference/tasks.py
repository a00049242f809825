from __future__ import annotations

from celery import shared_task
from django.conf import settings


@shared_task(
    name="inference.purge_prediction_data", queue="default", soft_time_limit=600, time_limit=660
)
def purge_prediction_data() -> int:
    """Drop prediction inputs and outputs past their retention time."""
    from inference.services import predictions_purge

    return predictions_purge()


@shared_task(
    name="inference.fail_stuck_predictions", queue="default", soft_time_limit=60, time_limit=90
)
def fail_stuck_predictions() -> int:
    """Beat, every minute: fail, unbilled, the predictions running past
    ``MM_PREDICTION_STUCK_SECONDS``, and send again the ones queued that long."""
    from inference.services import predictions_fail_stuck, predictions_resend_queued

    predictions_resend_queued()
    return predictions_fail_stuck()


@shared_task(
    name="inference.deliver_webhook",
    queue="default",
    bind=True,
    acks_late=True,
    soft_time_limit=60,
    time_limit=90,
)
def deliver_webhook(self, prediction_id: str, event: str = "completed") -> bool:
    """Deliver a prediction event; retried with backoff (by default 5 s up to 30 min, six
    attempts in all) until the receiver answers 2xx."""
    from inference import webhooks
    from inference.models import Prediction

    prediction = (
        Prediction.objects.select_related("model__tenant", "version", "tenant")
        .filter(public_id=prediction_id)
        .first()
    )
    if prediction is None or not prediction.webhook_url:
        return False
    if event not in prediction.webhook_events:  # [] asked for none (the API defaults it)
        return False
    if webhooks.deliver(prediction, event, attempt=self.request.retries + 1):
        return True
    delays = settings.WEBHOOK_RETRY_DELAYS
    if self.request.retries >= len(delays):
        return False
    raise self.retry(countdown=delays[self.request.retries], max_retries=len(delays))


@shared_task(
    name="inference.resend_missed_webhooks", queue="default", soft_time_limit=60, time_limit=90
)
def resend_missed_webhooks() -> int:
    """Beat, every two minutes: send the webhooks that were not sent when their prediction
    finished (``inference.webhooks.resend_missed``)."""
    from inference.webhooks import resend_missed

    return resend_missed()


@shared_task(
    name="inference.requeue_lost_compression_jobs",
    queue="default",
    soft_time_limit=60,
    time_limit=90,
)
def requeue_lost_compression_jobs() -> int:
    """Beat, every two minutes: re-send compression jobs whose worker is gone."""
    from inference.compression_services import jobs_requeue_lost

    return jobs_requeue_lost()
