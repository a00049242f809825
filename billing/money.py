"""Amounts in a currency's minor unit, the unit Stripe's API and our invoices count in: cents
for USD and EUR, whole yen for JPY (a zero-decimal currency). Which currencies there are, and
the digits of each one's minor unit, is the listing's concern (``marketplace.listings``)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from marketplace.listings import currency_digits

MICRO = Decimal("0.000001")  # the ledger's unit: amounts and compute seconds are kept to it


def minor_units(amount: Decimal, currency: str) -> int:
    """A ledger amount in whole minor units of ``currency``, rounded half-up."""
    digits = currency_digits(currency)
    return int(amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP).scaleb(digits))


def from_minor_units(units: int, currency: str) -> Decimal:
    """What ``units`` minor units of ``currency`` amount to, e.g. 1234 usd -> 12.34."""
    return Decimal(units).scaleb(-currency_digits(currency))
