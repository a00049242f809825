"""``{% load compression %}``: how a compression report reads to a person.

``{{ r.size_ratio|ratio:"smaller,larger,the same size" }}`` shows ``4.00× smaller`` for a ratio
of 4, ``1.54× larger`` for 0.65 and ``the same size`` for one that reads 1.00 either way: a
report's ratios are parent over child, and below 1 the result got worse, which "0.65× smaller"
hid. ``{{ job.params|params }}`` shows the parameters as the JSON
they were given in, not as a Python dict."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def ratio(value: float | None, words: str) -> str:
    better, worse, same = words.split(",")
    if not value or value <= 0:
        return "—"
    times = f"{value if value >= 1 else 1 / value:.2f}"
    if times == "1.00":
        return same  # "1.00× smaller" claimed a gain there was not
    return f"{times}× {better if value >= 1 else worse}"


@register.filter
def params(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
