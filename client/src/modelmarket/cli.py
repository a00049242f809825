"""``mm``: the command line over ``modelmarket.Client``.

Every failure prints one line saying what went wrong (the API's own ``detail`` when the API
refused) and exits non-zero, with a code per kind of failure (``modelmarket.errors``):
2 usage, 3 authentication or permission, 4 not found, 5 request refused, 6 server busy or
unreachable, 7 validation or prediction failed, 8 timed out waiting, 130 interrupted.
``--json`` prints the API's JSON on stdout (errors as ``{"error": {...}}`` on stderr).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from modelmarket import __version__, config, tensors
from modelmarket.client import Client, split_ref
from modelmarket.errors import (
    EXIT_USAGE,
    ApiError,
    AuthenticationError,
    CompressionFailed,
    ConnectionFailed,
    ModelmarketError,
    NotFound,
    PermissionDenied,
    PredictionFailed,
    RateLimited,
    ServiceUnavailable,
    UsageError,
)
from modelmarket.types import (
    AccessRequest,
    CompressionJob,
    Download,
    Entitlement,
    Prediction,
    PushResult,
    Version,
)

EXIT_INTERRUPTED = 130


class Cli:
    """State shared by the commands of one invocation: options, consoles, the client."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.json = bool(getattr(args, "json", False))
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(base_url=getattr(self.args, "base_url", None))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @property
    def interactive(self) -> bool:
        return not self.json and not getattr(self.args, "quiet", False) and self.err.is_terminal

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            human()

    def say(self, text: str) -> None:
        """A progress note for people (stderr, so stdout stays the result)."""
        if not self.json and not getattr(self.args, "quiet", False):
            self.err.print(text)

    def status(self, text: str) -> AbstractContextManager:
        return self.err.status(text) if self.interactive else nullcontext()


# --- commands -------------------------------------------------------------------------------


def cmd_login(cli: Cli) -> int:
    args = cli.args
    key = os.environ.get("MM_API_KEY") if args.from_env else None
    if not key:
        if sys.stdin.isatty():
            key = getpass.getpass("API key (mm_live_...): ")
        else:
            key = sys.stdin.readline()
    key = (key or "").strip()
    if not key:
        raise UsageError("No key given. Create one in the dashboard under Keys.")
    base_url = getattr(args, "base_url", None) or config.resolve().base_url
    with Client(api_key=key, base_url=base_url) as client:
        org = client.whoami()  # refuse to save a key that does not work
    data = config.read_config()
    data.update(api_key=key, base_url=base_url)
    path = config.write_config(data)
    result = {"organisation": org.slug, "scopes": org.scopes, "base_url": base_url}
    cli.emit(
        {**result, "config": str(path)},
        lambda: cli.out.print(
            f"Logged in to [bold]{escape(org.name)}[/] ({org.slug}) at {base_url}; "
            f"key saved in {path} (mode 600)."
        ),
    )
    return 0


def cmd_logout(cli: Cli) -> int:
    data = config.read_config()
    removed = data.pop("api_key", None) is not None
    if removed:
        config.write_config(data)
    cli.emit(
        {"logged_out": removed},
        lambda: cli.out.print("Key removed." if removed else "No saved key."),
    )
    return 0


def cmd_whoami(cli: Cli) -> int:
    org = cli.client.whoami()
    cli.emit(
        {**org.raw, "base_url": cli.client.base_url, "key_source": cli.client.key_source},
        lambda: cli.out.print(
            f"{escape(org.name)} ({org.slug}) at {cli.client.base_url}\n"
            f"scopes: {', '.join(org.scopes)}\nkey from: {cli.client.key_source}"
        ),
    )
    return 0


def cmd_models(cli: Cli) -> int:
    models = list(cli.client.list_models())

    def human() -> None:
        table = Table("model", "latest", "aliases", "task", box=None)
        for m in models:
            aliases = ", ".join(f"{k}→{v}" for k, v in sorted(m.aliases.items()))
            table.add_row(m.ref, str(m.latest_version or "-"), aliases or "-", m.task or "-")
        cli.out.print(table if models else "No models yet. Push one: mm push owner/name FILE")

    cli.emit([m.raw for m in models], human)
    return 0


def cmd_create(cli: Cli) -> int:
    model = cli.client.create_model(
        cli.args.name, description=cli.args.description, task=cli.args.task
    )
    cli.emit(model.raw, lambda: cli.out.print(f"Created {model.ref}."))
    return 0


def cmd_model(cli: Cli) -> int:
    model = cli.client.get_model(cli.args.ref)

    def human() -> None:
        cli.out.print(f"[bold]{model.ref}[/] {escape(model.description)}")
        cli.out.print(f"latest version: {model.latest_version or '-'}")
        for name, number in sorted(model.aliases.items()):
            cli.out.print(f"  {name} → {number}")

    cli.emit(model.raw, human)
    return 0


def cmd_versions(cli: Cli) -> int:
    versions = list(cli.client.list_versions(cli.args.ref))

    def human() -> None:
        table = Table("version", "status", "format", "size", "aliases", "sha256", box=None)
        for v in versions:
            table.add_row(
                str(v.number),
                _status(v.status),
                v.format,
                _size(v.size),
                ", ".join(v.aliases) or "-",
                v.sha256[:12],
            )
        cli.out.print(table if versions else "No versions yet.")

    cli.emit([v.raw for v in versions], human)
    return 0


def cmd_version(cli: Cli) -> int:
    version = cli.client.get_version(cli.args.ref)
    cli.emit(version.raw, lambda: _print_version(cli, cli.args.ref, version))
    return 0


