"""Reliability benchmark: fault storms, shifting data and scale, checked against the sandbox's
ground truth. Prints one table (scenario, requests, faults injected, retries, records expected,
records returned, lost, duplicated, peak memory) and exits 1 unless every scenario lost and
duplicated nothing, passed its checks and stayed under the memory bound.

    python benchmarks/reliability.py            # full size (several minutes)
    python benchmarks/reliability.py --quick    # small, ~20 s

Scenarios (each in its own child process, so "peak memory" is that scenario's peak RSS):

* fault storm: 20% of data requests faulted (429 + Retry-After, 500, 503 JSON, 502/503/504
  HTML, dropped connections, replies slower than the client's timeout) over 100,000 customers
  in pages of 500, for 3 seeds. Sandbox and client share the process here.
* shifting data: inserts, deletes and modifications on every page request of the first pass
  (then a clean pass follows), or of every pass (the union is returned); expected = records
  present for the whole read. Then changes between reads, and ``sync_customers``
  (incremental, then ``full=True``) compared with a fresh read.
* scale: 1,000,000 customers into parquet. The sandbox runs in a separate process; the
  client's peak RSS is measured alone and must stay under ``--bound-mb`` (default 2048).
  Lost/duplicated are counted from the parquet files against the ground truth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_dict(row: C.Row) -> dict:
    # not dataclasses.asdict: it rebuilds the Counter from (key, value) pairs
    d = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    d["fault_kinds"] = dict(row.fault_kinds)
    return d


# ------------------------------------------------------------------------------ children


def _child_storm(a: argparse.Namespace) -> list[C.Row]:
    return [C.fault_storm(a.customers, a.seed, page_size=a.page_size)]


def _child_shifting(a: argparse.Namespace) -> list[C.Row]:
    return C.shifting_data(a.customers, a.seed, page_size=a.page_size, every_pass=a.every_pass)


def _child_scale_client(a: argparse.Namespace) -> list[C.Row]:
    """Read every customer from the sandbox at ``a.url`` into parquet at ``a.out``."""
    import warnings

    import codat_frames as cf
    from codat_frames import sandbox
    from codat_frames.paging import read_customers

    truth = sandbox.Sandbox(seed=a.seed, customers=a.customers, companies=1)  # not started
    pair = truth.commerce_connections()[0]
    base_mb = C.peak_rss_mb()
    received = [0]
    started = time.monotonic()
    with cf.CodatCommerce(api_key=truth.api_key, server_url=a.url) as s:
        def count(response):
            received[0] += int(response.headers.get("content-length", 0))
        s._transport.client.event_hooks["response"].append(count)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cf.DataQualityWarning)
            frames = read_customers(s, *pair, progress=False)
        read_s = time.monotonic() - started
        frames.to_parquet(a.out)
        stats = s.stats
    del frames
    return [C.Row(
        f"scale: {a.customers:,} customers -> parquet", stats["requests"], 0, stats["retries"],
        a.customers, 0, 0, 0, C.peak_rss_mb(), time.monotonic() - started, {},
        f"client peak RSS {C.peak_rss_mb():,.0f} MB (after imports {base_mb:,.0f} MB); "
        f"JSON received {received[0] / 2**20:,.0f} MB; read {read_s:.1f} s",
    )]  # fmt: skip


CHILDREN = {"storm": _child_storm, "shifting": _child_shifting, "scale": _child_scale_client}


def run_child(kind: str, **kw) -> list[C.Row]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    for k, v in kw.items():
        if v is True:
            argv.append(f"--{k.replace('_', '-')}")
        elif v not in (None, False):
            argv += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {kind} failed ({proc.returncode})")
    rows = []
    for d in json.loads(proc.stdout.strip().splitlines()[-1]):
        d["fault_kinds"] = C.Counter(d["fault_kinds"])
        rows.append(C.Row(**d))
    return rows


# ------------------------------------------------------------------------------ scale


def scale(customers: int, seed: int, bound_mb: float) -> C.Row:
    import pyarrow.dataset as ds

    from codat_frames import sandbox

    port = free_port()
    code = ("from codat_frames import sandbox; "
            f"sandbox.run(host='127.0.0.1', port={port}, seed={seed}, customers={customers}, "
            "companies=1)")  # fmt: skip
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        for line in server.stdout:
            if "listening on" in line:
                break
        else:
            raise SystemExit("the sandbox process did not start")
        with tempfile.TemporaryDirectory() as out:
            (row,) = run_child("scale", url=f"http://127.0.0.1:{port}", seed=seed,
                               customers=customers, out=out)  # fmt: skip
            ids = ds.dataset(Path(out) / "customers", format="parquet",
                             partitioning="hive").to_table(columns=["id"])  # fmt: skip
            got = ids.column("id").to_pylist()
    finally:
        server.terminate()  # the sandbox process started above
        server.wait(timeout=30)
    truth = sandbox.Sandbox(seed=seed, customers=customers, companies=1)
    expected = set(truth.customer_ids(*truth.commerce_connections()[0]))
    row.returned, row.lost, row.duplicated = C.score(got, expected)
    row.checks[f"client peak RSS under {bound_mb:,.0f} MB"] = row.peak_mb < bound_mb
    return row


# ------------------------------------------------------------------------------ main


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs{mem}, "
            f"Python {platform.python_version()}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (~20 s)")
    ap.add_argument("--seeds", type=int, default=3, help="fault storm seeds (default 3)")
    ap.add_argument("--storm-customers", type=int, default=None)
    ap.add_argument("--shift-customers", type=int, default=None)
    ap.add_argument("--scale-customers", type=int, default=None)
    ap.add_argument("--bound-mb", type=float, default=2048, help="client peak RSS bound")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    # child mode (internal)
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--customers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--page-size", type=int, default=500, help=argparse.SUPPRESS)
    ap.add_argument("--every-pass", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        rows = CHILDREN[a.child](a)
        print(json.dumps([_as_dict(r) for r in rows]))
        return 0

    storm_n = a.storm_customers or (5_000 if a.quick else 100_000)
    shift_n = a.shift_customers or (3_000 if a.quick else 50_000)
    scale_n = a.scale_customers or (50_000 if a.quick else 1_000_000)
    page = 100 if a.quick else 500
    print(f"machine: {machine()}", flush=True)
    rows: list[C.Row] = []
    started = time.monotonic()
    for seed in range(1, a.seeds + 1):
        rows += run_child("storm", customers=storm_n, seed=seed, page_size=page)
        print(f"  {rows[-1].scenario}: {rows[-1].seconds:.1f} s", flush=True)
    rows += run_child("shifting", customers=shift_n, seed=1, page_size=page)
    rows += run_child("shifting", customers=shift_n, seed=2, page_size=page, every_pass=True)
    print(f"  shifting data: {sum(r.seconds for r in rows[-3:]):.1f} s", flush=True)
    if not a.no_scale:
        rows.append(scale(scale_n, 1, a.bound_mb))
        print(f"  {rows[-1].scenario}: {rows[-1].seconds:.1f} s", flush=True)

    kinds = sum((r.fault_kinds for r in rows), C.Counter())
    all_kinds = set(kinds) == set(C.sandbox.FAULT_KINDS)
    print()
    print(C.table(rows))
    print()
    for r in rows:
        checks = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r.checks.items())
        print(f"- {r.scenario} ({r.seconds:.1f} s): {r.notes}" + (f"; {checks}" if checks else ""))
    print(f"- fault kinds injected over all storms: "
          f"{', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}")  # fmt: skip
    print("- peak memory: the scenario's process (storm/shifting: client and sandbox together; "
          "scale: the client alone)")  # fmt: skip
    print(f"total {time.monotonic() - started:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps([_as_dict(r) for r in rows], indent=1))
    ok = all(r.ok for r in rows) and all_kinds
    print("RESULT:", "PASS (zero lost, zero duplicated, every check passed)" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
