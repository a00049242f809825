"""The dashboard's compression pages: the organisation's jobs, one job with a progress bar
that polls itself (htmx) while the job runs, and the start and cancel forms.

Jobs are looked up within ``request.tenant`` only, so another organisation's job is a 404;
starting one goes through the same service as the API (owner only, parameters checked).
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.exceptions import ServiceError
from accounts.models import Scope
from accounts.tenancy import request_actor, session_access
from accounts.views import error_text, tenant_required
from billing.selectors import usage_records_of
from inference import compression_services as jobs
from inference.models import CompressionJob
from marketplace.dashboard import COMPRESS_FORM_KEY, KEPT_PARAMS_MAX
from marketplace.models import Model
from marketplace.selectors import is_number


def _job(request: HttpRequest, job_id: str) -> CompressionJob:
    return get_object_or_404(
        CompressionJob.objects.select_related("model__tenant", "version", "result_version"),
        tenant=request.tenant,
        public_id=job_id,
    )


JOBS_PER_PAGE = 50


def _costed(jobs) -> list[CompressionJob]:
    """The jobs, each with ``cost``: its usage record (what it was billed), or None while it
    has none (not finished, or failed: unbilled). One query for them all."""
    jobs = list(jobs)
    records = usage_records_of(job.public_id for job in jobs)
    for job in jobs:
        job.cost = records.get(job.public_id)
    return jobs


@tenant_required()
def job_list(request: HttpRequest) -> HttpResponse:
    """A page at a time (it stopped at the newest 50, with no way to the rest), each with
    what it cost."""
    jobs = (
        CompressionJob.objects.filter(tenant=request.tenant)
        .select_related("model__tenant", "version", "result_version")
        .order_by("-created_at", "-pk")
    )
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    page.object_list = _costed(page.object_list)
    return render(request, "inference/compression/list.html", {"jobs": page, "page": page})


@tenant_required()
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    [job] = _costed([_job(request, job_id)])
    return render(request, "inference/compression/detail.html", {"job": job})


@tenant_required()
def job_progress(request: HttpRequest, job_id: str) -> HttpResponse:
    """The progress and report block alone: it replaces itself every second while the job
    is queued or running."""
    [job] = _costed([_job(request, job_id)])
    return render(request, "inference/compression/_progress.html", {"job": job})


@require_POST
@tenant_required(scope=Scope.MODELS_WRITE)
def job_start(request: HttpRequest, name: str) -> HttpResponse:
    model = get_object_or_404(
        Model.objects.select_related("tenant"), tenant=request.tenant, name=name
    )
    number = request.POST.get("version", "")
    method = request.POST.get("method", "")
    text = request.POST.get("params", "")
    # A refused form comes back filled in as it was sent, under the reason: kept in the
    # session for the model page's next view (a URL cannot hold a distillation's parameters:
    # past a few KiB the server refuses the request line).
    request.session[COMPRESS_FORM_KEY] = {
        "model": model.pk,
        "version": number,
        "method": method,
        "params": text if len(text) <= KEPT_PARAMS_MAX else "",
    }
    back = redirect("models:detail", name=model.name)
    version = model.versions.filter(number=int(number)).first() if is_number(number) else None
    try:
        params = json.loads(text or "{}")
    except (ValueError, RecursionError):
        params = None
    if not isinstance(params, dict):
        # A string, list or number would otherwise start a billed job with default parameters.
        messages.error(request, 'Parameters are a JSON object, e.g. {"scheme": "dynamic_int8"}.')
        return back
    if version is None:
        messages.error(request, "Choose a version to compress.")
        return back
    try:
        job, _created = jobs.job_create(
            access=session_access(request),
            model=model,
            version=version,
            method=method,
            params=params,
            actor=request_actor(request),
        )
    except (ValidationError, ServiceError) as exc:
        messages.error(request, error_text(exc))
        return back
    request.session.pop(COMPRESS_FORM_KEY, None)
    return redirect("inference:compression_job", job_id=job.public_id)


@require_POST
@tenant_required(scope=Scope.MODELS_WRITE)
def job_cancel(request: HttpRequest, job_id: str) -> HttpResponse:
    job = _job(request, job_id)
    try:
        jobs.job_cancel(job, actor=request_actor(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("inference:compression_job", job_id=job.public_id)
