"""Codat commerce customers: raw JSON pages -> Arrow -> typed pandas frames.

This module holds the one definition of the frame schema (``CUSTOMER_SCHEMA``,
``ADDRESS_SCHEMA`` and the pandas dtypes behind them) and the conversion pipeline::

    HTTP page bytes --parse_customers_page--> ParsedPage.table   (raw Arrow, one row per record)
    records         --records_to_table----->  raw Arrow table    (same schema)
    raw tables      --build_frames---------> CustomerFrames      (typed, deduplicated, exploded)

Decisions (documented here once, tested in ``tests/test_frames.py``):

* Strings are kept exactly as sent: no trimming, no case folding (``defaultCurrency`` "gbp"
  stays "gbp", "XXX" stays "XXX"). null/missing -> NA, "" stays "".
* Wrong JSON types in string fields (only reachable through the Python fallback): an ``id``
  sent as a number keeps its exact JSON text (``7110701885`` -> "7110701885"), silently.
  Numbers and booleans in other string fields keep their JSON text (``true`` -> "true",
  ``1.50`` -> "1.50") and objects/arrays become NA; either case emits one
  :class:`DataQualityWarning` per field with the count. Date fields get no warning at that
  stage: their text is then unparseable and the date rule below warns instead.
* Dates: ``Z``/``z`` or an offset (``+05:00``, ``+0500``, ``+05``) -> converted to UTC.
  Unqualified local times and date-only values (midnight) are read in ``local_tz`` and
  converted to UTC. For local times that fall in a DST transition: an ambiguous wall time
  (clocks going back) takes the *earliest* instant (the DST reading); a non-existent one
  (clocks going forward) is *shifted forward* to the first instant after the gap
  (02:30 -> 03:00). Fractions of any length are truncated (floored) to microseconds.
  ``0001-01-01T00:00:00`` (any offset), null, missing, "" and whitespace -> NaT silently;
  anything else unparseable (including impossible dates such as 2022-02-30) -> NaT plus one
  :class:`DataQualityWarning` per column naming the column and the count.
* Address ``type``: matched to Billing/Delivery/Order/Inventory/Unknown ignoring case and
  surrounding whitespace; anything else, null or missing -> Unknown. A null entry inside an
  ``addresses`` list yields no row (one warning); ``address_index`` keeps the entry's position
  in the original list. ``addresses`` that is not a list -> no rows (one warning).
* Dedupe: one row per id, keeping the later ``modified_date`` (NaT is the earliest; on a tie
  the record seen last wins); its addresses follow it. Records with a null id are all kept.
* A page body that is not JSON, not an object or has no ``results`` list raises
  :class:`PageFormatError` (a ``ValueError``), which the HTTP layer maps to ``SDKError``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

__all__ = [
    "ADDRESS_COLUMNS",
    "ADDRESS_SCHEMA",
    "ADDRESS_TYPES",
    "ADDRESS_TYPE_DTYPE",
    "CUSTOMER_COLUMNS",
    "CUSTOMER_SCHEMA",
    "DATE_COLUMNS",
    "RAW_SCHEMA",
    "STRING_DTYPE",
    "CustomerFrames",
    "DataQualityWarning",
    "PageFormatError",
    "ParsedPage",
    "build_frames",
    "empty_addresses",
    "empty_customers",
    "empty_frames",
    "normalize_customers",
    "parse_customers_page",
    "records_to_table",
    "to_pandas_addresses",
    "to_pandas_customers",
]


class DataQualityWarning(UserWarning):
    """Values in the API data were unusable and were replaced (NaT, NA, Unknown)."""


class PageFormatError(ValueError):
    """A page body is not valid JSON or not a Codat page object with a ``results`` list."""


# --------------------------------------------------------------------------------------
# Schema: the one definition
# --------------------------------------------------------------------------------------

STRING_DTYPE = pd.StringDtype("pyarrow")
DATETIME_DTYPE = pd.DatetimeTZDtype(unit="us", tz="UTC")
ADDRESS_TYPES: tuple[str, ...] = ("Billing", "Delivery", "Order", "Inventory", "Unknown")
ADDRESS_TYPE_DTYPE = pd.CategoricalDtype(list(ADDRESS_TYPES), ordered=False)

_STR = pa.large_string()
_TS = pa.timestamp("us", tz="UTC")
_TYPE_ARROW = pa.dictionary(pa.int8(), _STR)

#: customers column -> API field (None: filled from arguments)
_CUSTOMER_FIELDS: dict[str, str | None] = {
    "company_id": None,
    "connection_id": None,
    "id": "id",
    "customer_name": "customerName",
    "email_address": "emailAddress",
    "phone": "phone",
    "default_currency": "defaultCurrency",
    "note": "note",
    "created_date": "createdDate",
    "modified_date": "modifiedDate",
    "source_modified_date": "sourceModifiedDate",
}
DATE_COLUMNS: tuple[str, ...] = ("created_date", "modified_date", "source_modified_date")
CUSTOMER_COLUMNS: tuple[str, ...] = tuple(_CUSTOMER_FIELDS)

#: addresses column -> API field of an address
_ADDRESS_FIELDS: dict[str, str] = {
    "type": "type",
    "line1": "line1",
    "line2": "line2",
    "city": "city",
    "region": "region",
    "country": "country",
    "postal_code": "postalCode",
}
ADDRESS_COLUMNS: tuple[str, ...] = (
    "company_id",
    "connection_id",
    "customer_id",
    "address_index",
    *_ADDRESS_FIELDS,
)

CUSTOMER_SCHEMA = pa.schema(
    [pa.field(c, _TS if c in DATE_COLUMNS else _STR) for c in CUSTOMER_COLUMNS]
)
ADDRESS_SCHEMA = pa.schema(
    [
        pa.field(
            c,
            pa.int32() if c == "address_index" else _TYPE_ARROW if c == "type" else _STR,
        )
        for c in ADDRESS_COLUMNS
    ]
)

CUSTOMER_DTYPES: dict[str, Any] = {
    c: DATETIME_DTYPE if c in DATE_COLUMNS else STRING_DTYPE for c in CUSTOMER_COLUMNS
}
ADDRESS_DTYPES: dict[str, Any] = {
    c: np.dtype("int32") if c == "address_index" else ADDRESS_TYPE_DTYPE if c == "type"
    else STRING_DTYPE
    for c in ADDRESS_COLUMNS
}

# Raw (API-shaped, camelCase) record schema shared by the fast path, the fallback and
# records_to_table.
_RAW_STRING_FIELDS: tuple[str, ...] = tuple(f for f in _CUSTOMER_FIELDS.values() if f)
_RAW_DATE_FIELDS = frozenset(_CUSTOMER_FIELDS[c] for c in DATE_COLUMNS)
_RAW_ADDRESS_FIELDS: tuple[str, ...] = tuple(_ADDRESS_FIELDS.values())
_RAW_ADDRESS_TYPE = pa.struct([pa.field(f, pa.string()) for f in _RAW_ADDRESS_FIELDS])
_RAW_ADDRESSES_TYPE = pa.list_(_RAW_ADDRESS_TYPE)
RAW_SCHEMA = pa.schema(
    [pa.field(f, pa.string()) for f in _RAW_STRING_FIELDS]
    + [pa.field("addresses", _RAW_ADDRESSES_TYPE)]
)
_RAW_RECORD_TYPE = pa.struct(list(RAW_SCHEMA))
_PAGE_SCHEMA = pa.schema(
    [
        pa.field("results", pa.list_(_RAW_RECORD_TYPE)),
        pa.field("pageNumber", pa.int64()),
        pa.field("pageSize", pa.int64()),
        pa.field("totalResults", pa.int64()),
    ]
)

_SNAKE_TO_CAMEL = {
    **{k: v for k, v in _CUSTOMER_FIELDS.items() if v},
    "addresses": "addresses",
    **_ADDRESS_FIELDS,
}
_CAMEL_TO_SNAKE = {v: k for k, v in _SNAKE_TO_CAMEL.items()}


def _types_mapper(t: pa.DataType) -> Any:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return STRING_DTYPE
    return None


def _warn(message: str) -> None:
    warnings.warn(message, DataQualityWarning, stacklevel=3)


# --------------------------------------------------------------------------------------
# Arrow <-> pandas with exact dtypes (reused by parquet.py)
# --------------------------------------------------------------------------------------


def _string_col(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), _STR)
    if not pa.types.is_large_string(col.type):
        col = col.cast(_STR)
    return col


def _timestamp_col(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), _TS)
    if pa.types.is_timestamp(col.type):
        if col.type.tz is None:  # naive timestamps are taken as UTC
            col = pc.assume_timezone(col, "UTC") if len(col) else col.cast(
                pa.timestamp(col.type.unit, "UTC")
            )
        return col.cast(_TS, safe=False)
    return col.cast(_TS)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select/cast ``table`` to ``schema`` (missing columns -> nulls; extras kept at the end)."""
    n = table.num_rows
    arrays, names = [], []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if f.name == "type" and schema is ADDRESS_SCHEMA:
                col = _string_col(col)
                if isinstance(col, pa.ChunkedArray):
                    col = col.combine_chunks()
                col = _address_type(col)
            elif f.type == _TS:
                col = _timestamp_col(col)
            elif f.type == _STR:
                col = _string_col(col)
            else:
                col = col.cast(f.type)
        elif f.name == "type" and schema is ADDRESS_SCHEMA:
            col = _address_type(pa.nulls(n, _STR))
        else:
            col = pa.nulls(n, f.type)
        arrays.append(col)
        names.append(f.name)
    for name in table.column_names:
        if name not in names:
            arrays.append(table.column(name))
            names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _to_pandas(table: pa.Table, schema: pa.Schema) -> pd.DataFrame:
    table = _conform(table, schema)
    df = table.to_pandas(types_mapper=_types_mapper, self_destruct=False)
    if "type" in df.columns and schema is ADDRESS_SCHEMA and df["type"].dtype != ADDRESS_TYPE_DTYPE:
        df["type"] = df["type"].astype(ADDRESS_TYPE_DTYPE)
    dtypes = df.dtypes
    for name, dtype in (ADDRESS_DTYPES if schema is ADDRESS_SCHEMA else CUSTOMER_DTYPES).items():
        if dtypes[name] != dtype:  # pragma: no cover - defensive, e.g. other pandas versions
            df[name] = df[name].astype(dtype)
    return df


