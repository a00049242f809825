"""The registry API: models, versions, aliases and resumable uploads."""

from __future__ import annotations

from django.db.models import Prefetch
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView, ListAPIView, get_object_or_404
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.views import CreatedCursorPagination
from accounts.exceptions import Conflict
from accounts.models import Scope
from accounts.tenancy import TenantScopedMixin, request_actor
from marketplace import selectors, services
from marketplace.api import serializers as s
from marketplace.api.body import body_pieces
from marketplace.models import Alias, ModelVersion, UploadSession
from marketplace.vault import store

READ_BLOCK = 1024 * 1024


def _viewer(request) -> dict:
    """The serializers' context: whose eyes (what another organisation may see differs)."""
    return {"tenant": request.auth.tenant}


class ModelsView(GenericAPIView):
    """Models your organisation owns or has been given access to; create a model."""

    serializer_class = s.ModelSerializer
    pagination_class = CreatedCursorPagination
    required_scope = {"GET": Scope.MODELS_READ, "POST": Scope.MODELS_WRITE}

    def get_queryset(self):
        # Scoped by ``models_visible_to``: the caller's own models and granted ones.
        return s.ModelSerializer.listing(selectors.models_visible_to(self.request.auth))

    @extend_schema(responses=s.ModelSerializer(many=True))
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(
            s.ModelSerializer(page, many=True, context=_viewer(request)).data
        )

    @extend_schema(request=s.ModelCreateSerializer, responses={201: s.ModelSerializer})
    def post(self, request):
        data = s.ModelCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # A key held to some models makes no others (nor learns which names are taken).
        ref = f"{request.auth.tenant.slug}/{data.validated_data['name']}"
        selectors.refuse_unless_key_allows(request.auth, ref)
        model = services.model_create(
            tenant=request.auth.tenant, actor=request_actor(request), **data.validated_data
        )
        return Response(
            s.ModelSerializer(model, context=_viewer(request)).data, status=status.HTTP_201_CREATED
        )


class ModelDetailView(APIView):
    required_scope = {"GET": Scope.MODELS_READ, "PATCH": Scope.MODELS_WRITE}

    @extend_schema(responses=s.ModelSerializer)
    def get(self, request, owner: str, name: str):
        model = selectors.model_for_access(request.auth, owner=owner, name=name)
        return Response(s.ModelSerializer(model, context=_viewer(request)).data)

    @extend_schema(request=s.ModelUpdateSerializer, responses=s.ModelSerializer)
    def patch(self, request, owner: str, name: str):
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="change")
        data = s.ModelUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        for field, value in data.validated_data.items():
            setattr(model, field, value)
        if data.validated_data:  # only what was sent: never the version counter, say
            model.save(update_fields=list(data.validated_data))
        return Response(s.ModelSerializer(model, context=_viewer(request)).data)


# What another organisation sees of a model it may view: its published versions
# (``selectors.PUBLISHED``), and no names of the publisher's members (who uploaded a version,
# who moved an alias).
def _publisher(request, model) -> bool:
    return selectors.is_publisher(request.auth, model)


class VersionsView(ListAPIView):
    """A model's versions, newest first; another organisation sees only published ones."""

    serializer_class = s.VersionSerializer
    required_scope = Scope.MODELS_READ

    class Pagination(CreatedCursorPagination):
        ordering = "-number"

        def position_valid(self, position: str) -> bool:
            """A cursor's position is a version number (a forged one was a ValueError from
            the query)."""
            return selectors.is_number(position)

    pagination_class = Pagination

    def get_queryset(self):
        model = selectors.model_for_access(self.request.auth, **self.kwargs)
        versions = ModelVersion.objects.filter(model=model)
        self.publisher = _publisher(self.request, model)
        if not self.publisher:
            versions = versions.filter(status__in=selectors.PUBLISHED)
        return versions.select_related("artifact", "parent", "created_by").prefetch_related(
            Prefetch("aliases", queryset=Alias.objects.all())
        )

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "publisher": self.publisher}


