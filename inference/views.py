"""The dashboard's inference pages: the playground of a model and the organisation's recent
predictions with their webhook deliveries.

The playground's form is built here from the version's signature; running it is the
browser's job (``static/js/playground.js``), through ``POST /api/v1/predictions`` with the
dashboard session, exactly as an API client would, so what it shows (output, latency, cost,
errors) is what the API answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np
from django.core.paginator import Paginator
from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.exceptions import Forbidden, ServiceError, TakenDown
from accounts.models import MODEL_REF_RE, Scope
from accounts.tenancy import Access, session_access
from accounts.views import tenant_required
from billing.selectors import usage_records_of
from inference import services, tensors
from inference.models import Prediction, WebhookDelivery
from inference.runtime.spec import InputError, Signature, TensorSpec
from marketplace import selectors
from marketplace.listings import money_text
from marketplace.models import Listing, Model, ModelVersion, Task

PAGE_SIZE = 20
CLASSIFICATION_TASKS = {
    Task.IMAGE_CLASSIFICATION,
    Task.TEXT_CLASSIFICATION,
    Task.TABULAR_CLASSIFICATION,
}
IMAGE_DATATYPES = {"FP32", "FP16", "FP64", "UINT8"}


# --- the playground -------------------------------------------------------------------------


@dataclass(frozen=True)
class InputField:
    spec: TensorSpec
    example: str  # the prefilled JSON
    image: tuple[int, int, int] | None  # (channels, height, width) when a picture can fill it


def image_dims(spec: TensorSpec, task: str) -> tuple[int, int, int] | None:
    """(C, H, W) of an input a picture can fill: ``[N, C, H, W]`` with one or three channels,
    on an image model or with a dynamic batch."""
    shape = spec.shape
    if spec.datatype not in IMAGE_DATATYPES or len(shape) != 4:
        return None
    batch, channels, height, width = shape
    if channels not in (1, 3) or height < 1 or width < 1:
        return None
    if task != Task.IMAGE_CLASSIFICATION and batch != -1:
        return None
    return channels, height, width


def generated_example(spec: TensorSpec, *, image: bool) -> np.ndarray:
    """An input of the right shape and type, batch 1 (every dynamic dimension 1): small
    seeded random values, so the page shows the same example each time; zeros (a black
    picture, the shortest text) for images, which an uploaded picture replaces."""
    shape = [1 if d == -1 else d for d in spec.shape]
    dtype = tensors.NUMPY.get(spec.datatype, np.dtype(np.float32))
    if dtype.kind != "f" or image:
        return np.zeros(shape, dtype)
    return np.random.default_rng(0).uniform(-1, 1, shape).round(2).astype(dtype)


def publisher_example(candidates: list, signature: Signature) -> dict[str, np.ndarray] | None:
    """The first example the publisher gave that fits the signature, as arrays."""
    for example in candidates:
        if example is None:
            continue
        try:
            return tensors.from_json(example, signature)
        except InputError:
            continue
    return None


def format_tensor(array: np.ndarray) -> str:
    """Nested-list JSON with each innermost row on a line of its own, so an image reads as
    one and a large tensor stays editable. Each value as given, in the fewest digits that
    read back to it (rounded to 4 places, 1e-05 became 0 and a run tried other values), and
    NaN as ``null``, as the API reads it (``nan`` made the form's JSON invalid)."""

    def number(value) -> str:
        if isinstance(value, bool | np.bool_):
            return "true" if value else "false"
        if isinstance(value, float | np.floating):
            if not np.isfinite(value):
                return "null"  # NaN; the API has no JSON for infinities either
            return np.format_float_positional(value, trim="-")  # shortest for its dtype
        return str(value)

    def nested(a: np.ndarray, depth: int) -> str:
        if a.ndim == 0:
            return number(a.item())
        if a.ndim == 1:
            return "[" + ", ".join(number(v) for v in a) + "]"  # each in its own dtype
        separator = ",\n" + " " * (depth + 1)
        return "[" + separator.join(nested(sub, depth + 1) for sub in a) + "]"

    return nested(np.asarray(array), 0)


def input_fields(version: ModelVersion, model: Model, listing: Listing | None) -> list[InputField]:
    signature = Signature.from_json(version.signature)
    examples = publisher_example(
        [version.example_input, listing.example_input if listing else None], signature
    )
    fields = []
    for spec in signature.inputs:
        image = image_dims(spec, model.task)
        array = (
            examples[spec.name]
            if examples is not None
            else generated_example(spec, image=image is not None)
        )
        fields.append(InputField(spec=spec, example=format_tensor(array), image=image))
    return fields


def classifier_output(model: Model, signature: Signature) -> str:
    """The output to show as top classes: a classifier's ``[-1, classes]`` logits."""
    if model.task not in CLASSIFICATION_TASKS or not signature.outputs:
        return ""
    output = signature.outputs[0]
    return output.name if len(output.shape) == 2 and output.shape[1] > 1 else ""


def version_choices(model: Model) -> list[tuple[str, str]]:
    """The picker: aliases on runnable versions first, then each runnable version."""
    versions = list(
        model.versions.filter(ModelVersion.runnable())
        .prefetch_related("aliases")
        .order_by("-number")
    )
    aliases = sorted(
        (alias.name, version) for version in versions for alias in version.aliases.all()
    )
    choices = [(name, f"{name} → v{version.number}") for name, version in aliases]
    for version in versions:
        label = f"v{version.number}"
        if version.label:
            label += f" ({version.label})"
        if version.status == ModelVersion.Status.DEPRECATED:
            label += " · deprecated"
        choices.append((str(version.number), label))
    return choices


def _runnable_model(access: Access, owner: str, name: str) -> tuple[Model, str]:
    """The model and, when the caller may see it but not run it, why not. Neither: 404."""
    try:
        model = selectors.model_for_access(access, owner=owner, name=name, perm="view")
    except TakenDown:
        raise  # 451 with the operator's reason, not a 404
    except ServiceError:
        raise Http404(f"No model {owner}/{name}.") from None
    if not access.has_scope(Scope.INFERENCE):
        role = access.membership.get_role_display().lower()
        return model, (
            f"Your role ({role}) cannot run models; an owner, admin or developer of "
            f"{access.tenant.name} can."
        )
    try:
        selectors.model_for_access(access, owner=owner, name=name, perm="run")
    except Forbidden as exc:
        return model, exc.message
    return model, ""


@tenant_required()
def playground_index(request: HttpRequest) -> HttpResponse:
    """The models the organisation may run (its own and those it subscribes to), and its
    recent predictions."""
    access = session_access(request)
    models = (
        selectors.models_visible_to(access)
        .select_related("tenant")
        .order_by("tenant__slug", "name")
    )
    context = {"models": models, **_predictions_context(request)}
    return render(request, "inference/playground_index.html", context)


@tenant_required()
def playground(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    access = session_access(request)
    try:
        model, blocked = _runnable_model(access, owner, name)
    except TakenDown as exc:
        context = {"message": exc.message}
        return render(request, "catalogue/taken_down.html", context, status=451)
    listing = Listing.objects.filter(model=model).first()
    context = {
        "model": model,
        "listing": listing,
        "own": model.tenant_id == access.tenant.pk,
        "blocked": blocked,
    }
    if blocked:
        return render(request, "inference/playground.html", context)
    choices = version_choices(model)
    ref = request.GET.get("version", "")
    ref = str(int(ref)) if selectors.is_number(ref) else ref
    version_error = ""
    try:
        version = services.version_for(model, ref or None, access=access)
    except ServiceError as exc:
        version, version_error = None, exc.message
        if ref:  # a stale link: show the default version with the reason
            try:
                version = services.version_for(model, None, access=access)
            except ServiceError:
                version = None
        ref = ""
    if version is not None and not version.signature:
        version, version_error = None, f"Version {version.number} has no recorded signature."
    if version is not None and not ref:
        names = [value for value, _ in choices]
        ref = "production" if "production" in names else str(version.number)
    context.update(
        choices=choices,
        selected=ref,
        version=version,
        version_error=version_error,
        **_predictions_context(request, model=model),
    )
    if version is not None:
        signature = Signature.from_json(version.signature)
        context.update(
            fields=input_fields(version, model, listing),
            outputs=signature.outputs,
            classifier_output=classifier_output(model, signature),
        )
    return render(request, "inference/playground.html", context)


# --- recent predictions ---------------------------------------------------------------------


def _predictions(request: HttpRequest, model_ref: str) -> QuerySet[Prediction]:
    predictions = (
        Prediction.objects.filter(tenant=request.tenant)
        .select_related("model__tenant", "version", "api_key", "created_by")
        .defer("input_data", "output_data")  # not shown, and up to megabytes a row
        .prefetch_related(
            Prefetch("deliveries", queryset=WebhookDelivery.objects.order_by("created_at", "pk"))
        )
        .order_by("-created_at", "-pk")
    )
    if model_ref:
        owner, _, name = model_ref.partition("/")
        predictions = predictions.filter(model__tenant__slug=owner, model__name=name)
    return predictions


def _predictions_context(request: HttpRequest, *, model: Model | None = None) -> dict:
    """One page of the tenant's predictions (of ``model``, or ``?model=owner/name``), each
    with its usage record as ``cost``; none for a role without the ``inference`` scope, which
    the API refuses them too."""
    if Scope.INFERENCE not in request.membership.scopes:
        return {"page": None}
    typed = request.GET.get("model", "").strip()
    model_ref = model.ref if model else typed.lower()  # references are lower case
    filter_error = ""
    if not MODEL_REF_RE.fullmatch(model_ref):
        if model_ref:  # said, and kept in the field (it was dropped without a word)
            filter_error = f"Filter by owner/name, e.g. acme-ai/strokes; '{typed}' is not one."
        model_ref = ""
    page = Paginator(_predictions(request, model_ref), PAGE_SIZE).get_page(request.GET.get("page"))
    costs = usage_records_of(p.public_id for p in page)
    for prediction in page:
        record = costs.get(prediction.public_id)
        prediction.cost = record
        prediction.cost_display = (
            f"{money_text(record.amount, record.currency)} {record.currency.upper()}"
            if record
            else ""
        )
    query = {"model": model_ref} if model_ref else {}
    return {
        "page": page,
        "model_filter": model_ref or typed,
        "model_filter_error": filter_error,
        "rows_query": urlencode({**query, "page": page.number}),
        "page_query": urlencode(query),
        "pending": any(not p.is_terminal for p in page),
    }


@tenant_required(scope=Scope.INFERENCE)
def prediction_list(request: HttpRequest) -> HttpResponse:
    return render(request, "inference/predictions.html", _predictions_context(request))


@tenant_required(scope=Scope.INFERENCE)
def prediction_rows(request: HttpRequest) -> HttpResponse:
    """The list alone, for htmx: it reloads itself while a prediction is queued or running,
    and the playground reloads it after each run."""
    return render(request, "inference/_predictions.html", _predictions_context(request))


# --- webhook signing secret -------------------------------------------------------------------


@tenant_required(manage=True)
def webhook_secret(request: HttpRequest) -> HttpResponse:
    """The secret the organisation's webhooks are signed with (owners and admins), and its
    rotation: the old secret signs too for a day after."""
    from django.contrib import messages
    from django.shortcuts import redirect

    from accounts.tenancy import request_actor
    from inference import webhooks

    if request.method == "POST":  # a suspended organisation's is refused by the decorator
        key = webhooks.signing_key_rotate(request.tenant, request_actor(request))
        messages.success(
            request,
            "New secret made. Deliveries carry a signature by the old one too until "
            f"{key.previous_valid_until:%Y-%m-%d %H:%M} UTC.",
        )
        return redirect("inference:webhook_secret")
    key, secret = webhooks.signing_key_reveal(request.tenant, request_actor(request))
    context = {"key": key, "secret": secret, "both": webhooks.in_grace(key)}
    return render(request, "inference/webhook_secret.html", context)
