"""Async twins of the client calls. pytest-asyncio is not used: each test drives its own
``asyncio.run``. Waits go to an injected ``async_sleep`` on a fake clock; the blocking ``sleep``
is wired to fail so the async path can never block the event loop.
"""

from __future__ import annotations

import asyncio
import types

import httpx
import pytest

from codat_frames import BackoffStrategy, CodatCommerce, CodatError, RetryConfig, models

COMPANY = "8a210b68-6988-11ed-a1eb-0242ac120002"
CONNECTION = "2e9d2c44-f675-40ba-8049-353bfcb5e171"
OTHER_COMPANY = "d1ebcf6d-f7f9-4841-8a06-fec12c492a48"
BASE = "https://api.codat.io"
CUSTOMERS_URL = f"{BASE}/companies/{COMPANY}/connections/{CONNECTION}/data/commerce-customers"
SEED_AUTH = "Basic BASE_64_ENCODED(API_KEY)"
NO_RETRY = RetryConfig("none", None)
SHORT = RetryConfig("backoff", BackoffStrategy(100, 1000, 2.0, 2000), True)
GET_REQ = {"company_id": COMPANY, "connection_id": CONNECTION, "customer_id": "<value>"}
LIST_REQ = {"company_id": COMPANY, "connection_id": CONNECTION}
HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"

# commerce-customers.openapi.json, get customer, example "Shopify" (verbatim).
SHOPIFY_CUSTOMER = {
    "id": "5839032287390",
    "customerName": "AL A",
    "emailAddress": "a.macra@codat.io",
    "addresses": [
        {
            "type": "Unknown",
            "line1": "301 Ink Rooms, 28 Easton St, Farringdon",
            "line2": "28 Easton St, Farringdon",
            "city": "London",
            "region": "England",
            "country": "United Kingdom",
            "postalCode": "WC1X 0BE",
        }
    ],
    "createdDate": "2021-03-08T11:21:11Z",
    "modifiedDate": "2023-02-10T15:18:25Z",
    "sourceModifiedDate": "2021-11-18T15:24:03",
}

# list customers, example "Clover" (verbatim).
CLOVER_PAGE = {
    "results": [
        {
            "id": "2CBJ8R898ZJAR",
            "customerName": "",
            "addresses": [],
            "createdDate": "2021-09-22T13:10:12Z",
            "modifiedDate": "2023-01-09T11:01:03Z",
            "sourceModifiedDate": "0001-01-01T00:00:00",
        },
        {
            "id": "511JV0FRN2QYC",
            "customerName": "",
            "addresses": [],
            "createdDate": "2021-09-21T14:54:38Z",
            "modifiedDate": "2023-01-09T11:01:03Z",
            "sourceModifiedDate": "0001-01-01T00:00:00",
        },
    ],
    "pageNumber": 1,
    "pageSize": 2,
    "totalResults": 9,
    "_links": {
        "current": {
            "href": "/companies/aae80eb3-1f56-41ca-a171-a59f9ee03b26/connections/4a5b633b-cd86-4715-a22b-62be98c4bcc5/data/commerce-customers?page=1&pageSize=2"  # noqa: E501
        },
        "self": {
            "href": "/companies/aae80eb3-1f56-41ca-a171-a59f9ee03b26/connections/4a5b633b-cd86-4715-a22b-62be98c4bcc5/data/commerce-customers"  # noqa: E501
        },
        "next": {
            "href": "/companies/aae80eb3-1f56-41ca-a171-a59f9ee03b26/connections/4a5b633b-cd86-4715-a22b-62be98c4bcc5/data/commerce-customers?page=2&pageSize=2"  # noqa: E501
        },
    },
}