def to_pandas_customers(table: pa.Table) -> pd.DataFrame:
    """Arrow table (e.g. read back from parquet) -> customers frame with the exact dtypes.

    Accepts string/large_string/dictionary strings and timestamps of any unit (naive ones
    are taken as UTC); missing contract columns become all-NA; extra columns follow.
    """
    return _to_pandas(table, CUSTOMER_SCHEMA)


def to_pandas_addresses(table: pa.Table) -> pd.DataFrame:
    """Arrow table -> addresses frame with the exact dtypes (``type`` re-matched to the enum)."""
    return _to_pandas(table, ADDRESS_SCHEMA)


def empty_customers() -> pd.DataFrame:
    return to_pandas_customers(CUSTOMER_SCHEMA.empty_table())


def empty_addresses() -> pd.DataFrame:
    return to_pandas_addresses(ADDRESS_SCHEMA.empty_table())


def empty_frames(
    company_id: str | None = None, connection_id: str | None = None
) -> CustomerFrames:
    """Zero-row frames with the full schema and dtypes."""
    return CustomerFrames(
        empty_customers(),
        empty_addresses(),
        {"company_id": company_id, "connection_id": connection_id},
    )


# --------------------------------------------------------------------------------------
# CustomerFrames
# --------------------------------------------------------------------------------------