def _print_version(cli: Cli, ref: str, v: Version) -> None:
    owner, name, _ = split_ref(ref)
    cli.out.print(f"[bold]{owner}/{name}[/] version {v.number}: {_status(v.status)}")
    if v.failure_reason:
        cli.out.print(f"  reason: {escape(v.failure_reason)}")
    cli.out.print(f"  format {v.format}, {_size(v.size)}, sha256 {v.sha256}")
    if v.parameter_count is not None:
        cli.out.print(f"  {v.parameter_count:,} parameters, {v.latency_ms or 0:.1f} ms per call")
    for spec in (v.signature or {}).get("inputs", []):
        cli.out.print(f"  input  {spec.get('name')}: {spec.get('datatype')} {spec.get('shape')}")
    for spec in (v.signature or {}).get("outputs", []):
        cli.out.print(f"  output {spec.get('name')}: {spec.get('datatype')} {spec.get('shape')}")
    if v.aliases:
        cli.out.print(f"  aliases: {', '.join(v.aliases)}")


def cmd_push(cli: Cli) -> int:
    args = cli.args
    owner, name, version = split_ref(args.ref)
    if version:
        raise UsageError("Push to owner/name; the server numbers the new version.")
    example = tensors.load_input(args.example_input) if args.example_input else None
    if example is not None:
        example = tensors.to_payload(example)
    progress = _transfer_progress(cli)
    with progress:
        tasks: dict[str, Any] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                label = "checksum" if phase == "hash" else "upload"
                tasks[phase] = progress.add_task(label, total=total)
            progress.update(tasks[phase], completed=done)

        result = cli.client.push(
            f"{owner}/{name}",
            args.file,
            format=args.format,
            label=args.label,
            architecture=args.architecture or "",
            architecture_config=_json_object(args.architecture_config, "--architecture-config"),
            example_input=example,
            create=not args.no_create,
            workers=args.workers,
            progress=report,
        )
    if result.resumed_bytes:
        cli.say(
            f"Resumed upload {result.upload_id}: {_size(result.resumed_bytes)} were already "
            "on the server."
        )
    cli.say(
        f"Uploaded {_size(result.size)} in {result.seconds:.1f} s; SHA-256 verified "
        f"({result.sha256[:12]}…). {result.model} version {result.version.number} is "
        f"{result.version.status}."
    )
    if not args.no_wait and not result.version.is_terminal:
        number = result.version.number
        try:
            result.version = _wait_version(cli, result.model, number, args.timeout)
        except KeyboardInterrupt:
            # The upload is done: running the push again would upload a second copy.
            cli.err.print(
                f"\nInterrupted. The upload is complete: {result.model} version {number} is "
                f"validating on the server. `mm wait {result.model}:{number}` waits for it "
                "again; pushing again would make another version."
            )
            return EXIT_INTERRUPTED
    cli.emit(result.to_json(), lambda: _print_push(cli, result))
    return 0


def _print_push(cli: Cli, result: PushResult) -> None:
    _print_version(cli, result.model, result.version)


def _wait_version(cli: Cli, ref: str, number: int, timeout: float) -> Version:
    with cli.status(f"Validating {ref} version {number}…"):
        return cli.client.wait_for_version(ref, number, timeout=timeout)


def cmd_wait(cli: Cli) -> int:
    owner, name, version = split_ref(cli.args.ref)
    if not version:
        raise UsageError("Say which version: owner/name:NUMBER.")
    ready = _wait_version(cli, f"{owner}/{name}", version, cli.args.timeout)
    cli.emit(ready.raw, lambda: _print_version(cli, cli.args.ref, ready))
    return 0


def _numbered(ref: str, doing: str) -> tuple[str, int]:
    owner, name, version = split_ref(ref)
    if not version or not version.isdigit():
        raise UsageError(f"Say which version to {doing} by its number: owner/name:NUMBER.")
    return f"{owner}/{name}", int(version)


def cmd_yank(cli: Cli) -> int:
    model, number = _numbered(cli.args.ref, "yank")
    yanked = cli.client.yank_version(model, number, reason=cli.args.reason)
    cli.emit(yanked.raw, lambda: _print_version(cli, cli.args.ref, yanked))
    return 0


def cmd_deprecate(cli: Cli) -> int:
    model, number = _numbered(cli.args.ref, "deprecate")
    deprecated = cli.client.deprecate_version(
        model, number, sunset_at=cli.args.sunset, reason=cli.args.reason
    )
    cli.emit(deprecated.raw, lambda: _print_version(cli, cli.args.ref, deprecated))
    return 0


def cmd_download(cli: Cli) -> int:
    args = cli.args
    progress = _transfer_progress(cli)
    with progress:
        tasks: dict[str, Any] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done)

        result = cli.client.download(args.ref, args.output, overwrite=args.force, progress=report)
    cli.emit(result.to_json(), lambda: _print_download(cli, result))
    return 0


def _print_download(cli: Cli, d: Download) -> None:
    cli.out.print(
        f"Saved {d.model} version {d.version} to {escape(str(d.path))} ({_size(d.size)}, "
        f"SHA-256 verified: {d.sha256[:12]}…)."
    )


def cmd_alias_set(cli: Cli) -> int:
    args = cli.args
    alias = cli.client.set_alias(args.ref, args.alias, args.version)
    cli.emit(
        alias.raw,
        lambda: cli.out.print(
            f"{split_ref(args.ref)[0]}/{split_ref(args.ref)[1]}:{alias.name} "
            f"→ version {alias.version}"
        ),
    )
    return 0


def cmd_alias_list(cli: Cli) -> int:
    aliases = cli.client.list_aliases(cli.args.ref)
    cli.emit(
        [a.raw for a in aliases],
        lambda: cli.out.print(
            "\n".join(f"{a.name} → {a.version}" for a in aliases) or "No aliases."
        ),
    )
    return 0


def cmd_alias_history(cli: Cli) -> int:
    moves = cli.client.alias_history(cli.args.ref, cli.args.alias)

    def human() -> None:
        for m in moves:
            cli.out.print(
                f"{m['created_at']}  {m['from_version'] or '-'} → {m['to_version']}  "
                f"{escape(str(m['actor']))}"
            )

    cli.emit(moves, human)
    return 0