# What deprecation_headers adds, for the schema of every answer that may carry them.
DEPRECATION_HEADERS = [
    OpenApiParameter(
        "Deprecation",
        str,
        OpenApiParameter.HEADER,
        response=True,
        description="When the version was deprecated, as RFC 9745 writes it: `@` and the Unix "
        "time in seconds (`@1796068191`); absent while it is not.",
    ),
    OpenApiParameter(
        "Sunset",
        str,
        OpenApiParameter.HEADER,
        response=True,
        description="When a deprecated version stops answering (HTTP date, RFC 8594).",
    ),
]


class VersionDetailView(APIView):
    required_scope = Scope.MODELS_READ

    @extend_schema(responses=s.VersionSerializer, parameters=DEPRECATION_HEADERS)
    def get(self, request, owner: str, name: str, ref: str):
        """A version by number or alias. A deprecated version answers with ``Deprecation``
        and ``Sunset`` headers; a yanked one is 410 with the alias to use instead. Another
        organisation sees only published versions."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name)
        version = selectors.version_resolve(model, ref, access=request.auth)
        publisher = _publisher(request, model)
        response = Response(s.VersionSerializer(version, context={"publisher": publisher}).data)
        return deprecation_headers(response, version)


def deprecation_headers(response, version: ModelVersion):
    if version.status == ModelVersion.Status.DEPRECATED and version.sunset_at:
        from django.utils.http import http_date

        # RFC 9745: when it was deprecated, as a structured-field date ("true" was a draft's).
        deprecated = version.deprecated_at or timezone.now()
        response["Deprecation"] = f"@{int(deprecated.timestamp())}"
        response["Sunset"] = http_date(version.sunset_at.timestamp())
    return response


EXTENSIONS = {"pt2": "pt2", "torchscript": "pt", "safetensors": "safetensors"}


class VersionDownloadView(APIView):
    required_scope = Scope.MODELS_READ

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request, owner: str, name: str, ref: str):
        """The version's weights, decrypted as they stream, for its publisher's members who may
        add versions (``models:write``) and for the organisations it granted downloads to
        (``…/entitlements/{id}/download``, with ``models:read``); others get
        403, or 404 where they may not see the model. Audited. ``X-Content-SHA256`` is the
        plaintext's SHA-256: a download cut short does not match it."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="download")
        version = selectors.version_resolve(model, ref, access=request.auth)
        if version.status not in (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED):
            raise Conflict(f"Version {version.number} is {version.status}; nothing to download.")
        artifact = version.artifact
        if request.method == "HEAD":
            # The size and the checksum, asked before a download: nothing is decrypted, so
            # nothing is audited (it was logged as a download).
            response = HttpResponse(content_type="application/octet-stream")
        else:
            response = StreamingHttpResponse(
                store.artifact_stream(
                    artifact=artifact, purpose="download", actor=request_actor(request)
                ),
                content_type="application/octet-stream",
            )
        filename = f"{model.tenant.slug}-{model.name}-v{version.number}"
        response["Content-Length"] = str(artifact.size)
        response["Content-Disposition"] = (
            f'attachment; filename="{filename}.{EXTENSIONS.get(version.format, "bin")}"'
        )
        response["X-Content-SHA256"] = artifact.sha256
        response["Cache-Control"] = "no-store"
        return response


class VersionDeprecateView(APIView):
    required_scope = Scope.MODELS_WRITE

    @extend_schema(request=s.DeprecateSerializer, responses=s.VersionSerializer)
    def post(self, request, owner: str, name: str, number: int):
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="change")
        version = get_object_or_404(ModelVersion, model=model, number=number)
        data = s.DeprecateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.version_deprecate(
            version=version, actor=request_actor(request), **data.validated_data
        )
        return Response(s.VersionSerializer(version).data)


class VersionYankView(APIView):
    required_scope = Scope.ADMIN

    @extend_schema(request=s.YankSerializer, responses=s.VersionSerializer)
    def post(self, request, owner: str, name: str, number: int):
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="publish")
        version = get_object_or_404(ModelVersion, model=model, number=number)
        data = s.YankSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.version_yank(
            version=version, reason=data.validated_data["reason"], actor=request_actor(request)
        )
        return Response(s.VersionSerializer(version).data)


class AliasesView(APIView):
    required_scope = Scope.MODELS_READ

    @extend_schema(responses=s.AliasSerializer(many=True))
    def get(self, request, owner: str, name: str):
        model = selectors.model_for_access(request.auth, owner=owner, name=name)
        aliases = selectors.aliases_visible(model, request.auth).order_by("name")
        return Response(s.AliasSerializer(aliases, many=True).data)


