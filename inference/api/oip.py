"""The Open Inference Protocol (KServe v2, as Triton's HTTP server speaks it) under ``/v2``.

An infer call is a prediction like any other (source ``oip``): the same keys, scopes, model
access, rate limits and backpressure; recorded, batched by the worker, billed, and waited for
by push. What differs is the wire format: JSON tensors as flat row-major lists, Triton's
binary tensor extension (``Inference-Header-Content-Length``), and errors shaped
``{"error": "..."}`` as the protocol and its clients expect.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import numpy as np
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.errors import exception_handler
from accounts.api.renderers import JSONRenderer
from accounts.exceptions import (
    Conflict,
    Forbidden,
    Gone,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from accounts.models import Scope
from inference import limits, realtime, services, tensors
from inference.models import Prediction
from inference.runtime.spec import InputError, Signature
from marketplace import selectors
from marketplace.api.registry import DEPRECATION_HEADERS, deprecation_headers
from marketplace.models import Model, ModelVersion

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]


# --- The protocol's plumbing: raw bodies, JSON only, {"error": ...} -------------------------


class RawBody(BaseParser):
    """Leaves the body unread: the infer view reads it once, bounded, as bytes (JSON and
    binary tensors share it)."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return {}


class JsonAlways(BaseContentNegotiation):
    """Protocol clients send whatever ``Accept`` they like; the answer is always JSON (or the
    binary extension, which the view builds itself)."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def oip_exception_handler(exc, context):
    """The API's errors, reshaped to ``{"error": "<message>"}`` (status and headers kept)."""
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict):
        data = dict(response.data)
        extra = {k: v for k, v in data.items() if k not in ("detail", "code", "errors")}
        response.data = {"error": str(data.get("detail", "")), **extra}
    return response


class OipView(APIView):
    parser_classes = [RawBody]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonAlways

    def get_exception_handler(self):
        return oip_exception_handler


