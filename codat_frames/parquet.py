"""Parquet storage for :class:`~codat_frames.frames.CustomerFrames`: atomic, incremental.

On-disk layout
==============
``path`` is a folder holding two Hive-partitioned datasets plus a control folder::

    path/
      customers/company_id=<c>/connection_id=<k>/part-<key>.parquet
      addresses/company_id=<c>/connection_id=<k>/part-<key>.parquet
      _codat_frames/manifest.json          the commit record: live write of each connection
      _codat_frames/lock                   advisory lock file (writers and recovery)
      _codat_frames/staging/<write_id>/    files of a write not yet in place (normally gone)

``<key>`` is 16 hex digits of a hash of ``(company_id, connection_id)``: each connection has
exactly one file per dataset, whatever ``partition_by`` is (``()``, ``("company_id",)``, ...).
Partition columns are stored in the folder names only (as pyarrow, Spark and Polars expect;
Spark refuses a column that is both in the files and in the path); values are percent-encoded.
The dataset folders never hold anything else (Polars fails on a folder with other files, even
hidden ones). Files are zstd-compressed with the fixed Arrow schema of ``frames.py``
(``CUSTOMER_SCHEMA`` / ``ADDRESS_SCHEMA``) and carry key-value metadata
``codat_frames.schema_version``, ``codat_frames.version``, ``codat_frames.company_id``,
``codat_frames.connection_id``, ``codat_frames.query``, ``codat_frames.order_by``,
``codat_frames.fetched_at``, ``codat_frames.write_id`` and ``codat_frames.dataset``. Nothing
from the client is stored: meta keys that look like credentials (key, auth, token, secret,
password, header) are dropped, and so is any meta value containing the environment's
``CODAT_API_KEY``.

Atomicity
=========
Every write (``to_parquet``, ``merge_frames``, ``sync_customers``) holds an exclusive lock
(``flock`` / ``msvcrt.locking``, released by the OS if the process dies) and goes:

1. *recover* (below); validate and convert everything in memory; errors are raised here, before
   anything is written;
2. each connection gets a fresh ``write_id`` (uuid4 hex); its two files are written to
   ``_codat_frames/staging/<write_id>/`` (same volume, invisible to every engine reading
   ``customers/`` or ``addresses/``), fsynced, folders fsynced;
3. **commit**: ``manifest.json`` is replaced (temp file, fsync, ``os.replace``, fsync of the
   folder). It names, per connection, the live ``write_id``, the files, row counts, the
   ``modified_date`` high-water mark and the frames' meta. One manifest for the whole folder,
   so a write of several connections commits all of them at once;
4. *roll forward*: each staged file is moved over its final name with ``os.replace`` (atomic);
   folders are fsynced.

*Recovery* (at the start of each write and, when the lock is free, of each ``read_parquet``;
also :func:`recover`): do step 4 for every staged file the manifest names, delete the rest of
``staging/`` (writes that died before their commit), stray manifest temp files and empty
partition folders.

A crash or ``kill -9`` before the commit leaves the previous data live (the staged files are
deleted later); after the commit the new data is live and the next recovery finishes step 4.

Readers
-------
``read_parquet`` reads only what the manifest names and checks the ``write_id`` in each file's
footer: the final file if its footer matches, else the staged file of that write (committed,
not yet moved); if a concurrent writer replaced it meanwhile, it re-reads the manifest and
starts again. Its customers and addresses always come from the same write, with or without
concurrent writers, and it needs no lock.

External engines (pyarrow.dataset, DuckDB, Polars, Spark) read the final files directly. Each
connection's file is replaced in place by one rename, so they never see a duplicate, a missing
connection or a half-written file. Their one window: between the rename of a connection's
customers file and that of its addresses file (microseconds; or, if the writer dies exactly
there, until the next read or write recovers the folder) a query can see the new customers with
the old addresses. Strict snapshots: use ``read_parquet``, or the files and write ids listed in
``_codat_frames/manifest.json``. On Windows ``os.replace`` fails while another process has the
target open; the writer then raises and the previous data stays live.

Incremental sync
================
See :func:`sync_customers`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from codat_frames import frames as _frames
from codat_frames._version import __version__

__all__ = [
    "SyncResult",
    "merge_frames",
    "read_parquet",
    "recover",
    "stored_high_water_mark",
    "sync_customers",
    "to_parquet",
]

PARTITION_COLUMNS = ("company_id", "connection_id")
DATASETS = ("customers", "addresses")
CONTROL_DIR = "_codat_frames"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "lock"
STAGING_DIR = "staging"
#: version of the manifest / folder layout written by this module
FORMAT_VERSION = 1

_MANIFEST_TMP_RE = re.compile(r"^\.manifest\.[0-9a-f]{32}\.json\.tmp$")
_SECRET_KEY_RE = re.compile(r"key|auth|token|secret|password|credential|header", re.IGNORECASE)
_READ_ATTEMPTS = 20


def _schema_version() -> int:
    return int(getattr(_frames, "SCHEMA_VERSION", 1))


# --------------------------------------------------------------------------- small fs helpers


def _fsync_dir(d: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(d: Path, stop: Path) -> None:
    """mkdir -p d, fsyncing each parent that got a new entry (up to ``stop``)."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        if p == stop or p.parent == p:
            break
        p = p.parent
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        _fsync_dir(p.parent)


