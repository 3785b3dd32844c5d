"""codat_frames.parquet: round trips, layout, metadata, atomicity (kill -9), upsert, sync."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import _parquet_writer as W  # tests/ is on sys.path (pytest rootdir-relative import)
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from codat_frames import frames as F
from codat_frames import parquet as P
from codat_frames.parquet import (
    merge_frames,
    read_parquet,
    stored_high_water_mark,
    sync_customers,
    to_parquet,
)

COMPANY, CONN_A, CONN_B = W.COMPANY, W.CONN_A, W.CONN_B
COMPANY2 = "44444444-4444-4444-8444-444444444444"
UTC = "UTC"


def ts(s):
    return None if s is None else pd.Timestamp(s).tz_convert(UTC)


def make_frames(customers: list[dict], addresses: list[dict], meta: dict | None = None):
    """Frames built through frames.py's own schema and Arrow -> pandas conversion."""
    cs, a_s = F.CUSTOMER_SCHEMA, F.ADDRESS_SCHEMA
    c_cols = {f.name: [r.get(f.name) for r in customers] for f in cs}
    a_cols = {f.name: [r.get(f.name) for r in addresses] for f in a_s}
    c_tab = pa.table({f.name: pa.array(c_cols[f.name]).cast(f.type) for f in cs}, schema=cs)
    a_tab = pa.table(
        {
            f.name: pa.array(a_cols[f.name], type=pa.string()).cast(f.type)
            if f.name != "address_index"
            else pa.array(a_cols[f.name], pa.int32())
            for f in a_s
        },
        schema=a_s,
    )
    return F.CustomerFrames(
        customers=F.to_pandas_customers(c_tab),
        addresses=F.to_pandas_addresses(a_tab),
        meta=meta
        if meta is not None
        else {
            "company_id": customers[0]["company_id"] if customers else None,
            "connection_id": customers[0]["connection_id"] if customers else None,
            "query": None,
            "order_by": None,
            "fetched_at": "2024-05-01T10:00:00.000000Z",
            "total_results": len(customers),
        },
    )


def cust(i, company=COMPANY, conn=CONN_A, mod="2024-03-01T00:00:00Z", **kw):
    row = {
        "company_id": company,
        "connection_id": conn,
        "id": f"c{i}",
        "customer_name": f"Customer {i}",
        "email_address": f"c{i}@example.com",
        "phone": "+1 555",
        "default_currency": "USD",
        "note": None,
        "created_date": ts("2023-01-01T00:00:00Z"),
        "modified_date": ts(mod),
        "source_modified_date": ts(mod),
    }
    row.update(kw)
    return row


def addr(cid, j, company=COMPANY, conn=CONN_A, **kw):
    row = {
        "company_id": company,
        "connection_id": conn,
        "customer_id": cid,
        "address_index": j,
        "type": "Billing",
        "line1": f"{j} Main St",
        "line2": None,
        "city": "Springfield",
        "region": None,
        "country": "US",
        "postal_code": "12345",
    }
    row.update(kw)
    return row


