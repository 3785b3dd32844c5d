"""The client the seed describes: construction, the two seed examples, errors, retries,
validation and redaction. Every HTTP exchange is mocked with pytest-httpx (nothing leaves the
process except the one loopback test), and every wait goes to a fake sleep driving a fake clock.
"""

from __future__ import annotations

import base64
import copy
import email.utils
import http.server
import logging
import pickle
import threading
import time
import traceback
import types

import httpx
import pytest

import codat_frames
from codat_frames import BackoffStrategy, CodatCommerce, CodatError, RetryConfig, models
from codat_frames._http import DEFAULT_RETRY_CONFIG

COMPANY = "8a210b68-6988-11ed-a1eb-0242ac120002"
CONNECTION = "2e9d2c44-f675-40ba-8049-353bfcb5e171"
BASE = "https://api.codat.io"
CUSTOMERS_URL = f"{BASE}/companies/{COMPANY}/connections/{CONNECTION}/data/commerce-customers"
SEED_AUTH = "Basic BASE_64_ENCODED(API_KEY)"
NO_RETRY = RetryConfig("none", None)
# Short backoff without jitter (see the no_jitter fixture): waits 0.1, 0.2, 0.4, 0.8, then the
# next (1.0, capped) would pass max_elapsed_time -> exactly 5 attempts.
SHORT = RetryConfig("backoff", BackoffStrategy(100, 1000, 2.0, 2000), True)

# ---------------------------------------------------------------- real example bodies (inline)

# commerce-customers.openapi.json, list customers, example "BigCommerce" (verbatim), plus
# unknown fields at both levels to prove they are ignored.
BIGCOMMERCE_PAGE = {
    "results": [
        {
            "id": "1",
            "customerName": "Amy Jones",
            "emailAddress": "a.jackson@email.me",
            "defaultCurrency": "XXX",
            "phone": "07770 666777",
            "addresses": [
                {
                    "type": "Unknown",
                    "line1": "My Billing Address ./*drop table",
                    "city": "Portsmouth",
                    "region": "",
                    "country": "United Kingdom",
                    "postalCode": "PS13HJ",
                },
                {
                    "type": "Unknown",
                    "line1": "This is my address, I cant hit enter.",
                    "city": "Portsmouth",
                    "region": "",
                    "country": "United Kingdom",
                    "postalCode": "PS13HJ",
                },
            ],
            "createdDate": "2022-06-15T15:54:15Z",
            "modifiedDate": "2023-04-11T10:33:49Z",
            "sourceModifiedDate": "2022-06-15T15:54:15Z",
        },
        {
            "id": "2",
            "customerName": "Cust001 Cust001",
            "emailAddress": "Cust001@example.com",
            "defaultCurrency": "XXX",
            "phone": "05442 203941",
            "addresses": [],
            "createdDate": "2023-04-11T15:49:25Z",
            "modifiedDate": "2023-04-17T15:42:55Z",
            "sourceModifiedDate": "2023-04-11T15:49:25Z",
        },
    ],
    "pageNumber": 1,
    "pageSize": 2,
    "totalResults": 201,
    "_links": {
        "current": {
            "href": "/companies/d1ebcf6d-f7f9-4841-8a06-fec12c492a48/connections/7c0a21e8-938a-40a4-b0f7-5ab5d46804b0/data/commerce-customers?page=1&pageSize=2"  # noqa: E501
        },
        "self": {
            "href": "/companies/d1ebcf6d-f7f9-4841-8a06-fec12c492a48/connections/7c0a21e8-938a-40a4-b0f7-5ab5d46804b0/data/commerce-customers"  # noqa: E501
        },
        "next": {
            "href": "/companies/d1ebcf6d-f7f9-4841-8a06-fec12c492a48/connections/7c0a21e8-938a-40a4-b0f7-5ab5d46804b0/data/commerce-customers?page=2&pageSize=2"  # noqa: E501
        },
    },
}

# get customer, example "WooCommerce" (verbatim): lower-level empties and a local time.
WOOCOMMERCE_CUSTOMER = {
    "id": "201694267",
    "customerName": "Qa Test",
    "emailAddress": "a.macra@codat.io",
    "phone": "",
    "addresses": [
        {
            "type": "Billing",
            "line1": "",
            "line2": "",
            "city": "",
            "region": "",
            "country": "",
            "postalCode": "",
        }
    ],
    "createdDate": "2021-03-11T09:04:27",
    "modifiedDate": "2021-07-13T16:19:00Z",
    "sourceModifiedDate": "2021-03-11T09:07:00",
}

# get customer, example "Mollie" (verbatim): no phone, currency, note or sourceModifiedDate.
MOLLIE_CUSTOMER = {
    "id": "cst_NUkBHQmekz",
    "customerName": "Frod Baggins",
    "emailAddress": "frodo.baggings@theshire.com",
    "addresses": [],
    "createdDate": "2022-01-18T11:41:54",
    "modifiedDate": "2022-03-17T15:47:28Z",
}

# platform-companies-connections.openapi.json, list companies, example "One company".
ONE_COMPANY_PAGE = {
    "results": [
        {
            "id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "name": "My Test Company",
            "description": "My Test Company make testing software",
            "platform": "",
            "redirect": "https://link.codat.io/company/3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "lastSync": "2022-01-01T12:30:00.000Z",
            "dataConnections": [
                {
                    "id": "51baa045-4836-4317-a42e-3542e991e581",
                    "integrationId": "1c312d69-e638-46d4-ad31-72e6c3ba8390",
                    "integrationKey": "vjms",
                    "sourceId": "396c3158-5dd7-481b-a7c4-a795ca31792b",
                    "platformName": "Pandle",
                    "linkUrl": "https://link-api.codat.io/companies/3fa85f64-5717-4562-b3fc-2c963f66afa6/connections/51baa045-4836-4317-a42e-3542e991e581/start",  # noqa: E501
                    "status": "Linked",
                    "lastSync": "2022-01-01T12:30:00.000Z",
                    "created": "2022-01-01T11:30:00Z",
                    "sourceType": "Accounting",
                }
            ],
            "created": "2022-01-01T11:30:00Z",
            "createdByUserName": "Mike Smith",
            "products": ["spend-insights", "lending", "expenses-v1", "commerce"],
            "referenceSubsidiaryCompanies": [],
        }
    ],
    "pageNumber": 1,
    "pageSize": 100,
    "totalResults": 1,
    "_links": {
        "current": {"href": "/companies?page=1&pageSize=100"},
        "self": {"href": "/companies"},
    },
}