@contextlib.contextmanager
def _locked(root: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Exclusive advisory lock on ``root/_codat_frames/lock``; yields False if not acquired."""
    lock_path = root / CONTROL_DIR / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if not blocking:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- naming


def _pair_key(company_id: str | None, connection_id: str | None) -> str:
    raw = json.dumps([company_id, connection_id]).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _rel_dir(dataset: str, pair: tuple[str | None, str | None], partition_by: tuple[str, ...]):
    values = dict(zip(PARTITION_COLUMNS, pair, strict=True))
    parts = [dataset] + [f"{col}={quote(str(values[col]), safe='')}" for col in partition_by]
    return "/".join(parts)


def _staged(root: Path, write_id: str, dataset: str) -> Path:
    """Where a write's file waits until its commit: outside the dataset trees, same volume."""
    return root / CONTROL_DIR / STAGING_DIR / write_id / f"{dataset}.parquet"


# --------------------------------------------------------------------------- validation


def _check_path(path: Any) -> Path:
    if isinstance(path, bytes) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike folder, not {type(path).__name__}")
    p = Path(os.fspath(path))
    if str(p) == "":
        raise ValueError("path must not be empty")
    if p.exists() and not p.is_dir():
        raise ValueError(f"path {str(p)!r} exists and is not a folder")
    return p


def _check_partition_by(partition_by: Any) -> tuple[str, ...]:
    if isinstance(partition_by, str):
        partition_by = (partition_by,)
    if partition_by is None:
        partition_by = ()
    try:
        cols = tuple(partition_by)
    except TypeError:
        raise ValueError(
            f"partition_by must be a sequence of column names from {PARTITION_COLUMNS}"
        ) from None
    bad = [c for c in cols if c not in PARTITION_COLUMNS]
    if bad:
        raise ValueError(f"partition_by may only use {list(PARTITION_COLUMNS)}; not allowed: {bad}")
    if len(set(cols)) != len(cols):
        raise ValueError(f"partition_by has a repeated column: {list(cols)}")
    return cols


def _check_frames(frames: Any) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    customers = getattr(frames, "customers", None)
    addresses = getattr(frames, "addresses", None)
    if not isinstance(customers, pd.DataFrame) or not isinstance(addresses, pd.DataFrame):
        raise ValueError(
            "frames must be a CustomerFrames (with .customers and .addresses DataFrames), "
            f"not {type(frames).__name__}"
        )
    for name, df, schema in (
        ("customers", customers, _frames.CUSTOMER_SCHEMA),
        ("addresses", addresses, _frames.ADDRESS_SCHEMA),
    ):
        missing = [c for c in schema.names if c not in df.columns]
        if missing:
            raise ValueError(f"frames.{name} is missing columns: {missing}")
    meta = getattr(frames, "meta", None) or {}
    if not isinstance(meta, Mapping):
        raise ValueError(f"frames.meta must be a dict, not {type(meta).__name__}")
    return customers, addresses, dict(meta)


def _to_table(df: pd.DataFrame, schema: pa.Schema, what: str) -> pa.Table:
    arrays = []
    for field in schema:
        col = df[field.name]
        try:
            arr = pa.array(col, from_pandas=True)
            if not arr.type.equals(field.type):
                arr = arr.cast(field.type)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise ValueError(
                f"frames.{what} column {field.name!r} (dtype {col.dtype}) cannot be stored as "
                f"{field.type}: {e}"
            ) from None
        if not field.nullable and arr.null_count:
            raise ValueError(f"frames.{what} column {field.name!r} must not contain nulls")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema.remove_metadata())


