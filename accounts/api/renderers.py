"""The API's JSON renderer."""

from __future__ import annotations

from rest_framework import renderers


class _AsciiJSONRenderer(renderers.JSONRenderer):
    ensure_ascii = True


class JSONRenderer(renderers.JSONRenderer):
    """DRF's, except that an answer holding a lone UTF-16 surrogate is written with its
    non-ASCII characters escaped instead of failing with a 500: ``"\\ud800"`` is valid JSON
    input (an input name echoed back in an error message), but UTF-8 cannot encode it."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            return _AsciiJSONRenderer().render(data, accepted_media_type, renderer_context)
