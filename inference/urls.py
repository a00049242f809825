from django.urls import path

from inference import compression_views, views

app_name = "inference"

urlpatterns = [
    path("playground/", views.playground_index, name="playground_index"),
    path("playground/<slug:owner>/<str:name>/", views.playground, name="playground"),
    path("predictions/", views.prediction_list, name="predictions"),
    path("predictions/rows/", views.prediction_rows, name="prediction_rows"),
    path("webhooks/secret/", views.webhook_secret, name="webhook_secret"),
    path("compression/", compression_views.job_list, name="compression_jobs"),
    path("compression/start/<str:name>/", compression_views.job_start, name="compression_start"),
    path("compression/<str:job_id>/", compression_views.job_detail, name="compression_job"),
    path(
        "compression/<str:job_id>/progress/",
        compression_views.job_progress,
        name="compression_progress",
    ),
    path(
        "compression/<str:job_id>/cancel/", compression_views.job_cancel, name="compression_cancel"
    ),
]
