"""Hostile input, property-based: whatever a server or a caller sends, the outcome is typed.

Allowed outcomes, by level:

* ``frames.parse_customers_page(bytes)``: a ``ParsedPage`` (whose ``build_frames`` gives
  frames with the contract dtypes) or ``frames.PageFormatError``.
* ``normalize_customers(records)``: frames, possibly with ``DataQualityWarning``.
* ``read_customers`` / ``s.customers.list`` / ``.get`` over a server answering hostile bodies
  (pytest-httpx): frames / models or a ``CodatError``.
* Request parameters (customer_id, company_id, connection_id, query, order_by) carrying
  path traversal or injection: refused with ``ValueError`` before any request, or escaped so
  the raw URL has exactly the intended path segments and query keys.

Warnings other than ``DataQualityWarning`` (and its subclasses) also count as a failure.
"""

from __future__ import annotations

import json
import random
import uuid
import warnings
from contextlib import contextmanager
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import codat_frames as cf
from codat_frames import frames as F
from codat_frames import models
from codat_frames.paging import read_customers

COMPANY = "8a210b68-6988-11ed-a1eb-0242ac120002"
CONNECTION = "2e9d2c44-f675-40ba-8049-353bfcb5e171"
BASE = "https://codat.test"
CUSTOMERS = f"/companies/{COMPANY}/connections/{CONNECTION}/data/commerce-customers"

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
HTTP_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ------------------------------------------------------------------------------ strategies

_FIELDS = ["id", "customerName", "emailAddress", "phone", "defaultCurrency", "note",
           "createdDate", "modifiedDate", "sourceModifiedDate", "addresses"]  # fmt: skip
_ADDRESS_FIELDS = ["type", "line1", "line2", "city", "region", "country", "postalCode"]
_DATES = [
    "2022-01-18T11:41:54Z", "2022-01-18T11:41:54", "2022-10-23", "0001-01-01T00:00:00",
    "2022-10-23T00:00:00.1234567+05:30", "2022-02-30", "9999-12-31T23:59:59+14:00",
    "0000-00-00", "1677-09-21T00:12:43.145224192Z", "2262-04-11T23:47:16.854775808Z",
    "2022-03-27T01:30:00", "  2022-01-01  ", "20220101", "2022-01-01T25:00:00",
    "2022-01-01T00:00:00.", "2022-01-01T00:00:00+99:99", "not a date", "",
]  # fmt: skip

# Lone surrogates and other awkward text: st.text() leaves surrogates out by default.
_nasty_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "'; DROP TABLE x;--", "../..",
                     "%2e%2e/", "\r\nX: y", "Zoë", "李", "\U0001f600", "\ufeff"]),  # fmt: skip
    st.integers(10_000, 100_000).map(lambda n: "x" * n),  # huge strings
)
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False), _nasty_text,
)  # fmt: skip
_json = st.recursive(
    _scalar,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)


def _field_value(name: str):
    if name in ("createdDate", "modifiedDate", "sourceModifiedDate"):
        return st.one_of(st.sampled_from(_DATES), _json)
    return _json


_address = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            f: (st.sampled_from(["billing", "Delivery", " ORDER ", "x", "Unknown"]) | _json)
            if f == "type" else _json
            for f in _ADDRESS_FIELDS
        },
    ),
    _json,
)
_record = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            **{f: _field_value(f) for f in _FIELDS if f != "addresses"},
            "addresses": st.one_of(st.lists(_address, max_size=4), _json),
            "extraField": _json,
        },
    ),
    _json,  # not a record at all
)


# Counts that are not small ints: strings, floats, objects, and numbers up to 2**80.
_not_small = st.one_of(st.none(), st.booleans(), st.floats(), _nasty_text, _json)


def _page_dict(records, *, bounded: bool = False):
    count = st.integers(-3, 12) | _not_small if bounded else st.integers(-3, 60) | _scalar
    return st.fixed_dictionaries(
        {"results": records},
        optional={
            "pageNumber": st.one_of(st.integers(-3, 3), _scalar),
            "pageSize": count,
            "totalResults": count,
            "_links": _json,
        },
    )


