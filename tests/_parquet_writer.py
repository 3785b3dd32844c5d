"""Helper for tests/test_parquet.py: builds marked frames and runs a killable writer.

Run as a script it is a small fork server (POSIX): it imports everything once, then for each
``go <k>`` line on stdin forks a child that writes to ``argv[1]`` in a loop, write number
``k, k+1, ...``; the child prints ``done <k>`` after each write returns, and ``phase staged``
/ ``phase committed`` after each staged file / manifest commit inside a write. The server prints
``pid <pid>`` for each child and ``dead <pid>`` once it is gone (the test kills it with
SIGKILL). Forking from a process that has not run any pyarrow computation is safe and saves the
~1 s import per kill.

Write number k stores, for connection A (every k) and connection B (even k only, in the same
``to_parquet`` call), ``n_customers(k)`` customers whose ``note`` is ``"w<k>"`` and addresses
whose ``line1`` is ``"w<k>"``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa

from codat_frames import frames as F

COMPANY = "11111111-1111-4111-8111-111111111111"
CONN_A = "22222222-2222-4222-8222-222222222222"
CONN_B = "33333333-3333-4333-8333-333333333333"
TYPES = ["Billing", "Delivery", "Order", "Inventory", "Unknown"]


def n_customers(k: int) -> int:
    return 1500 + (k * 37) % 400


def n_addresses(k: int) -> int:
    n = n_customers(k)
    return sum(i % 3 for i in range(n))


def marked_tables(k: int, connection_id: str) -> tuple[pa.Table, pa.Table]:
    n = n_customers(k)
    mark = f"w{k}"
    ids = [f"cust-{i}" for i in range(n)]
    base = np.datetime64("2024-01-01T00:00:00", "us")
    mod = base + np.arange(n).astype("timedelta64[s]") + np.timedelta64(k, "m")
    cs = F.CUSTOMER_SCHEMA
    cust = {
        "company_id": [COMPANY] * n,
        "connection_id": [connection_id] * n,
        "id": ids,
        "customer_name": [f"Name {i} ü" for i in range(n)],
        "email_address": [f"c{i}@example.com" for i in range(n)],
        "phone": [None if i % 5 == 0 else "+44 1234" for i in range(n)],
        "default_currency": ["GBP"] * n,
        "note": [mark] * n,
        "created_date": pa.array(np.full(n, base), pa.timestamp("us", tz="UTC")),
        "modified_date": pa.array(mod, pa.timestamp("us", tz="UTC")),
        "source_modified_date": pa.array(mod, pa.timestamp("us", tz="UTC")),
    }
    c_tab = pa.table({f.name: pa.array(cust[f.name]).cast(f.type) for f in cs}, schema=cs)
    cid, idx = [], []
    for i in range(n):
        for j in range(i % 3):
            cid.append(ids[i])
            idx.append(j)
    m = len(cid)
    addr = {
        "company_id": [COMPANY] * m,
        "connection_id": [connection_id] * m,
        "customer_id": cid,
        "address_index": pa.array(idx, pa.int32()),
        "type": [TYPES[j % 5] for j in range(m)],
        "line1": [mark] * m,
        "line2": [None] * m,
        "city": ["London"] * m,
        "region": [None] * m,
        "country": ["GB"] * m,
        "postal_code": ["N1"] * m,
    }
    a_s = F.ADDRESS_SCHEMA
    a_tab = pa.table({f.name: pa.array(addr[f.name]).cast(f.type) for f in a_s}, schema=a_s)
    return c_tab, a_tab


def marked_frames(k: int, connections: tuple[str, ...]):
    parts = [marked_tables(k, c) for c in connections]
    c_tab = pa.concat_tables([p[0] for p in parts])
    a_tab = pa.concat_tables([p[1] for p in parts])
    return F.CustomerFrames(
        customers=F.to_pandas_customers(c_tab),
        addresses=F.to_pandas_addresses(a_tab),
        meta={
            "company_id": COMPANY,
            "connection_id": connections[0] if len(connections) == 1 else None,
            "query": None,
            "order_by": None,
            "fetched_at": "2024-01-01T00:00:00Z",
            "total_results": n_customers(k),
        },
    )


def _write_loop(path: str, k: int) -> None:  # runs in the forked child, until killed
    import codat_frames.parquet as P

    real_write_file, real_write_manifest = P._write_file, P._write_manifest

    def write_file(*a, **kw):  # lets the test aim its kill at a phase of the write
        real_write_file(*a, **kw)
        os.write(1, b"phase staged\n")

    def write_manifest(*a, **kw):
        real_write_manifest(*a, **kw)
        os.write(1, b"phase committed\n")

    P._write_file, P._write_manifest = write_file, write_manifest
    to_parquet = P.to_parquet
    while True:
        conns = (CONN_A, CONN_B) if k % 2 == 0 else (CONN_A,)
        to_parquet(marked_frames(k, conns), path)
        os.write(1, f"done {k}\n".encode())
        k += 1


def main() -> None:
    path = sys.argv[1]
    import codat_frames.parquet  # noqa: F401  (import before forking)

    os.write(1, b"ready\n")
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd != "go":
            break
        pid = os.fork()
        if pid == 0:
            try:
                _write_loop(path, int(arg))
            finally:
                os._exit(1)
        os.write(1, f"pid {pid}\n".encode())
        os.waitpid(pid, 0)
        os.write(1, f"dead {pid}\n".encode())


if __name__ == "__main__":
    main()
