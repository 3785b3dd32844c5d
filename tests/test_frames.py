"""codat_frames.frames: schema, page parsing (fast path + fallback), build_frames rules."""

from __future__ import annotations

import json
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import codat_frames.frames as F

UTC = "UTC"
NY = "America/New_York"

CUSTOMER_COLUMNS = [
    "company_id", "connection_id", "id", "customer_name", "email_address", "phone",
    "default_currency", "note", "created_date", "modified_date", "source_modified_date",
]
ADDRESS_COLUMNS = [
    "company_id", "connection_id", "customer_id", "address_index", "type", "line1", "line2",
    "city", "region", "country", "postal_code",
]
TYPE_DTYPE = pd.CategoricalDtype(["Billing", "Delivery", "Order", "Inventory", "Unknown"],
                                 ordered=False)

# Inline copies of three list pages from the OpenAPI examples, so the tests never skip.
INLINE_PAGES = {
    "BigCommerce": {"results": [{"id": "1", "customerName": "Amy Jones", "emailAddress": "a.jackson@email.me", "defaultCurrency": "XXX", "phone": "07770 666777", "addresses": [{"type": "Unknown", "line1": "My Billing Address ./*drop table", "city": "Portsmouth", "region": "", "country": "United Kingdom", "postalCode": "PS13HJ"}, {"type": "Unknown", "line1": "This is my address, I cant hit enter.", "city": "Portsmouth", "region": "", "country": "United Kingdom", "postalCode": "PS13HJ"}], "createdDate": "2022-06-15T15:54:15Z", "modifiedDate": "2023-04-11T10:33:49Z", "sourceModifiedDate": "2022-06-15T15:54:15Z"}, {"id": "2", "customerName": "Cust001 Cust001", "emailAddress": "Cust001@example.com", "defaultCurrency": "XXX", "phone": "05442 203941", "addresses": [], "createdDate": "2023-04-11T15:49:25Z", "modifiedDate": "2023-04-17T15:42:55Z", "sourceModifiedDate": "2023-04-11T15:49:25Z"}], "pageNumber": 1, "pageSize": 2, "totalResults": 201, "_links": {"current": {"href": "/companies/d1ebcf6d-f7f9-4841-8a06-fec12c492a48/connections/7c0a21e8-938a-40a4-b0f7-5ab5d46804b0/data/commerce-customers?page=1&pageSize=2"}, "self": {"href": "/companies/d1ebcf6d-f7f9-4841-8a06-fec12c492a48/connections/7c0a21e8-938a-40a4-b0f7-5ab5d46804b0/data/commerce-customers"}}},  # noqa: E501
    "Clover": {"results": [{"id": "2CBJ8R898ZJAR", "customerName": "", "addresses": [], "createdDate": "2021-09-22T13:10:12Z", "modifiedDate": "2023-01-09T11:01:03Z", "sourceModifiedDate": "0001-01-01T00:00:00"}, {"id": "511JV0FRN2QYC", "customerName": "", "addresses": [], "createdDate": "2021-09-21T14:54:38Z", "modifiedDate": "2023-01-09T11:01:03Z", "sourceModifiedDate": "0001-01-01T00:00:00"}], "pageNumber": 1, "pageSize": 2, "totalResults": 9, "_links": {"self": {"href": "/x"}}},  # noqa: E501
    "Stripe Test": {"results": [{"id": "cus_LXdjls7KY5ZHaz", "customerName": "Barry Smith", "emailAddress": "barry@example.com", "defaultCurrency": "gbp", "addresses": [], "note": "Test Subscription", "createdDate": "2022-04-20T07:59:52Z", "modifiedDate": "2022-09-30T11:18:27Z"}, {"id": "cus_LXdFFgHqqVURIv", "customerName": "David Dunlow", "emailAddress": "david@example.com", "defaultCurrency": "gbp", "phone": "+447545309714", "addresses": [{"type": "Billing", "line1": "301 Ink Rooms", "line2": "28 Easton Street", "city": "London", "country": "GB", "postalCode": "WC1X 0BE"}, {"type": "Delivery", "line1": "301 Ink Rooms", "line2": "28 Easton Street", "city": "London", "country": "GB", "postalCode": "WC1X 0BE"}], "note": "Test Subscriptions", "createdDate": "2022-04-20T07:30:01Z", "modifiedDate": "2022-09-30T11:18:27Z"}], "pageNumber": 1, "pageSize": 2, "totalResults": 2, "_links": {"self": {"href": "/x"}}},  # noqa: E501
}


