"""``{% load money %}``: ``{{ amount|money:currency }}`` shows an amount exactly (see
``marketplace.listings.money_text``); ``floatformat`` would round a 0.00005 USD call to 0.0001."""

from __future__ import annotations

from decimal import Decimal

from django import template

from marketplace.listings import money_text

register = template.Library()


@register.filter
def money(value: Decimal | int | str | None, currency: str = "") -> str:
    if value is None or value == "":
        return ""
    return money_text(value, currency)