def rich_frames(conn=CONN_A, company=COMPANY):
    customers = [
        cust(0, company, conn, note="", phone=None, customer_name="Zoë Ñandú 東京 🚀"),
        cust(
            1,
            company,
            conn,
            mod="2024-04-01T12:34:56.123456Z",
            email_address=None,
            source_modified_date=None,
            note='My Billing Address ./*drop table "q"',
        ),
        cust(2, company, conn, created_date=None, modified_date=None, default_currency="XXX"),
        cust(3, company, conn, customer_name="", phone=""),
    ]
    types_ = ["Billing", "Delivery", "Order", "Inventory", "Unknown"]
    addresses = [
        addr(
            "c0",
            j,
            company,
            conn,
            type=t,
            line2="" if j == 1 else None,
            city="Zürich" if j == 2 else "Springfield",
        )
        for j, t in enumerate(types_)
    ]
    addresses += [addr("c1", 0, company, conn, type="Unknown", postal_code=None)]
    return make_frames(customers, addresses)


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (p.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def staged(root: Path) -> list[Path]:
    return [p for p in (root / "_codat_frames" / "staging").rglob("*") if p.is_file()]


def only_part_files(root: Path) -> bool:
    files = [p for ds in ("customers", "addresses") for p in (root / ds).rglob("*") if p.is_file()]
    return all(p.name.startswith("part-") and p.suffix == ".parquet" for p in files)


def data_files(root: Path, ds: str) -> list[Path]:
    return sorted((root / ds).rglob("*.parquet"))


def assert_frames_equal(a, b):
    pd.testing.assert_frame_equal(a.customers, b.customers, check_exact=True)
    pd.testing.assert_frame_equal(a.addresses, b.addresses, check_exact=True)
    assert list(a.customers.dtypes) == list(b.customers.dtypes)
    assert list(a.addresses.dtypes) == list(b.addresses.dtypes)


# --------------------------------------------------------------------------- round trips


def test_round_trip_every_dtype(tmp_path):
    f = rich_frames()
    to_parquet(f, tmp_path / "out")
    g = read_parquet(tmp_path / "out")
    assert_frames_equal(f, g)
    assert g.meta == f.meta
    c, a = g.customers, g.addresses
    assert c.loc[0, "note"] == "" and pd.isna(c.loc[1, "email_address"])
    assert c.loc[0, "customer_name"] == "Zoë Ñandú 東京 🚀"
    assert pd.isna(c.loc[2, "modified_date"]) and pd.isna(c.loc[2, "created_date"])
    assert c.loc[1, "modified_date"] == pd.Timestamp("2024-04-01T12:34:56.123456Z")
    assert str(c["modified_date"].dtype) == "datetime64[us, UTC]"
    assert isinstance(c["id"].dtype, pd.StringDtype) and c["id"].dtype.storage == "pyarrow"
    assert a["address_index"].dtype == "int32"
    assert list(a["type"].cat.categories) == [
        "Billing",
        "Delivery",
        "Order",
        "Inventory",
        "Unknown",
    ]
    assert not a["type"].cat.ordered
    assert a.loc[1, "line2"] == "" and pd.isna(a.loc[0, "line2"])
    assert list(c.columns) == F.CUSTOMER_SCHEMA.names
    assert list(a.columns) == F.ADDRESS_SCHEMA.names


def test_round_trip_of_normalized_api_records(tmp_path):
    records = [
        {
            "id": 7110701885,
            "customerName": "",
            "phone": None,
            "defaultCurrency": "XXX",
            "modifiedDate": "2022-10-27T10:22:43.6464237Z",
            "createdDate": "2022-01-18T11:41:54",
            "sourceModifiedDate": None,
            "note": "My Billing Address ./*drop table",
            "addresses": [
                {"type": "billing", "line1": "1 Rd", "city": "Zürich"},
                {"type": "weird", "postalCode": ""},
            ],
        },
        {
            "id": "cst_NUkBHQmekz",
            "modifiedDate": "2021-11-15T01:00:00-05:00",
            "createdDate": "0001-01-01T00:00:00",
            "addresses": None,
        },
    ]
    f = F.normalize_customers(
        records, company_id=COMPANY, connection_id=CONN_A, local_tz="Europe/London"
    )
    to_parquet(f, tmp_path)
    g = read_parquet(tmp_path)
    assert_frames_equal(f, g)
    assert g.meta == f.meta
    assert stored_high_water_mark(tmp_path, COMPANY, CONN_A) == pd.Timestamp(
        "2022-10-27T10:22:43.646423Z"
    )


def test_round_trip_category_subset_keeps_all_categories(tmp_path):
    f = make_frames([cust(0)], [addr("c0", 0, type="Delivery")])
    to_parquet(f, tmp_path)
    g = read_parquet(tmp_path)
    assert_frames_equal(f, g)
    assert len(g.addresses["type"].cat.categories) == 5


def test_round_trip_empty_frames(tmp_path):
    f = make_frames([], [], meta={})
    to_parquet(f, tmp_path / "out")
    g = read_parquet(tmp_path / "out")
    assert len(g.customers) == 0 and len(g.addresses) == 0
    assert_frames_equal(f, g)
    # an empty folder is an empty dataset too
    (tmp_path / "empty").mkdir()
    assert_frames_equal(f, read_parquet(tmp_path / "empty"))


def test_empty_read_of_a_connection_replaces_it(tmp_path):
    to_parquet(rich_frames(), tmp_path)
    empty = make_frames(
        [],
        [],
        meta={
            "company_id": COMPANY,
            "connection_id": CONN_A,
            "fetched_at": "2024-06-01T00:00:00Z",
            "query": None,
        },
    )
    to_parquet(empty, tmp_path)
    g = read_parquet(tmp_path, COMPANY, CONN_A)
    assert len(g.customers) == 0 and len(g.addresses) == 0
    assert g.meta["fetched_at"] == "2024-06-01T00:00:00Z"
    assert stored_high_water_mark(tmp_path, COMPANY, CONN_A) is None


def test_missing_path_and_filters(tmp_path):
    with pytest.raises(FileNotFoundError, match="no codat_frames parquet folder"):
        read_parquet(tmp_path / "nope")
    to_parquet(rich_frames(CONN_A), tmp_path)
    to_parquet(rich_frames(CONN_B), tmp_path)
    to_parquet(rich_frames(CONN_A, COMPANY2), tmp_path)
    assert len(read_parquet(tmp_path).customers) == 12
    assert len(read_parquet(tmp_path, company_id=COMPANY).customers) == 8
    g = read_parquet(tmp_path, connection_id=CONN_B)
    assert set(g.customers["connection_id"]) == {CONN_B} and len(g.addresses) == 6
    assert g.meta["connection_id"] == CONN_B
    g = read_parquet(tmp_path, company_id=COMPANY2, connection_id=CONN_B)
    assert len(g.customers) == 0 and list(g.customers.columns) == F.CUSTOMER_SCHEMA.names
    g = read_parquet(tmp_path, company_id=COMPANY)
    assert g.meta["company_id"] == COMPANY and g.meta["connection_id"] is None
    assert len(g.meta["connections"]) == 2


# --------------------------------------------------------------------------- layout & metadata


def test_layout_and_file_metadata(tmp_path, monkeypatch):
    f = rich_frames()
    f.meta["query"] = "modifiedDate>=2024-01-01T00:00:00Z"
    to_parquet(f, tmp_path)
    for ds, n in (("customers", 4), ("addresses", 6)):
        (file,) = data_files(tmp_path, ds)
        rel = file.relative_to(tmp_path).parts
        assert rel[:3] == (ds, f"company_id={COMPANY}", f"connection_id={CONN_A}")
        md = pq.read_metadata(file)
        assert md.num_rows == n
        kv = {k.decode(): v.decode() for k, v in md.metadata.items()}
        assert kv["codat_frames.schema_version"] == str(P._schema_version())
        assert kv["codat_frames.version"] == __import__("codat_frames").__version__
        assert kv["codat_frames.company_id"] == COMPANY
        assert kv["codat_frames.connection_id"] == CONN_A
        assert kv["codat_frames.query"] == "modifiedDate>=2024-01-01T00:00:00Z"
        assert kv["codat_frames.fetched_at"] == "2024-05-01T10:00:00.000000Z"
        assert kv["codat_frames.dataset"] == ds
        # partition columns live in the path only; compression is zstd
        names = md.schema.to_arrow_schema().names
        assert "company_id" not in names and "connection_id" not in names
        assert md.row_group(0).column(0).compression == "ZSTD"
    manifest = json.loads((tmp_path / "_codat_frames" / "manifest.json").read_text())
    assert manifest["partition_by"] == ["company_id", "connection_id"]
    (entry,) = manifest["connections"]
    assert entry["high_water_mark"] == "2024-04-01T12:34:56.123456Z"
    assert entry["files"]["customers"]["rows"] == 4


@pytest.mark.parametrize("partition_by", [(), ("company_id",), ("connection_id", "company_id")])
def test_other_partitionings_round_trip(tmp_path, partition_by):
    f = rich_frames(CONN_A)
    to_parquet(f, tmp_path, partition_by=partition_by)
    to_parquet(rich_frames(CONN_B), tmp_path, partition_by=partition_by)
    assert_frames_equal(f, read_parquet(tmp_path, connection_id=CONN_A))
    t = pds.dataset(tmp_path / "customers", partitioning="hive").to_table()
    assert t.num_rows == 8 and set(partition_by) <= set(t.column_names)
    with pytest.raises(ValueError, match="is partitioned by"):
        to_parquet(f, tmp_path)  # the default partitioning differs from the folder's


def test_secret_never_written(tmp_path, monkeypatch):
    secret = "sk_live_TOPSECRET_5f3b9c"
    monkeypatch.setenv("CODAT_API_KEY", secret)
    b64 = base64.b64encode(secret.encode()).decode()
    f = rich_frames()
    f.meta.update(
        api_key=secret,
        auth_header=f"Basic {b64}",
        Authorization=f"Basic {b64}",
        client_repr=f"CodatCommerce(api_key={secret!r})",
        extra={"token": secret, "ok": 1},
    )
    to_parquet(f, tmp_path)
    merge_frames(tmp_path, rich_frames(), COMPANY, CONN_A)
    blobs = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert secret.encode() not in blobs and b64.encode() not in blobs
    assert b"TOPSECRET" not in blobs
    g = read_parquet(tmp_path)
    assert "api_key" not in g.meta and g.meta["extra"] == {"ok": 1}


# --------------------------------------------------------------------------- replace semantics


def test_rewrite_one_connection_leaves_other_untouched(tmp_path):
    fa, fb = rich_frames(CONN_A), rich_frames(CONN_B)
    to_parquet(fa, tmp_path)
    to_parquet(fb, tmp_path)
    before = {k: v for k, v in snapshot(tmp_path).items() if CONN_B in k}
    assert len(before) == 2
    time.sleep(0.01)
    fa2 = make_frames([cust(9, note="v2")], [addr("c9", 0)])
    to_parquet(fa2, tmp_path)
    after = {k: v for k, v in snapshot(tmp_path).items() if CONN_B in k}
    assert after == before  # same bytes, mtime and inode
    assert_frames_equal(fa2, read_parquet(tmp_path, connection_id=CONN_A))
    assert_frames_equal(fb, read_parquet(tmp_path, connection_id=CONN_B))
    # one file per connection and dataset, no leftovers
    assert len(data_files(tmp_path, "customers")) == 2
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]
    assert not staged(tmp_path) and only_part_files(tmp_path)


