from django.urls import path

from billing import views

app_name = "billing_dashboard"

urlpatterns = [
    path("", views.billing_home, name="home"),
    path("payment-method/", views.payment_method, name="payment_method"),
    path("connect/", views.connect_start, name="connect"),
    path("keys/<str:key_id>/budget/", views.key_budget, name="key_budget"),
]
