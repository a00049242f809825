"""What the API returns, as typed objects. Each keeps the full JSON it was made from in ``raw``
(fields added to the API later are there before this package names them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any


def _parse_ranges(ranges: list[str]) -> list[tuple[int, int]]:
    """``["bytes 0-99", ...]`` to inclusive ``(first, last)`` pairs."""
    out = []
    for text in ranges:
        first, _, last = text.removeprefix("bytes ").partition("-")
        out.append((int(first), int(last)))
    return out


@dataclass
class Organisation:
    slug: str
    name: str
    scopes: list[str]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Organisation:
        tenant = data.get("organisation") or {}
        return cls(
            slug=tenant.get("slug", ""),
            name=tenant.get("name", ""),
            scopes=list(data.get("scopes", [])),
            raw=data,
        )


@dataclass
class Model:
    ref: str
    owner: str
    name: str
    description: str
    task: str
    aliases: dict[str, int]
    latest_version: int | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        return cls(
            ref=data["ref"],
            owner=data["owner"],
            name=data["name"],
            description=data.get("description", ""),
            task=data.get("task", ""),
            aliases=dict(data.get("aliases") or {}),
            latest_version=data.get("latest_version"),
            raw=data,
        )


@dataclass
class Version:
    number: int
    status: str
    format: str
    sha256: str
    size: int
    failure_reason: str
    signature: dict[str, Any] | None
    parameter_count: int | None
    latency_ms: float | None
    aliases: list[str]
    raw: dict[str, Any] = field(repr=False)

    TERMINAL = frozenset({"ready", "failed", "deprecated", "yanked"})

    @property
    def is_terminal(self) -> bool:
        """Validation is over (``ready`` or ``failed``, or later states)."""
        return self.status in self.TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Version:
        return cls(
            number=data["number"],
            status=data["status"],
            format=data.get("format", ""),
            sha256=data.get("sha256", ""),
            size=data.get("size") or 0,
            failure_reason=data.get("failure_reason") or "",
            signature=data.get("signature"),
            parameter_count=data.get("parameter_count"),
            latency_ms=data.get("latency_ms"),
            aliases=list(data.get("aliases") or []),
            raw=data,
        )


@dataclass
class Upload:
    id: str
    model: str
    size: int
    sha256: str
    chunk_size: int
    status: str
    received_bytes: int
    missing: list[tuple[int, int]]
    version: int | None
    upload_url: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Upload:
        return cls(
            id=data["id"],
            model=data.get("model", ""),
            size=data["size"],
            sha256=data["sha256"],
            chunk_size=data["chunk_size"],
            status=data["status"],
            received_bytes=data.get("received_bytes", 0),
            missing=_parse_ranges(data.get("missing_ranges", [])),
            version=data.get("version"),
            upload_url=data["upload_url"],
            raw=data,
        )


@dataclass
class PushResult:
    """What ``Client.push`` did: the version it made, and how much it had to send."""

    version: Version
    model: str
    upload_id: str
    sha256: str
    size: int
    sent_bytes: int
    resumed_bytes: int  # already on the server from an earlier, interrupted run
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version.raw,
            "upload": {
                "id": self.upload_id,
                "sha256": self.sha256,
                "size": self.size,
                "sent_bytes": self.sent_bytes,
                "resumed_bytes": self.resumed_bytes,
                "seconds": round(self.seconds, 3),
            },
        }


@dataclass
class Alias:
    name: str
    version: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alias:
        return cls(name=data["name"], version=data["version"], raw=data)


@dataclass
class Listing:
    ref: str
    title: str
    visibility: str
    price_per_call: Decimal
    price_per_second: Decimal
    currency: str
    free_calls_per_month: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Listing:
        return cls(
            ref=data["ref"],
            title=data.get("title", ""),
            visibility=data.get("visibility", ""),
            price_per_call=Decimal(str(data.get("price_per_call") or "0")),
            price_per_second=Decimal(str(data.get("price_per_second") or "0")),
            currency=data.get("currency", ""),
            free_calls_per_month=data.get("free_calls_per_month") or 0,
            raw=data,
        )


@dataclass
class AccessRequest:
    """An organisation's request for access to a gated listing: ``pending``, then
    ``approved`` or ``declined`` by the publisher."""

    id: str
    model: str
    organisation: str  # the requester's slug
    organisation_name: str
    message: str
    status: str
    created_at: str
    decided_at: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccessRequest:
        return cls(
            id=data["id"],
            model=data.get("model", ""),
            organisation=data.get("tenant", ""),
            organisation_name=data.get("tenant_name", ""),
            message=data.get("message") or "",
            status=data["status"],
            created_at=data.get("created_at", ""),
            decided_at=data.get("decided_at"),
            raw=data,
        )


@dataclass
class Entitlement:
    """An organisation's live right to view and run a model, as its publisher sees it: a
    ``subscription`` or a ``share``; ``can_download`` if the publisher let it download the
    weights."""

    id: str
    organisation: str  # the entitled organisation's slug
    organisation_name: str
    kind: str
    can_download: bool
    created_at: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entitlement:
        return cls(
            id=data["id"],
            organisation=data.get("tenant", ""),
            organisation_name=data.get("tenant_name", ""),
            kind=data.get("kind", ""),
            can_download=bool(data.get("can_download")),
            created_at=data.get("created_at", ""),
            raw=data,
        )


@dataclass
class Subscription:
    """An entitlement as the consumer sees it: a model your organisation subscribed to or
    was shared."""

    id: str
    model: str
    title: str
    kind: str
    can_download: bool
    created_at: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Subscription:
        return cls(
            id=data["id"],
            model=data.get("model", ""),
            title=data.get("title") or "",
            kind=data.get("kind", ""),
            can_download=bool(data.get("can_download")),
            created_at=data.get("created_at", ""),
            raw=data,
        )


@dataclass
class Download:
    """What ``Client.download`` wrote: a version's weights, checked against its SHA-256."""

    path: Path
    model: str
    version: int
    sha256: str
    size: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Prediction:
    id: str
    model: str
    version: int
    status: str
    output: dict[str, Any] | None
    output_datatypes: dict[str, str] | None
    error: str
    error_kind: str
    metrics: dict[str, Any]
    cost: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    TERMINAL = frozenset({"succeeded", "failed", "canceled"})

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    def arrays(self) -> dict[str, Any]:
        """The outputs as numpy arrays of the model's datatypes (needs the ``numpy`` extra);
        ``null`` values, which is how JSON carries NaN and infinities, are NaN."""
        from modelmarket.tensors import to_array

        types = self.output_datatypes or {}
        return {
            name: to_array(value, types.get(name)) for name, value in (self.output or {}).items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prediction:
        return cls(
            id=data["id"],
            model=data.get("model", ""),
            version=data.get("version") or 0,
            status=data["status"],
            output=data.get("output"),
            output_datatypes=data.get("output_datatypes"),
            error=data.get("error") or "",
            error_kind=data.get("error_kind") or "",
            metrics=dict(data.get("metrics") or {}),
            cost=data.get("cost"),
            raw=data,
        )


@dataclass
class CompressionJob:
    """A quantization, pruning or distillation job; ``report`` once it succeeded (sizes,
    latencies, fidelity against the parent), ``result`` names the new version."""

    id: str
    model: str
    version: int
    method: str
    params: dict[str, Any]
    status: str
    progress: dict[str, Any]
    result: dict[str, Any] | None
    report: dict[str, Any] | None
    error: str
    cost: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def percent(self) -> float:
        return float(self.progress.get("percent") or 0.0)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompressionJob:
        return cls(
            id=data["id"],
            model=data.get("model", ""),
            version=data.get("version") or 0,
            method=data.get("method", ""),
            params=dict(data.get("params") or {}),
            status=data["status"],
            progress=dict(data.get("progress") or {}),
            result=data.get("result"),
            report=data.get("report"),
            error=data.get("error") or "",
            cost=data.get("cost"),
            raw=data,
        )


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal("0")


@dataclass
class Usage:
    """A billing period's usage, as the consumer pays for it (amounts are ``Decimal``)."""

    period: str
    calls: int
    free_calls: int
    compute_seconds: Decimal
    # The spend per currency (amounts in different currencies do not add up); ``amount`` and
    # ``currency`` are the spend when it is all in one currency, else None.
    spend: dict[str, Decimal]
    amount: Decimal | None
    currency: str | None
    spend_cap: Decimal | None
    state: str
    by_model: list[dict[str, Any]]
    by_key: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        cap = data.get("spend_cap")
        return cls(
            period=data.get("period", ""),
            calls=data.get("calls") or 0,
            free_calls=data.get("free_calls") or 0,
            compute_seconds=_decimal(data.get("compute_seconds")),
            spend={row["currency"]: _decimal(row["amount"]) for row in data.get("spend") or []},
            amount=None if data.get("amount") is None else _decimal(data["amount"]),
            currency=data.get("currency"),
            spend_cap=None if cap is None else _decimal(cap),
            state=data.get("state", ""),
            by_model=list(data.get("by_model") or []),
            by_key=list(data.get("by_key") or []),
            raw=data,
        )


@dataclass
class Invoice:
    id: str
    period: str
    currency: str
    amount_cents: int  # in the currency's minor unit: cents, or whole yen
    status: str
    number: str
    hosted_url: str
    lines: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @property
    def amount(self) -> Decimal:
        if self.raw.get("amount") is not None:
            return _decimal(self.raw["amount"])
        return Decimal(self.amount_cents) / 100  # a server from before zero-decimal currencies

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Invoice:
        return cls(
            id=data["id"],
            period=data.get("period", ""),
            currency=data.get("currency", ""),
            amount_cents=data.get("amount_cents") or 0,
            status=data.get("status", ""),
            number=data.get("number") or "",
            hosted_url=data.get("hosted_url") or "",
            lines=list(data.get("lines") or []),
            raw=data,
        )
