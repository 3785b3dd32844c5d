"""Fetch benchmark: read_customers against a plain sequential page loop, same sandbox, one run.

The sandbox runs in its own process (so its CPU doesn't share our GIL) with a fixed latency per
request; both sides read the same 100 pages. Goal: our wall time within 1.3x of the ideal
``latency x (1 + ceil(99 / concurrency))`` (page 1 alone, then the rest 10 at a time).

    python benchmarks/bench_fetch.py [--latency-ms 50] [--pages 100] [--page-size 100]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import time
import warnings

import codat_frames as cf
from codat_frames.paging import read_customers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sandbox(port: int, customers: int, latency_ms: int) -> tuple[subprocess.Popen, str]:
    code = (
        "from codat_frames import sandbox; "
        f"sandbox.run(host='127.0.0.1', port={port}, seed=1, customers={customers}, "
        f"latency_ms={latency_ms}, companies=1)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    key = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "CODAT_API_KEY=" in line:
            key = line.split("CODAT_API_KEY=", 1)[1].strip().strip("'\"")
            break
    if key is None:
        proc.kill()
        raise SystemExit("sandbox did not start")
    return proc, key


def sequential(s: cf.CodatCommerce, company_id: str, connection_id: str, page_size: int) -> int:
    """What Codat's SDK leaves users to write: one page after another until all are read."""
    rows, page = [], 1
    while True:
        res = s.customers.list(request={"company_id": company_id, "connection_id": connection_id,
                                        "page": page, "page_size": page_size})  # fmt: skip
        rows.extend(res.results)
        if page * res.page_size >= res.total_results:
            return len(rows)
        page += 1


def timed_read(url: str, key: str, page_size: int, concurrency: int) -> tuple[float, float, int]:
    """(sequential seconds, read_customers seconds, records) against one running sandbox."""
    with cf.CodatCommerce(api_key=key, server_url=url, max_concurrency=concurrency) as s:
        company = next(s.companies.iter_all())
        conn = next(c for c in s.connections.iter_all(company.id) if c.status == "Linked")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cf.DataQualityWarning)
            # Warm up the connection pool and the sandbox's record cache (a real API reads a
            # database; we measure the client, not the sandbox's record generator).
            read_customers(s, company.id, conn.id, page_size=2000, progress=False)
            t0 = time.perf_counter()
            n_seq = sequential(s, company.id, conn.id, page_size)
            t_seq = time.perf_counter() - t0
            t0 = time.perf_counter()
            frames = read_customers(s, company.id, conn.id, page_size=page_size, progress=False)
            t_ours = time.perf_counter() - t0
    assert n_seq == len(frames.customers)
    return t_seq, t_ours, n_seq


def run_against_sandbox(customers: int, latency_ms: int, page_size: int, concurrency: int):
    port = free_port()
    proc, key = start_sandbox(port, customers, latency_ms)
    try:
        return timed_read(f"http://127.0.0.1:{port}", key, page_size, concurrency)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--pages", type=int, default=100)
    ap.add_argument("--page-size", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=10)
    args = ap.parse_args()
    customers = args.pages * args.page_size
    t_seq, t_ours, n = run_against_sandbox(customers, args.latency_ms, args.page_size,
                                           args.concurrency)  # fmt: skip
    # The same read with no added latency: what the sandbox (one Python process) and the
    # client cost in CPU alone, the floor under any latency.
    _, t_floor, _ = run_against_sandbox(customers, 0, args.page_size, args.concurrency)
    ideal = args.latency_ms / 1000 * (1 + math.ceil((args.pages - 1) / args.concurrency))
    print(f"\n{args.pages} pages x {args.page_size} customers, sandbox latency "
          f"{args.latency_ms} ms, ideal {ideal * 1000:.0f} ms, {os.cpu_count()} cores")  # fmt: skip
    print(f"{'side':<52} {'records':>8} {'wall s':>8} {'x ideal':>8}")
    rows = [
        ("sequential page loop (models)", n, t_seq),
        (f"read_customers (concurrency {args.concurrency}, typed frames)", n, t_ours),
        ("read_customers, sandbox without latency (CPU floor)", n, t_floor),
    ]
    for name, k, t in rows:
        print(f"{name:<52} {k:>8,} {t:>8.2f} {t / ideal:>8.2f}")
    print(f"speed-up: {t_seq / t_ours:.1f}x   goal (<= 1.3x ideal): "
          f"{'met' if t_ours <= 1.3 * ideal else 'NOT met'}   "
          f"latency hidden: ours - floor = {t_ours - t_floor:.2f} s "
          f"({(t_ours - t_floor) / ideal:.2f}x ideal)")  # fmt: skip
    assert n == customers


if __name__ == "__main__":
    main()
