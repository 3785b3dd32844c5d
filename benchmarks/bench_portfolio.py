"""Portfolio read time: read_portfolio (threads, Dask) against a one-connection-at-a-time loop.

    python benchmarks/bench_portfolio.py [--companies 50] [--customers 500] [--latency-ms 25]
                                         [--page-size 100] [--workers 8] [--no-dask]

The sandbox runs in its own process (so it doesn't share the GIL with the clients) on
127.0.0.1, with ``--latency-ms`` per request standing in for the network round trip to Codat.
Every mode writes the whole portfolio to its own parquet folder; the datasets are checked to
be identical before the table is printed.

Modes:
  loop          for each company, for each connection: read_customers + to_parquet, one
                connection at a time (pages of a connection still concurrent, as
                read_customers does)
  threads       read_portfolio(s, path=...) with ``--workers`` company tasks on threads
  dask          read_portfolio(..., executor=Client.get_executor()) on a LocalCluster
                (2 in-process workers x workers/2 threads, loopback only)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codat_frames import models
from codat_frames.commerce import CodatCommerce
from codat_frames.paging import read_customers
from codat_frames.parquet import read_parquet, to_parquet
from codat_frames.portfolio import read_portfolio


def start_sandbox(args) -> tuple[subprocess.Popen, str, str]:
    code = (
        "from codat_frames.sandbox import serve_forever; "
        f"serve_forever(seed=1, companies={args.companies}, customers={args.customers}, "
        f"latency_ms={args.latency_ms}, host='127.0.0.1', port=0, "
        "print_fn=lambda s: print(s, flush=True))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    url = key = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            url = line.rsplit(" ", 1)[-1].strip()
        elif line.startswith("API key:"):
            key = line.split(":", 1)[1].strip()
        if url and key:
            break
    if not (url and key):
        proc.kill()
        raise SystemExit("the sandbox did not start")
    # keep draining its output so it never blocks on a full pipe
    import threading

    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, url, key


def loop(s, out: Path, page_size: int | None) -> int:
    n = 0
    for company in s.companies.iter_all():
        for conn in s.connections.iter_all(company.id):
            if conn.source_type != "Commerce" or not conn.can_serve_data:
                continue
            try:
                frames = read_customers(s, company.id, conn.id, page_size=page_size, progress=False)
            except models.ErrorMessage as e:
                if e.status_code in (404, 409):
                    continue
                raise
            to_parquet(frames, out)
            n += 1
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--companies", type=int, default=50)
    p.add_argument("--customers", type=int, default=500)
    p.add_argument("--latency-ms", type=float, default=25)
    p.add_argument("--page-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--no-dask", action="store_true")
    args = p.parse_args(argv)

    proc, url, key = start_sandbox(args)
    os.environ["CODAT_API_KEY"] = key  # Dask workers read the key from their environment
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp, CodatCommerce(api_key=key, server_url=url) as s:
            tmp = Path(tmp)
            t, before = time.perf_counter(), s.stats
            n = loop(s, tmp / "loop", args.page_size)
            after = s.stats
            used = {k: after[k] - before[k] for k in ("requests", "retries", "throttled")}
            results.append(("loop (one connection at a time)", time.perf_counter() - t, n, used))

            t = time.perf_counter()
            summary = read_portfolio(
                s, path=tmp / "threads", workers=args.workers, page_size=args.page_size,
                progress=False,
            )  # fmt: skip
            ok = int((summary.status == "ok").sum())
            label = f"read_portfolio threads (workers={args.workers})"
            results.append((label, time.perf_counter() - t, ok, summary.attrs["run"]))

            if not args.no_dask:
                try:
                    import dask
                    from dask.distributed import Client, LocalCluster
                except ImportError:
                    print("dask not installed: pip install 'codat-frames[dask]'; skipping")
                else:
                    with (
                        # in-process workers: Dask's profiler can deadlock CPython (see tests)
                        dask.config.set({"distributed.worker.profile.enabled": False}),
                        LocalCluster(
                            n_workers=2,
                            threads_per_worker=max(1, args.workers // 2),
                            processes=False,
                            protocol="tcp://",
                            host="127.0.0.1",
                            dashboard_address=None,
                        ) as cluster,
                        Client(cluster) as client,
                    ):
                        t = time.perf_counter()
                        summary = read_portfolio(
                            s, path=tmp / "dask", executor=client.get_executor(),
                            workers=args.workers, page_size=args.page_size, progress=False,
                        )  # fmt: skip
                        ok = int((summary.status == "ok").sum())
                        label = f"read_portfolio Dask LocalCluster (workers={args.workers})"
                        results.append((label, time.perf_counter() - t, ok, summary.attrs["run"]))

            reference = read_parquet(tmp / "loop")
            rows = len(reference.customers)
            for name in ("threads", "dask"):
                if (tmp / name).exists():
                    other = read_parquet(tmp / name)
                    assert len(other.customers) == rows, name
                    assert set(other.customers["id"]) == set(reference.customers["id"]), name
    finally:
        proc.kill()
        proc.wait()

    base = results[0][1]
    print(
        f"\nportfolio: {args.companies} companies, {args.customers} customers per connection, "
        f"page size {args.page_size}, {args.latency_ms:g} ms latency per request; "
        f"{rows:,} customers in total\n"
    )
    w = max(len(r[0]) for r in results)
    print(f"| {'mode':<{w}} | connections | seconds | speed-up | requests | retries | 429s |")
    print(f"| {'-' * w} | ----------: | ------: | -------: | -------: | ------: | ---: |")
    for name, secs, n, c in results:
        print(
            f"| {name:<{w}} | {n:>11} | {secs:>7.2f} | {base / secs:>7.1f}x "
            f"| {c['requests']:>8,} | {c['retries']:>7} | {c['throttled']:>4} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
