from django.urls import path
from rest_framework.routers import SimpleRouter

from billing.api import views

router = SimpleRouter(trailing_slash=False)
router.register("invoices", views.InvoiceViewSet, basename="invoice")
router.register("transfers", views.TransferViewSet, basename="transfer")

urlpatterns = [
    path("usage", views.UsageView.as_view(), name="usage"),
    path("billing/settings", views.BillingSettingsView.as_view(), name="billing-settings"),
    path("keys/<str:key_id>/budget", views.KeyBudgetView.as_view(), name="key-budget"),
    *router.urls,
]