def test_frames_with_several_connections(tmp_path):
    fa, fb = rich_frames(CONN_A), rich_frames(CONN_B, COMPANY2)
    both = F.CustomerFrames(
        customers=pd.concat([fa.customers, fb.customers], ignore_index=True),
        addresses=pd.concat([fa.addresses, fb.addresses], ignore_index=True),
        meta={
            "company_id": None,
            "connection_id": None,
            "query": None,
            "fetched_at": "2024-05-01T10:00:00.000000Z",
        },
    )
    to_parquet(both, tmp_path)
    ga = read_parquet(tmp_path, COMPANY, CONN_A)
    gb = read_parquet(tmp_path, COMPANY2, CONN_B)
    pd.testing.assert_frame_equal(fa.customers, ga.customers)
    pd.testing.assert_frame_equal(fb.addresses, gb.addresses)
    assert ga.meta["connection_id"] == CONN_A and gb.meta["company_id"] == COMPANY2
    assert len(read_parquet(tmp_path).customers) == 8


# --------------------------------------------------------------------------- external engines


def test_external_engines_read_both_datasets(tmp_path):
    import duckdb
    import polars as pl

    to_parquet(rich_frames(CONN_A), tmp_path)
    to_parquet(rich_frames(CONN_B), tmp_path)
    # leftovers of a crashed write must stay invisible
    stale = tmp_path / "_codat_frames" / "staging" / ("1" * 32)
    stale.mkdir(parents=True)
    (stale / "customers.parquet").write_bytes(b"garbage")
    for ds, per_conn in (("customers", 4), ("addresses", 6)):
        glob = f"{tmp_path}/{ds}/**/*.parquet"
        rows = duckdb.sql(
            f"select connection_id, count(*) from read_parquet('{glob}', hive_partitioning=true)"
            " group by 1 order by 1"
        ).fetchall()
        assert rows == [(CONN_A, per_conn), (CONN_B, per_conn)]
        df = pl.scan_parquet(tmp_path / ds, hive_partitioning=True).collect()
        assert df.height == 2 * per_conn
        assert sorted(df["connection_id"].unique().to_list()) == [CONN_A, CONN_B]
        assert set(df["company_id"].unique().to_list()) == {COMPANY}
        t = pds.dataset(tmp_path / ds, format="parquet", partitioning="hive").to_table()
        assert t.num_rows == 2 * per_conn
        assert set(t.column("connection_id").to_pylist()) == {CONN_A, CONN_B}
    t = pds.dataset(tmp_path / "customers", partitioning="hive").to_table()
    assert t.schema.field("modified_date").type == pa.timestamp("us", tz="UTC")