class PublicOipView(OipView):
    """Health and server metadata: no key needed (and a key sent along is ignored)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]


# A model named without its owner (tritonclient's model_name="clf"): the path a client meant.
_OWNERLESS = re.compile(r"models/[^/]+(/ready|/infer|/versions/[^/]+(/ready|/infer)?)?/?")


@csrf_exempt
def not_found(request, rest: str = ""):
    """Anything else under /v2 (repository, config, shared memory, ...): a protocol 404."""
    if _OWNERLESS.fullmatch(rest):
        return ownerless(request)
    return JsonResponse(
        {"error": f"{request.method} {request.path} is not supported by this server."},
        status=404,
    )


def ownerless(request):
    return JsonResponse(
        {
            "error": f"No model at {request.path}: name models as owner/name, as in "
            "/v2/models/acme/clf/infer (tritonclient: model_name='acme/clf')."
        },
        status=404,
    )


def server_error(request):
    """A 500 under /v2 (config.urls' handler500): the protocol's shape, no cause given."""
    return JsonResponse({"error": "Internal server error; it is logged."}, status=500)


# --- Schema ---------------------------------------------------------------------------------


class OipErrorSerializer(serializers.Serializer):
    error = serializers.CharField()


class OipServerMetadataSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()
    extensions = serializers.ListField(child=serializers.CharField())


class OipHealthSerializer(serializers.Serializer):
    live = serializers.BooleanField(required=False)
    ready = serializers.BooleanField(required=False)


class OipTensorMetadataSerializer(serializers.Serializer):
    name = serializers.CharField()
    # What requests and replies carry: BF16 is refused in inputs and widened in outputs.
    datatype = serializers.ChoiceField(choices=tuple(tensors.NUMPY))
    shape = serializers.ListField(child=serializers.IntegerField(), help_text="-1: dynamic")


class OipModelMetadataSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="owner/name")
    versions = serializers.ListField(child=serializers.CharField())
    platform = serializers.CharField()
    inputs = OipTensorMetadataSerializer(many=True)
    outputs = OipTensorMetadataSerializer(many=True)


class OipModelReadySerializer(serializers.Serializer):
    name = serializers.CharField()
    ready = serializers.BooleanField()


class OipInferInputSerializer(OipTensorMetadataSerializer):
    data = serializers.ListField(
        child=serializers.JSONField(), required=False, help_text="Row-major, flattened"
    )
    parameters = serializers.DictField(
        required=False, help_text='{"binary_data_size": n} for binary tensor data'
    )


class OipRequestedOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    parameters = serializers.DictField(required=False, help_text='{"binary_data": true}')


class OipInferSerializer(serializers.Serializer):
    id = serializers.CharField(required=False)
    inputs = OipInferInputSerializer(many=True)
    outputs = OipRequestedOutputSerializer(many=True, required=False)
    parameters = serializers.DictField(required=False, help_text='{"binary_data_output": true}')


class OipInferOutputSerializer(OipTensorMetadataSerializer):
    data = serializers.ListField(child=serializers.JSONField(), required=False)
    parameters = serializers.DictField(required=False)


class OipInferResponseSerializer(serializers.Serializer):
    model_name = serializers.CharField()
    model_version = serializers.CharField()
    id = serializers.CharField()
    parameters = serializers.DictField(help_text='{"prediction_id": "pred_…"}')
    outputs = OipInferOutputSerializer(many=True)


ERRORS = {
    code: OpenApiResponse(OipErrorSerializer, description=text)
    for code, text in {
        400: "Invalid request or input (names the input, its shape and datatype)",
        401: "No or invalid API key",
        403: "The key lacks the scope, or the model is not subscribed to",
        404: "No such model or version (or it is private)",
        409: "The version is not ready",
        410: "The version was withdrawn",
    }.items()
}
# What ready answers: 400 for a version that exists but cannot run (not 409 or 410).
READY_ERRORS = {
    **{code: ERRORS[code] for code in (401, 403, 404)},
    400: OpenApiResponse(
        OipErrorSerializer,
        description="The version exists but cannot run: validating, failed, withdrawn, past "
        "its sunset or paused",
    ),
}
VERSION_PATH = OpenApiParameter(
    "version", str, OpenApiParameter.PATH, description="number or alias"
)


# --- Health and server metadata -------------------------------------------------------------


class LiveView(PublicOipView):
    @extend_schema(operation_id="oip_health_live", responses={200: OipHealthSerializer})
    def get(self, request):
        return Response({"live": True})


class ReadyView(PublicOipView):
    @extend_schema(
        operation_id="oip_health_ready",
        responses={
            200: OipHealthSerializer,
            503: OpenApiResponse(OipErrorSerializer, description="The database or Redis is down"),
        },
    )
    def get(self, request):
        """Ready when the database and Redis (queue, limits, result push) answer."""
        for what, probe in (("database", _probe_database), ("queue", realtime.client().ping)):
            try:
                probe()
            except Exception:
                logger.warning("OIP readiness: the %s is unavailable", what, exc_info=True)
                return Response({"error": f"The {what} is unavailable."}, status=503)
        return Response({"ready": True})


def _probe_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


class ServerMetadataView(PublicOipView):
    @extend_schema(operation_id="oip_server_metadata", responses={200: OipServerMetadataSerializer})
    def get(self, request):
        try:
            version = package_version("modelmarket")
        except PackageNotFoundError:
            version = "unknown"
        return Response({"name": "modelmarket", "version": version, "extensions": EXTENSIONS})


# --- Model metadata and readiness -----------------------------------------------------------


def _version_numbers(model: Model) -> list[str]:
    # Runnable ones only: a deprecated version past its sunset answers 410 to infer.
    numbers = model.versions.filter(ModelVersion.runnable()).order_by("number")
    return [str(n) for n in numbers.values_list("number", flat=True)]


class ModelMetadataView(OipView):
    required_scope = Scope.MODELS_READ

    def http_method_not_allowed(self, request, *args, **kwargs):
        # POST /v2/models/clf/infer reads as the metadata of a model "clf/infer": a model
        # named without its owner, not a method this model lacks.
        if kwargs.get("name") in ("infer", "ready") and not kwargs.get("version"):
            return ownerless(request)
        return super().http_method_not_allowed(request, *args, **kwargs)

    @extend_schema(
        operation_id="oip_model_metadata", responses={200: OipModelMetadataSerializer, **ERRORS}
    )
    def get(self, request, owner: str, name: str, version: str | None = None):
        """The model's tensors as its version's signature gives them (default: the
        ``production`` alias, else the newest ready version)."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="view")
        resolved = (
            selectors.version_resolve(model, version, access=request.auth)
            if version
            else services.version_for(model, None, access=request.auth)
        )
        signature = resolved.signature or {"inputs": [], "outputs": []}
        return Response(
            {
                "name": model.ref,
                "versions": _version_numbers(model),
                "platform": "pytorch",
                "inputs": signature["inputs"],
                "outputs": signature["outputs"],
            }
        )


class ModelVersionMetadataView(ModelMetadataView):
    @extend_schema(
        operation_id="oip_model_version_metadata",
        parameters=[VERSION_PATH],
        responses={200: OipModelMetadataSerializer, **ERRORS},
    )
    def get(self, request, owner: str, name: str, version: str):
        return super().get(request, owner, name, version)


class ModelReadyView(OipView):
    # Either scope will do: a serving client holding only an ``inference`` key checks
    # readiness before it infers, and readiness tells it nothing that infer would not.
    required_scope = None

    @extend_schema(
        operation_id="oip_model_ready",
        responses={200: OipModelReadySerializer, **READY_ERRORS},
    )
    def get(self, request, owner: str, name: str, version: str | None = None):
        """200 when the version can run; 400 when it exists but cannot (validating, failed,
        withdrawn); 404 when the model or version does not exist."""
        access = request.auth
        if access.has_scope(Scope.MODELS_READ):
            perm = "view"
        elif access.has_scope(Scope.INFERENCE):
            perm = "run"
        else:
            raise Forbidden("This needs the 'models:read' or 'inference' scope, which you lack.")
        model = selectors.model_for_access(access, owner=owner, name=name, perm=perm)
        try:
            resolved = services.version_for(model, version, access=access)
        except (Conflict, Gone) as exc:
            raise ServiceError(exc.message) from None
        paused = limits.breaker_state(resolved.pk)
        if paused is not None:  # every infer would be a 503 meanwhile
            reason, seconds = paused
            raise ServiceError(
                f"{model.ref} version {resolved.number} is paused for {seconds} s: {reason}"
            )
        return Response({"name": model.ref, "ready": True})


class ModelVersionReadyView(ModelReadyView):
    @extend_schema(
        operation_id="oip_model_version_ready",
        parameters=[VERSION_PATH],
        responses={200: OipModelReadySerializer, **READY_ERRORS},
    )
    def get(self, request, owner: str, name: str, version: str):
        return super().get(request, owner, name, version)


# --- Infer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferRequest:
    id: str
    arrays: dict[str, np.ndarray]
    # (name, binary) per requested output, in order; None: every output, as binary_default.
    outputs: list[tuple[str, bool]] | None
    binary_default: bool


def declared_length(request) -> int:
    """The request's Content-Length; 0 when it is missing or not a number (as Django reads
    the body then)."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def read_body(request) -> bytes:
    """The raw body, at most ``MAX_INPUT_BYTES`` (also after gzip or deflate, which
    tritonclient may apply)."""
    limit = settings.MAX_INPUT_BYTES
    too_large = PayloadTooLarge(f"The request is larger than {limit} bytes; send smaller batches.")
    if declared_length(request) > limit:
        raise too_large
    stream = request.stream
    raw = stream.read(limit + 1) if stream is not None else b""
    if len(raw) > limit:
        raise too_large
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("gzip", "deflate"):
        raw = _inflate(raw, encoding, limit, too_large)
    elif encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported; use gzip.")
    return raw


def _inflate(data: bytes, encoding: str, limit: int, too_large: Exception) -> bytes:
    """The body decompressed, at most ``limit`` bytes. A gzip body may hold several members,
    one after another, as ``gzip`` writes appended files (RFC 1952); anything else after the
    compressed data is refused (it was dropped without a word, and several members were
    read as the first alone: "not valid JSON")."""
    parts: list[bytes] = []
    room = limit
    while True:
        inflate = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            part = inflate.decompress(data, room + 1)
        except zlib.error as exc:
            raise ServiceError(f"The body is not valid {encoding} data: {exc}.") from None
        if len(part) > room or inflate.unconsumed_tail:
            raise too_large
        if not inflate.eof:  # cut short, or too short to be any (a bare "{")
            raise ServiceError(f"The body is not valid {encoding} data: it ends too soon.")
        parts.append(part)
        room -= len(part)
        data = inflate.unused_data
        if not data:
            return b"".join(parts)
        if encoding != "gzip" or not data.startswith(b"\x1f\x8b"):
            raise ServiceError(
                f"The body has {len(data)} bytes after its {encoding} data; send the "
                f"{encoding} data alone."
            )


def _failure_status(prediction: Prediction) -> tuple[int, dict[str, str]]:
    """The status of a failed prediction by whose fault it was: the request's or the model's
    (400, not worth sending again as it is), the deadline (504), a version paused by the
    worker's breaker (503, with Retry-After: what is left of the pause), a version the caller
    may no longer run (409: yanked, taken down or access ended while the request waited), the
    platform's (500: a retry may succeed)."""
    error_kind = prediction.error_kind
    if error_kind in ("input", "model", "output"):
        return 400, {}
    if error_kind == "refused":
        return 409, {}
    if error_kind == "timeout":
        return 504, {}
    if error_kind == "unavailable":
        paused = limits.breaker_state(prediction.version_id)
        return 503, {"Retry-After": str(paused[1] if paused else 1)}
    return 500, {}


def _object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ServiceError(f"{what} must be a JSON object.")
    return value


def _tensor(item, binary: memoryview, offset: int, has_binary: bool) -> tuple[np.ndarray, int]:
    """One input tensor, from its JSON ``data`` or its slice of the binary section; returns it
    and the offset of the next slice."""
    name = item["name"]
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ServiceError(
            f"Input '{name}': shape must be a list of non-negative integers; received {shape!r}."
        )
    if len(shape) > tensors.MAX_DIMS or any(d >= 2**31 for d in shape):
        raise ServiceError(
            f"Input '{name}': shape {shape} is not one a tensor can have (at most "
            f"{tensors.MAX_DIMS} dimensions, each under 2**31)."
        )
    datatype = item.get("datatype")
    dtype = tensors.NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ServiceError(
            f"Input '{name}': datatype {datatype!r} is not supported; use one of "
            f"{', '.join(tensors.NUMPY)}."
        )
    parameters = _object(item.get("parameters"), f"The parameters of input '{name}'")
    if "shared_memory_region" in parameters:
        raise ServiceError(f"Input '{name}': shared memory is not supported; send the data.")
    count = math.prod(shape)
    size = parameters.get("binary_data_size")
    if size is not None:
        expected = count * dtype.itemsize
        if not has_binary:
            raise ServiceError(
                f"Input '{name}' has binary_data_size but the request has no {HEADER_LENGTH} "
                "header."
            )
        if type(size) is not int or size != expected:
            raise ServiceError(
                f"Input '{name}': {datatype}{shape} takes {expected} bytes; binary_data_size "
                f"is {size!r}."
            )
        if offset + size > len(binary):
            raise ServiceError(f"Input '{name}': the body ends before its {size} bytes of data.")
        little = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        if dtype.kind == "b" and count and little.view(np.uint8).max() > 1:
            # A byte other than 0 or 1 is no boolean torch defines.
            raise ServiceError(f"Input '{name}': BOOL data is one byte per value, 0 or 1.")
        return little.astype(dtype).reshape(shape), offset + size
    if "data" not in item:
        raise ServiceError(f"Input '{name}' has neither data nor binary_data_size.")
    try:
        array = tensors.values_as(item["data"], dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ServiceError(
            f"Input '{name}' is not {datatype} data: {str(exc).rstrip('.')}."
        ) from None
    if array.size != count:
        raise ServiceError(
            f"Input '{name}': shape {shape} holds {count} values; received {array.size}."
        )
    return array.reshape(shape), offset


def parse_infer_request(raw: bytes, header_length: str | None) -> InferRequest:
    """A v2 infer request: all JSON, or (binary extension) ``header_length`` bytes of JSON
    followed by the raw little-endian data of the inputs that give ``binary_data_size``, in
    order."""
    body = memoryview(raw)
    binary = memoryview(b"")
    if header_length is not None:
        digits = header_length.strip()
        number = digits.isascii() and digits.isdigit() and len(digits) <= 18
        length = int(digits) if number else -1
        if not 0 <= length <= len(raw):
            raise ServiceError(
                f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(raw)} bytes."
            )
        body, binary = body[:length], body[length:]
    try:
        request = json.loads(bytes(body))
    except ValueError as exc:
        raise ServiceError(f"The inference request is not valid JSON: {exc}.") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ServiceError(
            'The request needs "inputs": a list of {"name", "shape", "datatype", "data"}.'
        )
    request_id = request.get("id", "")
    if not isinstance(request_id, str):
        raise ServiceError('"id" must be a string.')

    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in request["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ServiceError('Each input needs a "name", "shape", "datatype" and "data".')
        if item["name"] in arrays:
            raise ServiceError(f"Input '{item['name']}' is given twice.")
        arrays[item["name"]], offset = _tensor(item, binary, offset, header_length is not None)
    if offset != len(binary):
        raise ServiceError(
            f"The body has {len(binary) - offset} bytes of binary data that no input claims."
        )

    parameters = _object(request.get("parameters"), '"parameters"')
    binary_default = parameters.get("binary_data_output") is True
    outputs = None
    if request.get("outputs"):
        if not isinstance(request["outputs"], list):
            raise ServiceError('"outputs" must be a list of {"name", "parameters"}.')
        outputs = []
        for item in request["outputs"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ServiceError('Each requested output needs a "name".')
            options = _object(item.get("parameters"), f"The parameters of output '{item['name']}'")
            if options.get("classification") or "shared_memory_region" in options:
                raise ServiceError(
                    f"Output '{item['name']}': classification and shared memory are not supported."
                )
            outputs.append((item["name"], options.get("binary_data", binary_default) is True))
    return InferRequest(request_id, arrays, outputs, binary_default)


def infer_response(
    *,
    model: Model,
    version: ModelVersion,
    prediction: Prediction,
    request: InferRequest,
    signature: Signature,
) -> HttpResponse:
    arrays = tensors.decode(prediction.output_data)
    names = [s.name for s in signature.outputs if s.name in arrays]
    names += [name for name in arrays if name not in names]
    selected = request.outputs or [(name, request.binary_default) for name in names]
    outputs, chunks = [], []
    for name, binary in selected:
        array = arrays[name]
        tensor = {"name": name, "datatype": tensors.DATATYPE[array.dtype], "shape": [*array.shape]}
        if binary:
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            # NaN and infinities as Triton's server writes them (rapidjson's NaN, Infinity and
            # -Infinity, which json.dumps writes too): tritonclient reads them back exactly.
            # Strict JSON has no token for them (/api/v1 writes null, which tritonclient would
            # read as NaN, an infinity included).
            tensor["data"] = array.reshape(-1).tolist()
        outputs.append(tensor)
    header = json.dumps(
        {
            "model_name": model.ref,
            "model_version": str(version.number),
            "id": request.id or prediction.public_id,
            "parameters": {"prediction_id": prediction.public_id},
            "outputs": outputs,
        }
    ).encode()
    if not chunks:
        return HttpResponse(header, content_type="application/json")
    response = HttpResponse(b"".join([header, *chunks]), content_type="application/octet-stream")
    response[HEADER_LENGTH] = str(len(header))
    return response


def _response_header(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(
        name, str, OpenApiParameter.HEADER, response=True, description=description
    )


# The headers inference.limits.admit() puts on the calls it counts (429s carry them too, with
# Retry-After), for the schema of those calls.
RATE_LIMIT_HEADERS = [
    _response_header("RateLimit-Limit", "Requests this key may make per window."),
    _response_header("RateLimit-Remaining", "Requests left in this window."),
    _response_header("RateLimit-Reset", "Seconds until the window ends."),
    _response_header("RateLimit-Policy", "The limit and its window: `LIMIT;w=SECONDS`."),
]
INFER_RESPONSE_HEADERS = [*RATE_LIMIT_HEADERS, *DEPRECATION_HEADERS]
INFER_SCHEMA = {
    "request": {
        "application/json": OipInferSerializer,
        "application/octet-stream": OpenApiTypes.BINARY,
    },
    "responses": {
        (200, "application/json"): OipInferResponseSerializer,
        (200, "application/octet-stream"): OpenApiResponse(
            OpenApiTypes.BINARY,
            description=f"With binary outputs: JSON (its length in the {HEADER_LENGTH} "
            "response header), then the outputs' raw little-endian data.",
        ),
        **ERRORS,
        413: OpenApiResponse(OipErrorSerializer, description="Request too large"),
        415: OpenApiResponse(
            OipErrorSerializer, description="A Content-Encoding other than gzip or deflate"
        ),
        429: OpenApiResponse(OipErrorSerializer, description="Rate limited"),
        503: OpenApiResponse(OipErrorSerializer, description="The queue is full"),
        504: OpenApiResponse(OipErrorSerializer, description="Not finished in time"),
    },
}
HEADER_LENGTH_PARAMETER = OpenApiParameter(
    HEADER_LENGTH,
    int,
    OpenApiParameter.HEADER,
    description="Binary tensor extension: the length of the JSON that starts the body; the "
    "raw little-endian data of inputs with binary_data_size follows it.",
)


class InferView(OipView):
    required_scope = Scope.INFERENCE

    @extend_schema(
        operation_id="oip_infer",
        parameters=[HEADER_LENGTH_PARAMETER, *INFER_RESPONSE_HEADERS],
        **INFER_SCHEMA,
    )
    def post(self, request, owner: str, name: str, version: str | None = None):
        """Run the model and answer with its outputs (synchronous: the call waits for the
        prediction, which is billed like any other)."""
        access = request.auth
        model, resolved = services.resolve_runnable(
            access, model_ref=f"{owner}/{name}", version_ref=version
        )
        infer = parse_infer_request(read_body(request), request.headers.get(HEADER_LENGTH))
        signature = services.signature(resolved)
        known = {s.name for s in signature.outputs}
        for output, _binary in infer.outputs or []:
            if output not in known:
                raise ServiceError(
                    f"Unknown output '{output}'; the model gives "
                    + ", ".join(f"'{s.name}' {s.describe()}" for s in signature.outputs)
                    + "."
                )
        try:
            tensors.check(signature, infer.arrays)
        except InputError as exc:
            raise ServiceError(str(exc)) from None
        headers = services.admit(access, model, resolved)
        prediction, _created = services.prediction_create(
            access=access,
            model=model,
            version=resolved,
            arrays=infer.arrays,
            source=Prediction.Source.OIP,
            wait=True,
        )
        prediction = services.prediction_wait(prediction, settings.OIP_TIMEOUT)
        timed_out = not prediction.is_terminal
        if timed_out:
            # Nobody will read the result of a call that gave up, so it is cancelled and not
            # billed (unless it finished in the meantime, and then it is answered).
            prediction = services.prediction_cancel(prediction)
        if prediction.status == Prediction.Status.SUCCEEDED:
            response = infer_response(
                model=model,
                version=resolved,
                prediction=prediction,
                request=infer,
                signature=signature,
            )
            for header, value in headers.items():
                response[header] = value
            return deprecation_headers(response, resolved)
        if timed_out:
            message = f"The model did not answer within {settings.OIP_TIMEOUT:g} s."
            return Response({"error": message}, status=504, headers=headers)
        if prediction.status == Prediction.Status.CANCELED:
            return Response({"error": "The prediction was cancelled."}, status=400, headers=headers)
        status_code, extra = _failure_status(prediction)
        return Response(
            {"error": prediction.error}, status=status_code, headers={**headers, **extra}
        )


class VersionInferView(InferView):
    @extend_schema(
        operation_id="oip_model_version_infer",
        parameters=[VERSION_PATH, HEADER_LENGTH_PARAMETER, *INFER_RESPONSE_HEADERS],
        **INFER_SCHEMA,
    )
    def post(self, request, owner: str, name: str, version: str):
        return super().post(request, owner, name, version)
