"""End to end on real loopback sockets: the client, read_customers and sync against the sandbox."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

import codat_frames as cf
from codat_frames import models, sandbox
from codat_frames.paging import read_customers
from codat_frames.parquet import read_parquet, sync_customers

FAST_RETRY = cf.RetryConfig("backoff", cf.BackoffStrategy(5, 100, 1.5, 60_000), True)


def client_for(sb, **kwargs) -> cf.CodatCommerce:
    kwargs.setdefault("retry_config", FAST_RETRY)
    return cf.CodatCommerce(api_key=sb.api_key, server_url=sb.url, **kwargs)


def truth(sb, company_id, connection_id) -> cf.CustomerFrames:
    records = list(sb.customer_records(company_id, connection_id))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cf.normalize_customers(records, company_id=company_id, connection_id=connection_id)


def assert_same_frames(got: cf.CustomerFrames, want: cf.CustomerFrames, *, ordered=True) -> None:
    gc, wc = got.customers, want.customers
    ga, wa = got.addresses, want.addresses
    if not ordered:
        gc, wc = (d.sort_values("id", ignore_index=True) for d in (gc, wc))
        keys = ["customer_id", "address_index"]
        ga, wa = (d.sort_values(keys, ignore_index=True) for d in (ga, wa))
    pd.testing.assert_frame_equal(gc.reset_index(drop=True), wc.reset_index(drop=True))
    pd.testing.assert_frame_equal(ga.reset_index(drop=True), wa.reset_index(drop=True))


@pytest.fixture(scope="module")
def sb():
    with sandbox.serve(seed=7) as server:
        yield server


@pytest.fixture(scope="module")
def s(sb):
    with client_for(sb) as client:
        yield client


def test_seed_examples_against_the_sandbox(sb, s):
    company_id, connection_id = sb.commerce_connections()[0]
    first = next(iter(sb.customer_records(company_id, connection_id)))
    res = s.customers.get(request={
        "company_id": company_id,
        "connection_id": connection_id,
        "customer_id": first["id"],
    })  # fmt: skip
    assert isinstance(res, models.Customer) and res.id == first["id"]
    res = s.customers.list(request={
        "company_id": company_id,
        "connection_id": connection_id,
        "order_by": "-modifiedDate",
        "page": 1,
        "page_size": 100,
        "query": f"id={first['id']}",
    })  # fmt: skip
    assert [c.id for c in res.results] == [first["id"]]
    assert res.total_results == 1 and res.links.self.href


def test_companies_and_connections_every_page(sb, s):
    companies = list(s.companies.iter_all(page_size=2))
    assert [c.id for c in companies] == [c["id"] for c in sb.companies]
    for c in companies:
        conns = list(s.connections.iter_all(c.id, page_size=1))
        assert [k.id for k in conns] == [k["id"] for k in sb.connections(c.id)]


def test_read_customers_equals_ground_truth_on_every_commerce_connection(sb, s):
    for company_id, connection_id in sb.commerce_connections():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cf.DataQualityWarning)
            got = read_customers(s, company_id, connection_id, page_size=50, progress=False)
        assert_same_frames(got, truth(sb, company_id, connection_id))
        assert got.meta["total_results"] == sb.customer_count(company_id, connection_id)


def test_api_errors_surface_as_codat_errors(sb, s):
    company_id, connection_id = sb.unsynced_connections()[0]
    with pytest.raises(models.ErrorMessage) as info:
        read_customers(s, company_id, connection_id, progress=False)
    assert info.value.status_code == 409 and "page 1" in str(info.value)
    company_id, connection_id = sb.non_commerce_connections()[0]
    with pytest.raises(models.ErrorMessage) as info:
        s.customers.list(request={"company_id": company_id, "connection_id": connection_id})
    assert info.value.status_code == 404
    with cf.CodatCommerce(api_key="wrong", server_url=sb.url) as bad:
        with pytest.raises(models.ErrorMessage) as info:
            bad.companies.list()
    assert info.value.status_code == 401
    assert "wrong" not in str(info.value)


def test_a_100k_connection_reads_exactly_with_bounded_concurrency(make_sandbox):
    sb = make_sandbox(seed=3, customers=100_000, companies=1, latency_ms=5)
    company_id, connection_id = sb.commerce_connections()[0]
    with client_for(sb) as s, warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.DataQualityWarning)
        got = read_customers(s, company_id, connection_id, progress=False)
    assert len(got.customers) == 100_000
    assert got.customers["id"].is_unique
    assert_same_frames(got, truth(sb, company_id, connection_id))
    assert 1 < sb.stats.max_in_flight[company_id] <= 10
    assert sb.stats.status.get(429, 0) == 0


def test_shifting_data_mid_read_loses_nothing(make_sandbox):
    sb = make_sandbox(seed=5, customers=400, companies=1)
    company_id, connection_id = sb.commerce_connections()[0]
    before = set(sb.customer_ids(company_id, connection_id))
    calls = {"n": 0}

    def churn(path, page):
        calls["n"] += 1
        if calls["n"] in (2, 4):
            sb.insert(company_id, connection_id, n=3, at="front")
        if calls["n"] == 3:
            sb.delete(company_id, connection_id, [0, 1])

    sb.on_request(churn)
    with client_for(sb, max_concurrency=3) as s, warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.DataQualityWarning)
        got = read_customers(s, company_id, connection_id, page_size=25, progress=False)
    sb.on_request(None)
    ids = list(got.customers["id"])
    after = set(sb.customer_ids(company_id, connection_id))
    assert len(ids) == len(set(ids)), "no row twice"
    assert (before & after) <= set(ids), "every record present throughout is there"
    assert got.meta["passes"] >= 2


def test_fault_storm_returns_exact_ground_truth(make_sandbox):
    sb = make_sandbox(seed=11, customers=3000, companies=1, fault_rate=0.25, slow_reply_s=0.6,
                      retry_after_s=0)  # fmt: skip
    company_id, connection_id = sb.commerce_connections()[0]
    with client_for(sb, timeout_ms=400) as s, warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.DataQualityWarning)
        got = read_customers(s, company_id, connection_id, page_size=100, progress=False)
    assert sum(sb.stats.faults.values()) > 0
    assert_same_frames(got, truth(sb, company_id, connection_id))


def test_sync_after_changes_equals_a_fresh_full_read(make_sandbox, tmp_path):
    sb = make_sandbox(seed=9, customers=300, companies=1)
    company_id, connection_id = sb.commerce_connections()[0]
    out = tmp_path / "ds"
    with client_for(sb) as s, warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.DataQualityWarning)
        first = sync_customers(s, company_id, connection_id, out)
        assert (first.fetched, first.inserted, first.total) == (300, 300, 300)
        sb.insert(company_id, connection_id, n=5, at="end")
        sb.modify(company_id, connection_id, [10, 20, 30])
        second = sync_customers(s, company_id, connection_id, out)
        assert second.inserted == 5 and second.updated == 3 and second.total == 305
        assert second.fetched < 300
        stored = read_parquet(out, company_id, connection_id)
        fresh = read_customers(s, company_id, connection_id, progress=False)
    fresh.customers = fresh.customers.assign()
    assert_same_frames(stored, fresh, ordered=False)


def test_sync_with_a_query_keeps_only_matching_customers_in_sync(make_sandbox, tmp_path):
    sb = make_sandbox(seed=4, customers=200, companies=1)
    company_id, connection_id = sb.commerce_connections()[0]
    wanted = "defaultCurrency=GBP"
    out = tmp_path / "q"

    def matching() -> set[str]:
        return {r["id"] for r in sb.customer_records(company_id, connection_id)
                if (r.get("defaultCurrency") or "").upper() == "GBP"}  # fmt: skip

    with client_for(sb) as s, warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.DataQualityWarning)
        first = sync_customers(s, company_id, connection_id, out, query=wanted)
        assert set(read_parquet(out).customers["id"]) == matching() and first.total > 0
        gbp = next(iter(matching()))
        sb.modify(company_id, connection_id, [gbp])
        second = sync_customers(s, company_id, connection_id, out, query=wanted)
    assert second.query.startswith("{defaultCurrency=GBP} && modifiedDate>=")
    assert second.updated == 1 and second.inserted == 0
    assert set(read_parquet(out).customers["id"]) == matching()
    with pytest.raises(ValueError, match="query"):
        sync_customers(s, company_id, connection_id, out, query="  ")
    before = sb.stats.requests
    with pytest.raises(ValueError, match="differs from the query 'defaultCurrency=GBP'"):
        sync_customers(s, company_id, connection_id, out)  # another query: refused
    assert sb.stats.requests == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.DataQualityWarning)
        with client_for(sb) as s2:
            full = sync_customers(s2, company_id, connection_id, out, full=True)
    assert full.total == sb.customer_count(company_id, connection_id)