# --------------------------------------------------------------------------- validation


def test_bad_input_writes_nothing(tmp_path):
    good = rich_frames()
    to_parquet(good, tmp_path)
    before = snapshot(tmp_path)

    with pytest.raises(TypeError, match="path"):
        to_parquet(good, 123)
    with pytest.raises(ValueError, match="not allowed: \\['id'\\]"):
        to_parquet(good, tmp_path, partition_by=("company_id", "id"))
    with pytest.raises(ValueError, match="is partitioned by"):
        to_parquet(good, tmp_path, partition_by=("company_id",))
    bad = rich_frames(CONN_B)
    bad.customers = bad.customers.drop(columns=["email_address", "note"])
    with pytest.raises(
        ValueError,
        match=r"customers is missing columns: \['email_address', "
        r"'note'\]",
    ):
        to_parquet(bad, tmp_path)
    bad = rich_frames(CONN_B)
    bad.addresses = bad.addresses.drop(columns=["type"])
    with pytest.raises(ValueError, match=r"addresses is missing columns: \['type'\]"):
        to_parquet(bad, tmp_path)
    bad = rich_frames(CONN_B)
    bad.customers["connection_id"] = bad.customers["connection_id"].astype(object)
    bad.customers.loc[2, "connection_id"] = None
    with pytest.raises(ValueError, match="connection_id must be set"):
        to_parquet(bad, tmp_path)
    bad = rich_frames(CONN_B)
    bad.customers["modified_date"] = ["not a date"] * 4
    with pytest.raises(ValueError, match="modified_date"):
        to_parquet(bad, tmp_path)
    with pytest.raises(ValueError, match="CustomerFrames"):
        to_parquet(object(), tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        to_parquet(good, tmp_path / "afile")
    (tmp_path / "afile").unlink()
    with pytest.raises(ValueError, match="another company/connection"):
        merge_frames(tmp_path, rich_frames(CONN_B), COMPANY, CONN_A)

    assert snapshot(tmp_path) == before
    assert_frames_equal(good, read_parquet(tmp_path))


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "customers").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "customers" / "data.parquet")
    with pytest.raises(ValueError, match="no codat_frames manifest"):
        to_parquet(rich_frames(), tmp_path)
    assert not (tmp_path / "_codat_frames").exists()