# list connections, example "Connections" (its paging fields really are all 0).
CONNECTIONS_PAGE = {
    "results": [
        {
            "id": "ee2eb431-c0fa-4dc9-93fa-d29781c12bcd",
            "integrationId": "bf083d72-62c7-493e-aec9-81b4dbba7e2c",
            "integrationKey": "dfxm",
            "sourceId": "bdd831ce-eebd-4896-89a7-20e5ee8989ee",
            "platformName": "Basiq",
            "linkUrl": "https://link-api.codat.io/companies/86bd88cb-44ab-4dfb-b32f-87b19b14287f/connections/ee2eb431-c0fa-4dc9-93fa-d29781c12bcd/start",  # noqa: E501
            "status": "Linked",
            "lastSync": "2022-10-27T10:22:43.6464237Z",
            "created": "2022-10-27T09:53:29Z",
            "sourceType": "Banking",
        }
    ],
    "pageNumber": 0,
    "pageSize": 0,
    "totalResults": 0,
    "_links": {
        "self": {"href": "string"},
        "current": {"href": "string"},
        "next": {"href": "string"},
        "previous": {"href": "string"},
    },
}


def _err(status: int, service: str, error: str, corr: str = "bc997528a9d7abb9161ef45f05d38599"):
    return {
        "statusCode": status,
        "service": service,
        "error": error,
        "correlationId": corr,
        "canBeRetried": "Unknown",
        "detailedErrorCode": 0,
    }


# The spec's error examples, status by status (402's body really says 429, 503's says 500).
ERROR_BODIES = {
    400: _err(400, "ClientsApi", "Error parsing query - Malformed query."),
    401: _err(401, "PublicApi", "Unauthorized", "7eb40d6b415d7bcd99ce658268284056"),
    402: _err(429, "PublicApi", "You have exceeded the 50-company limit that applies to a Free plan. We recommend that you delete any companies you no longer need and retry the request."),  # noqa: E501
    403: _err(403, "PublicApi", "You are using an outdated API key or a key not associated with that resource."),  # noqa: E501
    404: _err(404, "PublicApi", "Data connection a22dd66b-564a-4832-9b37-7b3ce4aeb7de not found", "8fa2b5f4794970a4ee73758f612e8df0"),  # noqa: E501
    409: _err(409, "PublicApi", "The data set has not been requested."),
    429: _err(429, "PublicApi", "You have made too many requests in a given amount of time; please retry later."),  # noqa: E501
    500: _err(500, "PublicApi", "There is a problem with our server. Please try again later."),
    503: _err(500, "PublicApi", "The Codat API is temporarily offline for maintenance. Please try again later."),  # noqa: E501
}  # fmt: skip
LIST_STATUSES = [400, 401, 402, 403, 404, 409, 429, 500, 503]
GET_STATUSES = [401, 402, 403, 404, 409, 429, 500, 503]
HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"

GET_REQ = {"company_id": COMPANY, "connection_id": CONNECTION, "customer_id": "<value>"}
LIST_REQ = {"company_id": COMPANY, "connection_id": CONNECTION}


# ---------------------------------------------------------------- fixtures

# One transport for the whole module: each new httpx transport builds an SSL context (~50 ms),
# which would dominate the run time. pytest-httpx patches the transport class, so requests
# never reach the pool; tests of the default wiring build their clients without these.
SHARED_TRANSPORT = httpx.HTTPTransport()
SHARED_ASYNC_TRANSPORT = httpx.AsyncHTTPTransport()


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("CODAT_API_KEY", raising=False)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def no_jitter(monkeypatch):
    monkeypatch.setattr(
        "codat_frames._http.random", types.SimpleNamespace(uniform=lambda a, b: 0.0)
    )


@pytest.fixture
def make(fake_time):
    """Build clients wired to the fake clock; closes them afterwards."""
    made: list[CodatCommerce] = []

    def _make(**kw) -> CodatCommerce:
        kw.setdefault("auth_header", SEED_AUTH)
        kw.setdefault("transport", SHARED_TRANSPORT)
        kw.setdefault("async_transport", SHARED_ASYNC_TRANSPORT)
        kw.setdefault("sleep", fake_time.sleep)
        kw.setdefault("async_sleep", fake_time.async_sleep)
        kw.setdefault("clock", fake_time.clock)
        s = CodatCommerce(**kw)
        made.append(s)
        return s

    yield _make
    for s in made:
        s.close()


@pytest.fixture
def s(make) -> CodatCommerce:
    return make()


@pytest.fixture
def s_noretry(make) -> CodatCommerce:
    return make(retry_config=NO_RETRY)


# ---------------------------------------------------------------- construction


def test_auth_header_sent_exactly_as_the_seed(httpx_mock, s):
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    s.companies.list()
    req = httpx_mock.get_request()
    assert req.headers["Authorization"] == SEED_AUTH
    assert req.headers["User-Agent"] == f"codat-frames/{codat_frames.__version__}"
    assert str(req.url) == f"{BASE}/companies?page=1&pageSize=100"
    assert req.method == "GET"


def test_api_key_builds_basic_header(httpx_mock, make):
    s = make(auth_header=None, api_key="my-raw-key")
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    s.companies.list()
    expected = "Basic " + base64.b64encode(b"my-raw-key").decode()
    assert httpx_mock.get_request().headers["Authorization"] == expected


def test_env_key(httpx_mock, monkeypatch):
    monkeypatch.setenv("CODAT_API_KEY", "env-key")
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    with CodatCommerce() as s:
        s.companies.list()
    expected = "Basic " + base64.b64encode(b"env-key").decode()
    assert httpx_mock.get_request().headers["Authorization"] == expected


def test_explicit_key_wins_over_env(httpx_mock, monkeypatch):
    monkeypatch.setenv("CODAT_API_KEY", "env-key")
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    with CodatCommerce(auth_header=SEED_AUTH) as s:
        s.companies.list()
    assert httpx_mock.get_request().headers["Authorization"] == SEED_AUTH


@pytest.mark.parametrize("env", [None, ""])
def test_no_key_is_a_clear_error(monkeypatch, env):
    if env is not None:
        monkeypatch.setenv("CODAT_API_KEY", env)
    with pytest.raises(ValueError) as ei:
        CodatCommerce()
    msg = str(ei.value)
    assert "CODAT_API_KEY" in msg and "auth_header" in msg and "api_key" in msg


def test_both_auth_header_and_api_key_is_an_error():
    with pytest.raises(ValueError, match="not both"):
        CodatCommerce(auth_header=SEED_AUTH, api_key="k")


