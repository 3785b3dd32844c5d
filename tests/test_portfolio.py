"""read_portfolio against the sandbox: 50 companies x 1-3 connections, locally and on Dask."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.distributed as distributed
import pandas as pd
import pandas.testing as pdt
import pytest

import codat_frames as cf
from codat_frames import sandbox
from codat_frames.cli import main as cli_main
from codat_frames.commerce import CodatCommerce
from codat_frames.parquet import read_parquet
from codat_frames.portfolio import (
    SUMMARY_COLUMNS,
    PortfolioConfigError,
    PortfolioResult,
    read_portfolio,
)

WORLD = {"seed": 3, "companies": 50, "customers": 40}
PAGE = 10  # 4 pages per connection: concurrent pages inside each connection


def _sorted(frames):
    c = frames.customers.sort_values(["company_id", "connection_id", "id"], ignore_index=True)
    a = frames.addresses.sort_values(
        ["company_id", "connection_id", "customer_id", "address_index"], ignore_index=True
    )
    return c, a


def assert_same_data(f1, f2):
    c1, a1 = _sorted(f1)
    c2, a2 = _sorted(f2)
    pdt.assert_frame_equal(c1, c2)
    pdt.assert_frame_equal(a1, a2)


def connection_files(path) -> set[tuple[str, str]]:
    try:
        m = json.loads((Path(path) / "_codat_frames" / "manifest.json").read_text())
    except (FileNotFoundError, ValueError):
        return set()
    return {(e["company_id"], e["connection_id"]) for e in m["connections"]}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sb():
    with sandbox.serve(**WORLD) as server:
        yield server


@pytest.fixture(scope="module")
def client(sb):
    with CodatCommerce(api_key=sb.api_key, server_url=sb.url) as s:
        yield s


@pytest.fixture(scope="module")
def local_run(sb, client, tmp_path_factory):
    """One local portfolio read into a folder: (summary, path, sandbox stats)."""
    path = tmp_path_factory.mktemp("local")
    sb.reset_stats()
    summary = read_portfolio(client, path=path, progress=False, page_size=PAGE, workers=6)
    return summary, path, sb.stats.snapshot()


@pytest.fixture(scope="module")
def dask_client():
    # In-process workers + Dask's statistical profiler (sys._current_frames every 10 ms, with a
    # GC callback that does I/O) can deadlock CPython's thread-state lock against a thread
    # being started; worker processes don't share it. Profiling is off for these tests.
    with (
        dask.config.set({"distributed.worker.profile.enabled": False}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=False,  # workers are threads of this process (2 cores are shared)
            protocol="tcp://",
            host="127.0.0.1",  # loopback only
            dashboard_address=None,  # no web server
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture
def key_env(sb, monkeypatch):
    monkeypatch.setenv("CODAT_API_KEY", sb.api_key)


# ------------------------------------------------------------------------------ local


def test_summary_lists_every_connection_with_status(sb, local_run):
    summary, _, _ = local_run
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    expected = [(c["id"], k["id"]) for c in sb.companies for k in sb.connections(c["id"])]
    assert list(zip(summary.company_id, summary.connection_id, strict=True)) == expected
    assert 50 < len(expected) <= 150
    by_key = summary.set_index(["company_id", "connection_id"])
    serving = set(sb.commerce_connections())
    assert set(by_key.index[by_key.status == "ok"]) == serving
    assert (summary.status != "failed").all()
    for key in sb.unsynced_connections() + sb.non_commerce_connections():
        row = by_key.loc[key]
        assert row.status == "skipped" and len(row.error) > 10
        assert pd.isna(row.rows)
    for key in serving:
        row = by_key.loc[key]
        assert row.rows == sb.customer_count(*key) == WORLD["customers"]
        assert pd.isna(row.error) and row.seconds > 0
    # reasons say why
    names = {c["id"]: c["name"] for c in sb.companies}
    assert (summary.company == summary.company_id.map(names)).all()
    nc = by_key.loc[sb.non_commerce_connections()[0]]
    assert "source type" in nc.error
    assert any("409" in e for e in summary.error.dropna())
    assert any("PendingAuth" in e for e in summary.error.dropna())
    assert str(summary["rows"].dtype) == "Int64"
    assert summary.attrs["run"]["counts"]["ok"] == len(serving)


def test_dataset_holds_every_customer(sb, local_run):
    _, path, _ = local_run
    frames = read_parquet(path)
    got = frames.customers.groupby(["company_id", "connection_id"], observed=True)["id"]
    got = {k: sorted(v) for k, v in got}
    assert got == {k: sorted(sb.customer_ids(*k)) for k in sb.commerce_connections()}
    assert str(frames.customers["created_date"].dtype) == "datetime64[us, UTC]"


def test_rate_limits_hold_and_never_trigger_429(sb, local_run):
    summary, _, stats = local_run
    assert stats["rate_limited"] == 0
    assert 429 not in stats["status"]
    assert max(stats["max_in_flight"].values()) <= 10
    run = summary.attrs["run"]
    assert run["throttled"] == 0 and run["retries"] == 0
    assert run["requests"] == stats["requests"]  # the run's counters are the client's
    # 6 company tasks x 10 pages, plus the connection listings (min(16, 2 * workers) threads)
    assert 1 < run["max_in_flight"] <= 6 * 10 + 12


def test_without_path_returns_frames_identical_to_the_dataset(sb, client, local_run):
    _, path, _ = local_run
    some = [c["id"] for c in sb.companies[:8]]
    calls = []
    result = read_portfolio(
        client, companies=some, progress=lambda *a: calls.append(a), page_size=PAGE
    )
    assert isinstance(result, PortfolioResult)
    frames, summary = result
    assert set(summary.company_id) == set(some)
    stored = [read_parquet(path, company_id=c) for c in some]
    stored = cf.frames.CustomerFrames(
        pd.concat([f.customers for f in stored], ignore_index=True),
        pd.concat([f.addresses for f in stored], ignore_index=True),
    )
    assert_same_data(frames, stored)
    n_ok = (summary.status == "ok").sum()
    assert len(frames.meta["connections"]) == n_ok
    done, total, rows = calls[-1]  # connections attempted (409s included), customers
    assert done == total >= n_ok and rows == len(frames.customers)


def test_a_company_that_cannot_be_listed_is_a_failed_row(sb, client):
    gone = "0b9c1e6e-5d0a-4c43-9a3f-3d2f1f6f0a11"  # valid UUID, no such company
    some = [gone, sb.companies[0]["id"]]
    summary = read_portfolio(client, companies=some, progress=False).summary
    assert summary.status.tolist() == ["failed", "ok"]
    assert pd.isna(summary.connection_id[0]) and "404" in summary.error[0]


def test_injected_429s_are_absorbed():
    with (
        sandbox.serve(
            seed=5,
            companies=8,
            customers=40,
            fault_rate=0.06,
            fault_kinds=("429",),
            retry_after_s=1,
        ) as sb,
        CodatCommerce(api_key=sb.api_key, server_url=sb.url) as s,
    ):
        started = time.monotonic()
        result = read_portfolio(s, progress=False, page_size=PAGE)
        elapsed = time.monotonic() - started
        faults = sb.stats.faults.get("429", 0)
        assert faults >= 1
        summary = result.summary
        assert set(summary.status) <= {"ok", "skipped"}  # no 429 reaches the user
        assert not summary.error.dropna().str.contains("429").any()
        assert set(summary.loc[summary.status == "ok", "connection_id"]) == {
            k for _, k in sb.commerce_connections()
        }
        run = summary.attrs["run"]
        assert run["throttled"] == faults and run["retries"] >= faults
        assert elapsed >= 1.0  # Retry-After was honoured
        assert max(sb.stats.max_in_flight.values()) <= 10
        got = result.frames.customers.groupby(["company_id", "connection_id"], observed=True)["id"]
        got = {k: sorted(v) for k, v in got}
        assert got == {k: sorted(sb.customer_ids(*k)) for k in sb.commerce_connections()}


def test_failed_connection_is_reported_and_retried_with_max_age(sb, tmp_path):
    victim = sb.commerce_connections()[3]

    def hook(path, page):
        if victim[1] in path:
            raise RuntimeError("upstream platform exploded")

    no_retry = cf.RetryConfig("none")
    some = sorted({c for c, _ in sb.commerce_connections()[:6]})
    with CodatCommerce(api_key=sb.api_key, server_url=sb.url, retry_config=no_retry) as s:
        sb.on_request(hook)
        try:
            summary = read_portfolio(s, companies=some, path=tmp_path, progress=False)
        finally:
            sb.on_request(None)
        row = summary.set_index("connection_id").loc[victim[1]]
        assert row.status == "failed" and "500" in row.error
        ok = (summary.status == "ok").sum()
        assert ok >= 5
        sb.reset_stats()
        again = read_portfolio(s, companies=some, path=tmp_path, progress=False, max_age="1h")
    assert sb.stats.customer_pages == 1  # only the failed one was fetched again
    assert again.set_index("connection_id").loc[victim[1]].status == "ok"
    assert (again.status == "fresh").sum() == ok


def test_bad_arguments_fail_before_any_request(sb, client, tmp_path):
    sb.reset_stats()
    with pytest.raises(ValueError, match="company_id"):
        read_portfolio(client, companies=["not-a-uuid"], path=tmp_path)
    with pytest.raises(ValueError, match="workers"):
        read_portfolio(client, workers=0)
    with pytest.raises(ValueError, match="max_age"):
        read_portfolio(client, max_age="soonish")
    with pytest.raises(TypeError, match="executor"):
        read_portfolio(client, executor="dask")
    assert sb.stats.requests == 0


# ------------------------------------------------------------------------------ resume


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "codat_frames", "portfolio", "--no-progress", *args]


def test_killed_run_resumes_where_it_stopped(local_run, tmp_path, monkeypatch):
    _, clean_path, _ = local_run
    with sandbox.serve(**WORLD, latency_ms=15) as sb:
        monkeypatch.setenv("CODAT_API_KEY", sb.api_key)
        out = tmp_path / "portfolio"
        # the one command, one company at a time, killed (SIGKILL) after 10 connections
        child = subprocess.Popen(
            _cli("--out", str(out), "--server-url", sb.url, "--workers", "1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while len(connection_files(out)) < 10:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            child.kill()
            child.communicate()
        time.sleep(0.3)  # let the sandbox finish a request the child had in flight
        written = connection_files(out)
        serving = set(sb.commerce_connections())
        assert 10 <= len(written) < len(serving)

        sb.reset_stats()
        with CodatCommerce(server_url=sb.url) as s:
            summary = read_portfolio(s, path=out, progress=False, page_size=PAGE)
        assert summary.attrs["run"]["resumed"]
        by_key = summary.set_index(["company_id", "connection_id"])
        assert set(by_key.index[by_key.status == "fresh"]) == written
        assert set(by_key.index[by_key.status == "ok"]) == serving - written
        pages = WORLD["customers"] // PAGE
        assert sb.stats.customer_pages == pages * len(serving - written)
        assert sb.stats.rate_limited == 0
        assert (by_key.loc[list(written), "rows"] == WORLD["customers"]).all()
        assert_same_data(read_parquet(out), read_parquet(clean_path))

        # the run is finished: the next one refreshes all, unless max_age says they're fresh
        sb.reset_stats()
        with CodatCommerce(server_url=sb.url) as s:
            fresh = read_portfolio(s, path=out, progress=False, max_age=3600)
        assert not fresh.attrs["run"]["resumed"]
        assert sb.stats.customer_pages == 0
        assert set(fresh.status) == {"fresh", "skipped"}


# ------------------------------------------------------------------------------ dask


def test_dask_run_gives_the_same_dataset(sb, client, local_run, dask_client, key_env, tmp_path):
    summary_local, clean_path, _ = local_run
    sb.reset_stats()
    summary = read_portfolio(
        client,
        path=tmp_path,
        executor=dask_client.get_executor(),
        progress=False,
        page_size=PAGE,
        workers=4,
    )
    run = summary.attrs["run"]
    assert run["executor"] == "ClientExecutor"
    assert sb.stats.rate_limited == 0 and 429 not in sb.stats.status
    assert max(sb.stats.max_in_flight.values()) <= 10
    assert run["requests"] == sb.stats.requests  # listing here + every worker client's requests
    pdt.assert_frame_equal(summary.drop(columns="seconds"), summary_local.drop(columns="seconds"))
    assert_same_data(read_parquet(tmp_path), read_parquet(clean_path))


def _sandbox_key() -> str:
    return sandbox.Sandbox(seed=WORLD["seed"]).api_key


def test_dask_workers_need_a_key_but_never_get_it_in_the_graph(
    sb, client, dask_client, monkeypatch, tmp_path
):
    monkeypatch.delenv("CODAT_API_KEY", raising=False)
    some = [sb.commerce_connections()[0][0]]
    with pytest.raises(PortfolioConfigError, match="CODAT_API_KEY"):
        read_portfolio(client, companies=some, executor=dask_client, progress=False)
    # key_provider: a picklable function run on the worker
    result = read_portfolio(
        client, companies=some, executor=dask_client, progress=False, key_provider=_sandbox_key
    )
    assert (result.summary.status == "ok").any()


def test_cli_portfolio_on_dask(sb, local_run, dask_client, key_env, tmp_path, capsys, monkeypatch):
    _, clean_path, _ = local_run
    made = []

    class RecordingClient(distributed.Client):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(distributed, "Client", RecordingClient)
    addr = dask_client.scheduler.address
    args = ["portfolio", "--server-url", sb.url, "--no-progress", "--workers", "4"]
    try:
        assert cli_main([*args, "--out", str(tmp_path), "--scheduler", addr]) == 0
    finally:
        for c in made:  # in case the CLI leaves its Client open
            c.close()
    assert len(made) == 1
    printed = capsys.readouterr().out
    assert "skipped" in printed and "ok" in printed
    assert_same_data(read_parquet(tmp_path), read_parquet(clean_path))