_page = st.one_of(_page_dict(st.lists(_record, max_size=6)), _page_dict(_json), _json)
# For whole reads: a body is served for every page, so keep the announced page count small
# (an absurd totalResults has its own test).
_read_page = st.one_of(
    _page_dict(st.lists(_record, max_size=6), bounded=True), _page_dict(_json, bounded=True), _json
)


@st.composite
def _body(draw, pages=_page) -> bytes:
    """A page as JSON bytes, sometimes damaged: truncated, invalid UTF-8, deep nesting, ..."""
    doc = draw(pages)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), separators=(",", ":"),
                      indent=draw(st.sampled_from([None, None, 2])))  # fmt: skip
    raw = text.encode("utf-8", "surrogatepass")  # lone surrogates -> invalid UTF-8 bytes
    damage = draw(st.sampled_from(["none", "none", "truncate", "bytes", "nest", "prefix",
                                   "trailing"]))  # fmt: skip
    if damage == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif damage == "bytes" and raw:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    elif damage == "nest":
        depth = draw(st.sampled_from([50, 5_000, 200_000]))
        inner = b"[" * depth + b"]" * depth
        raw = b'{"results":[{"id":"1","note":' + inner + b"}]," + b'"x":' + inner + b"}"
    elif damage == "prefix":
        raw = draw(st.sampled_from([b"\xef\xbb\xbf", b" \n\t", b"\x00", b"<html>"])) + raw
    elif damage == "trailing":
        raw = raw + draw(st.sampled_from([b"\n", b"}", b"\x00", b" {}", b"\n{}"]))
    return raw


# ------------------------------------------------------------------------------ helpers


@contextmanager
def only_data_quality_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    others = [w for w in caught if not issubclass(w.category, cf.DataQualityWarning)]
    assert not others, [f"{w.category.__name__}: {w.message}" for w in others]


def assert_contract_frames(fr: cf.CustomerFrames) -> None:
    c, a = fr.customers, fr.addresses
    assert list(c.columns[: len(F.CUSTOMER_COLUMNS)]) == list(F.CUSTOMER_COLUMNS)
    assert list(a.columns[: len(F.ADDRESS_COLUMNS)]) == list(F.ADDRESS_COLUMNS)
    for name, dtype in F.CUSTOMER_DTYPES.items():
        assert c[name].dtype == dtype, name
    for name, dtype in F.ADDRESS_DTYPES.items():
        assert a[name].dtype == dtype, name
    # every value can be read back as Python objects (no invalid UTF-8 hiding in Arrow)
    c.to_dict("records")
    a.to_dict("records")
    ids = c["id"].dropna()
    assert not ids.duplicated().any()


# ------------------------------------------------------------------------------ parser level


