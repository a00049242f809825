from django.urls import path

from marketplace.api import registry

MODEL = "models/<slug:owner>/<str:name>"

urlpatterns = [
    path("models", registry.ModelsView.as_view(), name="models"),
    path(MODEL, registry.ModelDetailView.as_view(), name="model"),
    path(f"{MODEL}/versions", registry.VersionsView.as_view(), name="versions"),
    path(f"{MODEL}/versions/<str:ref>", registry.VersionDetailView.as_view(), name="version"),
    path(
        f"{MODEL}/versions/<str:ref>/download",
        registry.VersionDownloadView.as_view(),
        name="version-download",
    ),
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

# Listings, the catalogue, subscriptions, shares, access requests and download grants.
from marketplace.api import listings  # noqa: E402

CATALOGUE = "catalogue/<slug:owner>/<str:name>"
urlpatterns += [
    path(f"{MODEL}/listing", listings.ListingView.as_view(), name="listing"),
    path(f"{MODEL}/access-requests", listings.AccessRequestsView.as_view(), name="access-requests"),
    path(f"{MODEL}/shares", listings.SharesView.as_view(), name="shares"),
    path(f"{MODEL}/entitlements", listings.EntitlementsView.as_view(), name="entitlements"),
    path(
        f"{MODEL}/entitlements/<str:id>",
        listings.EntitlementDetailView.as_view(),
        name="entitlement",
    ),
    path(
        f"{MODEL}/entitlements/<str:id>/download",
        listings.DownloadGrantView.as_view(),
        name="entitlement-download",
    ),
    path("catalogue", listings.CatalogueView.as_view(), name="catalogue"),
    path(CATALOGUE, listings.CatalogueDetailView.as_view(), name="catalogue-listing"),
    path(f"{CATALOGUE}/subscribe", listings.SubscribeView.as_view(), name="subscribe"),
    path(
        f"{CATALOGUE}/request-access", listings.RequestAccessView.as_view(), name="request-access"
    ),
    path("subscriptions", listings.SubscriptionsView.as_view(), name="subscriptions"),
    path("subscriptions/<str:id>", listings.SubscriptionDetailView.as_view(), name="subscription"),
    path(
        "access-requests/<str:id>/approve",
        listings.AccessRequestDecisionView.as_view(decision="approve"),
        name="access-request-approve",
    ),
    path(
        "access-requests/<str:id>/decline",
        listings.AccessRequestDecisionView.as_view(decision="decline"),
        name="access-request-decline",
    ),
    path(
        "access-requests/<str:id>/withdraw",
        listings.AccessRequestDecisionView.as_view(decision="withdraw"),
        name="access-request-withdraw",
    ),
]