class AliasDetailView(APIView):
    required_scope = {"GET": Scope.MODELS_READ, "PUT": Scope.MODELS_WRITE}

    @extend_schema(
        operation_id="v1_models_aliases_history", responses=s.AliasMoveSerializer(many=True)
    )
    def get(self, request, owner: str, name: str, alias: str):
        """The alias's history, newest first: what rollback moves back to."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name)
        alias_obj = get_object_or_404(selectors.aliases_visible(model, request.auth), name=alias)
        moves = selectors.alias_moves_visible(model, alias_obj, request.auth)[:100]
        context = {"publisher": _publisher(request, model), "owner": model.tenant}
        return Response(s.AliasMoveSerializer(moves, many=True, context=context).data)

    @extend_schema(request=s.AliasSetSerializer, responses=s.AliasSerializer)
    def put(self, request, owner: str, name: str, alias: str):
        """Point the alias at a version (create it, move it, or roll it back)."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="change")
        data = s.AliasSetSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = ModelVersion.objects.filter(
            model=model, number=data.validated_data["version"]
        ).first()
        if version is None:
            raise ValidationError(
                {"version": f"{model.ref} has no version {data.validated_data['version']}."}
            )
        alias_obj = services.alias_set(
            model=model,
            name=alias,
            version=version,
            access=request.auth,
            actor=request_actor(request),
        )
        return Response(s.AliasSerializer(alias_obj).data)


# --- uploads ------------------------------------------------------------------------------


class UploadCreateView(APIView):
    required_scope = Scope.MODELS_WRITE

    @extend_schema(request=s.UploadCreateSerializer, responses={201: s.UploadSessionSerializer})
    def post(self, request, owner: str, name: str):
        """Start a resumable upload of a new version. Send the file in chunks of
        ``chunk_size`` bytes with ``PUT upload_url`` and ``Content-Range``, in any order, then
        ``POST upload_url/complete``."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="change")
        data = s.UploadCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session = services.upload_session_create(
            model=model, actor=request_actor(request), **data.validated_data
        )
        return Response(s.UploadSessionSerializer(session).data, status=status.HTTP_201_CREATED)


class RawBodyParser(BaseParser):
    """Leaves the body unread so the view can stream it (uploads of any size)."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return None


class UploadView(TenantScopedMixin, GenericAPIView):
    queryset = UploadSession.objects.select_related("model__tenant", "tenant", "key")
    model_field = "model"
    serializer_class = s.UploadSessionSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    parser_classes = [RawBodyParser]
    required_scope = Scope.MODELS_WRITE

    @extend_schema(responses=s.UploadSessionSerializer)
    def get(self, request, id: str):
        """The upload's state: which byte ranges are stored and which are missing."""
        return Response(s.UploadSessionSerializer(self.get_object()).data)

    @extend_schema(
        request={"application/octet-stream": bytes},
        parameters=[OpenApiParameter("Content-Range", str, OpenApiParameter.HEADER, required=True)],
        responses=s.UploadSessionSerializer,
    )
    def put(self, request, id: str):
        """Store one chunk. Re-sending a chunk replaces it."""
        session = self.get_object()
        index = services.parse_content_range(request.headers.get("Content-Range", ""), session)
        # Streamed: never read into memory whole.
        with body_pieces(request._request, READ_BLOCK) as chunks:
            services.upload_part_store(session=session, index=index, chunks=chunks)
        return Response(s.UploadSessionSerializer(session).data)

    def delete(self, request, id: str):
        """Abandon the upload and delete its chunks."""
        services.upload_abort(session=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class UploadCompleteView(TenantScopedMixin, GenericAPIView):
    queryset = UploadSession.objects.select_related("model__tenant", "tenant", "key")
    model_field = "model"
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    required_scope = Scope.MODELS_WRITE

    @extend_schema(request=None, responses={201: s.VersionSerializer})
    def post(self, request, id: str):
        """Assemble the chunks, check the SHA-256 and create the version (``validating``)."""
        version = services.upload_complete(session=self.get_object(), actor=request_actor(request))
        return Response(s.VersionSerializer(version).data, status=status.HTTP_201_CREATED)
