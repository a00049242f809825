from django.urls import path

from inference import views

app_name = "inference"

urlpatterns = [
    path("playground/", views.playground_index, name="playground_index"),
    path("playground/<slug:owner>/<str:name>/", views.playground, name="playground"),
    path("predictions/", views.prediction_list, name="predictions"),
    path("predictions/rows/", views.prediction_rows, name="prediction_rows"),
]