@pytest.mark.parametrize(
    "kw",
    [
        {"auth_header": ""},
        {"auth_header": "   "},
        {"auth_header": "Basic abc\r\nX-Injected: 1"},
        {"api_key": ""},
        {"api_key": 123},
    ],
)
def test_bad_auth_values(kw):
    with pytest.raises(ValueError) as ei:
        CodatCommerce(**kw)
    assert "auth_header" in str(ei.value) or "api_key" in str(ei.value)


def test_default_server_url(s):
    assert s.server_url == "https://api.codat.io"


def test_custom_server_url_with_path_prefix(httpx_mock, make):
    s = make(server_url="http://localhost:8080/proxy/codat/")
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    s.companies.list()
    assert str(httpx_mock.get_request().url) == (
        "http://localhost:8080/proxy/codat/companies?page=1&pageSize=100"
    )


@pytest.mark.parametrize(
    "url", ["ftp://api.codat.io", "api.codat.io", "https://", "http://a:notaport", "", 42]
)
def test_bad_server_url(url):
    with pytest.raises(ValueError, match="server_url"):
        CodatCommerce(auth_header=SEED_AUTH, server_url=url)


def test_timeout_ms_reaches_the_request(httpx_mock, make):
    s = make(timeout_ms=2500)
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    s.companies.list()
    timeout = httpx_mock.get_request().extensions["timeout"]
    assert timeout == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}


def test_default_timeout_is_60s_and_none_disables(httpx_mock, make):
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    make().companies.list()
    make(timeout_ms=None).companies.list()
    first, second = httpx_mock.get_requests()
    assert set(first.extensions["timeout"].values()) == {60.0}
    assert set(second.extensions["timeout"].values()) == {None}


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1000", True])
def test_bad_timeout_ms(bad):
    with pytest.raises(ValueError, match="timeout_ms"):
        CodatCommerce(auth_header=SEED_AUTH, timeout_ms=bad)


@pytest.mark.parametrize("ok", [1, 5, 10])
def test_max_concurrency_in_bounds(ok):
    with CodatCommerce(auth_header=SEED_AUTH, max_concurrency=ok) as s:
        assert s.max_concurrency == ok


@pytest.mark.parametrize("bad", [0, 11, -3, 2.0, "4", True, None])
def test_max_concurrency_out_of_bounds(bad):
    with pytest.raises(ValueError, match="max_concurrency"):
        CodatCommerce(auth_header=SEED_AUTH, max_concurrency=bad)


def test_default_retry_config_is_codats():
    expected = RetryConfig("backoff", BackoffStrategy(500, 60000, 1.5, 3600000), True)
    assert DEFAULT_RETRY_CONFIG == expected
    with CodatCommerce(auth_header=SEED_AUTH) as s:
        assert s.retry_config == expected
    # positional order as Codat's SDK
    b = BackoffStrategy(500, 60000, 1.5, 3600000)
    assert (b.initial_interval, b.max_interval, b.exponent, b.max_elapsed_time) == (
        500,
        60000,
        1.5,
        3600000,
    )
    rc = RetryConfig("backoff", b, False)
    assert (rc.strategy, rc.backoff, rc.retry_connection_errors) == ("backoff", b, False)


@pytest.mark.parametrize("bad", ["backoff", {"strategy": "none"}, 3, DEFAULT_RETRY_CONFIG.backoff])
def test_retry_config_must_be_a_retryconfig(bad):
    with pytest.raises(ValueError, match="retry_config"):
        CodatCommerce(auth_header=SEED_AUTH, retry_config=bad)


def test_retry_config_values_checked():
    with pytest.raises(ValueError, match="strategy"):
        RetryConfig("exponential", BackoffStrategy(1, 1, 1, 1))
    with pytest.raises(ValueError, match="BackoffStrategy"):
        RetryConfig("backoff")
    with pytest.raises(ValueError, match="initial_interval"):
        BackoffStrategy(-1, 1, 1.5, 1)
    with pytest.raises(ValueError, match="exponent"):
        BackoffStrategy(1, 1, 0.5, 1)


def test_context_manager_closes(httpx_mock):
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    with CodatCommerce(auth_header=SEED_AUTH) as s:
        s.companies.list()
        client = s._transport._client
        assert client is not None and not client.is_closed
    assert client.is_closed
    assert s._transport._client is None


def test_close_is_idempotent():
    s = CodatCommerce(auth_header=SEED_AUTH)
    s.close()
    s.close()


# ---------------------------------------------------------------- the seed's examples


def test_seed_example_get(httpx_mock):
    httpx_mock.add_response(url=f"{CUSTOMERS_URL}/%3Cvalue%3E", json=WOOCOMMERCE_CUSTOMER)

    # --- verbatim from the seed, import line aside
    # fmt: off
    from codat_frames import CodatCommerce

    s = CodatCommerce(
        auth_header="Basic BASE_64_ENCODED(API_KEY)",
    )

    res = s.customers.get(request={
        "company_id": "8a210b68-6988-11ed-a1eb-0242ac120002",
        "connection_id": "2e9d2c44-f675-40ba-8049-353bfcb5e171",
        "customer_id": "<value>",
    })

    if res is not None:
        # handle response
        pass
    # fmt: on
    # --- end of the seed's example

    s.close()
    assert isinstance(res, models.Customer)
    assert res.id == "201694267"
    assert res.customer_name == "Qa Test"
    assert res.email_address == "a.macra@codat.io"
    assert res.phone == ""
    assert res.default_currency is None and res.note is None
    assert res.addresses == [models.Address("Billing", "", "", "", "", "", "")]
    assert res.created_date == "2021-03-11T09:04:27"
    assert res.modified_date == "2021-07-13T16:19:00Z"
    assert res.source_modified_date == "2021-03-11T09:07:00"
    req = httpx_mock.get_request()
    assert (
        req.url.raw_path
        == (
            f"/companies/{COMPANY}/connections/{CONNECTION}/data/commerce-customers/%3Cvalue%3E"
        ).encode()
    )
    assert req.url.query == b""
    assert req.headers["Authorization"] == "Basic BASE_64_ENCODED(API_KEY)"