@SETTINGS
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe{")
@example(b"[" * 100_000)
@example(b'{"results":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
@example(b'{"results":[{"id":"\xff"}]}')
@example(b'{"results":[{"id":"1"}],"totalResults":1' + b"0" * 400 + b"}")
def test_parser_on_random_bytes(raw):
    with only_data_quality_warnings():
        try:
            page = F.parse_customers_page(raw)
        except F.PageFormatError:
            return
        assert isinstance(page, F.ParsedPage)
        assert_contract_frames(F.build_frames([page], company_id=COMPANY))


@SETTINGS
@given(_body(), st.sampled_from(["UTC", "Europe/London", "America/St_Johns"]))
def test_parser_on_damaged_pages(raw, tz):
    with only_data_quality_warnings():
        try:
            page = F.parse_customers_page(raw)
        except F.PageFormatError:
            return
        assert isinstance(page, F.ParsedPage)
        for v in (page.page_number, page.page_size, page.total_results):
            assert v is None or type(v) is int
        assert_contract_frames(F.build_frames([page], local_tz=tz))


def test_well_formed_page_survives_the_damage_strategy():
    """Guard against a vacuous property: valid pages do parse and keep their records."""
    raw = json.dumps({"results": [{"id": "a", "addresses": [{"type": "billing"}]},
                                  {"id": 7110701885}], "totalResults": 2}).encode()  # fmt: skip
    with only_data_quality_warnings():
        fr = F.build_frames([F.parse_customers_page(raw)])
    assert fr.customers["id"].tolist() == ["a", "7110701885"]
    assert fr.addresses["type"].tolist() == ["Billing"]


def test_invalid_utf8_is_replaced_not_deferred():
    raw = b'{"results":[{"id":"1","customerName":"Zo\xc3","note":"\xff\xfeok"}],"totalResults":1}'
    with pytest.warns(cf.DataQualityWarning, match="UTF-8"):
        fr = F.build_frames([F.parse_customers_page(raw)])
    assert fr.customers["customer_name"][0] == "Zo\ufffd"
    assert fr.customers["note"][0].endswith("ok")


def test_deep_nesting_is_a_page_format_error():
    deep = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(F.PageFormatError, match="nested"):
        F.parse_customers_page(b'{"results":[{"id":"1","note":' + deep + b"}]}")


# ------------------------------------------------------------------------------ records level


@SETTINGS
@given(st.lists(_record, max_size=8), st.sampled_from(["UTC", "Australia/Lord_Howe"]))
def test_normalize_customers_on_random_records(records, tz):
    with only_data_quality_warnings():
        fr = cf.normalize_customers(records, company_id=COMPANY, connection_id=CONNECTION,
                                    local_tz=tz)  # fmt: skip
    assert_contract_frames(fr)
    assert len(fr.customers) <= len(records)


@SETTINGS
@given(_page)
def test_normalize_customers_on_random_pages(doc):
    """A dict with a ``results`` list is unwrapped (other ``results``: ValueError naming it);
    a dict without one is a single record; anything else is a list of one non-record."""
    with only_data_quality_warnings():
        try:
            fr = cf.normalize_customers(doc if isinstance(doc, dict) else [doc])
        except ValueError as e:
            assert isinstance(doc, dict) and "results" in str(e)
            return
    assert_contract_frames(fr)


@pytest.mark.parametrize("records", [5, None, "abc", b"{}", 1.5])
def test_normalize_customers_refuses_non_iterables_with_value_error(records):
    with pytest.raises(ValueError, match="records"):
        cf.normalize_customers(records)


# ------------------------------------------------------------------------------ HTTP level


class _Holder:
    """What the mocked server answers; the hypothesis example sets it."""

    status = 200
    body = b""
    ctype = "application/json"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(self.status, content=self.body,
                              headers={"Content-Type": self.ctype})  # fmt: skip


@pytest.fixture
def hostile(httpx_mock):
    holder = _Holder()
    httpx_mock.add_callback(holder, is_reusable=True, is_optional=True)
    return holder


@pytest.fixture
def client():
    with cf.CodatCommerce(api_key="hostile-test-key", server_url=BASE,
                          retry_config=cf.RetryConfig("none")) as s:  # fmt: skip
        yield s


_STATUS = st.sampled_from([200, 200, 200, 200, 400, 401, 404, 409, 418, 429, 500, 502, 503])
_CTYPE = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/html",
                          "application/octet-stream", ""])  # fmt: skip


@HTTP_SETTINGS
@given(_body(_read_page), _STATUS, _CTYPE)
def test_read_customers_on_hostile_bodies(hostile, client, body, status, ctype):
    hostile.body, hostile.status, hostile.ctype = body, status, ctype
    with only_data_quality_warnings():
        try:
            fr = read_customers(client, COMPANY, CONNECTION, page_size=50, progress=False)
        except cf.CodatError:
            return
    assert_contract_frames(fr)


@HTTP_SETTINGS
@given(_body(), _STATUS, _CTYPE)
def test_list_and_get_on_hostile_bodies(hostile, client, body, status, ctype):
    hostile.body, hostile.status, hostile.ctype = body, status, ctype
    calls = (
        lambda: client.customers.list(request={"company_id": COMPANY,
                                               "connection_id": CONNECTION}),
        lambda: client.customers.get(request={"company_id": COMPANY,
                                              "connection_id": CONNECTION,
                                              "customer_id": "1"}),
    )  # fmt: skip
    with only_data_quality_warnings():
        for call in calls:
            try:
                out = call()
            except cf.CodatError:
                continue
            assert isinstance(out, models.Customers | models.Customer)


@pytest.mark.parametrize("body", [b'{"results": 5}', b'{"results":[],"x":' + b"[" * 100_000 + b"}"])
def test_list_models_refuse_odd_pages_with_a_codat_error(hostile, client, body):
    hostile.body = body
    with pytest.raises(models.SDKError):
        client.customers.list(request={"company_id": COMPANY, "connection_id": CONNECTION})


