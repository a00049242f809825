"""What ``OPTIONS`` answers on the API."""

from __future__ import annotations

from rest_framework.metadata import SimpleMetadata


class Metadata(SimpleMetadata):
    """DRF's, but a POST that takes no body (approve an access request, complete an upload)
    lists no fields: DRF asked such a view for the serializer it does not have, and every
    ``OPTIONS`` (a CORS preflight, an API explorer) was a 500."""

    def determine_actions(self, request, view):
        # Here, not at the top: DRF's views import this module as they are defined.
        from rest_framework.generics import GenericAPIView

        bodyless = (
            isinstance(view, GenericAPIView)
            and getattr(view, "serializer_class", None) is None
            and type(view).get_serializer_class is GenericAPIView.get_serializer_class
        )
        return {} if bodyless else super().determine_actions(request, view)
