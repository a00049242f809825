"""``/v2``: the Open Inference Protocol. Included from the root as ``path("v2", ...)`` (no
slash) so that ``GET /v2`` itself, the server metadata, answers without a redirect."""

from django.urls import include, path, re_path

from inference.api import oip

MODEL = "models/<str:owner>/<str:name>"
VERSION = f"{MODEL}/versions/<str:version>"

# A model ref's slash may arrive quoted (acme%2Fclf); the server decodes PATH_INFO before
# routing, so these patterns see acme/clf either way.
v2 = [
    path("health/live", oip.LiveView.as_view(), name="oip-live"),
    path("health/ready", oip.ReadyView.as_view(), name="oip-ready"),
    path(MODEL, oip.ModelMetadataView.as_view(), name="oip-model"),
    path(f"{MODEL}/ready", oip.ModelReadyView.as_view(), name="oip-model-ready"),
    path(f"{MODEL}/infer", oip.InferView.as_view(), name="oip-infer"),
    path(VERSION, oip.ModelVersionMetadataView.as_view(), name="oip-version"),
    path(f"{VERSION}/ready", oip.ModelVersionReadyView.as_view(), name="oip-version-ready"),
    path(f"{VERSION}/infer", oip.VersionInferView.as_view(), name="oip-version-infer"),
    re_path(r"^(?P<rest>.*)$", oip.not_found),
]

urlpatterns = [
    path("", oip.ServerMetadataView.as_view(), name="oip-server"),
    path("/", include(v2)),
]