def cmd_publish(cli: Cli) -> int:
    args = cli.args
    card = Path(args.card).read_text() if args.card else None
    listing = cli.client.publish(
        args.ref,
        visibility=args.visibility,
        price_per_call=args.price_per_call,
        price_per_second=args.price_per_second,
        currency=args.currency,
        free_calls_per_month=args.free_calls,
        title=args.title,
        summary=args.summary,
        card_markdown=card,
        license=args.license,
        tags=args.tag,
        gated=args.gated,
    )

    def human() -> None:
        price = (
            "free"
            if listing.raw.get("is_free")
            else f"{listing.price_per_call} {listing.currency} per call"
            + (f" + {listing.price_per_second} per second" if listing.price_per_second else "")
        )
        cli.out.print(
            f"{listing.ref} is listed ({listing.visibility}, {price}): "
            f"{cli.client.base_url}{listing.raw.get('url', '')}"
        )

    cli.emit(listing.raw, human)
    return 0


def cmd_unpublish(cli: Cli) -> int:
    cli.client.unpublish(cli.args.ref)
    cli.emit({"unpublished": cli.args.ref}, lambda: cli.out.print("Unlisted (kept, private)."))
    return 0


def cmd_catalogue(cli: Cli) -> int:
    items = list(_take(cli.client.catalogue(cli.args.query, task=cli.args.task), cli.args.limit))

    def human() -> None:
        table = Table("model", "title", "price/call", "licence", box=None)
        for i in items:
            price = "free" if i.get("is_free") else f"{i['price_per_call']} {i['currency']}"
            table.add_row(i["ref"], escape(i.get("title", "")), price, i.get("license", ""))
        cli.out.print(table if items else "Nothing matches.")

    cli.emit(items, human)
    return 0


def cmd_subscribe(cli: Cli) -> int:
    sub = cli.client.subscribe(cli.args.ref)
    cli.emit(sub.raw, lambda: cli.out.print(f"Subscribed to {sub.model or cli.args.ref}."))
    return 0


def cmd_subscriptions(cli: Cli) -> int:
    subs = list(cli.client.list_subscriptions())

    def human() -> None:
        table = Table("id", "model", "kind", "download", "since", box=None)
        for sub in subs:
            table.add_row(sub.id, sub.model, sub.kind, _yes(sub.can_download), _day(sub.created_at))
        cli.out.print(table if subs else "No subscriptions. Find models: mm catalogue")

    cli.emit([sub.raw for sub in subs], human)
    return 0


def cmd_unsubscribe(cli: Cli) -> int:
    cli.client.unsubscribe(cli.args.model)
    cli.emit(
        {"unsubscribed": cli.args.model},
        lambda: cli.out.print(f"Gave up access to {cli.args.model}."),
    )
    return 0


# --- who may run a model ----------------------------------------------------------------------


def cmd_access_request(cli: Cli) -> int:
    request = cli.client.request_access(cli.args.ref, cli.args.message)

    def human() -> None:
        if request.status == "pending":
            cli.out.print(
                f"Asked for access to {request.model} ({request.id}); the publisher decides. "
                f"Once approved: mm subscribe {request.model}"
            )
        else:
            cli.out.print(f"Your request for {request.model} ({request.id}) is {request.status}.")

    cli.emit(request.raw, human)
    return 0


def cmd_access_requests(cli: Cli) -> int:
    requests = list(cli.client.list_access_requests(cli.args.ref, status=cli.args.status))

    def human() -> None:
        table = Table("id", "organisation", "status", "asked", "message", box=None)
        for r in requests:
            table.add_row(
                r.id,
                _organisation(r.organisation, r.organisation_name),
                _status(r.status),
                _day(r.created_at),
                escape(r.message) or "-",
            )
        cli.out.print(table if requests else "No access requests.")

    cli.emit([r.raw for r in requests], human)
    return 0


def _print_decision(cli: Cli, request: AccessRequest) -> None:
    cli.out.print(
        f"{request.status.capitalize()} {request.organisation}'s request for {request.model}."
    )


def cmd_access_approve(cli: Cli) -> int:
    request = cli.client.approve_access_request(cli.args.id)
    cli.emit(request.raw, lambda: _print_decision(cli, request))
    return 0


def cmd_access_decline(cli: Cli) -> int:
    request = cli.client.decline_access_request(cli.args.id)
    cli.emit(request.raw, lambda: _print_decision(cli, request))
    return 0


def cmd_access_withdraw(cli: Cli) -> int:
    request = cli.client.withdraw_access_request(cli.args.id)
    cli.emit(request.raw, lambda: _print_decision(cli, request))
    return 0


def cmd_entitlements(cli: Cli) -> int:
    entitlements = list(cli.client.list_entitlements(cli.args.ref))

    def human() -> None:
        table = Table("id", "organisation", "kind", "download", "since", box=None)
        for e in entitlements:
            table.add_row(
                e.id,
                _organisation(e.organisation, e.organisation_name),
                e.kind,
                _yes(e.can_download),
                _day(e.created_at),
            )
        cli.out.print(table if entitlements else "No other organisation may run it.")

    cli.emit([e.raw for e in entitlements], human)
    return 0


def cmd_share(cli: Cli) -> int:
    entitlement = cli.client.share(cli.args.ref, cli.args.organisation)
    cli.emit(
        entitlement.raw,
        lambda: cli.out.print(
            f"{_organisation(entitlement.organisation, entitlement.organisation_name)} may "
            f"view and run {cli.args.ref} ({entitlement.kind} {entitlement.id})."
        ),
    )
    return 0