@dataclass(repr=False)
class CustomerFrames:
    """``customers`` (one row per customer), ``addresses`` (one row per address), ``meta``."""

    customers: pd.DataFrame
    addresses: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def to_parquet(self, path: Any, **kwargs: Any) -> Any:
        """Write both frames under ``path``; see :func:`codat_frames.parquet.to_parquet`."""
        from codat_frames.parquet import to_parquet

        return to_parquet(self, path, **kwargs)

    def __repr__(self) -> str:
        return (
            f"CustomerFrames(customers={len(self.customers)} rows, "
            f"addresses={len(self.addresses)} rows, "
            f"company_id={self.meta.get('company_id')!r}, "
            f"connection_id={self.meta.get('connection_id')!r})"
        )


# --------------------------------------------------------------------------------------
# Page parsing: Arrow fast path, Python fallback
# --------------------------------------------------------------------------------------


@dataclass
class ParsedPage:
    """One list-customers page: paging fields and the raw records as Arrow (``RAW_SCHEMA``)."""

    page_number: int | None
    page_size: int | None
    total_results: int | None
    table: pa.Table

    def __repr__(self) -> str:
        return (
            f"ParsedPage(page_number={self.page_number}, page_size={self.page_size}, "
            f"total_results={self.total_results}, rows={self.table.num_rows})"
        )


class _JsonNumber(str):
    """A JSON number kept as the exact text it was written with."""

    __slots__ = ()


