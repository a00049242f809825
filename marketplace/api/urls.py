from django.urls import path

from marketplace.api import registry

MODEL = "models/<slug:owner>/<str:name>"

urlpatterns = [
    path("models", registry.ModelsView.as_view(), name="models"),
    path(MODEL, registry.ModelDetailView.as_view(), name="model"),
    path(f"{MODEL}/versions", registry.VersionsView.as_view(), name="versions"),
    path(f"{MODEL}/versions/<str:ref>", registry.VersionDetailView.as_view(), name="version"),
    path(
        f"{MODEL}/versions/<int:number>/deprecate",
        registry.VersionDeprecateView.as_view(),
        name="version-deprecate",
    ),
    path(
        f"{MODEL}/versions/<int:number>/yank",
        registry.VersionYankView.as_view(),
        name="version-yank",
    ),
    path(f"{MODEL}/aliases", registry.AliasesView.as_view(), name="aliases"),
    path(f"{MODEL}/aliases/<slug:alias>", registry.AliasDetailView.as_view(), name="alias"),
    path(f"{MODEL}/uploads", registry.UploadCreateView.as_view(), name="upload-create"),
    path("uploads/<str:id>", registry.UploadView.as_view(), name="upload"),
    path(
        "uploads/<str:id>/complete", registry.UploadCompleteView.as_view(), name="upload-complete"
    ),
]