def cmd_unshare(cli: Cli) -> int:
    cli.client.unshare(cli.args.ref, cli.args.organisation)
    cli.emit(
        {"model": cli.args.ref, "unshared": cli.args.organisation},
        lambda: cli.out.print(f"{cli.args.ref} is no longer shared with {cli.args.organisation}."),
    )
    return 0


def cmd_revoke(cli: Cli) -> int:
    cli.client.revoke_entitlement(cli.args.ref, cli.args.entitlement)
    cli.emit(
        {"model": cli.args.ref, "revoked": cli.args.entitlement},
        lambda: cli.out.print(f"Revoked {cli.args.entitlement}'s access to {cli.args.ref}."),
    )
    return 0


def _print_download_right(cli: Cli, e: Entitlement) -> None:
    may = "may" if e.can_download else "may no longer"
    cli.out.print(f"{e.organisation} {may} download the weights of {cli.args.ref}.")


def cmd_allow_download(cli: Cli) -> int:
    entitlement = cli.client.allow_download(cli.args.ref, cli.args.entitlement)
    cli.emit(entitlement.raw, lambda: _print_download_right(cli, entitlement))
    return 0


def cmd_withdraw_download(cli: Cli) -> int:
    entitlement = cli.client.withdraw_download(cli.args.ref, cli.args.entitlement)
    cli.emit(entitlement.raw, lambda: _print_download_right(cli, entitlement))
    return 0


def cmd_predict(cli: Cli) -> int:
    args = cli.args
    inputs = tensors.load_input(args.input) if args.input else tensors.parse_json(args.data)
    with cli.status("Running…") if not args.no_wait else nullcontext():
        prediction = cli.client.predict(
            args.ref,
            inputs,
            version=args.version,
            wait=not args.no_wait,
            timeout=args.timeout,
            idempotency_key=args.idempotency_key,
            raise_on_failure=False,
        )
    if args.output and prediction.status == "succeeded":
        tensors.save_output(prediction.output or {}, args.output, prediction.output_datatypes)
        cli.say(f"Saved the output to {args.output}.")
    cli.emit(prediction.raw, lambda: _print_prediction(cli, prediction))
    if prediction.status in ("failed", "canceled"):
        raise PredictionFailed(
            f"Prediction {prediction.id} {prediction.status}"
            + (f" ({prediction.error_kind})" if prediction.error_kind else "")
            + f": {prediction.error or 'no reason given'}",
            prediction,
        )
    return 0


def _print_prediction(cli: Cli, p: Prediction) -> None:
    metrics = p.metrics
    line = f"{p.id}  {p.model} v{p.version}  {_status(p.status)}"
    if metrics.get("compute_ms") is not None:
        line += f"  {metrics['compute_ms']:.1f} ms"
    if p.cost:
        line += f"  cost {p.cost['amount']} {p.cost['currency']}" + (
            " (free)" if p.cost.get("free") else ""
        )
    cli.out.print(line)
    for name, value in (p.output or {}).items():
        cli.out.print(f"{name} {_shape(value)}: {_preview(value)}")
    if p.status in ("queued", "running"):
        cli.out.print(f"Fetch the result with: mm prediction {p.id} --wait")


def cmd_prediction(cli: Cli) -> int:
    if cli.args.wait:
        with cli.status("Waiting…"):
            prediction = cli.client.wait_for_prediction(cli.args.id, timeout=cli.args.timeout)
    else:
        prediction = cli.client.get_prediction(cli.args.id)
    cli.emit(prediction.raw, lambda: _print_prediction(cli, prediction))
    return 0


def cmd_cancel(cli: Cli) -> int:
    if cli.args.id.startswith("job_"):
        job = cli.client.cancel_compression_job(cli.args.id)
        cli.emit(job.raw, lambda: _print_job(cli, job))
        return 0
    prediction = cli.client.cancel_prediction(cli.args.id)
    cli.emit(prediction.raw, lambda: _print_prediction(cli, prediction))
    return 0


def cmd_predictions(cli: Cli) -> int:
    found = list(
        _take(
            cli.client.list_predictions(model=cli.args.model, status=cli.args.status),
            cli.args.limit,
        )
    )

    def human() -> None:
        table = Table("id", "model", "version", "status", "created", box=None)
        for p in found:
            table.add_row(p.id, p.model, str(p.version), _status(p.status), p.raw["created_at"])
        cli.out.print(table if found else "No predictions.")

    cli.emit([p.raw for p in found], human)
    return 0


def cmd_keys(cli: Cli) -> int:
    keys = cli.client.list_keys()

    def human() -> None:
        table = Table("name", "prefix", "scopes", "last used", box=None)
        for k in keys:
            table.add_row(
                escape(str(k.get("name", ""))),
                str(k.get("prefix", "")),
                ", ".join(k.get("scopes", [])),
                str(k.get("last_used_at") or "-"),
            )
        cli.out.print(table)

    cli.emit(keys, human)
    return 0


# --- compression ------------------------------------------------------------------------------

# Shorthands for ``--method``: the quantization schemes by name.
METHOD_SHORTHANDS = {
    "int8": ("quantize", {"scheme": "dynamic_int8"}),
    "dynamic-int8": ("quantize", {"scheme": "dynamic_int8"}),
    "weight-only-int8": ("quantize", {"scheme": "weight_only_int8"}),
    "fp16": ("quantize", {"scheme": "fp16"}),
    "bf16": ("quantize", {"scheme": "bf16"}),
}


