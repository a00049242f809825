from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts import views as account_views
from accounts.api import errors as api_errors
from accounts.urls import auth_urlpatterns
from config.metrics import metrics_view
from inference.api import oip
from workers import console, health

api_v1 = [
    path("", include("inference.api.urls")),  # first: predictions are the busiest calls
    path("", include("accounts.api.urls")),
    path("", include("marketplace.api.urls")),
    path("", include("billing.api.urls")),
]

urlpatterns = [
    # The API first: the resolver tries patterns in order, and API calls are the busiest.
    path("api/v1/", include(api_v1)),
    path("v2", include("inference.api.oip_urls")),
    path("", account_views.landing, name="landing"),
    path("", include(auth_urlpatterns)),
    path("dashboard/models/", include("marketplace.dashboard_urls")),
    path("dashboard/", include("inference.urls")),
    path("dashboard/", include("accounts.urls")),
    path("dashboard/billing/", include("billing.dashboard_urls")),
    path("catalogue/", include("marketplace.urls")),
    path("billing/", include("billing.urls")),
    path("admin/operations/", admin.site.admin_view(console.operations), name="admin-operations"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # A page: GET only (DRF's OPTIONS rendered it without a template, a 500).
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", http_method_names=["get", "head"]),
        name="swagger-ui",
    ),
]

# Errors outside any view (no route; an exception no view handled) in the shape of what was
# called: the API's JSON under /api/, the protocol's under /v2, Django's pages elsewhere.
handler404 = api_errors.page_not_found


def handler500(request):
    if request.path == "/v2" or request.path.startswith("/v2/"):
        return oip.server_error(request)
    return api_errors.server_error(request)
