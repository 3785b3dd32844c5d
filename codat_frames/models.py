"""Request and response classes and errors, named as in Codat's own Python SDK.

Plain dataclasses built from the API's JSON: unknown fields are ignored, dates stay the API's
strings (the frames layer turns them into timestamps).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import httpx

__all__ = [
    "Address",
    "CodatError",
    "Companies",
    "Company",
    "Connection",
    "Connections",
    "Customer",
    "Customers",
    "ErrorMessage",
    "ErrorMessageData",
    "GetCustomerRequest",
    "Link",
    "Links",
    "ListCompaniesRequest",
    "ListConnectionsRequest",
    "ListCustomersRequest",
    "SDKError",
    "Validation",
    "ValidationItem",
]


# --------------------------------------------------------------------------- errors


class CodatError(Exception):
    """Base of every error the API gives back, so one ``except CodatError`` catches them all."""

    context: str | None = None

    def add_context(self, text: str) -> None:
        """Say where the error happened (e.g. which page); shown first in the message."""
        self.context = text if self.context is None else f"{text}: {self.context}"

    def _with_context(self, text: str) -> str:
        return f"{self.context}: {text}" if self.context else text


@dataclass(frozen=True)
class ValidationItem:
    item_id: str | None = None
    message: str | None = None
    validator_name: str | None = None

    @classmethod
    def from_json(cls, d: Any) -> ValidationItem:
        d = d if isinstance(d, dict) else {}
        return cls(d.get("itemId"), d.get("message"), d.get("validatorName"))


@dataclass(frozen=True)
class Validation:
    errors: list[ValidationItem] = field(default_factory=list)
    warnings: list[ValidationItem] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: Any) -> Validation | None:
        if not isinstance(d, dict):
            return None
        return cls(
            [ValidationItem.from_json(x) for x in d.get("errors") or []],
            [ValidationItem.from_json(x) for x in d.get("warnings") or []],
        )


@dataclass(frozen=True)
class ErrorMessageData:
    """The JSON body of a Codat error (``models.ErrorMessage.data``)."""

    status_code: int | None = None
    service: str | None = None
    error: str | None = None
    correlation_id: str | None = None
    can_be_retried: str | None = None
    detailed_error_code: int | None = None
    validation: Validation | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ErrorMessageData:
        return cls(
            status_code=d.get("statusCode"),
            service=d.get("service"),
            error=d.get("error"),
            correlation_id=d.get("correlationId"),
            can_be_retried=d.get("canBeRetried"),
            detailed_error_code=d.get("detailedErrorCode"),
            validation=Validation.from_json(d.get("validation")),
        )


class ErrorMessage(CodatError):
    """A documented Codat error: JSON body, status 400/401/402/403/404/409/429/500/503."""

    data: ErrorMessageData

    def __init__(self, data: ErrorMessageData, raw_response: httpx.Response | None = None):
        self.data = data
        self.raw_response = raw_response
        # The HTTP status, not the body's statusCode: Codat's own examples send statusCode 429
        # with a 402 and 500 with a 503.
        self.status_code = (
            raw_response.status_code if raw_response is not None else data.status_code
        )
        super().__init__(self._text())

    def _text(self) -> str:
        d = self.data
        parts = [f"HTTP {self.status_code}: {d.error or 'no error text'}"]
        if d.validation and d.validation.errors:
            parts.append("; ".join(v.message or "" for v in d.validation.errors if v.message))
        if d.correlation_id:
            parts.append(f"correlation id {d.correlation_id}")
        return " - ".join(p for p in parts if p)

    def __str__(self) -> str:
        return self._with_context(self._text())


class SDKError(CodatError):
    """Any other 4xx/5xx, or an error body that is not Codat's documented JSON (e.g. HTML)."""

    def __init__(
        self,
        message: str,
        status_code: int = -1,
        body: str = "",
        raw_response: httpx.Response | None = None,
    ):
        self.message = message
        self.status_code = status_code
        self.body = body
        self.raw_response = raw_response
        super().__init__(message)

    def __str__(self) -> str:
        snippet = " ".join(self.body.split())[:200]
        text = f"{self.message}: Status {self.status_code}"
        return self._with_context(f"{text}\n{snippet}" if snippet else text)