def parse_customers_page(raw: bytes | bytearray | memoryview | str) -> ParsedPage:
    """Parse one list-customers response body into a :class:`ParsedPage`.

    Fast path: ``pyarrow.json`` reads the whole document against an explicit schema (no
    Python object per record). When Arrow refuses (a number where a string belongs,
    ``addresses`` not a list, ...), the page is decoded with :mod:`json` and coerced record
    by record into the same table. Raises :class:`PageFormatError` for a body that is not
    JSON or not a page object with a ``results`` list.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    elif isinstance(raw, memoryview):
        raw = raw.tobytes()
    try:
        return _parse_page_arrow(raw)
    except (pa.ArrowInvalid, pa.ArrowTypeError, _FastPathRefused):
        return _parse_page_python(raw)


class _FastPathRefused(Exception):
    pass


def _parse_page_arrow(raw: bytes | bytearray | memoryview) -> ParsedPage:
    buf = pa.py_buffer(raw)
    body = bytes(raw[:64]).lstrip() if len(raw) else b""
    if not body.startswith(b"{"):
        raise _FastPathRefused
    if not raw.isascii():
        # Arrow's JSON reader does not validate UTF-8 inside strings: invalid bytes would
        # surface later as a UnicodeDecodeError. Such bodies take the Python path.
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _FastPathRefused from None
    # JSON strings cannot hold raw newlines: any newline is layout, which needs the slower
    # newline-aware chunker. Compact bodies (the API's) use the fast one.
    nl = raw.find(b"\n")
    multiline = nl != -1 and bool(raw[nl:].strip())
    read_options = pa_json.ReadOptions(use_threads=False, block_size=max(len(raw) + 16, 1 << 16))
    parse_options = pa_json.ParseOptions(
        explicit_schema=_PAGE_SCHEMA,
        unexpected_field_behavior="ignore",
        newlines_in_values=multiline,
    )
    doc = pa_json.read_json(pa.BufferReader(buf), read_options=read_options,
                            parse_options=parse_options)
    if doc.num_rows != 1:
        raise _FastPathRefused
    results = doc.column("results").chunk(0) if doc.column("results").num_chunks == 1 else (
        doc.column("results").combine_chunks()
    )
    if results.null_count:
        raise PageFormatError("page has no 'results' list")
    records = pc.list_flatten(results)
    if records.null_count:
        _warn(f"results: {records.null_count} null record(s) ignored")
        records = records.filter(records.is_valid())
    table = pa.Table.from_struct_array(records) if len(records) else RAW_SCHEMA.empty_table()

    def _int(name: str) -> int | None:
        value = doc.column(name)[0].as_py()
        return None if value is None else int(value)

    return ParsedPage(_int("pageNumber"), _int("pageSize"), _int("totalResults"), table)


def _parse_page_python(raw: bytes | bytearray | memoryview) -> ParsedPage:
    data: bytes | str = bytes(raw)
    try:
        try:
            doc = _loads(data)
        except UnicodeDecodeError:
            # Invalid UTF-8 inside a string: keep the page, replace the bad bytes with U+FFFD.
            doc = _loads(bytes(raw).decode("utf-8", "replace"))
            _warn("page body is not valid UTF-8; invalid bytes were replaced with U+FFFD")
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise PageFormatError(f"page body is not valid JSON: {exc}") from None
    except RecursionError:
        raise PageFormatError("page body is nested too deeply to be a customers page") from None
    if not isinstance(doc, dict):
        raise PageFormatError(f"page body is a JSON {type(doc).__name__}, not an object")
    results = doc.get("results")
    if not isinstance(results, list):
        raise PageFormatError("page has no 'results' list")
    table = _records_to_table(results, camel_only=True)
    return ParsedPage(
        _page_int(doc.get("pageNumber")),
        _page_int(doc.get("pageSize")),
        _page_int(doc.get("totalResults")),
        table,
    )


def _loads(data: bytes | str) -> Any:
    return json.loads(
        data, parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_JsonNumber
    )


def _page_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            f = float(value)
        except (TypeError, ValueError):
            return None
        return int(f) if f.is_integer() else None


# --------------------------------------------------------------------------------------
# Python records -> raw Arrow table
# --------------------------------------------------------------------------------------

_MISSING = object()


class _Coercer:
    """Turns arbitrary JSON-ish values into ``str | None``, counting what it had to change."""

    def __init__(self) -> None:
        self.converted: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def __call__(self, value: Any, name: str) -> str | None:
        if value is None or value is _MISSING:
            return None
        t = type(value)
        if t is str:
            return value
        if t is _JsonNumber:
            text = str.__str__(value)
            if name != "id" and name not in _RAW_DATE_FIELDS:
                self.converted[name] = self.converted.get(name, 0) + 1
            return text
        if isinstance(value, enum.Enum):
            return self(value.value, name)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, _dt.datetime | _dt.date):
            return value.isoformat()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            text = json.dumps(value)
        elif isinstance(value, dict | list | tuple | Mapping) or dataclasses.is_dataclass(value):
            self.dropped[name] = self.dropped.get(name, 0) + 1
            return None
        else:
            text = str(value)
        if name not in _RAW_DATE_FIELDS and not (name == "id" and type(value) is int):
            self.converted[name] = self.converted.get(name, 0) + 1
        return text

    def report(self) -> None:
        for name, n in self.converted.items():
            _warn(f"{name}: {n} value(s) were not JSON strings and were kept as their JSON text")
        for name, n in self.dropped.items():
            _warn(f"{name}: {n} value(s) were objects/arrays where a string belongs; set to NA")


def _get(rec: Any, camel: str, camel_only: bool) -> Any:
    if isinstance(rec, Mapping):
        value = rec.get(camel, _MISSING)
        if value is _MISSING and not camel_only:
            value = rec.get(_CAMEL_TO_SNAKE[camel], _MISSING)
        return value
    return getattr(rec, _CAMEL_TO_SNAKE[camel], _MISSING)


def _is_record(rec: Any) -> bool:
    return isinstance(rec, Mapping) or (
        dataclasses.is_dataclass(rec) and not isinstance(rec, type)
    ) or hasattr(rec, "customer_name")


def _records_to_table(records: Iterable[Any], *, camel_only: bool = False) -> pa.Table:
    coerce = _Coercer()
    columns: dict[str, list[str | None]] = {f: [] for f in _RAW_STRING_FIELDS}
    addresses: list[list[dict[str, str | None] | None] | None] = []
    skipped = not_list = bad_entries = 0
    for rec in records:
        if not _is_record(rec) or (camel_only and not isinstance(rec, dict)):
            skipped += 1
            continue
        for name, values in columns.items():
            values.append(coerce(_get(rec, name, camel_only), name))
        addrs = _get(rec, "addresses", camel_only)
        if addrs is None or addrs is _MISSING:
            addresses.append(None)
            continue
        if isinstance(addrs, tuple):
            addrs = list(addrs)
        if not isinstance(addrs, list):
            not_list += 1
            addresses.append(None)
            continue
        row: list[dict[str, str | None] | None] = []
        for a in addrs:
            if a is None:
                row.append(None)
            elif _is_address(a):
                row.append(
                    {
                        f: coerce(_get(a, f, camel_only), "addresses." + f)
                        for f in _RAW_ADDRESS_FIELDS
                    }
                )
            else:
                bad_entries += 1
                row.append(None)
        addresses.append(row)
    if skipped:
        _warn(f"results: {skipped} null or non-object record(s) ignored")
    if not_list:
        _warn(f"addresses: {not_list} record(s) had 'addresses' that is not a list; no rows")
    if bad_entries:
        _warn(f"addresses: {bad_entries} entr(y/ies) that are not objects treated as null")
    coerce.report()
    arrays = [_safe_array(columns[f], pa.string()) for f in _RAW_STRING_FIELDS]
    arrays.append(_safe_array(addresses, _RAW_ADDRESSES_TYPE))
    return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)


def _is_address(a: Any) -> bool:
    return isinstance(a, Mapping) or (dataclasses.is_dataclass(a) and not isinstance(a, type)) or (
        hasattr(a, "line1")
    )


def _fix_text(value: Any) -> Any:
    if isinstance(value, str):
        # lone surrogates (e.g. "\ud800" in JSON) cannot be UTF-8: replace them with U+FFFD
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_fix_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _fix_text(v) for k, v in value.items()}
    return value


def _safe_array(values: list[Any], type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (UnicodeEncodeError, pa.ArrowInvalid):
        return pa.array([_fix_text(v) for v in values], type=type_)


def records_to_table(records: Iterable[Any]) -> pa.Table:
    """API JSON dicts (camelCase, snake_case also accepted) or ``models.Customer``-like objects
    (attributes ``id, customer_name, ..., addresses``) -> raw Arrow table (``RAW_SCHEMA``).

    A whole page (a dict with ``results`` or a ``models.Customers``) is unwrapped to its
    results; a single record (dict or object) is taken as a list of one.
    """
    if isinstance(records, Mapping):
        records = records["results"] if "results" in records else [records]
        if records is None:
            records = []
        elif not isinstance(records, list | tuple):
            raise PageFormatError(
                f"records: 'results' must be a list, got {type(records).__name__}"
            )
    elif not isinstance(records, list | tuple) and hasattr(records, "results"):
        records = records.results or []
    elif _is_record(records) and not isinstance(records, Iterable):
        records = [records]
    if isinstance(records, str | bytes | bytearray) or not isinstance(records, Iterable):
        raise ValueError(
            "records must be an iterable of customer dicts or models.Customer objects, "
            f"got {type(records).__name__}"
        )
    return _records_to_table(records)


# --------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------

_NAT = np.iinfo(np.int64).min
_US_PER_DAY = 86_400_000_000
_SENTINEL_WALL_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00 as µs since the epoch
_DATE_RX = (
    r"^(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[Tt ](?P<H>\d{2})(?::(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<f>\d+))?)?)?)?"
    r"(?:(?P<z>[Zz])|(?P<sg>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)?$"
)
_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 11, 12, 13, 32]] = True


def _resolve_tz(local_tz: Any) -> _dt.tzinfo | None:
    """Returns None for UTC (no conversion needed). ``local_tz=None`` means UTC."""
    if local_tz is None:
        return None
    if isinstance(local_tz, _dt.tzinfo):
        return None if local_tz in (_dt.UTC,) or str(local_tz) == "UTC" else local_tz
    if not isinstance(local_tz, str) or not local_tz:
        raise ValueError(f"local_tz must be an IANA time zone name, got {local_tz!r}")
    if local_tz.upper() in ("UTC", "Z", "ETC/UTC"):
        return None
    try:
        return ZoneInfo(local_tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"local_tz: unknown time zone {local_tz!r} ({exc})") from None


def _str_buffers(a: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (int64, len n+1) and the UTF-8 data (uint8) of a string array."""
    off_type = np.int64 if pa.types.is_large_string(a.type) else np.int32
    bufs = a.buffers()
    width = np.dtype(off_type).itemsize
    off = np.frombuffer(bufs[1], dtype=off_type, count=len(a) + 1, offset=a.offset * width)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    if len(data) == 0:
        data = np.zeros(1, np.uint8)
    return off.astype(np.int64), data


