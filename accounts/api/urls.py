from django.urls import path
from rest_framework.routers import SimpleRouter

from accounts.api import views

router = SimpleRouter(trailing_slash=False)
router.register("members", views.MembershipViewSet, basename="member")
router.register("invitations", views.InvitationViewSet, basename="invitation")
router.register("keys", views.ApiKeyViewSet, basename="apikey")
router.register("audit-events", views.AuditEventViewSet, basename="auditevent")

urlpatterns = [
    path("organisation", views.OrganisationView.as_view(), name="organisation"),
    *router.urls,
]