def _params(pairs: list[str] | None, text: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if text:
        loaded = tensors.parse_json(text, "--params")
        if not isinstance(loaded, dict):
            raise UsageError("--params is a JSON object.")
        params.update(loaded)
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--param takes key=value, not '{pair}'.")
        try:
            params[key] = json.loads(value)  # numbers, booleans, lists...
        except ValueError:
            params[key] = value  # ...or a plain string
    return params


def cmd_compress(cli: Cli) -> int:
    args = cli.args
    method, params = METHOD_SHORTHANDS.get(args.method.lower(), (args.method, {}))
    params = {**params, **_params(args.param, args.params)}
    data = tensors.load_input(args.data) if args.data else None
    if data is not None and not isinstance(data, dict):
        raise UsageError('--data is a JSON object: {"inputs": [...], "labels": [...]}.')
    job = cli.client.compress(args.ref, method, params, data=data)
    cli.say(
        f"Started {job.id}: {job.method} {_fmt_params(job.params)} of {job.model} v{job.version}."
    )
    if args.watch:
        job = _watch_job(cli, job, args.timeout)
    cli.emit(job.raw, lambda: _print_job(cli, job))
    return 0


def cmd_job(cli: Cli) -> int:
    job = cli.client.get_compression_job(cli.args.id)
    if cli.args.watch and not job.is_terminal:
        job = _watch_job(cli, job, cli.args.timeout)
    cli.emit(job.raw, lambda: _print_job(cli, job))
    if job.status == "failed":
        raise CompressionFailed(
            f"Compression job {job.id} failed: {job.error or 'no reason given'}", job
        )
    return 0  # shown; a cancelled job is what someone asked for, not a failure


def cmd_jobs(cli: Cli) -> int:
    found = list(
        _take(
            cli.client.list_compression_jobs(model=cli.args.model, status=cli.args.status),
            cli.args.limit,
        )
    )

    def human() -> None:
        table = Table("id", "model", "from", "method", "status", "result", box=None)
        for j in found:
            result = f"v{j.result['version']}" if j.result else "-"
            table.add_row(
                j.id,
                j.model,
                f"v{j.version}",
                f"{j.method} {_fmt_params(j.params)}",
                _status(j.status),
                result,
            )
        cli.out.print(table if found else "No compression jobs.")

    cli.emit([j.raw for j in found], human)
    return 0


def cmd_promote(cli: Cli) -> int:
    args = cli.args
    job = cli.client.promote_compression_job(
        args.id,
        args.alias,
        min_agreement=args.min_agreement,
        min_cosine=args.min_cosine,
        max_mean_abs_error=args.max_mean_abs_error,
    )
    cli.emit(
        job.raw,
        lambda: cli.out.print(
            f"{job.model}:{args.alias} → version {(job.result or {}).get('version')}"
        ),
    )
    return 0


def _watch_job(cli: Cli, job: CompressionJob, timeout: float) -> CompressionJob:
    progress = Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[extra]}"),
        console=cli.err,
        disable=not cli.interactive,
    )
    with progress:
        task = progress.add_task("queued", total=100, extra="")

        def show(current: CompressionJob) -> None:
            p = current.progress
            extra = []
            if p.get("eta_seconds") is not None and not current.is_terminal:
                extra.append(f"eta {p['eta_seconds']:.0f} s")
            if p.get("loss") is not None:
                extra.append(f"loss {p['loss']:.4g}")
            progress.update(
                task,
                completed=current.percent,
                description=p.get("phase") or current.status,
                extra="  ".join(extra),
            )

        job = cli.client.wait_for_compression_job(job.id, timeout=timeout, on_progress=show)
    if job.result and job.result.get("status") == "validating":
        # The new version is validated like an upload before it can run or take an alias.
        _wait_version(cli, job.model, job.result["version"], timeout)
        job = cli.client.get_compression_job(job.id)
    return job


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if not text:
        return None
    value = tensors.parse_json(text, option)
    if not isinstance(value, dict):
        raise UsageError(f"{option} is a JSON object.")
    return value


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, dict | list))


def _print_job(cli: Cli, job: CompressionJob) -> None:
    head = f"{job.id}  {job.model} v{job.version}"
    if job.result:
        head += f" → v{job.result['version']} ({job.result.get('status', '')})"
    head += f"  {job.method} {_fmt_params(job.params)}  {_status(job.status)}"
    if job.cost:
        head += f"  cost {job.cost['amount']} {job.cost['currency']}"
    cli.out.print(head)
    if job.error:
        cli.out.print(f"  reason: {escape(job.error)}")
    report = job.report or {}
    parent, child = report.get("parent") or {}, report.get("child") or {}
    if parent and child:
        cli.out.print(
            f"  size      {_size(parent['size_bytes'])} → {_size(child['size_bytes'])} "
            f"({_ratio(report.get('size_ratio'), 'smaller', 'larger', 'the same size')})"
        )
        cli.out.print(
            f"  latency   batch 1: {parent['latency_b1_ms']:.3g} → {child['latency_b1_ms']:.3g} ms"
            f", batch 32: {parent['latency_b32_ms']:.3g} → {child['latency_b32_ms']:.3g} ms"
        )
    fidelity = report.get("fidelity") or {}
    if fidelity:
        cli.out.print(
            f"  fidelity  agreement {_figure(fidelity.get('agreement'), '.2%')}, cosine "
            f"{_figure(fidelity.get('cosine'), '.5f')}, mean abs error "
            f"{_figure(fidelity.get('mean_abs_error'), '.3g')} ({fidelity.get('samples')} "
            f"{fidelity.get('inputs', '')} inputs)"
        )
    for warning in report.get("warnings") or []:
        cli.out.print(f"  [yellow]warning[/]   {escape(str(warning))}")
    if not job.is_terminal:
        cli.out.print(f"Follow it with: mm job {job.id} --watch")


def _ratio(value: Any, better: str, worse: str, same: str) -> str:
    """A report's parent-over-child ratio as a person reads it: 0.65 is 1.54x larger, not
    "0.65x smaller", and one that reads 1.00 either way is the same, not "1.00x smaller"."""
    if not isinstance(value, int | float) or value <= 0:
        return "n/a"
    times = f"{value if value >= 1 else 1 / value:.2f}"
    if times == "1.00":
        return same
    return f"{times}x {better if value >= 1 else worse}"