def _localize(wall_us: np.ndarray, tz: _dt.tzinfo | None) -> np.ndarray:
    """Wall-clock µs in ``tz`` -> UTC µs (ambiguous: earliest; non-existent: shift forward)."""
    if tz is None or len(wall_us) == 0:
        return wall_us
    idx = pd.DatetimeIndex(wall_us.view("datetime64[us]"))
    local = idx.tz_localize(
        tz, ambiguous=np.ones(len(idx), dtype=bool), nonexistent="shift_forward"
    )
    out = local.tz_convert("UTC").as_unit("us").asi8.copy()
    return out


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_DIM = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _parse_general(s: pa.Array, tz: _dt.tzinfo | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strict vectorised ISO-8601 parser: (utc_us, ok, sentinel) for every element."""
    n = len(s)
    m = pc.extract_regex(s, _DATE_RX)
    matched = np.asarray(m.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    g = {f.name: m.field(i) for i, f in enumerate(m.type)}

    def num(name: str, width: int) -> np.ndarray:
        col = pc.utf8_lpad(g[name], width, "0")
        col = pc.if_else(pc.match_substring_regex(col, r"^\d+$"), col, "0")
        return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)

    y, mo, d = num("y", 4), num("mo", 2), num("d", 2)
    hh, mi, ss = num("H", 2), num("M", 2), num("S", 2)
    frac = pc.utf8_rpad(pc.utf8_slice_codeunits(g["f"], 0, 6), 6, "0")
    frac = pc.if_else(pc.match_substring_regex(frac, r"^\d{6}$"), frac, "000000")
    us = pc.cast(frac, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    oh, om = num("oh", 2), num("om", 2)
    sign = np.where(np.asarray(pc.equal(g["sg"], "-").to_numpy(zero_copy_only=False)), -1, 1)
    has_off = np.asarray(pc.not_equal(g["sg"], "").to_numpy(zero_copy_only=False), dtype=bool)
    has_z = np.asarray(pc.not_equal(g["z"], "").to_numpy(zero_copy_only=False), dtype=bool)
    aware = matched & (has_off | has_z)

    mo_c = np.clip(mo, 1, 12)
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    dim = _DIM[mo_c] + ((mo_c == 2) & leap)
    ok = (
        matched & (y >= 1) & (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= dim)
        & (hh <= 23) & (mi <= 59) & (ss <= 59) & (oh <= 23) & (om <= 59)
    )
    days = _days_from_civil(y, mo_c, np.clip(d, 1, 31))
    wall = days * _US_PER_DAY + ((hh * 60 + mi) * 60 + ss) * 1_000_000 + us
    sentinel = ok & (wall == _SENTINEL_WALL_US)
    ok &= ~sentinel
    out = np.full(n, _NAT, dtype=np.int64)
    off_us = sign * (oh * 60 + om) * 60_000_000
    sel = ok & aware
    out[sel] = wall[sel] - np.where(has_off, off_us, 0)[sel]
    sel = ok & ~aware
    out[sel] = _localize(wall[sel], tz)
    return out, ok, sentinel


def _parse_dates(col: pa.ChunkedArray | pa.Array, tz: _dt.tzinfo | None, column: str) -> pa.Array:
    """String dates -> timestamp[us, UTC] following the module's date rules (vectorised)."""
    s = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_string(s.type):
        s = s.cast(pa.string())
    n = len(s)
    if n == 0:
        return pa.array([], _TS)
    off, data = _str_buffers(s)
    start, end = off[:-1], off[1:]
    length = end - start
    last = len(data) - 1
    present = np.asarray(s.is_valid().to_numpy(zero_copy_only=False), dtype=bool) & (length > 0)
    # surrounding whitespace: trim (rare) and recompute
    if present.any() and (
        _WS[data[np.minimum(start, last)]][present].any()
        or _WS[data[np.clip(end - 1, 0, last)]][present].any()
    ):
        s = pc.utf8_trim_whitespace(s)
        off, data = _str_buffers(s)
        start, end = off[:-1], off[1:]
        length = end - start
        last = len(data) - 1
        present &= length > 0

    def char(pos: np.ndarray) -> np.ndarray:
        return data[np.clip(pos, 0, last)]

    out = np.full(n, _NAT, dtype=np.int64)
    done = ~present  # null / "" -> NaT silently
    # Fast path: Arrow's ISO-8601 cast, for years where nanoseconds fit (1678..2261).
    year = np.zeros(n, dtype=np.int64)
    digits = np.ones(n, dtype=bool)
    for k in range(4):
        c = char(start + k).astype(np.int64) - 48
        digits &= (c >= 0) & (c <= 9)
        year = year * 10 + c
    eligible = present & digits & (length >= 10) & (year >= 1678) & (year <= 2261)

    def is_sign(c: np.ndarray) -> np.ndarray:
        return (c == 43) | (c == 45)

    c1 = char(end - 1)
    aware = (length > 10) & (
        (c1 == 90) | (c1 == 122) | is_sign(char(end - 3)) | is_sign(char(end - 5))
        | is_sign(char(end - 6))
    )
    for cls_mask, target in ((eligible & aware, pa.timestamp("ns", "UTC")),
                             (eligible & ~aware, pa.timestamp("ns"))):
        idx = np.flatnonzero(cls_mask)
        if len(idx) == 0:
            continue
        sub = s.take(pa.array(idx)) if len(idx) != n else s
        try:
            ts = pc.cast(sub, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue  # something in this class needs the strict parser
        ns = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)
        us = np.floor_divide(ns, 1000)
        if target.tz is None:
            us = _localize(us, tz)
        out[idx] = us
        done[idx] = True
    rest = np.flatnonzero(~done)
    bad = 0
    example = None
    if len(rest):
        sub = s.take(pa.array(rest))
        vals, ok, sentinel = _parse_general(sub, tz)
        out[rest] = vals
        failed = ~ok & ~sentinel
        bad = int(failed.sum())
        if bad:
            example = sub[int(np.flatnonzero(failed)[0])].as_py()
    if bad:
        shown = example if len(example) <= 40 else example[:40] + "..."
        _warn(
            f"{column}: {bad} value(s) could not be parsed as dates and were set to NaT "
            f"(first: {shown!r})"
        )
    mask = out == _NAT
    return pa.array(out, type=pa.int64(), mask=mask).view(_TS) if mask.any() else pa.array(
        out, type=pa.int64()
    ).view(_TS)


# --------------------------------------------------------------------------------------
# Addresses and build_frames
# --------------------------------------------------------------------------------------

_TYPE_KEYS = pa.array([t.lower() for t in ADDRESS_TYPES], pa.string())
_TYPE_DICT = pa.array(list(ADDRESS_TYPES), _STR)


def _address_type(col: pa.Array) -> pa.DictionaryArray:
    """Strings -> dictionary<int8> over ADDRESS_TYPES; no match/null -> Unknown."""
    if pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    key = pc.utf8_lower(pc.utf8_trim_whitespace(col))
    codes = pc.fill_null(pc.index_in(key, value_set=_TYPE_KEYS), len(ADDRESS_TYPES) - 1)
    return pa.DictionaryArray.from_arrays(codes.cast(pa.int8()), _TYPE_DICT)


def _constant(value: str | None, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, _STR)
    return pa.repeat(pa.scalar(str(value), _STR), n)


def _conform_raw(table: pa.Table) -> pa.Table:
    if table.schema.equals(RAW_SCHEMA):
        return table
    arrays = []
    for f in RAW_SCHEMA:
        if f.name in table.column_names:
            arrays.append(table.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)


def _keep_indices(ids: pa.Array, modified_us: np.ndarray) -> np.ndarray | None:
    """Row positions to keep (one per id, later modified wins, ties: last seen); None = all."""
    n = len(ids)
    if n == 0:
        return None
    order = pc.sort_indices(ids).to_numpy(zero_copy_only=False)  # nulls sort last
    sorted_ids = ids.take(pa.array(order))
    same = pc.fill_null(pc.equal(sorted_ids.slice(0, n - 1), sorted_ids.slice(1)), False)
    same = same.to_numpy(zero_copy_only=False)
    if not same.any():
        return None
    codes = np.empty(n, dtype=np.int64)
    codes[order] = np.concatenate(([0], np.cumsum(~same)))
    pos = np.arange(n, dtype=np.int64)
    valid = ids.is_valid().to_numpy(zero_copy_only=False)
    codes = np.where(valid, codes, -1 - pos)
    order = np.lexsort((pos, modified_us, codes))
    sc = codes[order]
    last_of_group = np.ones(n, dtype=bool)
    last_of_group[:-1] = sc[:-1] != sc[1:]
    return np.sort(order[last_of_group])


def build_frames(
    tables: Iterable[pa.Table | ParsedPage],
    *,
    company_id: str | None = None,
    connection_id: str | None = None,
    local_tz: str | _dt.tzinfo = "UTC",
    meta: Mapping[str, Any] | None = None,
) -> CustomerFrames:
    """Raw record tables (``RAW_SCHEMA``, or ParsedPage objects) -> :class:`CustomerFrames`.

    Dates are parsed vectorised, addresses exploded, one row kept per id (later
    ``modified_date`` wins). ``local_tz`` (IANA name or tzinfo) is the zone of unqualified
    local times; an unknown name raises ``ValueError`` naming ``local_tz``. ``meta`` is
    copied into ``frames.meta`` together with company_id, connection_id and local_tz.
    """
    tz = _resolve_tz(local_tz)
    out_meta: dict[str, Any] = dict(meta or {})
    out_meta["company_id"] = company_id
    out_meta["connection_id"] = connection_id
    out_meta.setdefault("local_tz", local_tz if isinstance(local_tz, str) else str(local_tz))
    tables = [_conform_raw(t.table if isinstance(t, ParsedPage) else t) for t in tables]
    raw = pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()
    n = raw.num_rows
    if n == 0:
        frames = empty_frames(company_id, connection_id)
        frames.meta = out_meta
        return frames

    dates = {
        name: _parse_dates(raw.column(_CUSTOMER_FIELDS[name]), tz, name) for name in DATE_COLUMNS
    }
    ids = raw.column("id").combine_chunks()
    mod = dates["modified_date"].view(pa.int64()).to_numpy(zero_copy_only=False)
    mod_valid = dates["modified_date"].is_valid().to_numpy(zero_copy_only=False)
    mod = np.where(mod_valid, mod, _NAT).astype(np.int64)
    keep = _keep_indices(ids, mod)
    keep_arr = None if keep is None else pa.array(keep)

    def take(a: Any) -> Any:
        return a if keep_arr is None else a.take(keep_arr)

    ids = take(ids)
    m = len(ids)
    cols: list[Any] = []
    for name in CUSTOMER_COLUMNS:
        if name == "company_id":
            cols.append(_constant(company_id, m))
        elif name == "connection_id":
            cols.append(_constant(connection_id, m))
        elif name in dates:
            cols.append(take(dates[name]))
        elif name == "id":
            cols.append(ids)
        else:
            cols.append(take(raw.column(_CUSTOMER_FIELDS[name])))
    customers = pa.Table.from_arrays(
        [c if c.type == f.type else c.cast(f.type)
         for c, f in zip(cols, CUSTOMER_SCHEMA, strict=True)],
        schema=CUSTOMER_SCHEMA,
    )

    addrs = take(raw.column("addresses").combine_chunks())
    if isinstance(addrs, pa.ChunkedArray):
        addrs = addrs.combine_chunks()
    parents = pc.list_parent_indices(addrs).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(addrs)
    k = len(flat)
    position = np.arange(k, dtype=np.int64)
    if k:
        change = np.flatnonzero(np.diff(parents)) + 1
        starts = np.concatenate(([0], change))
        counts = np.diff(np.concatenate((starts, [k])))
        position -= np.repeat(starts, counts)
    if flat.null_count:
        _warn(f"addresses: {flat.null_count} null entr(y/ies) ignored")
        valid = np.asarray(flat.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        keep_a = pa.array(np.flatnonzero(valid))
        flat = flat.take(keep_a)
        parents = parents[valid]
        position = position[valid]
    k = len(flat)
    children = dict(zip(_RAW_ADDRESS_FIELDS, flat.flatten(), strict=True))
    acols: list[Any] = [
        _constant(company_id, k),
        _constant(connection_id, k),
        ids.take(pa.array(parents)).cast(_STR),
        pa.array(position.astype(np.int32), pa.int32()),
    ]
    for name, api in _ADDRESS_FIELDS.items():
        child = children[api]
        acols.append(_address_type(child) if name == "type" else child.cast(_STR))
    addresses = pa.Table.from_arrays(acols, schema=ADDRESS_SCHEMA)
    return CustomerFrames(to_pandas_customers(customers), to_pandas_addresses(addresses), out_meta)


def normalize_customers(
    records: Iterable[Any],
    company_id: str | None = None,
    connection_id: str | None = None,
    local_tz: str | _dt.tzinfo = "UTC",
) -> CustomerFrames:
    """API JSON dicts or ``models.Customer`` objects -> :class:`CustomerFrames`."""
    _resolve_tz(local_tz)  # fail fast on a bad zone, before touching the records
    return build_frames(
        [records_to_table(records)],
        company_id=company_id,
        connection_id=connection_id,
        local_tz=local_tz,
    )