def test_seed_example_list(httpx_mock):
    httpx_mock.add_response(
        url=CUSTOMERS_URL,
        match_params={
            "page": "1",
            "pageSize": "100",
            "query": "id=e3334455-1aed-4e71-ab43-6bccf12092ee",
            "orderBy": "-modifiedDate",
        },
        json=BIGCOMMERCE_PAGE,
    )

    # --- verbatim from the seed, import line aside
    # fmt: off
    from codat_frames import CodatCommerce

    s = CodatCommerce(
        auth_header="Basic BASE_64_ENCODED(API_KEY)",
    )

    res = s.customers.list(request={
        "company_id": "8a210b68-6988-11ed-a1eb-0242ac120002",
        "connection_id": "2e9d2c44-f675-40ba-8049-353bfcb5e171",
        "order_by": "-modifiedDate",
        "page": 1,
        "page_size": 100,
        "query": "id=e3334455-1aed-4e71-ab43-6bccf12092ee",
    })

    if res is not None:
        # handle response
        pass
    # fmt: on
    # --- end of the seed's example

    s.close()
    assert isinstance(res, models.Customers)
    _check_bigcommerce_page(res)
    req = httpx_mock.get_request()
    assert req.url.path == f"/companies/{COMPANY}/connections/{CONNECTION}/data/commerce-customers"
    assert b"query=id%3De3334455-1aed-4e71-ab43-6bccf12092ee" in req.url.query


def _check_bigcommerce_page(res: models.Customers) -> None:
    assert (res.page_number, res.page_size, res.total_results) == (1, 2, 201)
    assert [c.id for c in res.results] == ["1", "2"]
    amy = res.results[0]
    assert amy.customer_name == "Amy Jones"
    assert amy.email_address == "a.jackson@email.me"
    assert amy.phone == "07770 666777"
    assert amy.default_currency == "XXX"
    assert amy.note is None
    assert amy.created_date == "2022-06-15T15:54:15Z"
    assert amy.modified_date == "2023-04-11T10:33:49Z"
    assert amy.source_modified_date == "2022-06-15T15:54:15Z"
    assert amy.addresses == [
        models.Address(
            type="Unknown",
            line1="My Billing Address ./*drop table",
            line2=None,
            city="Portsmouth",
            region="",
            country="United Kingdom",
            postal_code="PS13HJ",
        ),
        models.Address(
            "Unknown",
            "This is my address, I cant hit enter.",
            None,
            "Portsmouth",
            "",
            "United Kingdom",
            "PS13HJ",
        ),
    ]
    assert res.results[1].addresses == []
    links = res.links
    assert isinstance(links, models.Links)
    prefix = (
        "/companies/d1ebcf6d-f7f9-4841-8a06-fec12c492a48/connections/"
        "7c0a21e8-938a-40a4-b0f7-5ab5d46804b0/data/commerce-customers"
    )
    assert links.self.href == prefix
    assert links.current.href == prefix + "?page=1&pageSize=2"
    assert links.next.href == prefix + "?page=2&pageSize=2"
    assert links.previous is None


def test_get_with_request_model_numeric_id_and_unknown_fields(httpx_mock, s):
    body = dict(MOLLIE_CUSTOMER, id=7110701885, someFutureField={"x": [1, 2]}, supplementalData={})
    httpx_mock.add_response(url=f"{CUSTOMERS_URL}/7110701885", json=body)
    req = models.GetCustomerRequest(
        company_id=COMPANY, connection_id=CONNECTION, customer_id="7110701885"
    )
    res = s.customers.get(request=req)
    assert res.id == "7110701885"
    assert res.customer_name == "Frod Baggins"
    assert res.phone is None and res.default_currency is None and res.source_modified_date is None
    assert res.addresses == []
    assert not hasattr(res, "someFutureField") and not hasattr(res, "some_future_field")


def test_missing_addresses_and_null_fields(httpx_mock, s):
    body = {"id": "x", "customerName": None, "phone": None, "modifiedDate": None}
    httpx_mock.add_response(url=f"{CUSTOMERS_URL}/x", json=body)
    res = s.customers.get(request=dict(GET_REQ, customer_id="x"))
    assert res.addresses is None
    assert res.customer_name is None and res.modified_date is None


def test_list_with_request_model_and_defaults(httpx_mock, s):
    page = copy.deepcopy(BIGCOMMERCE_PAGE)
    page["someNewTopLevel"] = 1
    page["results"][0]["unknownField"] = "ignored"
    page["results"][0]["addresses"][0]["geo"] = {"lat": 1}
    httpx_mock.add_response(
        url=CUSTOMERS_URL, match_params={"page": "1", "pageSize": "100"}, json=page
    )
    res = s.customers.list(
        request=models.ListCustomersRequest(company_id=COMPANY, connection_id=CONNECTION)
    )
    _check_bigcommerce_page(res)


def test_list_query_language_is_url_encoded(httpx_mock, s):
    q = "{totalAmount > 100 || totalAmount < 50} && status != paid && name~O'Brien #1"
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    s.customers.list(
        request=dict(LIST_REQ, page=3, page_size=5000, query=q, order_by="modifiedDate")
    )
    req = httpx_mock.get_request()
    assert dict(req.url.params) == {
        "page": "3",
        "pageSize": "5000",
        "query": q,
        "orderBy": "modifiedDate",
    }
    assert b"&&" not in req.url.query and b"#" not in req.url.query and b" " not in req.url.query


def test_list_200_with_non_json_body_is_sdkerror(httpx_mock, s):
    httpx_mock.add_response(text="<html>maintenance</html>", headers={"content-type": "text/html"})
    with pytest.raises(models.SDKError) as ei:
        s.customers.list(request=LIST_REQ)
    assert ei.value.status_code == 200 and "maintenance" in ei.value.body


def test_list_200_with_json_array_is_sdkerror(httpx_mock, s):
    httpx_mock.add_response(json=[1, 2])
    with pytest.raises(models.SDKError, match="not an object"):
        s.customers.list(request=LIST_REQ)


def test_companies_list(httpx_mock, s):
    httpx_mock.add_response(
        url=f"{BASE}/companies",
        match_params={"page": "2", "pageSize": "10", "query": "name~Test", "orderBy": "-created"},
        json=ONE_COMPANY_PAGE,
    )
    res = s.companies.list(
        request={"page": 2, "page_size": 10, "query": "name~Test", "order_by": "-created"}
    )
    assert isinstance(res, models.Companies)
    assert (res.page_number, res.page_size, res.total_results) == (1, 100, 1)
    (c,) = res.results
    assert isinstance(c, models.Company)
    assert c.id == "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert c.name == "My Test Company"
    assert c.products == ["spend-insights", "lending", "expenses-v1", "commerce"]
    (conn,) = c.data_connections
    assert isinstance(conn, models.Connection)
    assert (conn.id, conn.platform_name, conn.source_type, conn.status) == (
        "51baa045-4836-4317-a42e-3542e991e581",
        "Pandle",
        "Accounting",
        "Linked",
    )
    assert res.links.self.href == "/companies"