# --------------------------------------------------------------------------- crash recovery


def test_crash_before_commit_keeps_previous(tmp_path, monkeypatch):
    old = rich_frames()
    to_parquet(old, tmp_path)

    def boom(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(P, "_write_manifest", boom)
    with pytest.raises(OSError, match="disk on fire"):
        to_parquet(make_frames([cust(7)], []), tmp_path)
    monkeypatch.undo()
    assert staged(tmp_path)  # leftovers exist...
    assert_frames_equal(old, read_parquet(tmp_path))  # ...are ignored, then cleaned
    assert not staged(tmp_path)


def test_crash_after_commit_rolls_forward(tmp_path, monkeypatch):
    import duckdb

    to_parquet(rich_frames(), tmp_path)
    new = make_frames([cust(7, note="new")], [addr("c7", 0), addr("c7", 1)])
    real = P._recover_locked
    calls = []

    def die_on_roll_forward(root, manifest):
        calls.append(1)
        if len(calls) == 2:  # 1st: recovery before the write, 2nd: roll forward after commit
            raise KeyboardInterrupt
        return real(root, manifest)

    monkeypatch.setattr(P, "_recover_locked", die_on_roll_forward)
    with pytest.raises(KeyboardInterrupt):
        to_parquet(new, tmp_path)
    monkeypatch.undo()
    # committed but not renamed: final files still hold the old write
    assert len(staged(tmp_path)) == 2
    with P._locked(tmp_path):  # a writer is "busy": the reader must not need recovery
        assert_frames_equal(new, read_parquet(tmp_path))
    assert len(staged(tmp_path)) == 2
    assert_frames_equal(new, read_parquet(tmp_path))  # lock free: recovered
    assert not staged(tmp_path)
    n = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/addresses/**/*.parquet')")
    assert n.fetchall() == [(2,)]


def _read_lines(stream, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line.strip())


def _wait_for(lines: list[str], pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for ln in list(lines):
            if pred(ln):
                return ln
        time.sleep(0.002)
    raise AssertionError(f"writer did not answer in time; got {lines[-5:]}")


def _check_consistent(root: Path, last_done: int, in_flight: int | None) -> dict[str, int]:
    """Each connection holds exactly one whole write, not older than the last completed.

    ``in_flight=None``: the writer is still running, any later write may be live.
    """
    got = {}
    for conn, written in ((CONN_A, lambda k: True), (CONN_B, lambda k: k % 2 == 0)):
        f = read_parquet(root, COMPANY, conn)
        marks = set(f.customers["note"])
        assert len(marks) == 1, f"mixed writes in customers of {conn}: {marks}"
        (mark,) = marks
        k = int(mark[1:])
        assert set(f.addresses["line1"]) == {mark}, "addresses from another write"
        assert len(f.customers) == W.n_customers(k)
        assert len(f.addresses) == W.n_addresses(k)
        assert f.customers["id"].is_unique
        last_ok = max(j for j in range(last_done + 1) if written(j))
        if in_flight is None:
            assert k >= last_ok and written(k), f"{conn}: write {k} older than {last_ok}"
        else:
            allowed = {last_ok} | ({in_flight} if written(in_flight) else set())
            assert k in allowed, f"{conn}: write {k} not in {allowed}"
        got[conn] = k
    return got


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_minus_9_never_leaves_mixed_or_broken_data(tmp_path):
    import duckdb

    root = tmp_path / "out"
    to_parquet(W.marked_frames(0, (CONN_A, CONN_B)), root)
    proc = subprocess.Popen(
        [sys.executable, str(Path(W.__file__)), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    rng = random.Random(1234)
    pid = None
    try:
        _wait_for(lines, lambda ln: ln == "ready")
        last_done, seen, t_end = 0, set(), time.monotonic() + 18
        rounds = mid_write = committed_not_moved = 0
        while rounds < 15 and time.monotonic() < t_end:
            rounds += 1
            start = last_done + 1
            proc.stdin.write(f"go {start}\n")
            proc.stdin.flush()
            pid = int(
                _wait_for(lines, lambda ln: ln.startswith("pid ") and ln not in seen).split()[1]
            )
            seen.add(f"pid {pid}")
            # readers run next to the writer until its first write of this round is done
            end = time.monotonic() + 20
            while time.monotonic() < end:
                done = [int(ln.split()[1]) for ln in list(lines) if ln.startswith("done ")]
                if max(done + [0]) >= start:
                    break
                _check_consistent(root, max(done + [start - 1]), None)
                time.sleep(0.01)
            # then kill it inside its next write: at a random moment, or just after a file was
            # staged, or just after the commit (before or while the files are moved)
            mode = rounds % 3
            if mode == 0:
                time.sleep(rng.random() * 0.12)
            else:
                n0, want = len(lines), ("phase staged", "phase committed")[mode - 1]
                end = time.monotonic() + 20
                while want not in lines[n0:] and time.monotonic() < end:
                    time.sleep(0.0005)
            os.kill(pid, signal.SIGKILL)
            _wait_for(lines, lambda ln, p=pid: ln == f"dead {p}")
            done = [int(ln.split()[1]) for ln in list(lines) if ln.startswith("done ")]
            last_done = max(done + [start - 1])
            mid_write += bool(staged(root))
            manifest = json.loads((root / "_codat_frames" / "manifest.json").read_text())
            committed_not_moved += any(
                (root / "_codat_frames" / "staging" / e["write_id"]).exists()
                for e in manifest["connections"]
            )
            got = _check_consistent(root, last_done, last_done + 1)
            last_done = max(last_done, got[CONN_A])
            # after the recovery done by read_parquet, engines see exactly one write
            for ds, n_of in (("customers", W.n_customers), ("addresses", W.n_addresses)):
                rows = duckdb.sql(
                    f"select connection_id, count(*), count(distinct line1) from read_parquet("
                    f"'{root}/{ds}/**/*.parquet', hive_partitioning=true) group by 1 order by 1"
                    if ds == "addresses"
                    else f"select connection_id, count(*), count(distinct note) from read_parquet("
                    f"'{root}/{ds}/**/*.parquet', hive_partitioning=true) group by 1 order by 1"
                ).fetchall()
                assert rows == [(CONN_A, n_of(got[CONN_A]), 1), (CONN_B, n_of(got[CONN_B]), 1)]
            assert not staged(root) and only_part_files(root)
        print(
            f"kill rounds {rounds}, writes {last_done}, killed mid-write {mid_write}, "
            f"of which after the commit {committed_not_moved}"
        )
        assert rounds >= 8
        assert last_done >= rounds, "the writer never got going"
        assert mid_write >= 2, "no kill landed inside a write"
        assert committed_not_moved >= 1, "no kill landed between commit and moves"
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------- upsert & mark


def test_merge_frames_upsert_semantics(tmp_path):
    stored = make_frames(
        [
            cust(0, mod="2024-03-01T00:00:00Z"),
            cust(1, mod="2024-03-02T00:00:00Z"),
            cust(2, mod="2024-03-03T00:00:00Z"),
            cust(3, mod="2024-03-04T00:00:00Z"),
        ],
        [addr("c0", 0), addr("c1", 0), addr("c1", 1), addr("c2", 0), addr("c3", 0)],
    )
    to_parquet(stored, tmp_path)
    assert stored_high_water_mark(tmp_path, COMPANY, CONN_A) == pd.Timestamp("2024-03-04T00:00:00Z")
    new = make_frames(
        [
            cust(1, mod="2024-03-10T00:00:00Z", customer_name="Renamed"),  # updated
            cust(2, mod="2024-03-03T00:00:00Z"),  # identical -> unchanged
            cust(3, mod="2024-02-01T00:00:00Z", customer_name="Old"),  # older -> stale
            cust(5, mod="2024-03-11T00:00:00Z"),  # inserted
        ],
        [
            addr("c1", 0, type="Delivery", line1="New addr"),
            addr("c2", 0),
            addr("c5", 0),
            addr("c3", 0, line1="Old"),
        ],
        meta={
            "company_id": COMPANY,
            "connection_id": CONN_A,
            "query": "modifiedDate>=x",
            "fetched_at": "2024-06-01T00:00:00Z",
        },
    )
    counts = merge_frames(tmp_path, new, COMPANY, CONN_A)
    assert counts == {"inserted": 1, "updated": 1, "unchanged": 1, "stale": 1, "total": 5}
    g = read_parquet(tmp_path, COMPANY, CONN_A)
    c = g.customers
    assert list(c["id"]) == ["c0", "c1", "c2", "c3", "c5"]  # stored order, new ones appended
    assert c.set_index("id").loc["c1", "customer_name"] == "Renamed"
    assert c.set_index("id").loc["c3", "customer_name"] == "Customer 3"
    a = g.addresses
    c1 = a[a["customer_id"] == "c1"]
    assert len(c1) == 1 and c1.iloc[0]["type"] == "Delivery" and c1.iloc[0]["line1"] == "New addr"
    assert list(a["customer_id"]) == ["c0", "c1", "c2", "c3", "c5"]
    assert a[a["customer_id"] == "c3"].iloc[0]["line1"] == "0 Main St"
    assert stored_high_water_mark(tmp_path, COMPANY, CONN_A) == pd.Timestamp("2024-03-11T00:00:00Z")
    assert g.meta["fetched_at"] == "2024-06-01T00:00:00Z"
    assert g.meta["last_sync_query"] == "modifiedDate>=x"
    assert list(c.dtypes) == list(stored.customers.dtypes)
    assert list(a.dtypes) == list(stored.addresses.dtypes)
    # an updated customer with no addresses any more loses them all
    gone = make_frames([cust(0, mod="2024-04-01T00:00:00Z")], [])
    assert merge_frames(tmp_path, gone, COMPANY, CONN_A)["updated"] == 1
    a = read_parquet(tmp_path).addresses
    assert "c0" not in set(a["customer_id"]) and len(a) == 4


def test_merge_into_empty_folder_and_replace(tmp_path):
    assert stored_high_water_mark(tmp_path / "none", COMPANY, CONN_A) is None
    f = rich_frames()
    counts = merge_frames(tmp_path / "x", f, COMPANY, CONN_A)
    assert counts["inserted"] == 4 and counts["total"] == 4
    assert_frames_equal(f, read_parquet(tmp_path / "x"))
    full = make_frames([cust(1, mod="2024-01-01T00:00:00Z")], [])
    counts = merge_frames(tmp_path / "x", full, COMPANY, CONN_A, replace=True)
    assert counts["deleted"] == 3 and counts["total"] == 1 and counts["updated"] == 1
    assert list(read_parquet(tmp_path / "x").customers["id"]) == ["c1"]
    with pytest.raises(ValueError, match="repeated ids"):
        merge_frames(tmp_path / "x", make_frames([cust(1), cust(1)], []), COMPANY, CONN_A)


# --------------------------------------------------------------------------- sync (no HTTP)


def test_sync_customers_with_fake_reader(tmp_path, monkeypatch):
    calls = []
    batches = [
        make_frames(
            [cust(0, mod="2024-03-01T10:00:00.5Z"), cust(1, mod="2024-03-02T00:00:00Z")],
            [addr("c0", 0)],
        ),
        make_frames(
            [cust(1, mod="2024-03-02T00:00:00Z"), cust(2, mod="2024-03-05T00:00:00Z")],
            [addr("c2", 0)],
        ),
        make_frames([cust(2, mod="2024-03-05T00:00:00Z")], []),
    ]

    def fake_read(
        s,
        company_id,
        connection_id,
        query=None,
        order_by=None,
        page_size=None,
        progress=None,
        local_tz="UTC",
    ):
        calls.append(query)
        return batches[len(calls) - 1]

    monkeypatch.setitem(
        sys.modules, "codat_frames.paging", types.SimpleNamespace(read_customers=fake_read)
    )
    r = sync_customers(object(), COMPANY, CONN_A, tmp_path / "o")
    assert calls == [None] and r.full and r.inserted == 2 and r.total == 2 and r.fetched == 2
    assert r.high_water_mark == pd.Timestamp("2024-03-02T00:00:00Z")
    r = sync_customers(object(), COMPANY, CONN_A, tmp_path / "o")
    assert calls[1] == "modifiedDate>=2024-03-02T00:00:00Z" and not r.full
    assert (r.fetched, r.inserted, r.updated, r.unchanged, r.total) == (2, 1, 0, 1, 3)
    assert r.previous_high_water_mark == pd.Timestamp("2024-03-02T00:00:00Z")
    assert r.high_water_mark == pd.Timestamp("2024-03-05T00:00:00Z")
    r = sync_customers(object(), COMPANY, CONN_A, tmp_path / "o", full=True)
    assert calls[2] is None and r.full and r.deleted == 2 and r.total == 1
    assert list(read_parquet(tmp_path / "o").customers["id"]) == ["c2"]