@pytest.mark.parametrize("error_body", [
    {"validation": {"errors": 5}}, {"validation": {"errors": [{"message": 5}]}},
    {"validation": {"errors": [None, 1, "x"], "warnings": {"a": 1}}}, {"error": {"a": [1]}},
])  # fmt: skip
@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
def test_hostile_error_bodies_are_codat_errors(httpx_mock, client, error_body, status):
    httpx_mock.add_response(status_code=status, json=error_body, is_reusable=True)
    with pytest.raises(cf.CodatError) as info:
        read_customers(client, COMPANY, CONNECTION, progress=False)
    str(info.value), repr(info.value)


def test_total_results_missing_is_a_codat_error(hostile, client):
    hostile.body = b'{"results":[{"id":"1"}],"pageNumber":1,"pageSize":50}'
    with pytest.raises(cf.CodatError, match="totalResults"):
        read_customers(client, COMPANY, CONNECTION, progress=False)


@pytest.mark.parametrize("total", [2**80, 10**15, -1, "many", 1.5, None])
def test_absurd_total_results_is_refused_quickly(hostile, client, total):
    hostile.body = json.dumps({"results": [{"id": "1"}], "pageSize": 1,
                               "totalResults": total}).encode()  # fmt: skip
    with pytest.raises(cf.CodatError, match="totalResults"):
        read_customers(client, COMPANY, CONNECTION, progress=False)