# --------------------------------------------------------------------------- requests


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")


_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def _check_uuid(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a UUID string, got {type(value).__name__}")
    # uuid.UUID() also takes braces, "urn:uuid:" and hyphens anywhere; the API wants 8-4-4-4-12.
    if not _UUID_RE.fullmatch(value):
        raise ValueError(f"{name} must be a UUID in 8-4-4-4-12 form, got {value!r}")


def _check_query(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if len(value) >= 2048:
        raise ValueError(f"{name} must be under 2048 characters, got {len(value)}")


def _check_str(name: str, value: Any, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value):
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


class _Request:
    """Mixin: build from a dict (the seed's style) or pass an instance through."""

    @classmethod
    def coerce(cls, request: Any):
        if isinstance(request, cls):
            obj = request
        elif isinstance(request, dict):
            names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
            unknown = sorted(set(request) - names)
            if unknown:
                raise ValueError(
                    f"request has unknown field(s) {unknown}; expected some of {sorted(names)}"
                )
            try:
                obj = cls(**request)
            except TypeError as e:
                raise ValueError(f"request is missing a required field: {e}") from None
        else:
            raise ValueError(
                f"request must be a dict or {cls.__name__}, got {type(request).__name__}"
            )
        obj.validate()
        return obj


@dataclass
class GetCustomerRequest(_Request):
    company_id: str
    connection_id: str
    customer_id: str | int

    def validate(self) -> None:
        _check_uuid("company_id", self.company_id)
        _check_uuid("connection_id", self.connection_id)
        if isinstance(self.customer_id, int) and not isinstance(self.customer_id, bool):
            self.customer_id = str(self.customer_id)  # ids the API sends as JSON numbers
        _check_str("customer_id", self.customer_id, required=True)


@dataclass
class ListCustomersRequest(_Request):
    company_id: str
    connection_id: str
    order_by: str | None = None
    page: int | None = 1
    page_size: int | None = 100
    query: str | None = None

    def validate(self) -> None:
        _check_uuid("company_id", self.company_id)
        _check_uuid("connection_id", self.connection_id)
        _validate_paging(self)


@dataclass
class ListCompaniesRequest(_Request):
    order_by: str | None = None
    page: int | None = 1
    page_size: int | None = 100
    query: str | None = None
    tags: str | None = None

    def validate(self) -> None:
        _validate_paging(self)
        _check_str("tags", self.tags, required=False)


@dataclass
class ListConnectionsRequest(_Request):
    company_id: str
    order_by: str | None = None
    page: int | None = 1
    page_size: int | None = 100
    query: str | None = None

    def validate(self) -> None:
        _check_uuid("company_id", self.company_id)
        _validate_paging(self)


def _validate_paging(r: Any) -> None:
    if r.page is not None:
        _check_int("page", r.page, 1)
    if r.page_size is not None:
        _check_int("page_size", r.page_size, 1, 5000)
    _check_query("query", r.query)
    _check_str("order_by", r.order_by, required=False)


def paging_params(r: Any) -> dict[str, Any]:
    """Query-string parameters of a list request, with the API's camelCase names."""
    params = {"page": r.page, "pageSize": r.page_size, "query": r.query, "orderBy": r.order_by}
    if getattr(r, "tags", None) is not None:
        params["tags"] = r.tags
    return {k: v for k, v in params.items() if v is not None}


# --------------------------------------------------------------------------- responses


def _s(d: dict[str, Any], key: str) -> Any:
    """A field as sent, with JSON numbers that stand for ids kept as their text."""
    v = d.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return v


@dataclass
class Address:
    type: str | None = None
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    region: str | None = None
    country: str | None = None
    postal_code: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Address:
        return cls(
            d.get("type"), d.get("line1"), d.get("line2"), d.get("city"),
            d.get("region"), d.get("country"), d.get("postalCode"),
        )  # fmt: skip


@dataclass
class Customer:
    id: str
    customer_name: str | None = None
    email_address: str | None = None
    phone: str | None = None
    default_currency: str | None = None
    addresses: list[Address] | None = None
    note: str | None = None
    created_date: str | None = None
    modified_date: str | None = None
    source_modified_date: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Customer:
        addrs = d.get("addresses")
        return cls(
            id=_s(d, "id"),
            customer_name=d.get("customerName"),
            email_address=d.get("emailAddress"),
            phone=d.get("phone"),
            default_currency=d.get("defaultCurrency"),
            addresses=(
                [Address.from_json(a) for a in addrs if isinstance(a, dict)]
                if isinstance(addrs, list)
                else None
            ),
            note=d.get("note"),
            created_date=d.get("createdDate"),
            modified_date=d.get("modifiedDate"),
            source_modified_date=d.get("sourceModifiedDate"),
        )


@dataclass
class Link:
    href: str | None = None


@dataclass
class Links:
    self: Link | None = None
    current: Link | None = None
    next: Link | None = None
    previous: Link | None = None

    @classmethod
    def from_json(cls, d: Any) -> Links:
        d = d if isinstance(d, dict) else {}

        def link(k: str) -> Link | None:
            v = d.get(k)
            return Link(v.get("href")) if isinstance(v, dict) else None

        return cls(link("self"), link("current"), link("next"), link("previous"))


@dataclass
class Connection:
    id: str
    platform_name: str | None = None
    source_type: str | None = None
    status: str | None = None
    integration_id: str | None = None
    integration_key: str | None = None
    source_id: str | None = None
    link_url: str | None = None
    created: str | None = None
    last_sync: str | None = None
    data_connection_errors: list[dict[str, Any]] | None = None

    @property
    def can_serve_data(self) -> bool:
        """True when Codat can answer data requests for it (status Linked)."""
        return self.status == "Linked"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Connection:
        return cls(
            id=d.get("id"),
            platform_name=d.get("platformName"),
            source_type=d.get("sourceType"),
            status=d.get("status"),
            integration_id=d.get("integrationId"),
            integration_key=d.get("integrationKey"),
            source_id=d.get("sourceId"),
            link_url=d.get("linkUrl"),
            created=d.get("created"),
            last_sync=d.get("lastSync"),
            data_connection_errors=d.get("dataConnectionErrors"),
        )


@dataclass
class Company:
    id: str
    name: str | None = None
    description: str | None = None
    redirect: str | None = None
    created: str | None = None
    last_sync: str | None = None
    products: list[str] | None = None
    tags: dict[str, str] | None = None
    data_connections: list[Connection] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Company:
        return cls(
            id=d.get("id"),
            name=d.get("name"),
            description=d.get("description"),
            redirect=d.get("redirect"),
            created=d.get("created"),
            last_sync=d.get("lastSync"),
            products=d.get("products"),
            tags=d.get("tags"),
            data_connections=[
                Connection.from_json(c)
                for c in d.get("dataConnections") or []
                if isinstance(c, dict)
            ],
        )


@dataclass
class _Page:
    page_number: int = 0
    page_size: int = 0
    total_results: int = 0
    links: Links | None = None

    @staticmethod
    def _paging(d: dict[str, Any]) -> dict[str, Any]:
        return {
            "page_number": d.get("pageNumber", 0),
            "page_size": d.get("pageSize", 0),
            "total_results": d.get("totalResults", 0),
            "links": Links.from_json(d.get("_links")),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        """A page of ``cls._item`` records; non-object entries in ``results`` are dropped."""
        results = d.get("results")
        if results is None:
            results = []
        if not isinstance(results, list):
            raise SDKError(
                f"API returned a page whose results is a {type(results).__name__}, not a list", 200
            )
        items = [cls._item.from_json(r) for r in results if isinstance(r, dict)]
        return cls(results=items, **cls._paging(d))


@dataclass
class Customers(_Page):
    results: list[Customer] = field(default_factory=list)
    _item: ClassVar[type] = Customer


@dataclass
class Companies(_Page):
    results: list[Company] = field(default_factory=list)
    _item: ClassVar[type] = Company


@dataclass
class Connections(_Page):
    results: list[Connection] = field(default_factory=list)
    _item: ClassVar[type] = Connection


def parse_json_object(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object, or an SDKError saying what came instead."""
    try:
        data = json.loads(response.content)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python parses
        raise SDKError(
            "API returned a body that is not JSON",
            response.status_code,
            response.text,
            response,
        ) from None
    if not isinstance(data, dict):
        raise SDKError(
            "API returned JSON that is not an object", response.status_code, response.text, response
        )
    return data
