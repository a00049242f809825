from django.urls import path

from marketplace import views

app_name = "catalogue"

LISTING = "<slug:owner>/<str:name>/"

urlpatterns = [
    path("", views.catalogue, name="index"),
    path(LISTING, views.listing_detail, name="listing"),
    path(f"{LISTING}subscribe/", views.listing_subscribe, name="subscribe"),
    path(f"{LISTING}request-access/", views.listing_request_access, name="request_access"),
    path(f"{LISTING}unsubscribe/", views.listing_unsubscribe, name="unsubscribe"),
]
