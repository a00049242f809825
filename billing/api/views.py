"""Usage, invoices, earnings and spend limits over the API (scope ``billing:read``; the
spend cap needs ``billing:write``, a key's budget ``admin``)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.views import CreatedCursorPagination
from accounts.exceptions import NotFound, ServiceError
from accounts.models import ApiKey, Scope
from accounts.tenancy import TenantScopedMixin, request_actor, request_tenant
from billing import selectors
from billing.api import serializers as s
from billing.models import Invoice, KeyBudget, Transfer
from billing.services import account_for, key_budget_set, spend_cap_set


def _amount(value) -> str:
    return str(Decimal(value or 0).quantize(Decimal("0.000001")))


def _period(value: str | None) -> date:
    if not value:
        return selectors.period_of()
    try:
        return date.fromisoformat(f"{value}-01").replace(day=1)
    except ValueError as e:
        raise ServiceError(f"period is a month as YYYY-MM, not {value!r}.") from e


class UsageView(APIView):
    """A billing period's usage: totals, per model, per key and per day, with the spend cap."""

    required_scope = Scope.BILLING_READ

    @extend_schema(
        parameters=[OpenApiParameter("period", str, description="YYYY-MM")],
        responses=s.UsageSerializer,
    )
    def get(self, request):
        tenant = request_tenant(request)
        period = _period(request.query_params.get("period"))
        account = account_for(tenant)
        summary = selectors.consumer_summary(consumer=tenant, period=period)
        spend = [
            {"currency": r["currency"], "amount": _amount(r["amount"])} for r in summary["spend"]
        ]
        single = spend[0] if len(spend) == 1 else None
        return Response(
            {
                "period": f"{period:%Y-%m}",
                "calls": summary["calls"],
                "free_calls": summary["free_calls"],
                "compute_seconds": _amount(summary["compute_seconds"]),
                "spend": spend,
                "amount": single["amount"] if single else (None if spend else _amount(0)),
                "currency": single["currency"] if single else None,
                "spend_cap": None if account.spend_cap is None else str(account.spend_cap),
                "state": account.state,
                "by_model": [
                    {
                        "model": r["model_ref"],
                        "calls": r["calls"],
                        "amount": _amount(r["amount"]),
                        "currency": r["currency"],
                    }
                    for r in selectors.usage_by(consumer=tenant, period=period, field="model_ref")
                ],
                "by_key": [
                    {
                        "key": r["api_key__name"],
                        "key_id": r["api_key__public_id"],
                        "prefix": r["api_key__prefix"],
                        "calls": r["calls"],
                        "amount": _amount(r["amount"]),
                        "currency": r["currency"],
                    }
                    for r in selectors.usage_by(consumer=tenant, period=period, field="api_key")
                ],
            }
        )


class InvoiceViewSet(
    TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    queryset = Invoice.objects.prefetch_related("lines__model__tenant")
    serializer_class = s.InvoiceSerializer
    tenant_field = "consumer"
    pagination_class = CreatedCursorPagination
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    required_scope = Scope.BILLING_READ


class TransferViewSet(TenantScopedMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """The publisher's transfers: its share of each paid invoice."""

    queryset = Transfer.objects.select_related("invoice")
    serializer_class = s.TransferSerializer
    tenant_field = "publisher"
    pagination_class = CreatedCursorPagination
    required_scope = Scope.BILLING_READ


class BillingSettingsView(APIView):
    required_scope = {"GET": Scope.BILLING_READ, "PUT": Scope.BILLING_WRITE}

    @extend_schema(responses=s.BillingSettingsSerializer)
    def get(self, request):
        account = account_for(request_tenant(request))
        return Response(s.BillingSettingsSerializer({"spend_cap": account.spend_cap}).data)

    @extend_schema(request=s.BillingSettingsSerializer, responses=s.BillingSettingsSerializer)
    def put(self, request):
        data = s.BillingSettingsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account = spend_cap_set(
            tenant=request_tenant(request),
            cap=data.validated_data["spend_cap"],
            actor=request_actor(request),
        )
        return Response(s.BillingSettingsSerializer({"spend_cap": account.spend_cap}).data)


class KeyBudgetView(APIView):
    """A key's monthly budget: ``{"monthly_limit": "5.00"}``, null for none."""

    required_scope = Scope.ADMIN

    def _key(self, request, key_id: str) -> ApiKey:
        key = ApiKey.objects.filter(tenant=request_tenant(request), public_id=key_id).first()
        if key is None:
            raise NotFound("No such API key.")
        return key

    @extend_schema(responses=s.KeyBudgetSerializer)
    def get(self, request, key_id: str):
        """The budget a PUT set (it could be set, and enforced, but not read back)."""
        budget = KeyBudget.objects.filter(api_key=self._key(request, key_id)).first()
        limit = budget.monthly_limit if budget else None
        return Response(s.KeyBudgetSerializer({"monthly_limit": limit}).data)

    @extend_schema(request=s.KeyBudgetSerializer, responses=s.KeyBudgetSerializer)
    def put(self, request, key_id: str):
        key = self._key(request, key_id)
        data = s.KeyBudgetSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        limit = data.validated_data["monthly_limit"]
        key_budget_set(key=key, limit=limit, actor=request_actor(request))
        return Response(s.KeyBudgetSerializer({"monthly_limit": limit}).data)
