"""``Client``: the Modelmarket API in Python.

from modelmarket import Client

mm = Client()                                   # MM_API_KEY / MM_BASE_URL / mm login
result = mm.push("acme/classifier", "model.pt2")  # resumable, checksummed
mm.wait_for_version("acme/classifier", result.version.number)
mm.set_alias("acme/classifier", "production", result.version.number)
mm.publish("acme/classifier", visibility="public", price_per_call="0.001")
prediction = mm.predict("acme/classifier", numpy_array)
prediction.arrays()["output"]
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from modelmarket import config, tensors
from modelmarket._http import Transport
from modelmarket.errors import (
    ChecksumMismatch,
    CompressionFailed,
    Conflict,
    ConnectionFailed,
    NotFound,
    PredictionFailed,
    UsageError,
    ValidationFailed,
    WaitTimeout,
)
from modelmarket.types import (
    AccessRequest,
    Alias,
    CompressionJob,
    Download,
    Entitlement,
    Invoice,
    Listing,
    Model,
    Organisation,
    Prediction,
    PushResult,
    Subscription,
    Usage,
    Version,
)
from modelmarket.upload import Progress, detect_format, file_sha256, push_file

FORMATS = ("pt2", "torchscript", "safetensors")
# The file name extension of each format, as the server names a download.
EXTENSIONS = {"pt2": "pt2", "torchscript": "pt", "safetensors": "safetensors"}
DOWNLOAD_BLOCK = 1024 * 1024


def split_ref(ref: str) -> tuple[str, str, str | None]:
    """``owner/name`` or ``owner/name:version`` (a number or an alias) to its parts."""
    model, _, version = ref.partition(":")
    owner, slash, name = model.partition("/")
    if not slash or not owner or not name or "/" in name:
        raise UsageError(f"'{ref}' is not a model reference; write it as owner/name.")
    return owner, name, version or None


def _model_path(ref: str) -> str:
    owner, name, _ = split_ref(ref)
    return f"/api/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}"


class Client:
    """A connection to a Modelmarket server, authenticated with an API key.

    ``api_key`` and ``base_url`` default to ``MM_API_KEY`` / ``MM_BASE_URL``, then the file
    ``mm login`` writes. Requests that the server refuses for now (429, 503) or that do not
    reach it are retried up to ``max_retries`` times (``MM_MAX_RETRIES``, default 5) with
    exponential backoff, honouring ``Retry-After``; every POST carries an idempotency key, so
    a retried prediction is run and billed once. Errors raise subclasses of
    ``modelmarket.errors.ApiError`` carrying the API's ``detail``.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int | None = None,
        transport: httpx.BaseTransport | None = None,
        state_dir: Path | str | None = None,
    ):
        settings = config.resolve(api_key, base_url)
        self.base_url = settings.base_url.rstrip("/")
        self.key_source = settings.key_source
        self.state_dir = Path(state_dir) if state_dir else config.state_dir()
        self.http = Transport(
            base_url=self.base_url,
            api_key=settings.api_key,
            timeout=timeout,
            max_retries=config.max_retries() if max_retries is None else max_retries,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the caller -----------------------------------------------------------------------

    def whoami(self) -> Organisation:
        """The organisation the key acts for, and the key's scopes."""
        return Organisation.from_json(self.http.json("GET", "/api/v1/organisation"))

    # --- models and versions --------------------------------------------------------------

    def list_models(self) -> Iterator[Model]:
        """Models your organisation owns or was given access to, newest first."""
        for item in self.http.paginate("/api/v1/models"):
            yield Model.from_json(item)

    def get_model(self, ref: str) -> Model:
        return Model.from_json(self.http.json("GET", _model_path(ref)))

    def create_model(self, name: str, *, description: str = "", task: str | None = None) -> Model:
        """Create a model in your organisation (the key's tenant) named ``name``."""
        body: dict[str, Any] = {"name": name, "description": description}
        if task:
            body["task"] = task
        # A repeat after a lost answer is a 409, which ensure_model reads as success.
        return Model.from_json(self.http.json("POST", "/api/v1/models", json=body, repeatable=True))

    def ensure_model(self, ref: str) -> Model:
        """The model, created first if it does not exist and ``ref`` is in your organisation."""
        try:
            return self.get_model(ref)
        except NotFound:
            owner, name, _ = split_ref(ref)
            if owner != self.whoami().slug:
                raise
        try:
            return self.create_model(name)
        except Conflict:  # created meanwhile (or by a retried request): fine
            return self.get_model(ref)

    def list_versions(self, ref: str) -> Iterator[Version]:
        """Versions of ``ref``, newest first."""
        for item in self.http.paginate(f"{_model_path(ref)}/versions"):
            yield Version.from_json(item)

    def get_version(self, ref: str, version: int | str | None = None) -> Version:
        """A version by number or alias (``ref`` may also be ``owner/name:version``)."""
        _, _, inline = split_ref(ref)
        which = version if version is not None else inline or "production"
        path = f"{_model_path(ref)}/versions/{quote(str(which), safe='')}"
        return Version.from_json(self.http.json("GET", path))

    def wait_for_version(
        self,
        ref: str,
        version: int | str,
        *,
        timeout: float = 600.0,
        on_status: Callable[[Version], None] | None = None,
    ) -> Version:
        """Poll until validation is over. Returns the ready version; raises
        ``ValidationFailed`` with the server's reason if it failed, ``WaitTimeout`` if it
        takes longer than ``timeout`` seconds (it goes on validating)."""
        deadline = time.monotonic() + timeout
        delay = 0.25
        while True:
            current = self.get_version(ref, version)
            if on_status:
                on_status(current)
            if current.status == "failed":
                raise ValidationFailed(
                    f"{split_ref(ref)[0]}/{split_ref(ref)[1]} version {current.number} failed "
                    f"validation: {current.failure_reason or 'no reason given'}",
                    current,
                )
            if current.is_terminal:
                return current
            if time.monotonic() + delay > deadline:
                raise WaitTimeout(
                    f"Version {current.number} is still {current.status} after {timeout:g} s; "
                    f"check again with `mm version {ref.split(':')[0]}:{current.number}`."
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def push(
        self,
        ref: str,
        path: str | Path,
        *,
        format: str | None = None,
        label: str = "",
        architecture: str = "",
        architecture_config: dict[str, Any] | None = None,
        example_input: Any = None,
        create: bool = True,
        workers: int = 4,
        progress: Progress | None = None,
    ) -> PushResult:
        """Upload a model file as a new version of ``ref`` (``owner/name``).

        The upload is chunked and resumable: if the connection drops or the process dies,
        calling ``push`` again with the same file sends only the chunks the server lacks.
        The file's SHA-256 is checked by the server and compared again with the version it
        creates. ``format`` is detected from the contents when not given. A safetensors
        state dict names its built-in ``architecture`` and ``architecture_config``. With
        ``create``,
        a model of your organisation that does not exist yet is created. The version comes
        back ``validating``; follow it with ``wait_for_version``.
        """
        file = Path(path)
        if not file.is_file():
            raise UsageError(f"No file {path}.")
        detected = detect_format(file)
        fmt = format or detected
        if fmt is None:
            raise UsageError(
                f"Cannot tell the format of {file.name}; pass format= one of {', '.join(FORMATS)}."
            )
        if fmt not in FORMATS:
            raise UsageError(f"Unknown format '{fmt}'; use one of {', '.join(FORMATS)}.")
        owner, name, _ = split_ref(ref)
        progress = progress or (lambda phase, done, total: None)
        sha256 = file_sha256(file, progress)
        if create:
            self.ensure_model(f"{owner}/{name}")
        return push_file(
            self.http,
            ref=f"{owner}/{name}",
            path=file,
            format=fmt,
            state_dir=self.state_dir,
            label=label,
            architecture=architecture,
            architecture_config=architecture_config,
            example_input=example_input,
            sha256=sha256,
            workers=workers,
            progress=progress,
        )

    def deprecate_version(
        self, ref: str, version: int, *, sunset_at: str, reason: str = ""
    ) -> Version:
        """Mark a ready version deprecated until ``sunset_at`` (ISO 8601)."""
        body = {"sunset_at": sunset_at, "reason": reason}
        path = f"{_model_path(ref)}/versions/{int(version)}/deprecate"
        return Version.from_json(self.http.json("POST", path, json=body, repeatable=True))

    def yank_version(self, ref: str, version: int, *, reason: str) -> Version:
        """Withdraw a ready or deprecated version: from then on it answers 410 (``Gone``, with
        ``reason``) to everyone. Move its aliases off it first (``Conflict`` otherwise). Needs
        the admin scope."""
        path = f"{_model_path(ref)}/versions/{int(version)}/yank"
        return Version.from_json(self.http.json("POST", path, json={"reason": reason}))

    def download(
        self,
        ref: str,
        path: str | Path | None = None,
        *,
        version: int | str | None = None,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> Download:
        """Download a version's weights (``ref`` may be ``owner/name:version``; default
        ``production``) to ``path``: a file, or a folder to put ``owner-name-vN.ext`` in (by
        default the current folder).

        Needs the right: the publisher's ``models:write`` scope, or a download grant to
        your organisation (``allow_download``); without it ``PermissionDenied``, or
        ``NotFound`` where you may not see the model. The weights stream to disk under a
        temporary name, never whole in memory, and the file takes its name only once its size
        and SHA-256 match the version's: a download cut short (``ConnectionFailed``) or that
        does not match (``ChecksumMismatch``) leaves no file. An existing file is kept unless
        ``overwrite``.
        """
        owner, name, _ = split_ref(ref)
        meta = self.get_version(ref, version)
        default_name = f"{owner}-{name}-v{meta.number}.{EXTENSIONS.get(meta.format, 'bin')}"
        target = Path(path) if path is not None else Path.cwd()
        if str(path).endswith(("/", os.sep)) and not target.is_dir():
            raise UsageError(f"No folder {target} to download into.")
        if target.is_dir():
            target = target / default_name
        if not target.parent.is_dir():
            raise UsageError(f"No folder {target.parent} to download into.")
        if target.exists() and not overwrite:
            raise UsageError(f"{target} exists; download elsewhere, or replace it (--force).")
        progress = progress or (lambda phase, done, total: None)
        part = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        what = f"{owner}/{name} version {meta.number}"
        digest = hashlib.sha256()
        received = 0
        started = time.monotonic()
        try:
            url = f"{_model_path(ref)}/versions/{meta.number}/download"
            with self.http.stream("GET", url) as response, part.open("xb") as out:
                expected = meta.sha256 or response.headers.get("X-Content-SHA256", "")
                for block in response.iter_bytes(DOWNLOAD_BLOCK):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    progress("download", received, meta.size)
        except httpx.TransportError as exc:  # the connection broke off mid-body
            part.unlink(missing_ok=True)
            raise ConnectionFailed(
                f"The download of {what} broke off after {received} of {meta.size} bytes "
                f"({type(exc).__name__}); nothing was kept. Run it again."
            ) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        sha256 = digest.hexdigest()
        if sha256 != expected or received != meta.size:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"The download of {what} does not match it: {received} bytes with SHA-256 "
                f"{sha256}, where the version has {meta.size} bytes with SHA-256 {expected}. "
                "Nothing was kept; run it again."
            )
        os.replace(part, target)
        return Download(
            path=target,
            model=f"{owner}/{name}",
            version=meta.number,
            sha256=sha256,
            size=received,
            seconds=time.monotonic() - started,
        )

    # --- aliases --------------------------------------------------------------------------

    def list_aliases(self, ref: str) -> list[Alias]:
        return [Alias.from_json(a) for a in self.http.json("GET", f"{_model_path(ref)}/aliases")]

    def set_alias(self, ref: str, alias: str, version: int) -> Alias:
        """Point ``alias`` at a version: create it, move it, or roll it back."""
        path = f"{_model_path(ref)}/aliases/{quote(alias, safe='')}"
        return Alias.from_json(self.http.json("PUT", path, json={"version": int(version)}))

    def alias_history(self, ref: str, alias: str) -> list[dict[str, Any]]:
        """The alias's moves, newest first."""
        return self.http.json("GET", f"{_model_path(ref)}/aliases/{quote(alias, safe='')}")

    # --- listings and the catalogue -------------------------------------------------------

    def get_listing(self, ref: str) -> Listing:
        return Listing.from_json(self.http.json("GET", f"{_model_path(ref)}/listing"))

    def publish(
        self,
        ref: str,
        *,
        visibility: str | None = None,
        price_per_call: str | Decimal | None = None,
        price_per_second: str | Decimal | None = None,
        currency: str | None = None,
        free_calls_per_month: int | None = None,
        title: str | None = None,
        summary: str | None = None,
        card_markdown: str | None = None,
        license: str | None = None,
        tags: list[str] | None = None,
        gated: bool | None = None,
        example_input: Any = None,
    ) -> Listing:
        """Publish ``ref`` in the catalogue, or update its listing. Omitted fields keep their
        current values. Prices are decimal strings (never floats). Needs the admin scope."""
        fields: dict[str, Any] = {
            "visibility": visibility,
            "price_per_call": None if price_per_call is None else str(price_per_call),
            "price_per_second": None if price_per_second is None else str(price_per_second),
            "currency": currency,
            "free_calls_per_month": free_calls_per_month,
            "title": title,
            "summary": summary,
            "card_markdown": card_markdown,
            "license": license,
            "tags": tags,
            "gated": gated,
            "example_input": example_input,
        }
        body = {k: v for k, v in fields.items() if v is not None}
        return Listing.from_json(self.http.json("PUT", f"{_model_path(ref)}/listing", json=body))

    def unpublish(self, ref: str) -> None:
        """Take the listing out of the catalogue (it is kept, private)."""
        self.http.request("DELETE", f"{_model_path(ref)}/listing")

    def catalogue(self, query: str = "", **filters: Any) -> Iterator[dict[str, Any]]:
        """Public listings matching ``query`` (and ``task``, ``license``, ``tag``, ``sort``...)."""
        params = {"q": query, **{k: v for k, v in filters.items() if v is not None}}
        yield from self.http.paginate("/api/v1/catalogue", params=params)

    def subscribe(self, ref: str) -> Subscription:
        """Subscribe your organisation to a listed model (free listings): the subscription,
        as ``list_subscriptions`` gives it. Subscribing again returns the one you have."""
        owner, name, _ = split_ref(ref)
        path = f"/api/v1/catalogue/{quote(owner, safe='')}/{quote(name, safe='')}/subscribe"
        return Subscription.from_json(self.http.json("POST", path, repeatable=True))

    def request_access(self, ref: str, message: str = "") -> AccessRequest:
        """Ask the publisher of a gated listing for access, saying why in ``message``. A
        pending or approved request comes back as it is. Once approved, a free listing has
        subscribed you; a paid one lets you ``subscribe``."""
        owner, name, _ = split_ref(ref)
        path = f"/api/v1/catalogue/{quote(owner, safe='')}/{quote(name, safe='')}/request-access"
        # A repeat returns the pending request: harmless to send again.
        return AccessRequest.from_json(
            self.http.json("POST", path, json={"message": message}, repeatable=True)
        )

    def list_subscriptions(self) -> Iterator[Subscription]:
        """Models your organisation subscribed to or was shared, newest first."""
        for item in self.http.paginate("/api/v1/subscriptions"):
            yield Subscription.from_json(item)

    def unsubscribe(self, model_or_id: str) -> None:
        """Give up your organisation's access to a model (``owner/name``, or the
        subscription's id): a subscription or a share. It takes effect on the next call."""
        entitlement_id = model_or_id
        if "/" in model_or_id:
            owner, name, _ = split_ref(model_or_id)
            found = [s for s in self.list_subscriptions() if s.model == f"{owner}/{name}"]
            if not found:
                raise NotFound(
                    404,
                    f"Your organisation holds no access to {owner}/{name}; "
                    "`mm subscriptions` lists what it holds.",
                    code="not_found",
                )
            entitlement_id = found[0].id
        self.http.request("DELETE", f"/api/v1/subscriptions/{quote(entitlement_id, safe='')}")

    # --- who may run a model: the publisher's side ----------------------------------------

    def list_access_requests(
        self, ref: str, *, status: str | None = None
    ) -> Iterator[AccessRequest]:
        """Requests for access to the model's gated listing, newest first (``status``:
        ``pending``, ``approved`` or ``declined``). Needs the admin scope."""
        params = {"status": status} if status else None
        for item in self.http.paginate(f"{_model_path(ref)}/access-requests", params=params):
            yield AccessRequest.from_json(item)

    def approve_access_request(self, request_id: str) -> AccessRequest:
        """Approve a pending request; on a free listing this subscribes the requester at once.
        A request already decided is a ``Conflict``."""
        path = f"/api/v1/access-requests/{quote(request_id, safe='')}/approve"
        return AccessRequest.from_json(self.http.json("POST", path))

    def decline_access_request(self, request_id: str) -> AccessRequest:
        """Decline a pending request (the organisation may ask again)."""
        path = f"/api/v1/access-requests/{quote(request_id, safe='')}/decline"
        return AccessRequest.from_json(self.http.json("POST", path))

    def withdraw_access_request(self, request_id: str) -> AccessRequest:
        """Take back an approval: the request becomes declined and the organisation's
        subscription ends with it. Only an approved request can be withdrawn (else
        ``Conflict``)."""
        path = f"/api/v1/access-requests/{quote(request_id, safe='')}/withdraw"
        return AccessRequest.from_json(self.http.json("POST", path))

    def list_entitlements(self, ref: str) -> Iterator[Entitlement]:
        """The organisations that may run the model: subscribers and those it is shared
        with, newest first. Needs the admin scope."""
        for item in self.http.paginate(f"{_model_path(ref)}/entitlements"):
            yield Entitlement.from_json(item)

    def share(self, ref: str, organisation: str) -> Entitlement:
        """Share the model with an organisation (by its slug): it may view and run it. One
        that already has access keeps it as it is."""
        body = {"tenant": organisation}
        return Entitlement.from_json(
            self.http.json("POST", f"{_model_path(ref)}/shares", json=body, repeatable=True)
        )

    def unshare(self, ref: str, organisation: str) -> None:
        """Stop sharing the model with an organisation; it loses access on its next call."""
        self.http.request("DELETE", f"{_model_path(ref)}/shares", params={"tenant": organisation})

    def revoke_entitlement(self, ref: str, entitlement: str) -> None:
        """Take an organisation's access to the model away (``entitlement``: its id, or the
        organisation's slug). On a gated listing its approval is withdrawn too."""
        entitlement_id = self._entitlement_id(ref, entitlement)
        self.http.request("DELETE", f"{_model_path(ref)}/entitlements/{entitlement_id}")

    def allow_download(self, ref: str, entitlement: str) -> Entitlement:
        """Let an entitled organisation (the entitlement's id, or the organisation's slug)
        download the model's weights; off by default."""
        entitlement_id = self._entitlement_id(ref, entitlement)
        path = f"{_model_path(ref)}/entitlements/{entitlement_id}/download"
        return Entitlement.from_json(self.http.json("POST", path, repeatable=True))

    def withdraw_download(self, ref: str, entitlement: str) -> Entitlement:
        """Withdraw the download right; the organisation may still run the model."""
        entitlement_id = self._entitlement_id(ref, entitlement)
        path = f"{_model_path(ref)}/entitlements/{entitlement_id}/download"
        return Entitlement.from_json(self.http.json("DELETE", path))

    def _entitlement_id(self, ref: str, entitlement: str) -> str:
        """An entitlement's id (``ent_...``), given it or its organisation's slug (slugs
        hold no underscore, so the two cannot be confused)."""
        if entitlement.startswith("ent_"):
            return quote(entitlement, safe="")
        for live in self.list_entitlements(ref):
            if live.organisation == entitlement:
                return quote(live.id, safe="")
        owner, name, _ = split_ref(ref)
        raise NotFound(
            404,
            f"'{entitlement}' holds no access to {owner}/{name}; "
            f"`mm entitlements {owner}/{name}` lists those that do.",
            code="not_found",
        )

    # --- predictions ----------------------------------------------------------------------

    def predict(
        self,
        ref: str,
        inputs: Any,
        *,
        version: int | str | None = None,
        wait: bool = True,
        timeout: float = 300.0,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        raise_on_failure: bool = True,
    ) -> Prediction:
        """Run a model on ``inputs``: a numpy array or torch tensor (the model's only input),
        a nested list, or a dict of input name to those.

        With ``wait`` (the default) returns the finished prediction: the server holds the
        request up to 60 s, then this polls until ``timeout``. Without, returns at once with
        the queued prediction (see ``wait_for_prediction``). The idempotency key (random
        unless given) makes a retried request return the first prediction, billed once.
        Raises ``PredictionFailed`` if the model failed (unless ``raise_on_failure`` is off).
        """
        owner, name, inline = split_ref(ref)
        body: dict[str, Any] = {"model": f"{owner}/{name}", "input": tensors.to_payload(inputs)}
        which = version if version is not None else inline
        if which is not None:
            body["version"] = str(which)
        if webhook:
            body["webhook"] = webhook
        # The server holds a waiting request at most 60 s; the read timeout must outlast it.
        hold = min(60, max(1, int(timeout)))
        data = self.http.json(
            "POST",
            "/api/v1/predictions",
            json=body,
            headers={"Prefer": f"wait={hold}"} if wait else {},
            idempotency_key=idempotency_key,
            repeatable=True,  # the server honours the key: a repeat returns the first one
            timeout=hold + 15.0 if wait else None,
        )
        prediction = Prediction.from_json(data)
        if wait and not prediction.is_terminal:
            prediction = self.wait_for_prediction(prediction.id, timeout=timeout)
        if raise_on_failure:
            _raise_if_failed(prediction)
        return prediction

    def predict_async(self, ref: str, inputs: Any, **kwargs: Any) -> Prediction:
        """Queue a prediction and return at once; poll with ``wait_for_prediction``."""
        return self.predict(ref, inputs, wait=False, raise_on_failure=False, **kwargs)

    def get_prediction(self, prediction_id: str) -> Prediction:
        path = f"/api/v1/predictions/{quote(prediction_id, safe='')}"
        return Prediction.from_json(self.http.json("GET", path))

    def wait_for_prediction(self, prediction_id: str, *, timeout: float = 300.0) -> Prediction:
        """Poll until the prediction succeeded, failed or was canceled."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            prediction = self.get_prediction(prediction_id)
            if prediction.is_terminal:
                return prediction
            if time.monotonic() + delay > deadline:
                raise WaitTimeout(
                    f"Prediction {prediction_id} is still {prediction.status} after "
                    f"{timeout:g} s; fetch it later with `mm prediction {prediction_id}`."
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def cancel_prediction(self, prediction_id: str) -> Prediction:
        path = f"/api/v1/predictions/{quote(prediction_id, safe='')}/cancel"
        return Prediction.from_json(self.http.json("POST", path, repeatable=True))

    def list_predictions(
        self, *, model: str | None = None, status: str | None = None
    ) -> Iterator[Prediction]:
        params = {k: v for k, v in {"model": model, "status": status}.items() if v}
        for item in self.http.paginate("/api/v1/predictions", params=params):
            yield Prediction.from_json(item)

    # --- compression jobs -----------------------------------------------------------------

    def compress(
        self,
        ref: str,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        version: int | str | None = None,
        data: dict[str, Any] | None = None,
    ) -> CompressionJob:
        """Start compressing a version of a model your organisation owns (``ref`` may be
        ``owner/name:version``; default ``production``). ``method`` is ``quantize``
        (``params={"scheme": "dynamic_int8" | "weight_only_int8" | "fp16" | "bf16"}``),
        ``prune`` or ``distill``; ``data`` is your own ``{"inputs": ..., "labels": ...}``
        for distillation and fidelity. A method that cannot apply is refused (422) with
        the reason. Returns the queued job; follow it with ``wait_for_compression_job``."""
        owner, name, inline = split_ref(ref)
        which = version if version is not None else inline or "production"
        body: dict[str, Any] = {
            "model": f"{owner}/{name}",
            "version": str(which),
            "method": method,
            "params": params or {},
        }
        if data is not None:
            body["data"] = data
        # The server honours the idempotency key: a repeat returns the first job, never a
        # second (billed) one.
        return CompressionJob.from_json(
            self.http.json("POST", "/api/v1/compression-jobs", json=body, repeatable=True)
        )

    def get_compression_job(self, job_id: str) -> CompressionJob:
        path = f"/api/v1/compression-jobs/{quote(job_id, safe='')}"
        return CompressionJob.from_json(self.http.json("GET", path))

    def wait_for_compression_job(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        on_progress: Callable[[CompressionJob], None] | None = None,
    ) -> CompressionJob:
        """Poll until the job is over, calling ``on_progress`` with each state (phase,
        percent, ETA, loss). Returns the succeeded job; raises ``CompressionFailed`` with
        the reason if it failed or was cancelled, ``WaitTimeout`` past ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.25
        while True:
            job = self.get_compression_job(job_id)
            if on_progress:
                on_progress(job)
            if job.status == "succeeded":
                return job
            if job.is_terminal:
                raise CompressionFailed(
                    f"Compression job {job.id} {job.status}: {job.error or 'no reason given'}",
                    job,
                )
            if time.monotonic() + delay > deadline:
                raise WaitTimeout(
                    f"Compression job {job.id} is still {job.status} after {timeout:g} s; "
                    f"follow it with `mm job {job.id} --watch`."
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def cancel_compression_job(self, job_id: str) -> CompressionJob:
        """Cancel a queued or running job: no version is made and it is not billed."""
        path = f"/api/v1/compression-jobs/{quote(job_id, safe='')}/cancel"
        return CompressionJob.from_json(self.http.json("POST", path, repeatable=True))

    def promote_compression_job(
        self,
        job_id: str,
        alias: str,
        *,
        min_agreement: float | None = None,
        min_cosine: float | None = None,
        max_mean_abs_error: float | None = None,
    ) -> CompressionJob:
        """Point ``alias`` at the job's version only if its measured fidelity meets every
        threshold given (at least one); otherwise ``Conflict`` with the figures."""
        body = {
            k: v
            for k, v in {
                "alias": alias,
                "min_agreement": min_agreement,
                "min_cosine": min_cosine,
                "max_mean_abs_error": max_mean_abs_error,
            }.items()
            if v is not None
        }
        path = f"/api/v1/compression-jobs/{quote(job_id, safe='')}/promote"
        return CompressionJob.from_json(self.http.json("POST", path, json=body, repeatable=True))

    def list_compression_jobs(
        self, *, model: str | None = None, status: str | None = None
    ) -> Iterator[CompressionJob]:
        params = {k: v for k, v in {"model": model, "status": status}.items() if v}
        for item in self.http.paginate("/api/v1/compression-jobs", params=params):
            yield CompressionJob.from_json(item)

    # --- usage and invoices ---------------------------------------------------------------

    def usage(self, period: str | None = None) -> Usage:
        """Your organisation's usage in a billing period (``YYYY-MM``; default this month):
        calls, compute, the amount so far, per model and per key, and the spend cap."""
        params = {"period": period} if period else None
        return Usage.from_json(self.http.json("GET", "/api/v1/usage", params=params))

    def list_invoices(self) -> Iterator[Invoice]:
        """Your organisation's invoices, newest first."""
        for item in self.http.paginate("/api/v1/invoices"):
            yield Invoice.from_json(item)

    def get_invoice(self, invoice_id: str) -> Invoice:
        path = f"/api/v1/invoices/{quote(invoice_id, safe='')}"
        return Invoice.from_json(self.http.json("GET", path))

    def list_transfers(self) -> Iterator[dict[str, Any]]:
        """A publisher's transfers: its share of each paid invoice."""
        yield from self.http.paginate("/api/v1/transfers")

    # --- API keys -------------------------------------------------------------------------

    def list_keys(self) -> list[dict[str, Any]]:
        """Your organisation's API keys (never their secrets). Needs the admin scope."""
        return list(self.http.paginate("/api/v1/keys"))


def _raise_if_failed(prediction: Prediction) -> None:
    if prediction.status == "failed":
        kind = f" ({prediction.error_kind})" if prediction.error_kind else ""
        raise PredictionFailed(
            f"Prediction {prediction.id} failed{kind}: {prediction.error or 'no reason given'}",
            prediction,
        )
    if prediction.status == "canceled":
        raise PredictionFailed(f"Prediction {prediction.id} was canceled.", prediction)
