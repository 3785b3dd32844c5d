"""Transport-wide limits: the overall cap on requests in flight and the global 429 pause."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import codat_frames as cf

COMPANIES = [f"8a210b68-6988-11ed-a1eb-0242ac12000{i}" for i in range(4)]
URL = re.compile(r"http://codat\.test/companies/[^/]+/connections.*")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def page() -> dict:
    return {"results": [], "pageNumber": 1, "pageSize": 100, "totalResults": 0,
            "_links": {"self": {"href": "/"}, "current": {"href": "/"}}}  # fmt: skip


def test_429_pauses_every_company_not_just_the_one_throttled(httpx_mock):
    clock = FakeClock()
    httpx_mock.add_response(url=re.compile(rf".*/companies/{COMPANIES[0]}/.*"), status_code=429,
                            json={"statusCode": 429, "error": "slow down"},
                            headers={"Retry-After": "7"})  # fmt: skip
    httpx_mock.add_response(url=URL, json=page(), is_reusable=True)
    s = cf.CodatCommerce(api_key="k", server_url="http://codat.test", sleep=clock.sleep,
                         clock=clock)  # fmt: skip
    s.connections.list(request={"company_id": COMPANIES[0]})
    assert clock.slept == [7.0]
    assert s.stats["throttled"] == 1 and s.stats["retries"] == 1
    # The pause is global: rewind to just after the 429 and ask for another company.
    clock.now -= 5.0
    s.connections.list(request={"company_id": COMPANIES[1]})
    assert clock.slept[-1] == pytest.approx(5.0)


def test_retry_after_pause_is_capped_by_max_interval(httpx_mock):
    clock = FakeClock()
    httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": "3600"},
                            json={"statusCode": 429, "error": "slow down"})  # fmt: skip
    httpx_mock.add_response(url=URL, json=page())
    rc = cf.RetryConfig("backoff", cf.BackoffStrategy(10, 2_000, 1.5, 60_000), True)
    s = cf.CodatCommerce(api_key="k", server_url="http://codat.test", sleep=clock.sleep,
                         clock=clock, retry_config=rc)  # fmt: skip
    s.connections.list(request={"company_id": COMPANIES[0]})
    assert clock.slept == [2.0]


@pytest.mark.parametrize(("max_requests", "expect_max"), [(3, 3), (None, 8)])
def test_max_requests_caps_in_flight_across_companies(httpx_mock, max_requests, expect_max):
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def slow(request: httpx.Request) -> httpx.Response:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return httpx.Response(200, json=page())

    httpx_mock.add_callback(slow, url=URL, is_reusable=True)
    s = cf.CodatCommerce(api_key="k", server_url="http://codat.test", max_concurrency=2,
                         max_requests=max_requests)  # fmt: skip
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda c: s.connections.list(request={"company_id": c}), COMPANIES * 4))
    # 2 per company x 4 companies = 8 without an overall cap
    assert state["max"] == s.stats["max_in_flight"] <= expect_max
    assert state["max"] >= min(expect_max, 3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_requests_is_validated(bad):
    with pytest.raises(ValueError, match="max_requests"):
        cf.CodatCommerce(api_key="k", max_requests=bad)