def test_companies_list_with_request_model(httpx_mock, s):
    httpx_mock.add_response(
        url=f"{BASE}/companies",
        match_params={"page": "1", "pageSize": "100"},
        json=ONE_COMPANY_PAGE,
    )
    res = s.companies.list(request=models.ListCompaniesRequest())
    assert res.results[0].name == "My Test Company"


def test_connections_list(httpx_mock, s):
    httpx_mock.add_response(
        url=f"{BASE}/companies/{COMPANY}/connections",
        match_params={"page": "1", "pageSize": "100"},
        json=CONNECTIONS_PAGE,
    )
    res = s.connections.list(request={"company_id": COMPANY, "page": 1, "page_size": 100})
    assert isinstance(res, models.Connections)
    (conn,) = res.results
    assert conn.platform_name == "Basiq" and conn.source_type == "Banking"
    assert conn.status == "Linked" and conn.integration_key == "dfxm"
    assert conn.last_sync == "2022-10-27T10:22:43.6464237Z"
    assert res.links.previous.href == "string"


def _company(i: int) -> dict:
    return dict(ONE_COMPANY_PAGE["results"][0], id=f"00000000-0000-0000-0000-00000000000{i}")


def test_companies_iter_all(httpx_mock, s):
    for page, ids in ((1, [1, 2]), (2, [3, 4]), (3, [5])):
        httpx_mock.add_response(
            url=f"{BASE}/companies",
            match_params={"page": str(page), "pageSize": "2"},
            json={
                "results": [_company(i) for i in ids],
                "pageNumber": page,
                "pageSize": 2,
                "totalResults": 5,
            },
        )
    got = [c.id[-1] for c in s.companies.iter_all(page_size=2)]
    assert got == ["1", "2", "3", "4", "5"]
    assert len(httpx_mock.get_requests()) == 3


def test_connections_iter_all(httpx_mock, s):
    conn = CONNECTIONS_PAGE["results"][0]
    for page, n in ((1, 2), (2, 1)):
        httpx_mock.add_response(
            url=f"{BASE}/companies/{COMPANY}/connections",
            match_params={"page": str(page), "pageSize": "2"},
            json={
                "results": [dict(conn, id=f"{page}-{k}") for k in range(n)],
                "pageNumber": page,
                "pageSize": 2,
                "totalResults": 3,
            },
        )
    got = [c.id for c in s.connections.iter_all(COMPANY, page_size=2)]
    assert got == ["1-0", "1-1", "2-0"]


def test_connections_iter_all_survives_zero_paging_fields(httpx_mock, s):
    httpx_mock.add_response(json=CONNECTIONS_PAGE)  # pageSize/totalResults 0 as in the spec
    assert [c.platform_name for c in s.connections.iter_all(COMPANY)] == ["Basiq"]


# ---------------------------------------------------------------- errors


def _check_error_message(e: models.ErrorMessage, status: int) -> None:
    body = ERROR_BODIES[status]
    assert isinstance(e, CodatError)
    assert isinstance(e.data, models.ErrorMessageData)
    d = e.data
    assert d.status_code == body["statusCode"]
    assert d.service == body["service"]
    assert d.error == body["error"]
    assert d.correlation_id == body["correlationId"]
    assert d.can_be_retried == "Unknown"
    assert d.detailed_error_code == 0
    assert d.validation is None
    assert e.status_code == status
    assert e.raw_response is not None and e.raw_response.status_code == status
    msg = str(e)
    assert str(status) in msg and body["error"] in msg and body["correlationId"] in msg


@pytest.mark.parametrize("status", LIST_STATUSES)
def test_list_documented_json_errors(httpx_mock, s_noretry, status):
    httpx_mock.add_response(status_code=status, json=ERROR_BODIES[status])
    with pytest.raises(models.ErrorMessage) as ei:
        s_noretry.customers.list(request=LIST_REQ)
    _check_error_message(ei.value, status)
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize("status", GET_STATUSES)
def test_get_documented_json_errors(httpx_mock, s_noretry, status):
    httpx_mock.add_response(status_code=status, json=ERROR_BODIES[status])
    with pytest.raises(models.ErrorMessage) as ei:
        s_noretry.customers.get(request=GET_REQ)
    _check_error_message(ei.value, status)


@pytest.mark.parametrize("status", [401, 404, 429])
def test_platform_documented_json_errors(httpx_mock, s_noretry, status):
    httpx_mock.add_response(status_code=status, json=ERROR_BODIES[status])
    httpx_mock.add_response(status_code=status, json=ERROR_BODIES[status])
    with pytest.raises(models.ErrorMessage):
        s_noretry.companies.list()
    with pytest.raises(models.ErrorMessage):
        s_noretry.connections.list(request={"company_id": COMPANY})


def test_error_message_with_validation(httpx_mock, s_noretry):
    body = dict(
        ERROR_BODIES[400],
        validation={
            "errors": [
                {"itemId": "q", "message": "pageSize too big", "validatorName": "Paging"},
                {"message": "second"},
            ],
            "warnings": [{"itemId": "w", "message": "careful"}],
        },
    )
    httpx_mock.add_response(status_code=400, json=body)
    with pytest.raises(models.ErrorMessage) as ei:
        s_noretry.customers.list(request=LIST_REQ)
    v = ei.value.data.validation
    assert v.errors == [
        models.ValidationItem("q", "pageSize too big", "Paging"),
        models.ValidationItem(None, "second", None),
    ]
    assert v.warnings == [models.ValidationItem("w", "careful", None)]
    assert "pageSize too big" in str(ei.value)


def _check_sdk_error(e: models.SDKError, status: int, body: str) -> None:
    assert isinstance(e, CodatError)
    assert not isinstance(e, models.ErrorMessage)
    assert e.status_code == status
    assert e.body == body
    assert isinstance(e.message, str) and e.message
    assert e.raw_response is not None and e.raw_response.status_code == status
    assert str(status) in str(e)


@pytest.mark.parametrize("status", LIST_STATUSES)
@pytest.mark.parametrize(
    "body,ctype",
    [
        (HTML, "text/html"),
        ("Service Unavailable", "text/plain"),
        ("{not json", "application/json"),
        ("[1, 2]", "application/json"),
        ("", "application/json"),
    ],
)
def test_list_undocumented_bodies_are_sdkerror(httpx_mock, s_noretry, status, body, ctype):
    httpx_mock.add_response(status_code=status, text=body, headers={"content-type": ctype})
    with pytest.raises(models.SDKError) as ei:
        s_noretry.customers.list(request=LIST_REQ)
    _check_sdk_error(ei.value, status, body)