def _openapi_pages() -> dict[str, dict]:
    """Every example page of Codat's spec (copied into tests/specs), plus the inline ones."""
    spec = Path(__file__).resolve().parent / "specs" / "commerce-customers.openapi.json"
    pages = {f"inline:{k}": v for k, v in INLINE_PAGES.items()}
    doc = json.loads(spec.read_text())
    path = "/companies/{companyId}/connections/{connectionId}/data/commerce-customers"
    examples = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"][
        "examples"
    ]
    pages.update({f"spec:{k}": v["value"] for k, v in examples.items()})
    assert len(pages) >= 12, "the spec's ten example pages are missing"
    return pages


PAGES = _openapi_pages()


def ts(s: str | None) -> pd.Timestamp:
    return pd.NaT if s is None else pd.Timestamp(s).tz_convert("UTC")


def frames_of(*records: dict, local_tz: str = UTC, **kw) -> F.CustomerFrames:
    return F.normalize_customers(list(records), local_tz=local_tz, **kw)


def page_bytes(results: list, **extra) -> bytes:
    return json.dumps({"results": results, "pageNumber": 1, "pageSize": 100,
                       "totalResults": len(results), **extra}).encode()


def force_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(raw):
        raise pa.ArrowInvalid("forced")

    monkeypatch.setattr(F, "_parse_page_arrow", refuse)


def dq_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, F.DataQualityWarning)]


def assert_schema(frames: F.CustomerFrames) -> None:
    c, a = frames.customers, frames.addresses
    assert list(c.columns) == CUSTOMER_COLUMNS
    assert list(a.columns) == ADDRESS_COLUMNS
    for col in CUSTOMER_COLUMNS:
        want = "datetime64[us, UTC]" if col.endswith("_date") else pd.StringDtype("pyarrow")
        assert c[col].dtype == want, col
    for col in ADDRESS_COLUMNS:
        if col == "address_index":
            assert a[col].dtype == np.dtype("int32")
        elif col == "type":
            assert a[col].dtype == TYPE_DTYPE
            assert list(a[col].cat.categories) == list(TYPE_DTYPE.categories)
            assert not a[col].cat.ordered
        else:
            assert a[col].dtype == pd.StringDtype("pyarrow"), col


# ---------------------------------------------------------------------------- schema


def test_schema_constants_match_frames():
    fr = frames_of({"id": "1", "addresses": [{"type": "billing"}]})
    assert_schema(fr)
    assert list(F.CUSTOMER_SCHEMA.names) == CUSTOMER_COLUMNS
    assert list(F.ADDRESS_SCHEMA.names) == ADDRESS_COLUMNS
    got_c = pa.Table.from_pandas(fr.customers, preserve_index=False).schema.remove_metadata()
    got_a = pa.Table.from_pandas(fr.addresses, preserve_index=False).schema.remove_metadata()
    assert got_c.equals(F.CUSTOMER_SCHEMA)
    assert got_a.equals(F.ADDRESS_SCHEMA)


@pytest.mark.parametrize("make", [
    lambda: F.build_frames([]),
    lambda: F.build_frames([F.RAW_SCHEMA.empty_table()]),
    lambda: F.normalize_customers([]),
    lambda: F.empty_frames(),
    lambda: F.build_frames([F.parse_customers_page(b'{"results": []}').table]),
])
def test_empty_input_full_schema(make):
    fr = make()
    assert len(fr.customers) == 0 and len(fr.addresses) == 0
    assert_schema(fr)