COMPANIES_PAGE = {
    "results": [
        {
            "id": "ab12c58d-a678-4ebf-a159-ae99e1807bd0",
            "name": "Toft stores",
            "redirect": "https://link.codat.io/company/ab12c58d-a678-4ebf-a159-ae99e1807bd0",
            "dataConnections": [],
            "created": "2022-11-10T10:45:18Z",
            "createdByUserName": "Dan Tzabar",
            "products": ["spend-insights"],
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

CONNECTIONS_PAGE = {
    "results": [
        {
            "id": "ee2eb431-c0fa-4dc9-93fa-d29781c12bcd",
            "integrationId": "bf083d72-62c7-493e-aec9-81b4dbba7e2c",
            "integrationKey": "dfxm",
            "sourceId": "bdd831ce-eebd-4896-89a7-20e5ee8989ee",
            "platformName": "Basiq",
            "status": "Linked",
            "lastSync": "2022-10-27T10:22:43.6464237Z",
            "created": "2022-10-27T09:53:29Z",
            "sourceType": "Banking",
        }
    ],
    "pageNumber": 1,
    "pageSize": 100,
    "totalResults": 1,
}


def _err(status: int, error: str) -> dict:
    return {
        "statusCode": status,
        "service": "PublicApi",
        "error": error,
        "correlationId": "bc997528a9d7abb9161ef45f05d38599",
        "canBeRetried": "Unknown",
        "detailedErrorCode": 0,
    }


ERR_404 = _err(404, "No company was found with ID 846ed55c-974b-4392-a1f1-87b6fdbf3c5e")
ERR_429 = _err(
    429, "You have made too many requests in a given amount of time; please retry later."
)
ERR_503 = _err(500, "The Codat API is temporarily offline for maintenance. Please try again later.")


# One transport for the whole module: each new httpx transport builds an SSL context (~50 ms),
# which would dominate the run time. pytest-httpx patches the transport class, so requests
# never reach the pool; tests of the default wiring build their clients without these.
SHARED_TRANSPORT = httpx.HTTPTransport()
SHARED_ASYNC_TRANSPORT = httpx.AsyncHTTPTransport()


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def async_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _blocking_sleep(seconds: float) -> None:
    raise AssertionError("the async path must not call the blocking sleep")


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
    def _make(**kw) -> CodatCommerce:
        kw.setdefault("auth_header", SEED_AUTH)
        kw.setdefault("transport", SHARED_TRANSPORT)
        kw.setdefault("async_transport", SHARED_ASYNC_TRANSPORT)
        kw.setdefault("sleep", _blocking_sleep)
        kw.setdefault("async_sleep", fake_time.async_sleep)
        kw.setdefault("clock", fake_time.clock)
        return CodatCommerce(**kw)

    return _make


def run(make, body, **kw):
    """Run ``body(s)`` in a fresh event loop with a client closed afterwards."""

    async def main():
        async with make(**kw) as s:
            return await body(s)

    return asyncio.run(main())


# ---------------------------------------------------------------- the calls


def test_get_async(httpx_mock, make):
    httpx_mock.add_response(url=f"{CUSTOMERS_URL}/%3Cvalue%3E", json=SHOPIFY_CUSTOMER)
    res = run(make, lambda s: s.customers.get_async(request=GET_REQ))
    assert isinstance(res, models.Customer)
    assert res.id == "5839032287390" and res.customer_name == "AL A"
    assert res.addresses[0] == models.Address(
        "Unknown",
        "301 Ink Rooms, 28 Easton St, Farringdon",
        "28 Easton St, Farringdon",
        "London",
        "England",
        "United Kingdom",
        "WC1X 0BE",
    )
    req = httpx_mock.get_request()
    assert req.headers["Authorization"] == SEED_AUTH
    assert req.headers["User-Agent"].startswith("codat-frames/")


def test_get_async_with_model_and_escaped_id(httpx_mock, make):
    httpx_mock.add_response(json=dict(SHOPIFY_CUSTOMER, id=7110701885))
    request = models.GetCustomerRequest(COMPANY, CONNECTION, "../../companies")
    res = run(make, lambda s: s.customers.get_async(request=request))
    assert res.id == "7110701885"
    assert httpx_mock.get_request().url.raw_path.endswith(
        b"/commerce-customers/..%2F..%2Fcompanies"
    )


def test_list_async_seed_request(httpx_mock, make):
    httpx_mock.add_response(
        url=CUSTOMERS_URL,
        match_params={
            "page": "1",
            "pageSize": "100",
            "query": "id=e3334455-1aed-4e71-ab43-6bccf12092ee",
            "orderBy": "-modifiedDate",
        },
        json=CLOVER_PAGE,
    )
    request = {
        "company_id": "8a210b68-6988-11ed-a1eb-0242ac120002",
        "connection_id": "2e9d2c44-f675-40ba-8049-353bfcb5e171",
        "order_by": "-modifiedDate",
        "page": 1,
        "page_size": 100,
        "query": "id=e3334455-1aed-4e71-ab43-6bccf12092ee",
    }
    res = run(make, lambda s: s.customers.list_async(request=request))
    assert isinstance(res, models.Customers)
    assert [c.id for c in res.results] == ["2CBJ8R898ZJAR", "511JV0FRN2QYC"]
    assert res.results[0].customer_name == "" and res.results[0].addresses == []
    assert res.results[0].source_modified_date == "0001-01-01T00:00:00"
    assert (res.page_number, res.page_size, res.total_results) == (1, 2, 9)
    assert res.links.next.href.endswith("?page=2&pageSize=2")


def test_list_async_with_request_model(httpx_mock, make):
    httpx_mock.add_response(
        url=CUSTOMERS_URL, match_params={"page": "2", "pageSize": "2"}, json=CLOVER_PAGE
    )
    request = models.ListCustomersRequest(COMPANY, CONNECTION, page=2, page_size=2)
    assert run(make, lambda s: s.customers.list_async(request=request)).total_results == 9


def test_companies_and_connections_list_async(httpx_mock, make):
    httpx_mock.add_response(
        url=f"{BASE}/companies",
        match_params={"page": "1", "pageSize": "100", "query": "name~Toft"},
        json=COMPANIES_PAGE,
    )
    httpx_mock.add_response(
        url=f"{BASE}/companies/{COMPANY}/connections",
        match_params={"page": "1", "pageSize": "50"},
        json=CONNECTIONS_PAGE,
    )

    async def body(s):
        companies = await s.companies.list_async(request={"query": "name~Toft"})
        connections = await s.connections.list_async(
            request={"company_id": COMPANY, "page_size": 50}
        )
        return companies, connections

    companies, connections = run(make, body)
    assert isinstance(companies, models.Companies) and isinstance(connections, models.Connections)
    assert companies.results[0].name == "Toft stores"
    assert companies.results[0].data_connections == []
    conn = connections.results[0]
    assert (conn.platform_name, conn.source_type, conn.status) == ("Basiq", "Banking", "Linked")


def test_companies_list_async_without_request(httpx_mock, make):
    httpx_mock.add_response(
        url=f"{BASE}/companies", match_params={"page": "1", "pageSize": "100"}, json=COMPANIES_PAGE
    )
    assert run(make, lambda s: s.companies.list_async()).total_results == 1


# ---------------------------------------------------------------- retries


def test_async_retry_sequence(httpx_mock, make, fake_time, no_jitter):
    httpx_mock.add_response(status_code=429, json=ERR_429, headers={"Retry-After": "3"})
    httpx_mock.add_response(status_code=503, json=ERR_503)
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    httpx_mock.add_exception(httpx.ReadTimeout("read timed out"))
    httpx_mock.add_response(status_code=502, html=HTML)
    httpx_mock.add_response(json=CLOVER_PAGE)
    res = run(make, lambda s: s.customers.list_async(request=LIST_REQ))
    assert res.total_results == 9
    # Retry-After first, then Codat's backoff: 0.5 s * 1.5**attempt
    assert fake_time.sleeps == [3.0, 0.75, 1.125, 1.6875, 2.53125]
    assert len(httpx_mock.get_requests()) == 6


def test_async_retry_on_platform_calls(httpx_mock, make, fake_time, no_jitter):
    httpx_mock.add_response(status_code=503, html=HTML)
    httpx_mock.add_response(json=COMPANIES_PAGE)
    httpx_mock.add_response(status_code=429, json=ERR_429, headers={"Retry-After": "4"})
    httpx_mock.add_response(json=CONNECTIONS_PAGE)

    async def body(s):
        await s.companies.list_async()
        await s.connections.list_async(request={"company_id": COMPANY})

    run(make, body)
    assert fake_time.sleeps == [0.5, 4.0]


def test_async_exhaustion_raises_last_error(httpx_mock, make, fake_time, no_jitter):
    httpx_mock.add_response(status_code=503, json=ERR_503, is_reusable=True)
    with pytest.raises(models.ErrorMessage) as ei:
        run(make, lambda s: s.customers.get_async(request=GET_REQ), retry_config=SHORT)
    assert ei.value.status_code == 503
    assert fake_time.sleeps == [0.1, 0.2, 0.4, 0.8]


def test_async_connection_error_exhaustion(httpx_mock, make, fake_time, no_jitter):
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), is_reusable=True)
    with pytest.raises(models.SDKError) as ei:
        run(make, lambda s: s.customers.list_async(request=LIST_REQ), retry_config=SHORT)
    assert ei.value.status_code == -1 and "ConnectError" in str(ei.value)
    assert len(httpx_mock.get_requests()) == 5


def test_async_per_call_retries_override(httpx_mock, make, fake_time, no_jitter):
    httpx_mock.add_response(status_code=503, json=ERR_503)
    httpx_mock.add_response(json=SHOPIFY_CUSTOMER)
    httpx_mock.add_response(status_code=503, json=ERR_503)

    async def body(s):
        await s.customers.get_async(request=GET_REQ, retries=SHORT)  # client says none
        with pytest.raises(models.ErrorMessage):
            await s.customers.get_async(request=GET_REQ)

    run(make, body, retry_config=NO_RETRY)
    assert fake_time.sleeps == [0.1]


def test_async_retry_connection_errors_false(httpx_mock, make, fake_time):
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    rc = RetryConfig("backoff", BackoffStrategy(100, 1000, 2.0, 2000), False)
    with pytest.raises(models.SDKError):
        run(make, lambda s: s.customers.list_async(request=LIST_REQ, retries=rc))
    assert fake_time.sleeps == []


# ---------------------------------------------------------------- errors and validation


def test_async_errors(httpx_mock, make):
    httpx_mock.add_response(status_code=404, json=ERR_404)
    httpx_mock.add_response(status_code=502, html=HTML)
    httpx_mock.add_response(status_code=400, json=_err(400, "Error parsing query"))
    httpx_mock.add_response(status_code=400, json=_err(400, "Error parsing query"))

    async def body(s):
        out = []
        for call in (
            lambda: s.customers.list_async(request=LIST_REQ),
            lambda: s.customers.list_async(request=LIST_REQ),
            lambda: s.customers.list_async(request=LIST_REQ),  # 400 documented for list
            lambda: s.customers.get_async(request=GET_REQ),  # ... but not for get
        ):
            try:
                await call()
            except CodatError as e:
                out.append(e)
        return out

    e404, e502, list400, get400 = run(make, body, retry_config=NO_RETRY)
    assert type(e404) is models.ErrorMessage and e404.data.error == ERR_404["error"]
    assert "404" in str(e404) and ERR_404["correlationId"] in str(e404)
    assert type(e502) is models.SDKError and e502.status_code == 502 and e502.body == HTML
    assert type(list400) is models.ErrorMessage and list400.status_code == 400
    assert type(get400) is models.SDKError and get400.status_code == 400


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda s: s.customers.get_async(request=dict(GET_REQ, company_id="x")), "company_id"),
        (lambda s: s.customers.get_async(request=dict(GET_REQ, customer_id="")), "customer_id"),
        (lambda s: s.customers.list_async(request=dict(LIST_REQ, page=0)), "page"),
        (lambda s: s.customers.list_async(request=dict(LIST_REQ, page_size=5001)), "page_size"),
        (lambda s: s.customers.list_async(request=dict(LIST_REQ, query="q" * 2048)), "query"),
        (lambda s: s.customers.list_async(request=dict(LIST_REQ, bogus=1)), "bogus"),
        (lambda s: s.companies.list_async(request={"page_size": 0}), "page_size"),
        (lambda s: s.connections.list_async(request={"company_id": "nope"}), "company_id"),
        (lambda s: s.customers.list_async(request=LIST_REQ, retries=3), "retries"),
    ],
)
def test_async_validation_before_any_request(httpx_mock, make, call, name):
    with pytest.raises(ValueError) as ei:
        run(make, call)
    assert name in str(ei.value)
    assert httpx_mock.get_requests() == []