@pytest.mark.parametrize("status", GET_STATUSES)
def test_get_html_bodies_are_sdkerror(httpx_mock, s_noretry, status):
    httpx_mock.add_response(status_code=status, html=HTML)
    with pytest.raises(models.SDKError) as ei:
        s_noretry.customers.get(request=GET_REQ)
    _check_sdk_error(ei.value, status, HTML)
    assert "Bad Gateway" in str(ei.value)  # a readable snippet of the body


@pytest.mark.parametrize("status", [405, 410, 418, 422, 502, 504, 599])
@pytest.mark.parametrize("op", ["get", "list"])
def test_undocumented_statuses_are_sdkerror(httpx_mock, s_noretry, status, op):
    body = {"statusCode": status, "error": "odd", "correlationId": "c"}
    httpx_mock.add_response(status_code=status, json=body)
    with pytest.raises(models.SDKError) as ei:
        if op == "get":
            s_noretry.customers.get(request=GET_REQ)
        else:
            s_noretry.customers.list(request=LIST_REQ)
    assert ei.value.status_code == status
    assert '"error"' in ei.value.body


def test_400_on_get_is_sdkerror(httpx_mock, s):
    httpx_mock.add_response(status_code=400, json=ERROR_BODIES[400])
    with pytest.raises(models.SDKError) as ei:
        s.customers.get(request=GET_REQ)
    assert not isinstance(ei.value, models.ErrorMessage)
    assert ei.value.status_code == 400
    assert len(httpx_mock.get_requests()) == 1  # 400 is never retried


def test_one_except_catches_all(httpx_mock, s_noretry):
    httpx_mock.add_response(status_code=404, json=ERROR_BODIES[404])
    httpx_mock.add_response(status_code=504, html=HTML)
    httpx_mock.add_exception(httpx.ConnectError("refused"))
    caught = []
    for _ in range(3):
        try:
            s_noretry.customers.list(request=LIST_REQ)
        except codat_frames.CodatError as e:
            caught.append(type(e))
    assert caught == [models.ErrorMessage, models.SDKError, models.SDKError]
    assert issubclass(models.ErrorMessage, CodatError) and issubclass(models.SDKError, CodatError)


# ---------------------------------------------------------------- retries


def test_429_retry_after_seconds_then_200(httpx_mock, s, fake_time):
    httpx_mock.add_response(status_code=429, json=ERROR_BODIES[429], headers={"Retry-After": "7"})
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    res = s.customers.list(request=LIST_REQ)
    assert res.total_results == 201
    assert fake_time.sleeps == [7.0]
    assert len(httpx_mock.get_requests()) == 2


def test_429_retry_after_http_date(httpx_mock, s, fake_time):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    httpx_mock.add_response(status_code=429, json=ERROR_BODIES[429], headers={"Retry-After": when})
    httpx_mock.add_response(json=WOOCOMMERCE_CUSTOMER)
    s.customers.get(request=GET_REQ)
    assert len(fake_time.sleeps) == 1
    assert 27.0 <= fake_time.sleeps[0] <= 30.0


def test_retry_after_in_the_past_is_zero(httpx_mock, s, fake_time):
    httpx_mock.add_response(
        status_code=503,
        json=ERROR_BODIES[503],
        headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
    )
    httpx_mock.add_response(json=WOOCOMMERCE_CUSTOMER)
    s.customers.get(request=GET_REQ)
    assert fake_time.sleeps == [0.0]


def test_retry_after_capped_at_max_interval(httpx_mock, s, fake_time):
    httpx_mock.add_response(status_code=429, json=ERROR_BODIES[429], headers={"Retry-After": "600"})
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    s.customers.list(request=LIST_REQ)
    assert fake_time.sleeps == [60.0]  # max_interval 60 000 ms


def test_garbage_retry_after_falls_back_to_backoff(httpx_mock, s, fake_time, no_jitter):
    httpx_mock.add_response(
        status_code=429, json=ERROR_BODIES[429], headers={"Retry-After": "soon"}
    )
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    s.customers.list(request=LIST_REQ)
    assert fake_time.sleeps == [0.5]


def test_503_then_200_uses_backoff(httpx_mock, s, fake_time):
    httpx_mock.add_response(status_code=503, json=ERROR_BODIES[503])
    httpx_mock.add_response(status_code=503, html=HTML)
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    s.customers.list(request=LIST_REQ)
    assert len(fake_time.sleeps) == 2
    # 500 ms * 1.5**attempt plus a little jitter
    assert 0.5 <= fake_time.sleeps[0] <= 0.75
    assert 0.75 <= fake_time.sleeps[1] <= 1.0


@pytest.mark.parametrize("status", [408, 500, 502, 504])
def test_other_retryable_statuses(httpx_mock, s, fake_time, status):
    httpx_mock.add_response(status_code=status, html=HTML)
    httpx_mock.add_response(json=WOOCOMMERCE_CUSTOMER)
    assert s.customers.get(request=GET_REQ).id == "201694267"
    assert len(fake_time.sleeps) == 1


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409])
def test_client_errors_are_not_retried(httpx_mock, s, fake_time, status):
    httpx_mock.add_response(status_code=status, json=ERROR_BODIES[status])
    with pytest.raises(models.ErrorMessage):
        s.customers.list(request=LIST_REQ)
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_transport_error_then_200(httpx_mock, s, fake_time, exc):
    httpx_mock.add_exception(exc)
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    assert s.customers.list(request=LIST_REQ).total_results == 201
    assert len(fake_time.sleeps) == 1 and 0.5 <= fake_time.sleeps[0] <= 0.75


def test_exhaustion_raises_last_error_message(httpx_mock, make, fake_time, no_jitter):
    s = make(retry_config=SHORT)
    httpx_mock.add_response(status_code=503, json=ERROR_BODIES[503], is_reusable=True)
    with pytest.raises(models.ErrorMessage) as ei:
        s.customers.list(request=LIST_REQ)
    assert ei.value.status_code == 503
    assert fake_time.sleeps == [0.1, 0.2, 0.4, 0.8]
    assert len(httpx_mock.get_requests()) == 5


def test_exhaustion_with_codat_default_stops_within_an_hour(httpx_mock, s, fake_time):
    httpx_mock.add_response(status_code=500, json=ERROR_BODIES[500], is_reusable=True)
    with pytest.raises(models.ErrorMessage) as ei:
        s.customers.get(request=GET_REQ)
    assert ei.value.status_code == 500
    assert sum(fake_time.sleeps) <= 3600
    assert max(fake_time.sleeps) <= 60
    assert len(httpx_mock.get_requests()) == len(fake_time.sleeps) + 1