def _figure(value: Any, spec: str) -> str:
    """A report's figure, or "n/a" where it has none (null: not a finite number)."""
    return format(value, spec) if isinstance(value, int | float) else "n/a"


# --- usage and invoices -----------------------------------------------------------------------


def cmd_usage(cli: Cli) -> int:
    usage = cli.client.usage(cli.args.period)

    def human() -> None:
        cap = f", spend cap {usage.spend_cap}" if usage.spend_cap is not None else ""
        spent = " + ".join(f"{amount} {code}" for code, amount in usage.spend.items()) or "0"
        # The cap holds for each currency's spend alone (docs/billing.md).
        capped = usage.spend_cap is not None and any(
            amount >= usage.spend_cap for amount in usage.spend.values()
        )
        notes = [f"payment {usage.state}"] if usage.state not in ("", "ok", "active") else []
        notes += ["at the spend cap: paid calls are refused"] if capped else []
        cli.out.print(
            f"[bold]{usage.period}[/]: {usage.calls:,} calls ({usage.free_calls:,} free), "
            f"{usage.compute_seconds} s of compute, {spent} so far{cap}"
            + (f" [yellow]({'; '.join(notes)})[/]" if notes else "")
        )
        if usage.by_model:
            table = Table("model", "calls", "amount", box=None)
            for row in usage.by_model:
                table.add_row(
                    str(row.get("model")),
                    f"{row.get('calls', 0):,}",
                    f"{row['amount']} {row.get('currency', '')}".rstrip(),
                )
            cli.out.print(table)
        if usage.by_key:
            table = Table("key", "calls", "amount", box=None)
            for row in usage.by_key:
                key = f"{row['key']} ({row['prefix']})" if row.get("prefix") else row.get("key")
                table.add_row(
                    escape(str(key or "(dashboard)")),
                    f"{row.get('calls', 0):,}",
                    f"{row['amount']} {row.get('currency', '')}".rstrip(),
                )
            cli.out.print(table)

    cli.emit(usage.raw, human)
    return 0


def cmd_invoices(cli: Cli) -> int:
    invoices = list(_take(cli.client.list_invoices(), cli.args.limit))

    def human() -> None:
        table = Table("id", "period", "amount", "status", "number", box=None)
        for i in invoices:
            table.add_row(
                i.id, i.period, f"{i.amount} {i.currency}", _status(i.status), i.number or "-"
            )
        cli.out.print(table if invoices else "No invoices yet.")

    cli.emit([i.raw for i in invoices], human)
    return 0


def cmd_invoice(cli: Cli) -> int:
    invoice = cli.client.get_invoice(cli.args.id)

    def human() -> None:
        cli.out.print(
            f"[bold]{invoice.id}[/] {invoice.period}: {invoice.amount} {invoice.currency}, "
            f"{_status(invoice.status)}" + (f"  {invoice.hosted_url}" if invoice.hosted_url else "")
        )
        for line in invoice.lines:
            cli.out.print(
                f"  {escape(str(line.get('description', '')))}: {line.get('calls', 0)} calls, "
                f"{line.get('amount', '')}"
            )

    cli.emit(invoice.raw, human)
    return 0


# --- helpers --------------------------------------------------------------------------------


def _take(items: Iterable[Any], limit: int) -> Iterable[Any]:
    for i, item in enumerate(items):
        if i >= limit:
            return
        yield item


def _transfer_progress(cli: Cli) -> Progress:
    return Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=cli.err,
        disable=not cli.interactive,
        transient=False,
    )


def _status(status: str) -> str:
    colour = {
        "ready": "green",
        "succeeded": "green",
        "failed": "red",
        "yanked": "red",
        "canceled": "yellow",
        "deprecated": "yellow",
    }.get(status)
    return f"[{colour}]{status}[/]" if colour else status


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _day(timestamp: str) -> str:
    """An API timestamp's date (2026-11-03T10:00:00Z to 2026-11-03)."""
    return timestamp[:10] or "-"


def _organisation(slug: str, name: str) -> str:
    return f"{escape(name)} ({slug})" if name else slug


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _preview(value: Any, limit: int = 12) -> str:
    flat: list[Any] = []

    def walk(v: Any) -> None:
        if len(flat) > limit:
            return
        if isinstance(v, list):
            for item in v:
                walk(item)
        else:
            flat.append(v)

    walk(value)
    shown = ", ".join(f"{v:.5g}" if isinstance(v, float) else str(v) for v in flat[:limit])
    return f"[{shown}{', …' if len(flat) > limit else ''}]"


def _hint(cli: Cli, exc: ModelmarketError) -> str:
    if isinstance(exc, AuthenticationError):
        if cli._client is not None and cli._client.key_source == "none":
            return "No API key found: set MM_API_KEY or run `mm login`."
        return "Check the key (MM_API_KEY or `mm login`): it may be wrong, revoked or expired."
    if isinstance(exc, PermissionDenied):
        if exc.code != "permission_denied":
            return ""  # the API's own words say what to do (request access, subscribe)
        return "The key or your role lacks the right for this; see `mm whoami` for its scopes."
    if isinstance(exc, NotFound):
        if "model" not in exc.detail.lower():
            return ""
        return "Check the name; models you have no access to also answer 404."
    if isinstance(exc, RateLimited | ServiceUnavailable):
        return "Still refused after retrying; try again later."
    if isinstance(exc, ConnectionFailed):
        return ""
    return ""