def test_to_pandas_restores_dtypes_from_parquet_like_tables():
    fr = frames_of({"id": "1", "createdDate": "2022-01-01T00:00:00.5Z",
                    "addresses": [{"type": "delivery", "line1": "x"}]},
                   company_id="co", connection_id="cn")
    c = pa.Table.from_pandas(fr.customers, preserve_index=False)
    # what other writers / hive partitioning give back: dictionary strings, ns timestamps
    c = c.set_column(0, "company_id", pa.array(["co"]).dictionary_encode())
    c = c.set_column(8, "created_date", c.column("created_date").cast(pa.timestamp("ns", "UTC")))
    c = c.cast(pa.schema([f.with_type(pa.string()) if f.type == pa.large_string() else f
                          for f in c.schema]))
    back = F.to_pandas_customers(c)
    pd.testing.assert_frame_equal(back, fr.customers)
    a = pa.Table.from_pandas(fr.addresses, preserve_index=False)
    a = a.set_column(4, "type", pa.array(["Delivery"]))
    a = a.set_column(3, "address_index", pa.array([0], pa.int64()))
    pd.testing.assert_frame_equal(F.to_pandas_addresses(a), fr.addresses)
    pd.testing.assert_frame_equal(F.to_pandas_customers(F.CUSTOMER_SCHEMA.empty_table()),
                                  F.empty_frames().customers)


# ---------------------------------------------------------------------------- strings


@pytest.mark.parametrize("record, column, expected", [
    ({"id": "1", "phone": ""}, "phone", ""),
    ({"id": "1", "phone": None}, "phone", pd.NA),
    ({"id": "1"}, "phone", pd.NA),
    ({"id": "1", "customerName": ""}, "customer_name", ""),
    ({"id": "1", "defaultCurrency": "gbp"}, "default_currency", "gbp"),
    ({"id": "1", "defaultCurrency": "XXX"}, "default_currency", "XXX"),
    ({"id": "1", "note": "Zoë \"O'Brien\" 李 😀\nline"}, "note", "Zoë \"O'Brien\" 李 😀\nline"),
    ({"id": "1", "note": "'); DROP TABLE customers;--"}, "note", "'); DROP TABLE customers;--"),
    ({"id": "1", "emailAddress": "  padded  "}, "email_address", "  padded  "),
    ({"id": "cst_NUkBHQmekz"}, "id", "cst_NUkBHQmekz"),
    ({"id": 7110701885}, "id", "7110701885"),
    ({"id": "1", "unknownField": {"x": [1]}, "customerName": "A"}, "customer_name", "A"),
])
@pytest.mark.parametrize("path", ["records", "page", "fallback"])
def test_string_rules(record, column, expected, path, monkeypatch):
    if path == "records":
        fr = frames_of(record)
    else:
        if path == "fallback":
            force_fallback(monkeypatch)
        fr = F.build_frames([F.parse_customers_page(page_bytes([record])).table])
    got = fr.customers[column].iloc[0]
    if expected is pd.NA:
        assert got is pd.NA
    else:
        assert got == expected


def test_company_and_connection_columns_and_meta():
    fr = frames_of({"id": "1", "addresses": [{"type": "Billing"}]}, company_id="co",
                   connection_id="cn")
    assert (fr.customers["company_id"] == "co").all()
    assert (fr.addresses["connection_id"] == "cn").all()
    assert fr.meta["company_id"] == "co" and fr.meta["connection_id"] == "cn"
    fr = frames_of({"id": "1", "addresses": [{"type": "Billing"}]})
    assert fr.customers["company_id"].isna().all() and fr.addresses["connection_id"].isna().all()
    fr = F.build_frames([F.records_to_table([{"id": "1"}])], company_id="co",
                        meta={"query": "q", "total_results": 1})
    assert fr.meta["query"] == "q" and fr.meta["company_id"] == "co"
    assert fr.meta["connection_id"] is None