def test_exhaustion_raises_sdkerror_for_connection_error(httpx_mock, make, fake_time, no_jitter):
    s = make(retry_config=SHORT)
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), is_reusable=True)
    with pytest.raises(models.SDKError) as ei:
        s.customers.list(request=LIST_REQ)
    e = ei.value
    assert isinstance(e, CodatError)
    assert e.status_code == -1 and e.raw_response is None
    assert "ConnectError" in str(e) and "connection refused" in str(e)
    assert fake_time.sleeps == [0.1, 0.2, 0.4, 0.8]


def test_timeout_error_says_timed_out(httpx_mock, s_noretry):
    httpx_mock.add_exception(httpx.ReadTimeout("read timed out"))
    with pytest.raises(models.SDKError, match="timed out"):
        s_noretry.customers.get(request=GET_REQ)


def test_strategy_none_makes_one_request(httpx_mock, s_noretry, fake_time):
    httpx_mock.add_response(status_code=503, json=ERROR_BODIES[503], headers={"Retry-After": "1"})
    with pytest.raises(models.ErrorMessage):
        s_noretry.customers.list(request=LIST_REQ)
    assert len(httpx_mock.get_requests()) == 1
    assert fake_time.sleeps == []


def test_strategy_none_with_backoff_given_still_makes_one_request(httpx_mock, make, fake_time):
    s = make(retry_config=RetryConfig("none", BackoffStrategy(1, 1, 1.0, 1000), True))
    httpx_mock.add_exception(httpx.ConnectError("refused"))
    with pytest.raises(models.SDKError):
        s.customers.list(request=LIST_REQ)
    assert fake_time.sleeps == []


def test_per_call_retries_override_client_none(httpx_mock, s_noretry, fake_time, no_jitter):
    httpx_mock.add_response(status_code=503, json=ERROR_BODIES[503])
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    res = s_noretry.customers.list(request=LIST_REQ, retries=SHORT)
    assert res.total_results == 201
    assert fake_time.sleeps == [0.1]


def test_per_call_retries_none_overrides_client_default(httpx_mock, s, fake_time):
    httpx_mock.add_response(status_code=503, json=ERROR_BODIES[503])
    with pytest.raises(models.ErrorMessage):
        s.customers.get(request=GET_REQ, retries=NO_RETRY)
    assert fake_time.sleeps == []


def test_per_call_retries_on_platform_calls(httpx_mock, s_noretry, fake_time, no_jitter):
    httpx_mock.add_response(status_code=429, json=ERROR_BODIES[429], headers={"Retry-After": "1"})
    httpx_mock.add_response(json=ONE_COMPANY_PAGE)
    httpx_mock.add_exception(httpx.ConnectError("x"))
    httpx_mock.add_response(json=CONNECTIONS_PAGE)
    s_noretry.companies.list(retries=SHORT)
    s_noretry.connections.list(request={"company_id": COMPANY}, retries=SHORT)
    assert fake_time.sleeps == [1.0, 0.1]


def test_per_call_retries_must_be_retryconfig(s):
    with pytest.raises(ValueError, match="retries"):
        s.customers.list(request=LIST_REQ, retries="none")


def test_retry_connection_errors_false(httpx_mock, make, fake_time):
    s = make(retry_config=RetryConfig("backoff", BackoffStrategy(100, 1000, 2.0, 2000), False))
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    with pytest.raises(models.SDKError, match="ConnectError"):
        s.customers.list(request=LIST_REQ)
    assert fake_time.sleeps == []
    assert len(httpx_mock.get_requests()) == 1


def test_retry_connection_errors_false_still_retries_statuses(httpx_mock, make, fake_time):
    s = make(retry_config=RetryConfig("backoff", BackoffStrategy(100, 1000, 2.0, 2000), False))
    httpx_mock.add_response(status_code=503, json=ERROR_BODIES[503])
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    s.customers.list(request=LIST_REQ)
    assert len(fake_time.sleeps) == 1


# ---------------------------------------------------------------- validation


def _bad_calls():
    bad_uuid = ["not-a-uuid", "", "8a210b68698811eda1eb0242ac120002",
                "{8a210b68-6988-11ed-a1eb-0242ac120002}", "12345678123456781234567812345678----",
                "urn:uuid:8a210b68-6988-11ed-a1eb-0242ac120002",
                "8a210b68-6988-11ed-a1eb-0242ac120002\n", None, 42]  # fmt: skip
    for v in bad_uuid:
        yield "get", dict(GET_REQ, company_id=v), "company_id"
        yield "get", dict(GET_REQ, connection_id=v), "connection_id"
        yield "list", dict(LIST_REQ, company_id=v), "company_id"
        yield "list", dict(LIST_REQ, connection_id=v), "connection_id"
        yield "connections", {"company_id": v}, "company_id"
    for op, base in (
        ("list", LIST_REQ),
        ("companies", {}),
        ("connections", {"company_id": COMPANY}),
    ):
        yield op, dict(base, page=0), "page"
        yield op, dict(base, page=-1), "page"
        yield op, dict(base, page="1"), "page"
        yield op, dict(base, page_size=0), "page_size"
        yield op, dict(base, page_size=5001), "page_size"
        yield op, dict(base, page_size=True), "page_size"
        yield op, dict(base, query="x" * 2048), "query"
        yield op, dict(base, query=5), "query"
        yield op, dict(base, order_by=1), "order_by"
        yield op, dict(base, pageSize=10), "pageSize"  # the API's name is not a request field
    yield "get", dict(GET_REQ, customer_id=""), "customer_id"
    yield "get", dict(GET_REQ, customer_id=None), "customer_id"
    yield "get", dict(GET_REQ, extra="x"), "extra"
    yield "get", {"company_id": COMPANY, "connection_id": CONNECTION}, "customer_id"
    yield "list", {"company_id": COMPANY}, "connection_id"
    yield "get", models.ListCustomersRequest(COMPANY, CONNECTION), "request"
    yield "list", models.GetCustomerRequest(COMPANY, CONNECTION, "x"), "request"
    yield "get", "8a210b68-6988-11ed-a1eb-0242ac120002", "request"
    yield "list", None, "request"
    yield "list", [("company_id", COMPANY)], "request"
    yield "get", models.GetCustomerRequest("nope", CONNECTION, "x"), "company_id"
    yield "list", models.ListCustomersRequest(COMPANY, CONNECTION, page_size=9999), "page_size"


