from django.urls import path

from marketplace import dashboard

app_name = "models"

urlpatterns = [
    path("", dashboard.model_list, name="list"),
    path("<str:name>/", dashboard.model_detail, name="detail"),
    path("<str:name>/versions/", dashboard.model_versions, name="versions"),
    path("<str:name>/aliases/", dashboard.alias_move, name="alias_move"),
    path("<str:name>/listing/", dashboard.listing_edit, name="listing_edit"),
    path("<str:name>/access/", dashboard.model_access, name="access"),
    path("<str:name>/listing/unpublish/", dashboard.listing_unpublish, name="listing_unpublish"),
]