# ---------------------------------------------------------------- lifecycle and limits


def test_async_context_manager_closes(httpx_mock, make):
    httpx_mock.add_response(json=COMPANIES_PAGE)
    seen = {}

    async def main():
        async with make() as s:
            await s.companies.list_async()
            (seen["client"],) = [ac for _, ac in s._transport._aclients.values()]
            assert not seen["client"].is_closed
        return s

    s = asyncio.run(main())
    assert seen["client"].is_closed
    assert s._transport._aclients == {}


def test_one_client_used_from_two_event_loops(httpx_mock, make):
    httpx_mock.add_response(json=COMPANIES_PAGE, is_reusable=True)
    s = make()
    try:
        assert asyncio.run(s.companies.list_async()).total_results == 1
        assert asyncio.run(s.companies.list_async()).total_results == 1
    finally:
        s.close()
    assert len(httpx_mock.get_requests()) == 2


def test_async_concurrency_is_capped_per_company(httpx_mock, make):
    in_flight = {COMPANY: 0, OTHER_COMPANY: 0}
    peak = {COMPANY: 0, OTHER_COMPANY: 0}

    async def respond(request: httpx.Request) -> httpx.Response:
        company = request.url.path.split("/")[2]
        in_flight[company] += 1
        peak[company] = max(peak[company], in_flight[company])
        await asyncio.sleep(0.005)
        in_flight[company] -= 1
        return httpx.Response(200, json=CONNECTIONS_PAGE)

    httpx_mock.add_callback(respond, is_reusable=True)

    async def body(s):
        calls = [
            s.connections.list_async(request={"company_id": c, "page": p})
            for c in (COMPANY, OTHER_COMPANY)
            for p in range(1, 7)
        ]
        return await asyncio.gather(*calls)

    results = run(make, body, max_concurrency=2)
    assert len(results) == 12
    assert peak == {COMPANY: 2, OTHER_COMPANY: 2}