def _call(s: CodatCommerce, op: str, request):
    if op == "get":
        return s.customers.get(request=request)
    if op == "list":
        return s.customers.list(request=request)
    if op == "companies":
        return s.companies.list(request=request)
    return s.connections.list(request=request)


@pytest.mark.parametrize("op,request_,name", list(_bad_calls()))
def test_bad_input_raises_before_any_request(httpx_mock, s, op, request_, name):
    with pytest.raises(ValueError) as ei:
        _call(s, op, request_)
    assert name in str(ei.value)
    assert httpx_mock.get_requests() == []


def test_boundaries_that_are_allowed(httpx_mock, s):
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE, is_reusable=True)
    s.customers.list(request=dict(LIST_REQ, query="x" * 2047))
    s.customers.list(request=dict(LIST_REQ, page_size=1))
    s.customers.list(request=dict(LIST_REQ, page_size=5000))
    s.customers.list(request=dict(LIST_REQ, company_id=COMPANY.upper()))
    params = [dict(r.url.params) for r in httpx_mock.get_requests()]
    assert params[0]["query"] == "x" * 2047
    assert params[1]["pageSize"] == "1" and params[2]["pageSize"] == "5000"


@pytest.mark.parametrize(
    "customer_id,segment",
    [
        ("a/b c?d#e", b"a%2Fb%20c%3Fd%23e"),
        ("../../companies", b"..%2F..%2Fcompanies"),
        ("..", b"%2E%2E"),
        (".", b"%2E"),
        ("cst_NUkBHQmekz", b"cst_NUkBHQmekz"),
        ("100%", b"100%25"),
        ("Zoë & co+1", b"Zo%C3%AB%20%26%20co%2B1"),
        ("firstname.lastname@example.com", b"firstname.lastname%40example.com"),
    ],
)
def test_customer_id_is_one_escaped_segment(httpx_mock, s, customer_id, segment):
    httpx_mock.add_response(json=WOOCOMMERCE_CUSTOMER)
    s.customers.get(request=dict(GET_REQ, customer_id=customer_id))
    req = httpx_mock.get_request()
    prefix = f"/companies/{COMPANY}/connections/{CONNECTION}/data/commerce-customers/".encode()
    assert req.url.raw_path == prefix + segment
    assert req.url.query == b""


# ---------------------------------------------------------------- redaction

KEY = "sk_live_TOPSECRET_0123456789abcdef"
KEY_B64 = base64.b64encode(KEY.encode()).decode()
HEADER = "Basic " + KEY_B64
SECRETS = (KEY, KEY_B64, HEADER, "TOPSECRET")


def _assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def _error_texts(e: BaseException) -> list[str]:
    return [str(e), repr(e), "".join(traceback.format_exception(e)), repr(e.args), repr(vars(e))]


@pytest.fixture
def debug_logs(caplog):
    for name in ("codat_frames", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _log_text(caplog) -> str:
    parts = [caplog.text]
    for r in caplog.records:
        parts += [r.getMessage(), repr(r.args), repr(r.__dict__)]
    return "\n".join(parts)


def test_key_never_in_repr_errors_or_logs(httpx_mock, make, debug_logs):
    s = make(auth_header=None, api_key=KEY, retry_config=NO_RETRY)
    httpx_mock.add_response(json=BIGCOMMERCE_PAGE)
    httpx_mock.add_response(status_code=401, json=ERROR_BODIES[401])
    httpx_mock.add_response(status_code=502, html=HTML)
    httpx_mock.add_response(status_code=200, text="not json")
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"))
    s.customers.list(request=LIST_REQ)
    errors = []
    for _ in range(5):
        with pytest.raises(CodatError) as ei:
            s.customers.list(request=LIST_REQ)
        errors.append(ei.value)
    with pytest.raises(ValueError) as bad:
        s.customers.get(request=dict(GET_REQ, company_id="nope"))
    errors.append(bad.value)
    assert [type(e) for e in errors] == [models.ErrorMessage] + [models.SDKError] * 4 + [ValueError]

    # the header really was sent
    assert all(r.headers["Authorization"] == HEADER for r in httpx_mock.get_requests())

    texts = [repr(s), str(s), repr(vars(s)), repr(vars(s._transport)), repr(s._transport._auth)]
    texts += [repr(s._transport.client), repr(s._transport.client.headers)]
    texts += [repr(s.customers), repr(s.companies), repr(s.connections)]
    for e in errors:
        texts += _error_texts(e)
    texts.append(_log_text(debug_logs))
    assert any("codat_frames" == r.name for r in debug_logs.records)
    for t in texts:
        _assert_clean(t)


def test_key_never_in_construction_errors():
    for kw in (
        {"auth_header": HEADER, "api_key": KEY},
        {"api_key": KEY, "server_url": "ftp://x"},
        {"api_key": KEY, "timeout_ms": -1},
        {"api_key": KEY, "max_concurrency": 99},
        {"api_key": KEY, "retry_config": "x"},
        {"auth_header": HEADER + "\r\nX: y"},
    ):
        with pytest.raises(ValueError) as ei:
            CodatCommerce(**kw)
        for t in _error_texts(ei.value):
            _assert_clean(t)


def test_client_cannot_be_pickled(s):
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        pickle.dumps(s._transport._auth)
    with pytest.raises(TypeError):
        copy.deepcopy(s)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b'{"results": [], "pageNumber": 1, "pageSize": 100, "totalResults": 0}'
        if "fail" in self.path:
            self.send_response(401)
            body = (
                b'{"statusCode": 401, "service": "PublicApi", "error": "Unauthorized",'
                b' "correlationId": "abc"}'
            )
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.httpx_mock(should_mock=lambda request: request.url.host != "127.0.0.1")
def test_key_never_in_real_httpx_httpcore_debug_logs(debug_logs):
    """Over a real loopback socket, so httpx and httpcore log what they really log."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with CodatCommerce(api_key=KEY, server_url=url, retry_config=NO_RETRY) as s:
            assert s.companies.list().total_results == 0
            with pytest.raises(models.ErrorMessage) as ei:
                s.companies.list(request={"query": "fail"})
    finally:
        server.shutdown()
        server.server_close()
    names = {r.name.split(".")[0] for r in debug_logs.records}
    assert {"httpx", "httpcore"} <= names  # the loggers really spoke at DEBUG
    _assert_clean(_log_text(debug_logs))
    for t in _error_texts(ei.value):
        _assert_clean(t)