def test_repr_is_short_and_has_no_data():
    fr = frames_of({"id": "secret-ish", "customerName": "Amy"}, company_id="co")
    r = repr(fr)
    assert "1 rows" in r and "co" in r and "Amy" not in r


# ---------------------------------------------------------------------------- dates

DATE_CASES = [
    # value, local_tz, expected UTC (None = NaT)
    ("2022-06-15T15:54:15Z", UTC, "2022-06-15T15:54:15Z"),
    ("2022-06-15T15:54:15Z", NY, "2022-06-15T15:54:15Z"),
    ("2022-06-15T15:54:15z", UTC, "2022-06-15T15:54:15Z"),
    ("2021-11-15T01:00:00-05:00", NY, "2021-11-15T06:00:00Z"),
    ("2021-11-15T01:00:00+05:30", UTC, "2021-11-14T19:30:00Z"),
    ("2021-11-15T01:00:00+0530", UTC, "2021-11-14T19:30:00Z"),
    ("2021-11-15T01:00:00+05", UTC, "2021-11-14T20:00:00Z"),
    ("2022-10-27T10:22:43.6464237Z", UTC, "2022-10-27T10:22:43.646423Z"),
    ("2022-10-27T10:22:43.6464239Z", UTC, "2022-10-27T10:22:43.646423Z"),
    ("2022-10-27T10:22:43.6Z", UTC, "2022-10-27T10:22:43.600000Z"),
    ("2022-10-27T10:22:43.6464237-05:00", UTC, "2022-10-27T15:22:43.646423Z"),
    ("2022-10-27T10:22:43.6464237", NY, "2022-10-27T14:22:43.646423Z"),
    ("2022-01-18T11:41:54", UTC, "2022-01-18T11:41:54Z"),
    ("2022-01-18T11:41:54", NY, "2022-01-18T16:41:54Z"),
    ("2022-01-18 11:41:54", UTC, "2022-01-18T11:41:54Z"),
    ("2022-01-18T11:41", UTC, "2022-01-18T11:41:00Z"),
    ("2022-10-23", UTC, "2022-10-23T00:00:00Z"),
    ("2022-10-23", NY, "2022-10-23T04:00:00Z"),
    ("2022-01-23", NY, "2022-01-23T05:00:00Z"),
    ("  2022-06-15T15:54:15Z ", UTC, "2022-06-15T15:54:15Z"),
    ("2024-02-29", UTC, "2024-02-29T00:00:00Z"),
    # DST in New York: ambiguous -> earliest (EDT), non-existent -> shifted forward
    ("2022-11-06T01:30:00", NY, "2022-11-06T05:30:00Z"),
    ("2022-03-13T02:30:00", NY, "2022-03-13T07:00:00Z"),
    # outside the nanosecond range: strict parser
    ("1500-06-01T12:00:00Z", UTC, "1500-06-01T12:00:00Z"),
    ("9999-12-31T23:59:59.9999999Z", UTC, "9999-12-31T23:59:59.999999Z"),
    ("0001-01-02T00:00:00", UTC, "0001-01-02T00:00:00Z"),
    # "no date": silently NaT
    ("0001-01-01T00:00:00", UTC, None),
    ("0001-01-01T00:00:00", NY, None),
    ("0001-01-01T00:00:00Z", UTC, None),
    ("0001-01-01", UTC, None),
    ("", UTC, None),
    ("   ", UTC, None),
    (None, UTC, None),
]