def _clean_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of frames.meta without anything that could be a credential."""
    env_key = os.environ.get("CODAT_API_KEY") or ""

    def safe(v: Any) -> Any:
        if v is None or isinstance(v, bool | int | float):
            return v
        if isinstance(v, pd.Timestamp | pd.Timedelta):
            return None if pd.isna(v) else v.isoformat()
        if isinstance(v, str):
            if len(env_key) >= 6 and env_key in v:
                return None
            return v
        if isinstance(v, list | tuple):
            return [safe(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): safe(x) for k, x in v.items() if not _SECRET_KEY_RE.search(str(k))}
        return safe(str(v))

    return {str(k): safe(v) for k, v in meta.items() if not _SECRET_KEY_RE.search(str(k))}


def _iso_z(ts: pd.Timestamp | None) -> str | None:
    if ts is None or pd.isna(ts):
        return None
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- manifest


def _manifest_path(root: Path) -> Path:
    return root / CONTROL_DIR / MANIFEST_NAME


def _load_manifest(root: Path) -> dict | None:
    try:
        raw = _manifest_path(root).read_bytes()
    except FileNotFoundError:
        return None
    try:
        m = json.loads(raw)
    except ValueError as e:  # cannot happen with os.replace, unless edited by hand
        raise ValueError(f"corrupt codat_frames manifest {_manifest_path(root)}: {e}") from None
    if int(m.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{root} was written by a newer codat_frames (format {m.get('format_version')}); "
            f"this version reads format {FORMAT_VERSION}. Upgrade codat_frames."
        )
    return m


def _write_manifest(root: Path, manifest: dict) -> None:
    control = root / CONTROL_DIR
    tmp = control / f".manifest.{uuid.uuid4().hex}.json.tmp"
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, _manifest_path(root))  # <- the commit point
    _fsync_dir(control)


def _entry_pair(entry: Mapping) -> tuple[str | None, str | None]:
    return entry["company_id"], entry["connection_id"]


def _has_foreign_data(root: Path) -> bool:
    for ds in DATASETS:
        d = root / ds
        if d.is_dir() and any(not p.name.startswith((".", "_")) for p in d.rglob("*.parquet")):
            return True
    return False


# --------------------------------------------------------------------------- recovery


def _recover_locked(root: Path, manifest: dict | None) -> None:
    """Roll the folder forward to ``manifest`` (lock held): finish renames, drop leftovers."""
    dirty: set[Path] = set()
    for entry in (manifest or {}).get("connections", []):
        for ds in DATASETS:
            staged = _staged(root, entry["write_id"], ds)
            if staged.exists():
                final = root / entry["files"][ds]["path"]
                _mkdirs(final.parent, root)
                os.replace(staged, final)
                dirty.update((final.parent, staged.parent))
    for d in dirty:
        _fsync_dir(d)
    control = root / CONTROL_DIR
    if control.is_dir():
        for p in control.iterdir():
            if _MANIFEST_TMP_RE.match(p.name):
                p.unlink(missing_ok=True)
    staging = control / STAGING_DIR
    if staging.is_dir():  # what is left there belongs to writes that never committed
        for d in staging.iterdir():
            shutil.rmtree(d, ignore_errors=True)
    for ds in DATASETS:
        top = root / ds
        if not top.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(top, topdown=False):
            d = Path(dirpath)
            if d != top and not files and not any(d.iterdir()):
                with contextlib.suppress(OSError):
                    d.rmdir()


def recover(path: str | os.PathLike) -> None:
    """Finish or clean up after a write that crashed (waits for a running writer).

    Reads and writes do this themselves; call it to make the folder clean for external engines
    right after a crash.
    """
    root = _check_path(path)
    if not (root / CONTROL_DIR).is_dir():
        return
    with _locked(root):
        _recover_locked(root, _load_manifest(root))


def _needs_recovery(root: Path) -> bool:
    control = root / CONTROL_DIR
    staging = control / STAGING_DIR
    if staging.is_dir() and any(staging.iterdir()):
        return True
    return control.is_dir() and any(_MANIFEST_TMP_RE.match(p.name) for p in control.iterdir())


def _try_recover(root: Path) -> None:
    """Best-effort recovery by a reader: only if needed, the lock is free and we may write."""
    try:
        if not _needs_recovery(root):
            return
        with _locked(root, blocking=False) as got:
            if got:
                _recover_locked(root, _load_manifest(root))
    except OSError:
        pass


# --------------------------------------------------------------------------- writing


@dataclass
class _Prepared:
    pair: tuple[str | None, str | None]
    tables: dict[str, pa.Table]
    meta: dict[str, Any]
    high_water_mark: str | None


def _pairs_of(customers: pd.DataFrame, addresses: pd.DataFrame, meta: Mapping) -> list:
    pairs: dict[tuple, None] = {}
    for df in (customers, addresses):
        if len(df):
            sub = df[list(PARTITION_COLUMNS)].astype(object)
            sub = sub.where(sub.notna(), None)
            for c, k in sub.drop_duplicates().itertuples(index=False):
                pairs[(c, k)] = None
    if not pairs and meta.get("company_id") and meta.get("connection_id"):
        # frames of a read that returned nothing: the connection now holds zero customers
        pairs[(str(meta["company_id"]), str(meta["connection_id"]))] = None
    return list(pairs)


def _prepare(frames: Any, partition_by: tuple[str, ...]) -> list[_Prepared]:
    customers, addresses, meta = _check_frames(frames)
    ctab = _to_table(customers, _frames.CUSTOMER_SCHEMA, "customers")
    atab = _to_table(addresses, _frames.ADDRESS_SCHEMA, "addresses")
    pairs = _pairs_of(customers, addresses, meta)
    for c, k in pairs:
        for col, v in (("company_id", c), ("connection_id", k)):
            if col in partition_by and (v is None or v == ""):
                raise ValueError(
                    f"{col} must be set (non-null, non-empty) on every row when partitioning "
                    f"by it; found {v!r}"
                )
    clean = _clean_meta(meta)
    out = []
    for c, k in pairs:
        tables = {}
        for ds, tab, df in (("customers", ctab, customers), ("addresses", atab, addresses)):
            if len(pairs) == 1 and len(df) and tab.num_rows == len(df):
                sel = tab
            else:
                cc = df["company_id"].astype(object)
                kk = df["connection_id"].astype(object)
                m = (cc.isna() if c is None else (cc == c).fillna(False)) & (
                    kk.isna() if k is None else (kk == k).fillna(False)
                )
                sel = tab.filter(pa.array(m.to_numpy(dtype=bool)))
            tables[ds] = sel
        mod = tables["customers"].column("modified_date")
        hwm = pc.max(mod).as_py() if mod.null_count < len(mod) else None
        m_meta = dict(clean, company_id=c, connection_id=k)
        out.append(_Prepared((c, k), tables, m_meta, _iso_z(pd.Timestamp(hwm)) if hwm else None))
    return out


def _file_metadata(p: _Prepared, dataset: str, write_id: str) -> dict[bytes, bytes]:
    md = {
        "schema_version": str(_schema_version()),
        "version": __version__,
        "dataset": dataset,
        "write_id": write_id,
        "company_id": p.pair[0],
        "connection_id": p.pair[1],
        "query": p.meta.get("query"),
        "order_by": p.meta.get("order_by"),
        "fetched_at": p.meta.get("fetched_at"),
    }
    return {f"codat_frames.{k}".encode(): str(v).encode() for k, v in md.items() if v is not None}


def _write_file(table: pa.Table, target: Path, metadata: dict[bytes, bytes], compression: str):
    table = table.replace_schema_metadata(metadata)
    with open(target, "wb") as f:
        pq.write_table(table, f, compression=compression)
        f.flush()
        os.fsync(f.fileno())


def _write_locked(
    root: Path,
    manifest: dict | None,
    prepared: list[_Prepared],
    partition_by: tuple[str, ...],
    compression: str,
) -> dict:
    """Write ``prepared`` connections (lock held, folder recovered); returns the new manifest."""
    dirty: set[Path] = set()
    entries = []
    for p in prepared:
        write_id = uuid.uuid4().hex
        files = {}
        for ds in DATASETS:
            tab = p.tables[ds].drop_columns(list(partition_by))
            rel_dir = _rel_dir(ds, p.pair, partition_by)
            final_rel = f"{rel_dir}/part-{_pair_key(*p.pair)}.parquet"
            tmp = _staged(root, write_id, ds)
            _mkdirs(tmp.parent, root)
            _mkdirs((root / final_rel).parent, root)
            _write_file(tab, tmp, _file_metadata(p, ds, write_id), compression)
            dirty.add(tmp.parent)
            files[ds] = {"path": final_rel, "rows": tab.num_rows}
        entries.append(
            {
                "company_id": p.pair[0],
                "connection_id": p.pair[1],
                "write_id": write_id,
                "written_at": _iso_z(pd.Timestamp.now(tz="UTC")),
                "files": files,
                "high_water_mark": p.high_water_mark,
                "meta": p.meta,
            }
        )
    for d in dirty:
        _fsync_dir(d)
    new_pairs = {p.pair for p in prepared}
    old = [e for e in (manifest or {}).get("connections", []) if _entry_pair(e) not in new_pairs]
    conns = sorted(old + entries, key=lambda e: json.dumps(_entry_pair(e)))
    new_manifest = {
        "format": "codat-frames-dataset",
        "format_version": FORMAT_VERSION,
        "schema_version": _schema_version(),
        "codat_frames_version": __version__,
        "partition_by": list(partition_by),
        "generation": int((manifest or {}).get("generation", 0)) + 1,
        "connections": conns,
    }
    _write_manifest(root, new_manifest)
    _recover_locked(root, new_manifest)
    return new_manifest


def _check_layout(root: Path, manifest: dict | None, partition_by: tuple[str, ...]) -> None:
    if manifest is None:
        if _has_foreign_data(root):
            raise ValueError(
                f"{root} holds parquet files but no codat_frames manifest; refusing to write "
                "into a folder codat_frames did not create"
            )
        return
    stored = tuple(manifest.get("partition_by", PARTITION_COLUMNS))
    if stored != partition_by:
        raise ValueError(
            f"{root} is partitioned by {list(stored)}; cannot write with partition_by="
            f"{list(partition_by)} (use a new folder)"
        )


def _ensure_root(root: Path) -> None:
    if not root.exists():
        _mkdirs(root, root.parent if root.parent != root else root)
    for d in (CONTROL_DIR, *DATASETS):
        _mkdirs(root / d, root)


def _precheck_layout(root: Path, cols: tuple[str, ...]) -> None:
    """Refuse a foreign folder before creating anything in it (checked again under the lock).

    Without the lock another writer may be creating the dataset right now: a folder whose
    control folder appeared meanwhile is left to the check under the lock.
    """
    if not root.is_dir():
        return
    manifest = _load_manifest(root) if (root / CONTROL_DIR).is_dir() else None
    try:
        _check_layout(root, manifest, cols)
    except ValueError:
        if manifest is None and (root / CONTROL_DIR).is_dir():
            return
        raise


def to_parquet(
    frames: Any,
    path: str | os.PathLike,
    partition_by: Iterable[str] = PARTITION_COLUMNS,
    *,
    compression: str = "zstd",
) -> None:
    """Write ``frames`` to the folder ``path``, atomically (see the module docstring).

    Each (company_id, connection_id) pair present in the frames (or named by ``frames.meta``
    when the frames are empty) replaces that connection's stored data; other connections in the
    folder are left untouched. Everything is validated before anything is written:
    ``path`` type, ``partition_by`` (only ``company_id`` / ``connection_id``, and the same as
    the folder's), the frames' columns and types, and non-empty partition values. Only the
    schema's columns are stored (extra columns are not).
    """
    root = _check_path(path)
    cols = _check_partition_by(partition_by)
    prepared = _prepare(frames, cols)
    _precheck_layout(root, cols)
    _ensure_root(root)
    with _locked(root):
        manifest = _load_manifest(root)
        _check_layout(root, manifest, cols)
        _recover_locked(root, manifest)
        _write_locked(root, manifest, prepared, cols, compression)


# --------------------------------------------------------------------------- reading


class _Stale(Exception):
    """The manifest moved on while reading; start again."""


def _read_one(root: Path, entry: Mapping, ds: str) -> pa.Table:
    final_rel = entry["files"][ds]["path"]
    write_id = entry["write_id"]
    for target in (root / final_rel, _staged(root, write_id, ds)):
        try:
            fh = open(target, "rb")
        except FileNotFoundError:
            continue
        with fh:
            pf = pq.ParquetFile(fh)
            md = pf.metadata.metadata or {}
            if md.get(b"codat_frames.write_id", b"").decode() != write_id:
                continue
            return pf.read()
    raise _Stale


def _complete_table(tab: pa.Table, schema: pa.Schema, entry: Mapping) -> pa.Table:
    n = tab.num_rows
    cols = []
    for field in schema:
        if field.name in tab.column_names:
            col = tab.column(field.name)
            if not col.type.equals(field.type):
                col = col.cast(field.type)
        else:  # a partition column: its value is in the manifest (and the folder name)
            col = pa.repeat(pa.scalar(entry[field.name], field.type), n)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema.remove_metadata())


def _read_entries(root: Path, entries: list[Mapping]) -> dict[str, pa.Table]:
    out = {}
    schemas = {"customers": _frames.CUSTOMER_SCHEMA, "addresses": _frames.ADDRESS_SCHEMA}
    for ds, schema in schemas.items():
        parts = [_complete_table(_read_one(root, e, ds), schema, e) for e in entries]
        if parts:
            out[ds] = pa.concat_tables(parts).combine_chunks()
        else:
            out[ds] = schema.remove_metadata().empty_table()
    return out


def _combined_meta(entries: list[Mapping], company_id, connection_id) -> dict[str, Any]:
    metas = [dict(e.get("meta") or {}) for e in entries]
    if len(metas) == 1:
        return metas[0]
    base: dict[str, Any] = {
        "company_id": company_id,
        "connection_id": connection_id,
        "query": None,
        "order_by": None,
        "fetched_at": None,
        "total_results": 0 if not metas else None,
    }
    if metas:
        keys = dict.fromkeys(k for m in metas for k in m)
        for k in keys:
            vals = [m.get(k) for m in metas]
            base[k] = vals[0] if all(v == vals[0] for v in vals) else None
        fetched = [m.get("fetched_at") for m in metas if m.get("fetched_at")]
        if fetched:
            base["fetched_at"] = min(fetched)  # data at least this fresh
        base["connections"] = metas
    return base


def _select(manifest: dict | None, company_id, connection_id) -> list[Mapping]:
    return [
        e
        for e in (manifest or {}).get("connections", [])
        if (company_id is None or e["company_id"] == company_id)
        and (connection_id is None or e["connection_id"] == connection_id)
    ]


def _make_frames(tables: Mapping[str, pa.Table], meta: dict[str, Any]):
    return _frames.CustomerFrames(
        customers=_frames.to_pandas_customers(tables["customers"]),
        addresses=_frames.to_pandas_addresses(tables["addresses"]),
        meta=meta,
    )


def _read_consistent(root: Path, company_id, connection_id) -> tuple[dict | None, list, dict]:
    for attempt in range(_READ_ATTEMPTS):
        manifest = _load_manifest(root)
        entries = _select(manifest, company_id, connection_id)
        try:
            return manifest, entries, _read_entries(root, entries)
        except _Stale:
            time.sleep(min(0.01 * (attempt + 1), 0.2))
    raise RuntimeError(
        f"could not get a consistent read of {root}: the files the manifest names keep "
        "changing or are missing"
    )


def read_parquet(
    path: str | os.PathLike, company_id: str | None = None, connection_id: str | None = None
):
    """Read back exactly what :func:`to_parquet` wrote, as ``CustomerFrames``.

    Optionally only one company and/or connection. Values, column order and dtypes are those
    of the frames written; rows come grouped by connection (sorted by company, connection), in
    their written order within a connection. ``meta`` is the stored meta of the connection (for
    several connections: the values they share, ``fetched_at`` the oldest, and the list under
    ``"connections"``). A folder without data gives empty frames with the full schema.
    """
    root = _check_path(path)
    if not root.exists():
        raise FileNotFoundError(f"no codat_frames parquet folder at {str(root)!r}")
    if not (root / CONTROL_DIR / MANIFEST_NAME).exists() and _has_foreign_data(root):
        raise ValueError(f"{root} holds parquet files but no codat_frames manifest")
    if (root / CONTROL_DIR).is_dir():
        _try_recover(root)
    _, entries, tables = _read_consistent(root, company_id, connection_id)
    return _make_frames(tables, _combined_meta(entries, company_id, connection_id))


def stored_high_water_mark(
    path: str | os.PathLike, company_id: str, connection_id: str
) -> pd.Timestamp | None:
    """Largest ``modified_date`` stored for the connection (from the manifest), or None."""
    return _entry_mark(_stored_entry(_check_path(path), company_id, connection_id))


def _stored_entry(root: Path, company_id: str, connection_id: str) -> dict | None:
    """The manifest entry of one connection, or None when nothing is stored for it."""
    if not root.exists():
        return None
    entries = _select(_load_manifest(root), company_id, connection_id)
    return entries[0] if entries else None


def _entry_mark(entry: dict | None) -> pd.Timestamp | None:
    if not entry or not entry.get("high_water_mark"):
        return None
    return pd.Timestamp(entry["high_water_mark"]).as_unit("us")


# --------------------------------------------------------------------------- upsert


def _row_hashes(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    if not len(df):
        return pd.Series([], dtype="uint64")
    return pd.util.hash_pandas_object(df[cols], index=False)


def _address_signatures(addresses: pd.DataFrame) -> pd.Series:
    cols = [c for c in _frames.ADDRESS_SCHEMA.names if c not in PARTITION_COLUMNS]
    if not len(addresses):
        return pd.Series([], dtype=object)
    h = _row_hashes(addresses, cols)
    key = addresses["customer_id"].astype(object).to_numpy()
    return pd.Series(h.to_numpy(), index=key).groupby(level=0).agg(lambda s: tuple(sorted(s)))


def _as_us(col: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch (NaT: int64 min)."""
    t = pd.to_datetime(col, utc=True).dt.tz_localize(None)
    return t.to_numpy(dtype="datetime64[us]").view("int64")


def _merge(stored, new, *, replace: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    sc, sa = stored.customers.reset_index(drop=True), stored.addresses.reset_index(drop=True)
    sc = sc.drop_duplicates("id", keep="last").reset_index(drop=True)  # one row per id
    nc, na = new.customers.reset_index(drop=True), new.addresses.reset_index(drop=True)
    if nc["id"].isna().any():
        raise ValueError("frames_new.customers has rows without an id")
    dup = nc["id"][nc["id"].duplicated()]
    if len(dup):
        raise ValueError(f"frames_new.customers has repeated ids: {list(dup.unique()[:5])}")
    sids = sc["id"].astype(object)
    nids = nc["id"].astype(object)
    pos = pd.Index(sids).get_indexer(nids)
    existing = pos >= 0
    s_mod, n_mod = _as_us(sc["modified_date"]), _as_us(nc["modified_date"])
    nat = np.iinfo(np.int64).min
    old_mod = np.where(existing, s_mod[np.maximum(pos, 0)] if len(sc) else nat, nat)
    stale = existing & (old_mod != nat) & (n_mod != nat) & (n_mod < old_mod)
    if replace:
        stale[:] = False
    apply = ~stale
    # changed = existing ids whose customer row or address list differs
    ccols = list(_frames.CUSTOMER_SCHEMA.names)
    sh = pd.Series(_row_hashes(sc, ccols).to_numpy(), index=sids)
    nh = pd.Series(_row_hashes(nc, ccols).to_numpy(), index=nids)
    sig_s, sig_n = _address_signatures(sa), _address_signatures(na)
    changed = np.zeros(len(nc), dtype=bool)
    for i in np.flatnonzero(existing & apply):
        cid = nids.iat[i]
        changed[i] = sh.get(cid) != nh.iat[i] or sig_s.get(cid, ()) != sig_n.get(cid, ())
    counts = {
        "inserted": int((~existing).sum()),
        "updated": int(changed.sum()),
        "unchanged": int((existing & apply & ~changed).sum()),
        "stale": int(stale.sum()),
    }
    if replace:
        counts["deleted"] = int((~sids.isin(set(nids))).sum())
        return nc, na, counts
    applied = nc[apply]
    applied_ids = set(applied["id"].astype(object))
    pos_stored = pd.Series(np.arange(len(sc)), index=sids)
    keep = sc[~sids.isin(applied_ids).to_numpy()]
    pos_new = applied["id"].astype(object).map(pos_stored)
    n_ins = pos_new.isna().to_numpy()
    pos_new = np.array(pos_new, dtype=float)
    pos_new[n_ins] = len(sc) + np.arange(int(n_ins.sum()))
    order = np.concatenate([np.flatnonzero(~sids.isin(applied_ids).to_numpy()), pos_new])
    merged_c = pd.concat([keep, applied], ignore_index=True)
    merged_c = merged_c.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    pos_by_id = pd.Series(np.arange(len(merged_c)), index=merged_c["id"].astype(object))
    a_keep = sa[~sa["customer_id"].astype(object).isin(applied_ids).to_numpy()]
    a_new = na[na["customer_id"].astype(object).isin(applied_ids).to_numpy()]
    merged_a = pd.concat([a_keep, a_new], ignore_index=True)
    if len(merged_a):
        k1 = merged_a["customer_id"].astype(object).map(pos_by_id).to_numpy(dtype=float)
        k2 = merged_a["address_index"].to_numpy(dtype="int64")
        merged_a = merged_a.iloc[np.lexsort((k2, k1))].reset_index(drop=True)
    counts["total"] = len(merged_c)
    return merged_c, merged_a, counts


def _check_pair_rows(frames, company_id: str, connection_id: str) -> None:
    for name in ("customers", "addresses"):
        df = getattr(frames, name)
        if not len(df):
            continue
        bad = (df["company_id"].astype(object) != company_id) | (
            df["connection_id"].astype(object) != connection_id
        )
        if bad.fillna(True).any():
            raise ValueError(
                f"frames_new.{name} has rows of another company/connection than "
                f"{company_id!r}/{connection_id!r}"
            )


def merge_frames(
    path: str | os.PathLike,
    frames_new: Any,
    company_id: str,
    connection_id: str,
    *,
    replace: bool = False,
) -> dict[str, int]:
    """Upsert ``frames_new`` into one connection's stored data, atomically.

    Customers are matched by ``id``: an unknown id is inserted, a known one replaced by the new
    row and its addresses replaced wholesale by the new ones (also when it has none now). A new
    row whose ``modified_date`` is older than the stored one is ignored (counted as ``stale``),
    so an out-of-date fetch cannot undo a newer one. ``replace=True`` stores ``frames_new``
    as the connection's whole data (a full re-read; stored ids missing from it are ``deleted``).

    Returns ``{"inserted", "updated", "unchanged", "stale", "total"}`` (+ ``"deleted"`` with
    ``replace``); ``updated`` counts only rows whose data actually changed.
    """
    root = _check_path(path)
    for name, v in (("company_id", company_id), ("connection_id", connection_id)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{name} must be a non-empty string, got {v!r}")
    _check_frames(frames_new)
    _check_pair_rows(frames_new, company_id, connection_id)
    manifest = _load_manifest(root) if root.is_dir() else None
    cols = tuple(manifest["partition_by"]) if manifest else PARTITION_COLUMNS
    _prepare(frames_new, cols)  # validates types before anything is written
    _precheck_layout(root, cols)
    _ensure_root(root)
    with _locked(root):
        manifest = _load_manifest(root)
        cols = tuple(manifest["partition_by"]) if manifest else PARTITION_COLUMNS
        _check_layout(root, manifest, cols)
        _recover_locked(root, manifest)
        _, entries, tables = _read_consistent(root, company_id, connection_id)
        stored = _make_frames(tables, _combined_meta(entries, company_id, connection_id))
        mc, ma, counts = _merge(stored, frames_new, replace=replace)
        counts["total"] = len(mc)
        meta = dict(stored.meta if entries else {})
        new_meta = dict(getattr(frames_new, "meta", None) or {})
        if replace or not entries:
            meta = new_meta
        else:
            for k in ("fetched_at", "order_by"):
                if new_meta.get(k) is not None:
                    meta[k] = new_meta[k]
            meta["last_sync_query"] = new_meta.get("query")
            meta["total_results"] = len(mc)
        meta.update(company_id=company_id, connection_id=connection_id)
        merged = _frames.CustomerFrames(customers=mc, addresses=ma, meta=meta)
        _write_locked(root, manifest, _prepare(merged, cols), cols, "zstd")
    return counts


# --------------------------------------------------------------------------- sync


@dataclass(frozen=True)
class SyncResult:
    """What :func:`sync_customers` did."""

    fetched: int
    inserted: int
    updated: int
    total: int
    high_water_mark: pd.Timestamp | None
    previous_high_water_mark: pd.Timestamp | None = None
    unchanged: int = 0
    deleted: int | None = None
    full: bool = False
    query: str | None = None


def _mark_query(mark: pd.Timestamp) -> str:
    # floor to whole seconds: ">=" a lower bound loses nothing, and the API's examples use seconds
    return f"modifiedDate>={mark.tz_convert('UTC').floor('s'):%Y-%m-%dT%H:%M:%SZ}"


def sync_customers(
    s: Any,
    company_id: str,
    connection_id: str,
    path: str | os.PathLike,
    *,
    local_tz: str = "UTC",
    progress: bool | None = None,
    full: bool = False,
    query: str | None = None,
    order_by: str | None = None,
) -> SyncResult:
    """Bring the stored customers of one connection up to date; return the counts.

    Reads the stored high-water mark (largest ``modified_date``) of the connection. Without
    one (first sync, empty folder, or ``full=True``) it reads every customer; otherwise only
    ``modifiedDate>=<mark>`` (the mark floored to the second, so the records at the mark come
    again and are counted as unchanged). The fetched customers are upserted by id, their
    addresses replaced with the customer's, and the new mark is recorded, all in one atomic
    write (see :func:`merge_frames`).

    Deletions: Codat does not remove deleted records from an incremental read. A record deleted
    at the source usually stays in Codat with ``source_modified_date`` null, or disappears from
    Codat's data set altogether - which only a full read shows. ``full=True`` re-reads every
    customer and *replaces* the stored data of the connection (``deleted`` counts the stored ids
    that are gone).

    ``query`` narrows what is kept in sync (an incremental read asks for
    ``{query} && modifiedDate>=<mark>``). An incremental sync with another query than the
    stored data was read with is refused (ValueError, nothing fetched or written); use
    ``full=True`` to change it. ``order_by`` only orders the fetch.
    """
    from codat_frames.paging import read_customers

    root = _check_path(path)
    if query is not None and (not isinstance(query, str) or not query.strip()):
        raise ValueError(f"query must be a non-empty string or None, got {query!r}")
    entry = _stored_entry(root, company_id, connection_id)  # one manifest read for both
    prev = _entry_mark(entry)
    mark = None if full else prev
    if mark is not None:
        stored_query = (entry.get("meta") or {}).get("query")
        if stored_query != query:
            raise ValueError(
                f"query {query!r} differs from the query {stored_query!r} this folder's data "
                f"of connection {connection_id} was read with; pass the same query, or "
                "full=True to re-read and replace it"
            )
        query = _mark_query(mark) if query is None else f"{{{query}}} && {_mark_query(mark)}"
    new = read_customers(
        s, company_id, connection_id, query=query, order_by=order_by, progress=progress,
        local_tz=local_tz,
    )  # fmt: skip
    counts = merge_frames(root, new, company_id, connection_id, replace=mark is None)
    return SyncResult(
        fetched=len(new.customers),
        inserted=counts["inserted"],
        updated=counts["updated"],
        total=counts["total"],
        high_water_mark=stored_high_water_mark(root, company_id, connection_id),
        previous_high_water_mark=prev,
        unchanged=counts["unchanged"],
        deleted=counts.get("deleted"),
        full=mark is None,
        query=query,
    )
