"""read_customers with HTTP mocked by pytest-httpx: pages, concurrency, loss-free repair, errors."""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from urllib.parse import parse_qs

import httpx
import pytest

import codat_frames as cf
from codat_frames import models
from codat_frames.paging import DataChangedWarning, read_customers

COMPANY = "8a210b68-6988-11ed-a1eb-0242ac120002"
CONNECTION = "2e9d2c44-f675-40ba-8049-353bfcb5e171"
URL = re.compile(r"http://codat\.test/companies/[^/]+/connections/[^/]+/data/commerce-customers.*")
NO_RETRY = cf.RetryConfig("none")


def record(i: int, modified: str = "2023-01-01T00:00:00Z") -> dict:
    return {
        "id": f"c{i:05d}",
        "customerName": f"Customer {i}",
        "addresses": [{"type": "billing", "line1": f"{i} Street", "country": "GB"}],
        "createdDate": "2022-01-01T00:00:00Z",
        "modifiedDate": modified,
    }


class FakeCodat:
    """Serves a mutable list of records with Codat's offset paging; counts what it sees."""

    def __init__(self, n: int, *, delay: float = 0.0, clamp: int | None = None):
        self.records = [record(i) for i in range(n)]
        self.delay = delay
        self.clamp = clamp
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.pages_served: list[int] = []
        self.before_page = None  # callable(page) run before a page is cut
        self.fail_page: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            q = parse_qs(request.url.query.decode())
            page = int(q.get("page", ["1"])[0])
            size = int(q.get("pageSize", ["100"])[0])
            if self.clamp:
                size = min(size, self.clamp)
            if page == self.fail_page:
                body = {"statusCode": 500, "error": "boom", "correlationId": "corr-1"}
                return httpx.Response(500, json=body)
            with self.lock:
                if self.before_page:
                    self.before_page(page)
                rows = self.records[(page - 1) * size : page * size]
                total = len(self.records)
                self.pages_served.append(page)
            body = {
                "results": rows,
                "pageNumber": page,
                "pageSize": size,
                "totalResults": total,
                "_links": {"self": {"href": "/x"}, "current": {"href": "/x"}},
            }
            return httpx.Response(200, content=json.dumps(body).encode())
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def client():
    with cf.CodatCommerce(
        api_key="test-key", server_url="http://codat.test", retry_config=NO_RETRY, max_concurrency=4
    ) as s:
        yield s


def serve(httpx_mock, fake: FakeCodat) -> FakeCodat:
    httpx_mock.add_callback(fake, url=URL, is_reusable=True, is_optional=True)
    return fake


def test_reads_every_page_in_order(httpx_mock, client):
    fake = serve(httpx_mock, FakeCodat(95))
    frames = read_customers(client, COMPANY, CONNECTION, page_size=10, progress=False)
    assert list(frames.customers["id"]) == [f"c{i:05d}" for i in range(95)]
    assert len(frames.addresses) == 95
    assert sorted(fake.pages_served) == list(range(1, 11))
    assert frames.meta["total_results"] == 95
    assert frames.meta["passes"] == 1
    assert frames.meta["company_id"] == COMPANY


def test_concurrency_never_exceeds_max_concurrency(httpx_mock, client):
    fake = serve(httpx_mock, FakeCodat(200, delay=0.02))
    frames = read_customers(client, COMPANY, CONNECTION, page_size=10, progress=False)
    assert len(frames.customers) == 200
    assert 2 <= fake.max_in_flight <= client.max_concurrency


def test_empty_result_has_full_schema(httpx_mock, client):
    serve(httpx_mock, FakeCodat(0))
    frames = read_customers(client, COMPANY, CONNECTION, progress=False)
    assert len(frames.customers) == 0
    assert list(frames.customers.columns)[:3] == ["company_id", "connection_id", "id"]
    assert str(frames.customers["modified_date"].dtype) == "datetime64[us, UTC]"
    assert len(httpx_mock.get_requests()) == 1


def test_server_clamped_page_size_is_followed(httpx_mock, client):
    fake = serve(httpx_mock, FakeCodat(25, clamp=5))
    frames = read_customers(client, COMPANY, CONNECTION, page_size=50, progress=False)
    assert len(frames.customers) == 25
    assert sorted(fake.pages_served) == [1, 2, 3, 4, 5]
    sizes = {parse_qs(r.url.query.decode())["pageSize"][0] for r in httpx_mock.get_requests()}
    assert sizes == {"50", "5"}


def test_failed_page_names_the_page(httpx_mock, client):
    fake = serve(httpx_mock, FakeCodat(50))
    fake.fail_page = 3
    with pytest.raises(models.ErrorMessage) as info:
        read_customers(client, COMPANY, CONNECTION, page_size=10, progress=False)
    assert "page 3 of 5" in str(info.value)
    assert "boom" in str(info.value) and "corr-1" in str(info.value)
    assert isinstance(info.value, cf.CodatError)


