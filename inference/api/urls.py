from django.urls import path

from inference import abuse_views
from inference.api import compression, predictions, webhook_secret

urlpatterns = [
    path("predictions", predictions.PredictionsView.as_view(), name="predictions"),
    path("predictions/<str:id>", predictions.PredictionDetailView.as_view(), name="prediction"),
    path(
        "predictions/<str:id>/cancel",
        predictions.PredictionCancelView.as_view(),
        name="prediction-cancel",
    ),
    path("compression-jobs", compression.JobsView.as_view(), name="compression-jobs"),
    path("compression-jobs/<str:id>", compression.JobDetailView.as_view(), name="compression-job"),
    path(
        "compression-jobs/<str:id>/cancel",
        compression.JobCancelView.as_view(),
        name="compression-job-cancel",
    ),
    path(
        "compression-jobs/<str:id>/promote",
        compression.JobPromoteView.as_view(),
        name="compression-job-promote",
    ),
    path("webhooks/secret", webhook_secret.WebhookSecretView.as_view(), name="webhook-secret"),
    path(
        "webhooks/secret/rotate",
        webhook_secret.WebhookSecretRotateView.as_view(),
        name="webhook-secret-rotate",
    ),
    path("abuse-flags", abuse_views.AbuseFlagsView.as_view(), name="abuse-flags"),
    path("abuse-flags/<str:id>", abuse_views.AbuseFlagDetailView.as_view(), name="abuse-flag"),
]