def test_total_results_moving_to_garbage_is_not_a_type_error(httpx_mock, client):
    n = {"calls": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        n["calls"] += 1
        page = int(parse_qs(request.url.query.decode())["page"][0])
        total = 4 if page == 1 else None
        return httpx.Response(200, json={"results": [{"id": f"{page}-{n['calls']}"}],
                                         "pageSize": 1, "totalResults": total})  # fmt: skip

    httpx_mock.add_callback(answer, is_reusable=True)
    with pytest.warns(cf.DataQualityWarning, match="changed"):
        fr = read_customers(client, COMPANY, CONNECTION, progress=False, max_passes=2)
    assert_contract_frames(fr)


# ------------------------------------------------------------------------------ request params

_TRAVERSAL = [
    "..", ".", "../..", "../../companies", "..%2f..%2f", "%2e%2e", "a/../../b", "a/b", "/",
    "//evil.example", "\\..\\..", "?page=99", "#frag", "a?b=c&d", "x;y", "\r\nX-Injected: 1",
    "\x00", " ", "%00", "%", "é", "李", "\U0001f600", "'; DROP TABLE customers;--", "cus_1",
    "http://127.0.0.1:1/", "@evil", "a:b", "~", "a b", "+", "&pageSize=1",
]  # fmt: skip


@pytest.mark.parametrize("customer_id", _TRAVERSAL + [7110701885])
def test_customer_id_is_one_escaped_segment(httpx_mock, client, customer_id):
    httpx_mock.add_response(json={"id": "x"})
    client.customers.get(request={"company_id": COMPANY, "connection_id": CONNECTION,
                                  "customer_id": customer_id})  # fmt: skip
    (req,) = httpx_mock.get_requests()
    raw = req.url.raw_path.decode("ascii")
    assert req.url.host == "codat.test"
    path, _, query = raw.partition("?")
    assert query == "" and "#" not in raw
    assert path.startswith(CUSTOMERS + "/")
    segment = path[len(CUSTOMERS) + 1:]
    assert "/" not in segment and "\\" not in segment
    assert segment not in (".", "..")
    assert all(0x21 <= ord(ch) < 0x7F for ch in segment)  # no raw space, CR, LF, NUL
    assert unquote(segment) == str(customer_id)


@SETTINGS
@given(st.text(min_size=1, max_size=40))
def test_any_customer_id_round_trips_as_one_segment(customer_id):
    transport_seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        transport_seen.append(request)
        return httpx.Response(200, json={"id": "x"})

    from codat_frames._http import path

    url = path("/c/{customer_id}", customer_id=customer_id)
    with httpx.Client(base_url=BASE, transport=httpx.MockTransport(handler)) as c:
        c.get(url)
    raw = transport_seen[0].url.raw_path.decode("ascii")
    assert raw.startswith("/c/") and "?" not in raw
    segment = raw[3:]
    assert "/" not in segment and segment not in (".", "..")
    assert unquote(segment) == customer_id  # st.text() has no lone surrogates


_BAD_IDS = ["..", "../" + COMPANY, COMPANY + "/..", COMPANY + "/x", COMPANY + "\n", " " + COMPANY,
            COMPANY.upper() + "?x=1", "{" + COMPANY + "}", "urn:uuid:" + COMPANY,
            COMPANY.replace("-", ""), "", "%2e%2e", COMPANY[:-1] + "%"]  # fmt: skip


@pytest.mark.parametrize("bad", _BAD_IDS)
@pytest.mark.parametrize("which", ["company_id", "connection_id"])
def test_path_ids_are_refused_before_any_request(httpx_mock, client, bad, which):
    ids = {"company_id": COMPANY, "connection_id": CONNECTION, which: bad}
    with pytest.raises(ValueError, match=which):
        client.customers.get(request={**ids, "customer_id": "1"})
    with pytest.raises(ValueError, match=which):
        client.customers.list(request=ids)
    with pytest.raises(ValueError, match=which):
        read_customers(client, ids["company_id"], ids["connection_id"], progress=False)
    if which == "company_id":
        with pytest.raises(ValueError, match="company_id"):
            client.connections.list(request={"company_id": bad})
    assert httpx_mock.get_requests() == []


_INJECT = ["id=1&&pageSize=1", "x&page=99", "a=b#frag", "name=\"a'; DROP TABLE x;--\"",
           "a\r\nX-Injected: 1", "\x00", "%26page%3D9", "../../etc/passwd", "李=é", "+ +",
           "a=b;c=d", "modifiedDate>2022-01-01T00:00:00Z||id!=x"]  # fmt: skip


@pytest.mark.parametrize("value", _INJECT)
def test_query_and_order_by_stay_single_parameters(httpx_mock, client, value):
    httpx_mock.add_response(json={"results": [], "pageNumber": 1, "pageSize": 100,
                                  "totalResults": 0}, is_reusable=True)  # fmt: skip
    client.customers.list(request={"company_id": COMPANY, "connection_id": CONNECTION,
                                   "query": value, "order_by": value, "page": 2})  # fmt: skip
    read_customers(client, COMPANY, CONNECTION, query=value, order_by=value, progress=False)
    client.companies.list(request={"query": value, "order_by": value})
    for req in httpx_mock.get_requests():
        raw = req.url.raw_path.decode("ascii")
        path, _, query = raw.partition("?")
        assert path in (CUSTOMERS, "/companies")
        assert "#" not in raw and all(0x21 <= ord(ch) < 0x7F for ch in raw)
        params = parse_qs(query, keep_blank_values=True, separator="&")
        assert params["query"] == [value] and params["orderBy"] == [value]
        assert set(params) <= {"page", "pageSize", "query", "orderBy"}
        assert all(len(v) == 1 for v in params.values())
    assert len(httpx_mock.get_requests()) == 3


def test_overlong_query_is_refused_before_any_request(httpx_mock, client):
    with pytest.raises(ValueError, match="query"):
        read_customers(client, COMPANY, CONNECTION, query="x" * 2048, progress=False)
    assert httpx_mock.get_requests() == []


def test_server_url_from_the_response_is_never_followed(httpx_mock, client):
    """``_links`` pointing elsewhere don't steer paging: pages are always built locally."""
    evil = {"href": "http://127.0.0.2:1/steal?key=1"}
    httpx_mock.add_callback(
        lambda r: httpx.Response(200, json={
            "results": [{"id": str(uuid.UUID(int=random.getrandbits(128)))}],
            "pageNumber": 1, "pageSize": 1, "totalResults": 3,
            "_links": {"self": evil, "current": evil, "next": evil},
        }),
        is_reusable=True,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.DataQualityWarning)
        read_customers(client, COMPANY, CONNECTION, progress=False)
    assert {urlsplit(str(r.url)).netloc for r in httpx_mock.get_requests()} == {"codat.test"}