@pytest.mark.parametrize("value, local_tz, expected", DATE_CASES)
def test_dates(value, local_tz, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error", F.DataQualityWarning)
        fr = frames_of({"id": "1", "createdDate": value, "modifiedDate": value,
                        "sourceModifiedDate": value}, local_tz=local_tz)
    for col in ("created_date", "modified_date", "source_modified_date"):
        got = fr.customers[col].iloc[0]
        if expected is None:
            assert got is pd.NaT
        else:
            assert got == ts(expected), (col, got)


def test_missing_dates_are_nat():
    fr = frames_of({"id": "1"})
    assert fr.customers[["created_date", "modified_date"]].isna().all().all()


def test_fast_and_strict_date_parsers_agree():
    values = [v for v, tz, e in DATE_CASES if e is not None and v and v.strip()
              and 1678 < int(v.strip()[:4]) < 2262]
    for tz_name in (UTC, NY):
        tz = F._resolve_tz(tz_name)
        arr = pa.array([v.strip() for v in values])
        fast = F._parse_dates(arr, tz, "x").to_pylist()
        strict, ok, _ = F._parse_general(arr, tz)
        assert ok.all()
        assert [int(pd.Timestamp(t).value // 1000) for t in fast] == strict.tolist()


@pytest.mark.parametrize("local_tz", [UTC, NY])
def test_unparseable_dates_warn_once_per_column(local_tz):
    bad = ["garbage", "2022-02-30", "2022-13-01T00:00:00Z", "20220101", "2022-01-18T25:00:00",
           "2022-01-18T11:41:54+25:00", "2022-01-18T11:41:61"]
    recs = [{"id": str(i), "createdDate": v, "modifiedDate": "2022-01-01T00:00:00Z"}
            for i, v in enumerate(bad)]
    recs.append({"id": "ok", "createdDate": "2022-01-18T11:41:54Z"})
    recs.append({"id": "num", "createdDate": 20220101})  # a number: its text, then unparseable
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fr = frames_of(*recs, local_tz=local_tz)
    msgs = dq_warnings(rec)
    assert len(msgs) == 1, msgs
    assert "created_date" in msgs[0] and f"{len(bad) + 1} value" in msgs[0]
    assert fr.customers["created_date"].isna().sum() == len(bad) + 1
    assert fr.customers["modified_date"].notna().sum() == len(bad)


def test_bad_local_tz_raises_naming_parameter():
    with pytest.raises(ValueError, match="local_tz"):
        frames_of({"id": "1"}, local_tz="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="local_tz"):
        F.build_frames([], local_tz="")
    with pytest.raises(ValueError, match="local_tz"):
        F.build_frames([], local_tz=5)
    fr = frames_of({"id": "1", "createdDate": "2022-01-18T11:41:54"}, local_tz=None)
    assert fr.customers["created_date"].iloc[0] == ts("2022-01-18T11:41:54Z")


# ---------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("value, expected", [
    ("Billing", "Billing"), ("billing", "Billing"), ("BILLING", "Billing"),
    ("delivery", "Delivery"), ("Order", "Order"), ("inventory", "Inventory"),
    ("unknown", "Unknown"), ("Unknown", "Unknown"), (" Billing ", "Billing"),
    ("Shipping", "Unknown"), ("", "Unknown"), (None, "Unknown"), ("__missing__", "Unknown"),
])
def test_address_type(value, expected):
    addr = {"line1": "x"} if value == "__missing__" else {"type": value, "line1": "x"}
    fr = frames_of({"id": "1", "addresses": [addr]})
    assert fr.addresses["type"].iloc[0] == expected
    assert fr.addresses["type"].dtype == TYPE_DTYPE


@pytest.mark.parametrize("path", ["records", "page", "fallback"])
def test_addresses_missing_null_empty_and_index(path, monkeypatch):
    recs = [
        {"id": "missing"},
        {"id": "null", "addresses": None},
        {"id": "empty", "addresses": []},
        {"id": "two", "addresses": [
            {"type": "billing", "line1": "L1", "line2": "", "city": "Kraków", "region": None,
             "country": "PL", "postalCode": "31-000", "extra": 1},
            {"type": "delivery", "line1": "My Billing Address ./*drop table"}]},
        {"id": "one", "addresses": [{"type": "Order"}]},
    ]
    if path == "records":
        fr = frames_of(*recs)
    else:
        if path == "fallback":
            force_fallback(monkeypatch)
        fr = F.build_frames([F.parse_customers_page(page_bytes(recs)).table])
    a = fr.addresses
    assert list(a["customer_id"]) == ["two", "two", "one"]
    assert list(a["address_index"]) == [0, 1, 0]
    assert list(a["type"]) == ["Billing", "Delivery", "Order"]
    assert a["line2"].iloc[0] == "" and a["region"].iloc[0] is pd.NA
    assert a["city"].iloc[0] == "Kraków" and a["postal_code"].iloc[0] == "31-000"
    assert a["line1"].iloc[1] == "My Billing Address ./*drop table"
    assert len(fr.customers) == 5


def test_null_address_entry_is_skipped_keeping_positions():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fr = F.build_frames([F.parse_customers_page(page_bytes(
            [{"id": "1", "addresses": [None, {"type": "billing"}]}])).table])
    assert list(fr.addresses["address_index"]) == [1]
    assert any("null" in m for m in dq_warnings(rec))


# ---------------------------------------------------------------------------- dedupe


def test_dedupe_later_modified_wins_and_addresses_follow():
    recs = [
        {"id": "a", "customerName": "old", "modifiedDate": "2023-01-01T00:00:00Z",
         "addresses": [{"type": "billing", "line1": "old"}]},
        {"id": "b", "customerName": "b", "modifiedDate": None},
        {"id": "a", "customerName": "new", "modifiedDate": "2023-06-01T00:00:00Z",
         "addresses": [{"type": "delivery", "line1": "new1"}, {"line1": "new2"}]},
        {"id": "a", "customerName": "nat", "modifiedDate": None,
         "addresses": [{"line1": "nat"}]},
        {"id": "b", "customerName": "b-last", "modifiedDate": ""},  # tie (NaT): last seen
        {"id": "c", "customerName": "c1", "modifiedDate": "2022-01-01T12:00:00Z"},
        {"id": "c", "customerName": "c2", "modifiedDate": "2022-01-01T07:00:00-05:00"},  # tie
    ]
    fr = frames_of(*recs[:4])
    fr2 = F.build_frames([F.records_to_table(recs[:3]), F.records_to_table(recs[3:])])
    for f in (fr, fr2):
        c = f.customers.set_index("id")
        assert c.loc["a", "customer_name"] == "new"
        assert list(f.addresses["line1"]) == ["new1", "new2"]
        assert list(f.addresses["address_index"]) == [0, 1]
    c = fr2.customers.set_index("id")
    assert c.loc["b", "customer_name"] == "b-last"
    assert c.loc["c", "customer_name"] == "c2"
    assert fr2.customers["id"].is_unique and len(fr2.customers) == 3


def test_null_ids_are_not_merged():
    fr = frames_of({"customerName": "x"}, {"customerName": "y"}, {"id": "1"})
    assert len(fr.customers) == 3


# ---------------------------------------------------------------------------- inputs


from codat_frames.models import Address, Customer  # noqa: E402


def test_models_customers_equal_dicts():
    objs = [
        Customer(id="1", customer_name="Amy", phone="", addresses=[
            Address(type="billing", line1="x", postal_code="PS13HJ"), Address()],
            created_date="2022-01-18T11:41:54", modified_date="2023-04-11T10:33:49Z"),
        Customer(id="2", addresses=None, source_modified_date="0001-01-01T00:00:00"),
    ]
    dicts = [
        {"id": "1", "customerName": "Amy", "phone": "", "addresses": [
            {"type": "billing", "line1": "x", "postalCode": "PS13HJ"}, {}],
         "createdDate": "2022-01-18T11:41:54", "modifiedDate": "2023-04-11T10:33:49Z"},
        {"id": "2", "sourceModifiedDate": "0001-01-01T00:00:00"},
    ]
    snake = [{"id": "1", "customer_name": "Amy", "phone": "", "addresses": [
        {"type": "billing", "line1": "x", "postal_code": "PS13HJ"}, {}],
        "created_date": "2022-01-18T11:41:54", "modified_date": "2023-04-11T10:33:49Z"},
        {"id": "2", "source_modified_date": "0001-01-01T00:00:00"}]
    a = F.normalize_customers(objs, local_tz=NY)
    b = F.normalize_customers(iter(dicts), local_tz=NY)
    c = F.normalize_customers(snake, local_tz=NY)
    for other in (b, c):
        pd.testing.assert_frame_equal(a.customers, other.customers)
        pd.testing.assert_frame_equal(a.addresses, other.addresses)
    assert list(a.addresses["type"]) == ["Billing", "Unknown"]


def test_records_accepts_pages_and_parsed_pages():
    doc = INLINE_PAGES["Stripe Test"]
    base = F.normalize_customers(doc["results"])

    @dataclass
    class Customers:
        results: list

    for recs in (doc, Customers(doc["results"])):
        pd.testing.assert_frame_equal(F.normalize_customers(recs).customers, base.customers)
    parsed = F.parse_customers_page(json.dumps(doc).encode())
    pd.testing.assert_frame_equal(F.build_frames([parsed]).addresses, base.addresses)


def test_numeric_id_and_wrong_types(monkeypatch):
    body = (b'{"results": [{"id": 7110701885, "phone": 441234567890, "customerName": true,'
            b' "note": {"a": 1}, "emailAddress": 1.50, "createdDate": "2022-10-23",'
            b' "addresses": [{"type": "billing", "postalCode": 55678}]},'
            b' {"id": 123456789012345678901234567890, "addresses": {"type": "billing"}},'
            b' {"id": "x", "addresses": ["not an object", {"type": "delivery"}]}],'
            b' "pageNumber": 1, "pageSize": 100, "totalResults": 3}')
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        page = F.parse_customers_page(body)
        fr = F.build_frames([page.table])
    c = fr.customers
    assert list(c["id"]) == ["7110701885", "123456789012345678901234567890", "x"]
    assert c["phone"].iloc[0] == "441234567890"
    assert c["customer_name"].iloc[0] == "true"
    assert c["email_address"].iloc[0] == "1.50"
    assert c["note"].iloc[0] is pd.NA
    assert c["created_date"].iloc[0] == ts("2022-10-23T00:00:00Z")
    a = fr.addresses
    assert list(a["customer_id"]) == ["7110701885", "x"]
    assert a["postal_code"].iloc[0] == "55678"
    assert list(a["address_index"]) == [0, 1]
    msgs = " | ".join(dq_warnings(rec))
    for name in ("phone", "customerName", "emailAddress", "note", "addresses.postalCode",
                 "not a list", "not objects"):
        assert name in msgs
    assert "id:" not in msgs  # numeric ids are expected, not a quality problem
    assert page.page_number == 1 and page.total_results == 3


def test_lone_surrogate_is_replaced():
    page = F.parse_customers_page(b'{"results": [{"id": "a\\ud800b"}]}')
    assert page.table.column("id").to_pylist() == ["a\ufffdb"]


# ---------------------------------------------------------------------------- pages


@pytest.mark.parametrize("name", sorted(PAGES))
def test_example_pages_fast_equals_fallback(name, monkeypatch):
    doc = PAGES[name]
    raw = json.dumps(doc).encode()
    fast = F.parse_customers_page(raw)
    assert fast.page_number == doc["pageNumber"] and fast.page_size == doc["pageSize"]
    assert fast.total_results == doc["totalResults"]
    assert fast.table.schema.equals(F.RAW_SCHEMA)
    assert fast.table.num_rows == len(doc["results"])
    pretty = F.parse_customers_page(json.dumps(doc, indent=2).encode())
    assert pretty.table.equals(fast.table)
    fr_fast = F.build_frames([fast.table], company_id="co", connection_id="cn", local_tz=NY)
    with monkeypatch.context() as m:
        force_fallback(m)
        slow = F.parse_customers_page(raw)
    assert slow.table.equals(fast.table)
    fr_slow = F.build_frames([slow.table], company_id="co", connection_id="cn", local_tz=NY)
    pd.testing.assert_frame_equal(fr_fast.customers, fr_slow.customers)
    pd.testing.assert_frame_equal(fr_fast.addresses, fr_slow.addresses)
    fr_rec = F.normalize_customers(doc["results"], company_id="co", connection_id="cn",
                                   local_tz=NY)
    pd.testing.assert_frame_equal(fr_fast.customers, fr_rec.customers)
    pd.testing.assert_frame_equal(fr_fast.addresses, fr_rec.addresses)
    assert_schema(fr_fast)
    n_addr = sum(len(r.get("addresses") or []) for r in doc["results"])
    assert len(fr_fast.addresses) == n_addr


def test_example_page_values():
    fr = F.build_frames([F.parse_customers_page(json.dumps(p).encode()).table
                         for p in INLINE_PAGES.values()])
    c = fr.customers.set_index("id")
    assert c.loc["2CBJ8R898ZJAR", "customer_name"] == ""
    assert c.loc["2CBJ8R898ZJAR", "source_modified_date"] is pd.NaT
    assert c.loc["cus_LXdjls7KY5ZHaz", "default_currency"] == "gbp"
    assert c.loc["1", "modified_date"] == ts("2023-04-11T10:33:49Z")
    assert list(fr.addresses["type"]) == ["Unknown", "Unknown", "Billing", "Delivery"]


def test_str_memoryview_and_bytearray_bodies():
    raw = json.dumps(INLINE_PAGES["Clover"]).encode()
    base = F.parse_customers_page(raw).table
    for body in (raw.decode(), memoryview(raw), bytearray(raw)):
        assert F.parse_customers_page(body).table.equals(base)


@pytest.mark.parametrize("body", [
    b"", b"   ", b"not json", b"<html><body>502 Bad Gateway</body></html>", b"[]",
    b"[{\"results\": []}]", b"null", b"42", b'"results"', b'{"pageNumber": 1}',
    b'{"results": null}', b'{"results": {}}', b'{"results": "x"}',
    b'{"results": []}{"results": []}', b'{"results": [{"id": "1"}', b"\xff\xfe{}",
])
def test_malformed_bodies_raise_page_format_error(body):
    with pytest.raises(F.PageFormatError):
        F.parse_customers_page(body)
    assert issubclass(F.PageFormatError, ValueError)


def test_unknown_fields_and_null_records_ignored():
    body = page_bytes([{"id": "1", "newField": [1, {"a": None}], "addresses": [
        {"type": "billing", "geo": {"lat": 1.5}}]}, None], _links={"next": {"href": "/n"}},
        extraTop=True)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fr = F.build_frames([F.parse_customers_page(body).table])
    assert list(fr.customers["id"]) == ["1"] and len(fr.addresses) == 1
    assert any("null" in m for m in dq_warnings(rec))


# ---------------------------------------------------------------------------- to_parquet


def test_to_parquet_delegates_lazily(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("codat_frames.parquet")
    fake.to_parquet = lambda frames, path, **kw: calls.append((frames, path, kw)) or "ok"
    monkeypatch.setitem(sys.modules, "codat_frames.parquet", fake)
    fr = F.empty_frames()
    assert fr.to_parquet(tmp_path, partition_by=("company_id",)) == "ok"
    assert calls == [(fr, tmp_path, {"partition_by": ("company_id",)})]