def _report(cli: Cli, exc: ModelmarketError) -> int:
    if cli.json:
        body = exc.to_json()
        if isinstance(exc, PredictionFailed) and exc.prediction is not None:
            body["prediction"] = exc.prediction.raw
        if isinstance(exc, CompressionFailed) and exc.job is not None:
            body["job"] = exc.job.raw
        sys.stderr.write(json.dumps({"error": body}, default=str) + "\n")
        return exc.exit_code
    if isinstance(exc, ApiError):
        text = f"[red]Error:[/] {escape(exc.detail)} [dim](HTTP {exc.status})[/]"
    else:
        text = f"[red]Error:[/] {escape(exc.message)}"
    hint = _hint(cli, exc)
    cli.err.print(text + (f"\n{escape(hint)}" if hint else ""))
    return exc.exit_code


# --- the parser -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (for scripts)"
    )
    common.add_argument(
        "--base-url",
        default=argparse.SUPPRESS,
        help="the server (default: MM_BASE_URL, the saved config, http://localhost:8000)",
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress"
    )
    parser = argparse.ArgumentParser(
        prog="mm",
        parents=[common],
        description="Push, version, publish and run models on Modelmarket.",
        epilog="The key comes from MM_API_KEY or `mm login`; the server from MM_BASE_URL.",
    )
    parser.add_argument("--version", action="version", version=f"mm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[Cli], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = command("login", cmd_login, "save an API key (read from the prompt or stdin), mode 600")
    p.add_argument("--from-env", action="store_true", help="save the key in MM_API_KEY")
    command("logout", cmd_logout, "forget the saved key")
    command("whoami", cmd_whoami, "the organisation and scopes of the key")
    command("models", cmd_models, "list models you own or may use")
    p = command("create", cmd_create, "create a model in your organisation")
    p.add_argument("name")
    p.add_argument("--description", default="")
    p.add_argument("--task")
    p = command("model", cmd_model, "show a model")
    p.add_argument("ref", metavar="owner/name")
    p = command("versions", cmd_versions, "list a model's versions")
    p.add_argument("ref", metavar="owner/name")
    p = command("version", cmd_version, "show a version (default: production)")
    p.add_argument("ref", metavar="owner/name[:version]")

    p = command("push", cmd_push, "upload a model file as a new version (resumable)")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("file")
    p.add_argument("--format", choices=["pt2", "torchscript", "safetensors"])
    p.add_argument("--label", default="")
    p.add_argument("--architecture", help="built-in architecture of a safetensors state dict")
    p.add_argument("--architecture-config", metavar="JSON", help='e.g. {"hidden": [64]}')
    p.add_argument("--example-input", metavar="FILE", help=".npy/.npz/.json for validation")
    p.add_argument("--no-wait", action="store_true", help="do not wait for validation")
    p.add_argument("--no-create", action="store_true", help="fail if the model does not exist")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for validation")
    p.add_argument("--workers", type=int, default=4, help="chunks sent at once")

    p = command("wait", cmd_wait, "wait for a version's validation")
    p.add_argument("ref", metavar="owner/name:version")
    p.add_argument("--timeout", type=float, default=600)
    p = command(
        "deprecate",
        cmd_deprecate,
        "deprecate a version: its predictions carry Deprecation and Sunset headers",
    )
    p.add_argument("ref", metavar="owner/name:version")
    p.add_argument("--sunset", required=True, metavar="WHEN", help="ISO 8601, e.g. 2027-03-01")
    p.add_argument("--reason", default="", help="what users of the version are told")
    p = command("yank", cmd_yank, "withdraw a version: it answers 410 from then on (admin)")
    p.add_argument("ref", metavar="owner/name:version")
    p.add_argument("--reason", required=True, help="what users of the version are told")
    p = command("download", cmd_download, "download a version's weights, checked (needs the right)")
    p.add_argument("ref", metavar="owner/name[:version]")
    p.add_argument(
        "--output", "-o", metavar="PATH", help="a file, or a folder (default: this folder)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing file")

    alias = command("alias", lambda cli: EXIT_USAGE, "set, list or trace aliases")
    alias_sub = alias.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    p = alias_sub.add_parser("set", parents=[common], help="point an alias at a version")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("alias")
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_alias_set)
    p = alias_sub.add_parser("list", parents=[common], help="a model's aliases")
    p.add_argument("ref", metavar="owner/name")
    p.set_defaults(func=cmd_alias_list)
    p = alias_sub.add_parser("history", parents=[common], help="an alias's moves")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("alias")
    p.set_defaults(func=cmd_alias_history)

    p = command("publish", cmd_publish, "list a model in the catalogue, or update its listing")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("--visibility", choices=["public", "unlisted", "private"])
    p.add_argument("--price-per-call", metavar="DECIMAL")
    p.add_argument("--price-per-second", metavar="DECIMAL")
    p.add_argument("--currency")
    p.add_argument("--free-calls", type=int, metavar="N", help="free calls per month")
    p.add_argument("--title")
    p.add_argument("--summary")
    p.add_argument("--card", metavar="FILE", help="the model card, Markdown")
    p.add_argument("--license", help="SPDX id, 'proprietary' or 'LicenseRef-...'")
    p.add_argument("--tag", action="append", help="repeat for several")
    p.add_argument("--gated", action=argparse.BooleanOptionalAction, default=None)
    p = command("unpublish", cmd_unpublish, "take a listing out of the catalogue")
    p.add_argument("ref", metavar="owner/name")
    p = command("catalogue", cmd_catalogue, "search public listings")
    p.add_argument("query", nargs="?", default="")
    p.add_argument("--task")
    p.add_argument("--limit", type=int, default=50)
    p = command("subscribe", cmd_subscribe, "subscribe your organisation to a listed model")
    p.add_argument("ref", metavar="owner/name")
    command("subscriptions", cmd_subscriptions, "models your organisation may run, not its own")
    p = command("unsubscribe", cmd_unsubscribe, "give up access to a model (or a share)")
    p.add_argument("model", metavar="owner/name|ID")

    access = command("access", lambda cli: EXIT_USAGE, "request access, or decide requests")
    access_sub = access.add_subparsers(dest="access_command", metavar="ACTION", required=True)
    p = access_sub.add_parser("request", parents=[common], help="ask for a gated model")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("--message", "-m", default="", help="who you are and what it is for")
    p.set_defaults(func=cmd_access_request)
    p = access_sub.add_parser("requests", parents=[common], help="requests for your model (admin)")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("--status", choices=["pending", "approved", "declined"])
    p.set_defaults(func=cmd_access_requests)
    p = access_sub.add_parser("approve", parents=[common], help="approve a pending request")
    p.add_argument("id", metavar="REQUEST_ID")
    p.set_defaults(func=cmd_access_approve)
    p = access_sub.add_parser("decline", parents=[common], help="decline a pending request")
    p.add_argument("id", metavar="REQUEST_ID")
    p.set_defaults(func=cmd_access_decline)
    p = access_sub.add_parser(
        "withdraw", parents=[common], help="take back an approval (ends its subscription)"
    )
    p.add_argument("id", metavar="REQUEST_ID")
    p.set_defaults(func=cmd_access_withdraw)
    p = command("entitlements", cmd_entitlements, "organisations that may run your model (admin)")
    p.add_argument("ref", metavar="owner/name")
    p = command("share", cmd_share, "let an organisation view and run your model (admin)")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("organisation", metavar="ORGANISATION", help="its slug")
    p = command("unshare", cmd_unshare, "stop sharing your model with an organisation (admin)")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("organisation", metavar="ORGANISATION", help="its slug")
    p = command("revoke", cmd_revoke, "take an organisation's access away (admin)")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("entitlement", metavar="ORGANISATION|ID")
    p = command("allow-download", cmd_allow_download, "let an entitled organisation download")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("entitlement", metavar="ORGANISATION|ID")
    p = command("withdraw-download", cmd_withdraw_download, "withdraw the download right")
    p.add_argument("ref", metavar="owner/name")
    p.add_argument("entitlement", metavar="ORGANISATION|ID")

    p = command("predict", cmd_predict, "run a model")
    p.add_argument("ref", metavar="owner/name[:version]")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", "-i", metavar="FILE", help=".npy, .npz or .json ('-': stdin)")
    given.add_argument("--data", "-d", metavar="JSON", help="the input as JSON")
    p.add_argument("--version", dest="version", help="version number or alias")
    p.add_argument("--no-wait", "--async", action="store_true", help="queue and return")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--output", "-o", metavar="FILE", help="save outputs (.npy, .npz, .json)")
    p.add_argument("--idempotency-key", help="repeat it to get the same prediction back")
    p = command("prediction", cmd_prediction, "show a prediction")
    p.add_argument("id")
    p.add_argument("--wait", action="store_true", help="until it finishes")
    p.add_argument("--timeout", type=float, default=300)
    p = command("cancel", cmd_cancel, "cancel a queued or running prediction or job")
    p.add_argument("id")
    p = command("predictions", cmd_predictions, "recent predictions")
    p.add_argument("--model", metavar="owner/name")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p = command("compress", cmd_compress, "quantize, prune or distill a version")
    p.add_argument("ref", metavar="owner/name[:version]")
    p.add_argument(
        "--method",
        "-m",
        required=True,
        help="quantize, prune, distill, or a scheme: int8, weight-only-int8, fp16, bf16",
    )
    p.add_argument("--param", "-p", action="append", metavar="KEY=VALUE", help="repeatable")
    p.add_argument("--params", metavar="JSON", help="all parameters as a JSON object")
    p.add_argument("--data", metavar="FILE", help='.json: {"inputs": [...], "labels": [...]}')
    p.add_argument("--watch", "-w", action="store_true", help="follow it to the end")
    p.add_argument("--timeout", type=float, default=3600)
    p = command("job", cmd_job, "show a compression job and its report")
    p.add_argument("id")
    p.add_argument("--watch", "-w", action="store_true")
    p.add_argument("--timeout", type=float, default=3600)
    p = command("jobs", cmd_jobs, "recent compression jobs")
    p.add_argument("--model", metavar="owner/name")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p = command("promote", cmd_promote, "point an alias at a job's version if it is faithful")
    p.add_argument("id", metavar="JOB_ID")
    p.add_argument("alias")
    p.add_argument("--min-agreement", type=float, metavar="0..1")
    p.add_argument("--min-cosine", type=float)
    p.add_argument("--max-mean-abs-error", type=float)
    p = command("usage", cmd_usage, "this month's usage and spend (billing:read)")
    p.add_argument("--period", metavar="YYYY-MM")
    p = command("invoices", cmd_invoices, "your organisation's invoices")
    p.add_argument("--limit", type=int, default=24)
    p = command("invoice", cmd_invoice, "an invoice and its lines")
    p.add_argument("id")
    command("keys", cmd_keys, "your organisation's API keys (admin)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mm`` with ``argv``; returns the exit code (never raises, but for SystemExit from
    ``--help``/``--version`` and argument errors, which exit 0 and 2 as argparse does)."""
    args = _parser().parse_args(argv)
    cli = Cli(args)
    try:
        return args.func(cli)
    except ModelmarketError as exc:
        return _report(cli, exc)
    except KeyboardInterrupt:
        cli.err.print(
            "\nInterrupted. A push resumes where it stopped when you run the same command."
        )
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a local file: unreadable, not writable, ...
        return _report(cli, UsageError(f"{exc.filename or ''}: {exc.strerror or exc}".strip()))
    except Exception as exc:  # a bug here: say so in one line, unless asked for the trace
        if os.environ.get("MM_DEBUG"):
            raise
        cli.err.print(
            f"[red]Unexpected error:[/] {escape(type(exc).__name__)}: {escape(str(exc))}\n"
            "Run with MM_DEBUG=1 for the traceback, and report it."
        )
        return 1
    finally:
        cli.close()
