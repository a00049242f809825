from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import views

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("orgs/new/", views.org_create, name="org_create"),
    path("switch/", views.switch_tenant, name="switch"),
    path("members/", views.members, name="members"),
    path("members/<str:member_id>/role/", views.member_role, name="member_role"),
    path("members/<str:member_id>/remove/", views.member_remove, name="member_remove"),
    path(
        "invitations/<str:invitation_id>/revoke/", views.invitation_revoke, name="invitation_revoke"
    ),
    path("keys/", views.keys, name="keys"),
    path("keys/<str:key_id>/revoke/", views.key_revoke, name="key_revoke"),
    path("keys/<str:key_id>/rotate/", views.key_rotate, name="key_rotate"),
    path("audit/", views.audit, name="audit"),
]

auth_urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/change/", views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "password/change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("password/reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password/reset/done/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "password/reset/<uidb64>/<token>/",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "password/reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("invitations/<str:token>/", views.invitation_accept, name="invitation_accept"),
]
