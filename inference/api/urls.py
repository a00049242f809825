from django.urls import path

from inference.api import predictions

urlpatterns = [
    path("predictions", predictions.PredictionsView.as_view(), name="predictions"),
    path("predictions/<str:id>", predictions.PredictionDetailView.as_view(), name="prediction"),
    path(
        "predictions/<str:id>/cancel",
        predictions.PredictionCancelView.as_view(),
        name="prediction-cancel",
    ),
]
