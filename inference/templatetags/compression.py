"""``{% load compression %}``: how a compression report reads to a person.

``{{ r.size_ratio|ratio:"smaller,larger" }}`` shows ``4.00× smaller`` for a ratio of 4 and
``1.54× larger`` for 0.65: a report's ratios are parent over child, and below 1 the result got
worse, which "0.65× smaller" hid. ``{{ job.params|params }}`` shows the parameters as the JSON
they were given in, not as a Python dict."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def ratio(value: float | None, words: str) -> str:
    better, worse = words.split(",")
    if not value or value <= 0:
        return "—"
    if value >= 1:
        return f"{value:.2f}× {better}"
    return f"{1 / value:.2f}× {worse}"


@register.filter
def params(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