def test_delete_at_front_mid_read_loses_nothing(httpx_mock, client):
    fake = serve(httpx_mock, FakeCodat(50))
    state = {"done": False}

    def delete_once(page):
        if page == 3 and not state["done"]:
            state["done"] = True
            del fake.records[0]  # every later record shifts one place towards the front

    fake.before_page = delete_once
    frames = read_customers(client, COMPANY, CONNECTION, page_size=10, progress=False)
    expected = [f"c{i:05d}" for i in range(1, 50)]
    assert list(frames.customers["id"]) == expected
    assert frames.meta["passes"] == 2


def test_insert_at_front_mid_read_no_duplicates(httpx_mock, client):
    fake = serve(httpx_mock, FakeCodat(40))
    state = {"done": False}

    def insert_once(page):
        if page == 2 and not state["done"]:
            state["done"] = True
            fake.records.insert(0, record(999, "2024-01-01T00:00:00Z"))

    fake.before_page = insert_once
    frames = read_customers(client, COMPANY, CONNECTION, page_size=10, progress=False)
    ids = list(frames.customers["id"])
    assert len(ids) == len(set(ids)) == 41
    assert set(ids) == {f"c{i:05d}" for i in range(40)} | {"c00999"}


def test_balanced_insert_and_delete_detected_by_duplicates(httpx_mock, client):
    """Same totalResults on every page, but rows shifted: the duplicate id gives it away."""
    fake = serve(httpx_mock, FakeCodat(30, delay=0.0))
    seen = []

    def shift(page):
        seen.append(page)
        if len(seen) == 2:  # after one page of pass 1, insert at front and delete at end
            fake.records.insert(0, record(500))
            fake.records.pop()

    fake.before_page = shift
    client_1 = cf.CodatCommerce(
        api_key="k", server_url="http://codat.test", retry_config=NO_RETRY, max_concurrency=1
    )
    frames = read_customers(client_1, COMPANY, CONNECTION, page_size=10, progress=False)
    assert frames.meta["passes"] == 2
    assert list(frames.customers["id"]) == [r["id"] for r in fake.records]


def test_data_changing_every_pass_warns_and_returns_union(httpx_mock, client):
    fake = serve(httpx_mock, FakeCodat(20))
    counter = iter(range(1000, 2000))

    def insert_always(page):
        if page == 2:
            fake.records.insert(0, record(next(counter)))

    fake.before_page = insert_always
    with pytest.warns(DataChangedWarning, match="changed during all 2 read passes"):
        frames = read_customers(client, COMPANY, CONNECTION, page_size=10, progress=False,
                                max_passes=2)  # fmt: skip
    ids = set(frames.customers["id"])
    assert {f"c{i:05d}" for i in range(20)} <= ids
    assert len(frames.customers) == len(ids)


def test_progress_callback_sees_every_page(httpx_mock, client):
    serve(httpx_mock, FakeCodat(35))
    calls = []
    read_customers(client, COMPANY, CONNECTION, page_size=10,
                   progress=lambda d, t, r: calls.append((d, t, r)))  # fmt: skip
    assert calls[-1] == (4, 4, 35)
    assert [c[0] for c in calls] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"company_id": "nope"}, "company_id"),
        ({"connection_id": "123"}, "connection_id"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 5001}, "page_size"),
        ({"query": "x" * 2048}, "query"),
        ({"local_tz": "Mars/Olympus"}, "local_tz"),
        ({"max_passes": 0}, "max_passes"),
    ],
)
def test_bad_arguments_fail_before_any_request(httpx_mock, client, kwargs, name):
    args = {"company_id": COMPANY, "connection_id": CONNECTION, **kwargs}
    with pytest.raises(ValueError, match=name):
        read_customers(client, progress=False, **args)
    assert httpx_mock.get_requests() == []


def test_no_warning_on_clean_read(httpx_mock, client):
    serve(httpx_mock, FakeCodat(12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames = read_customers(client, COMPANY, CONNECTION, page_size=5, progress=False)
    assert len(frames.customers) == 12


def test_async_twin_reads_the_same_and_leaves_the_loop_free(httpx_mock, client):
    import asyncio

    fake = serve(httpx_mock, FakeCodat(60, delay=0.01))
    ticks = []

    async def main():
        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        frames = await cf.read_customers_async(client, COMPANY, CONNECTION, page_size=10,
                                               progress=False)  # fmt: skip
        t.cancel()
        return frames

    frames = asyncio.run(main())
    assert list(frames.customers["id"]) == [f"c{i:05d}" for i in range(60)]
    assert len(fake.pages_served) == 6
    assert len(ticks) >= 3  # the loop kept running while pages were read
