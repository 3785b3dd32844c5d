"""Portfolio reads: every eligible connection of every company, locally or on a Dask cluster.

::

    summary = read_portfolio(s, path="portfolio")                  # threads on this machine
    summary = read_portfolio(s, path="/shared/portfolio",
                             executor=dask_client.get_executor())  # or the Client itself
    result = read_portfolio(s)                                     # no path: frames in memory
    result.frames.customers, result.summary

What it does
============
1. *List* every company (every page; or the ``companies`` given) and every connection of each
   (every page, companies listed concurrently).
2. *Classify* each connection: another source type than ``source_type``, or a status other
   than ``Linked``, is ``skipped`` with the reason; one already in ``path`` and fresh (below)
   is ``fresh``; the rest are fetched.
3. *Fetch* with :func:`codat_frames.paging.read_customers`, one **task per company** (its
   connections one after another), at most ``workers`` tasks at once. Each connection is
   written to ``path`` by the task as soon as it is read (:func:`codat_frames.parquet.to_parquet`,
   atomic per connection), so an interrupted run loses at most the connections in flight.
   A connection the API refuses with 404 (data type not supported) or 409 (not synced yet,
   not linked) is ``skipped``; any other error is ``failed`` with its message, and the run
   goes on.
4. Return the *summary*: one row per connection (:data:`SUMMARY_COLUMNS`); a company whose
   connections cannot be listed (deleted meanwhile...) gets one ``failed`` row with
   ``connection_id`` NA. Connections are listed in the background while the first companies
   are already being fetched.

Return value: with ``path``, the summary ``DataFrame``; without ``path``, a
:class:`PortfolioResult` (``.summary`` and ``.frames``, the concatenated ``CustomerFrames`` of
every connection read, in listing order; ``frames, summary = result`` also works).
``summary.attrs["run"]`` holds run_id, wall seconds and the request counters of the run
(``requests``, ``retries``, ``throttled``: from ``s.stats`` and, for remote tasks, from each
worker client's ``stats`` between its first task's start and last task's end, so concurrent
use of the same worker client by something else would be counted too; ``max_in_flight``: the
highest in-flight count of any one client, a high-water mark since that client was made).

Rate limits
===========
Codat allows 10 concurrent requests per company and answers 429 + ``Retry-After`` beyond. The
client's transport enforces that (see :class:`codat_frames.commerce.CodatCommerce`); this module
only keeps the work shaped so the transport's limits hold everywhere.

* *Per company*: a company is one task, and a task reads one connection at a time; the
  transport caps in-flight requests per company at ``s.max_concurrency`` (<= 10) in its
  process. Since a company never runs in two tasks (and its connections are listed before its
  task starts), the cap holds across a whole Dask cluster.
* *Overall*: at most ``workers`` tasks run at once (the driver submits no more), so at most
  ``workers * max_concurrency`` customer requests are in flight cluster-wide, plus the
  connection listings (at most 16 threads, on the driver). ``CodatCommerce(max_requests=N)``
  caps in-flight requests per process as well; remote workers get the same cap.
* *Retries and Retry-After*: the transport retries as ``s.retry_config`` says (backoff,
  408/429/5XX, connection errors), and a 429 pauses **every** request of that client (all
  companies) for its ``Retry-After``, so one throttled answer never becomes a storm of them.
  On a cluster each worker process has its own client: at most one 429 per process per window.

Executors and Dask
==================
``executor=None`` runs tasks on a thread pool of ``workers`` threads sharing ``s``. Any
``concurrent.futures.Executor`` is accepted: a ``ThreadPoolExecutor`` shares ``s`` too; any
other (``ProcessPoolExecutor``, ``dask.distributed.Client.get_executor()``, or a
``dask.distributed.Client``, whose executor is used) runs tasks elsewhere, and
``CodatCommerce`` cannot be pickled (it holds the key). Those tasks get a :class:`WorkerConfig`
instead (server URL, retry config, max_concurrency, max_requests: **never the key**) and
build one client per worker process, reading the key *on the worker* from ``CODAT_API_KEY``
or from ``key_provider()`` (a picklable callable, e.g. one reading a secrets manager). Tasks write
their own partitions, so ``path`` must be a folder all workers share (local disk for a
LocalCluster; a shared file system with working ``flock`` otherwise). The dataset is the same
as a local run's: the same connections, rows and files (only timestamps differ).

Resuming
========
With ``path``, a run records itself in ``path/_codat_frames/portfolio.json`` (run id, started,
finished) and tags each connection it writes with ``portfolio_run_id`` in the manifest meta.
A connection is *fresh*, and not fetched again, when it was written by the unfinished run
being resumed (``resume=True``: a run that was killed or interrupted is picked up where it
stopped) or fetched less than ``max_age`` ago (a ``timedelta``, seconds, or a string such as
``"6h"``). Once a run has gone through every connection it is marked finished, and the next
run refreshes everything (unless ``max_age`` says otherwise; to retry only the connections
that failed, pass ``max_age``). Don't run two portfolio reads into one folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from codat_frames import models
from codat_frames._http import CODAT_MAX_CONCURRENCY, DEFAULT_RETRY_CONFIG, RetryConfig
from codat_frames._progress import Progress

__all__ = [
    "SUMMARY_COLUMNS",
    "PortfolioConfigError",
    "PortfolioResult",
    "WorkerConfig",
    "read_portfolio",
]

#: Columns of the summary frame, in order.
SUMMARY_COLUMNS = (
    "company_id",  # string
    "company",  # company name (NA when companies were given as ids)
    "connection_id",
    "platform",  # platformName
    "source_type",  # sourceType: Commerce, Accounting, Banking...
    "connection_status",  # Linked, PendingAuth, Deauthorized, Unlinked
    "status",  # ok | fresh | skipped | failed
    "rows",  # customers written/returned (fresh: stored); NA when skipped/failed
    "addresses",  # address rows, likewise
    "seconds",  # fetch + write time of this connection (0 for fresh/skipped)
    "error",  # why skipped/failed; NA otherwise
)
STATUSES = ("ok", "fresh", "skipped", "failed")

DEFAULT_WORKERS = 8
RUN_FILE = "portfolio.json"
_LIST_PAGE_SIZE = 500


class PortfolioConfigError(RuntimeError):
    """A worker cannot run at all (no API key there, codat_frames missing...): the run stops."""


# ------------------------------------------------------------------------------ worker side


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker builds its own client: everything but the key (picklable, safe to ship).

    The key is read on the worker: ``key_provider()`` if given (a picklable, module-level
    callable), else the environment variable ``key_env``.
    """

    server_url: str
    max_concurrency: int = CODAT_MAX_CONCURRENCY
    retry_config: RetryConfig = DEFAULT_RETRY_CONFIG
    max_requests: int | None = None
    timeout_ms: int | None = 60_000
    key_provider: Callable[[], str] | None = None
    key_env: str = "CODAT_API_KEY"

    def api_key(self) -> str:
        key = self.key_provider() if self.key_provider is not None else os.environ.get(self.key_env)
        if not key or not isinstance(key, str):
            where = (
                "key_provider() returned nothing"
                if self.key_provider
                else (f"{self.key_env} is not set")
            )
            raise PortfolioConfigError(
                f"no Codat API key on worker (pid {os.getpid()}): {where}. Set {self.key_env} "
                "in every worker's environment or pass read_portfolio(key_provider=...)."
            )
        return key

    def client(self) -> Any:
        """This process's ``CodatCommerce`` for the config (one per process and key, cached)."""
        key = self.api_key()
        cache_key = (self, hashlib.sha256(key.encode()).hexdigest())
        with _WORKER_LOCK:
            client = _WORKER_CLIENTS.get(cache_key)
            if client is None:
                from codat_frames.commerce import CodatCommerce

                client = _WORKER_CLIENTS[cache_key] = CodatCommerce(
                    api_key=key,
                    server_url=self.server_url,
                    retry_config=self.retry_config,
                    timeout_ms=self.timeout_ms,
                    max_concurrency=self.max_concurrency,
                    max_requests=self.max_requests,
                )
            return client


_WORKER_LOCK = threading.Lock()
_WORKER_CLIENTS: dict[tuple, Any] = {}


@dataclass(frozen=True)
class _Options:
    run_id: str
    path: str | None
    local_tz: str
    page_size: int | None


def _row(company: dict, conn: dict, status: str, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(
        company_id=company["id"],
        company=company.get("name"),
        connection_id=conn["id"],
        platform=conn.get("platform_name"),
        source_type=conn.get("source_type"),
        connection_status=conn.get("status"),
        status=status,
        seconds=0.0,
    )
    row.update(values)
    return row


def _fetch_company(source: Any, company: dict, conns: list[dict], opts: _Options):
    """One task: read (and write) a company's connections one after another.

    Runs on the executor (a thread here, or a Dask worker). Returns the summary rows, the
    frames when there is no ``path``, and for a worker's own client its usage
    ``(client tag, stats before, stats after)``. Raises only for a worker that cannot work.
    """
    from codat_frames.paging import read_customers

    remote = isinstance(source, WorkerConfig)
    client = source.client() if remote else source
    before = client.stats if remote else None
    rows, frames_out = [], []
    for conn in conns:
        started = time.monotonic()
        try:
            frames = read_customers(
                client,
                company["id"],
                conn["id"],
                page_size=opts.page_size,
                progress=False,
                local_tz=opts.local_tz,
            )
            frames.meta["portfolio_run_id"] = opts.run_id
            if opts.path is not None:
                from codat_frames.parquet import to_parquet

                to_parquet(frames, opts.path)
            else:
                frames_out.append(((company["id"], conn["id"]), frames))
        except models.ErrorMessage as e:
            status = "skipped" if e.status_code in (404, 409) else "failed"
            rows.append(
                _row(company, conn, status, error=str(e), seconds=time.monotonic() - started)
            )
            continue
        except Exception as e:  # noqa: BLE001 - one bad connection must not end the run
            rows.append(
                _row(
                    company,
                    conn,
                    "failed",
                    error=f"{type(e).__name__}: {e}",
                    seconds=time.monotonic() - started,
                )
            )
            continue
        rows.append(
            _row(
                company,
                conn,
                "ok",
                rows=len(frames.customers),
                addresses=len(frames.addresses),
                seconds=time.monotonic() - started,
            )
        )
    usage = (f"{socket.gethostname()}/{os.getpid()}/{id(client)}", before, client.stats)
    return rows, frames_out, usage if remote else None


# ------------------------------------------------------------------------------ run state


def _control_dir(path: Path) -> Path:
    from codat_frames.parquet import CONTROL_DIR

    return path / CONTROL_DIR


def _load_manifest_entries(path: Path) -> dict[tuple[str, str], dict]:
    from codat_frames.parquet import MANIFEST_NAME

    try:
        raw = (_control_dir(path) / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        return {}
    manifest = json.loads(raw)
    return {(e["company_id"], e["connection_id"]): e for e in manifest.get("connections", [])}


def _init_dataset(root: Path) -> None:
    """Create the dataset (an empty commit) before tasks write into it concurrently.

    Also checks up front that ``root`` is a codat_frames folder (or new). And without a
    manifest in place, parallel first writers could each see the others' files before their
    manifest and refuse the folder as foreign.
    """
    from codat_frames.frames import empty_frames
    from codat_frames.parquet import MANIFEST_NAME, to_parquet

    if not (_control_dir(root) / MANIFEST_NAME).exists():
        to_parquet(empty_frames(), root)


def _write_json_atomic(target: Path, data: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _start_run(path: Path, resume: bool, source_type: str | None) -> tuple[str, bool]:
    """(run_id, resumed): the unfinished run's id when resuming one, else a new id."""
    run_file = _control_dir(path) / RUN_FILE
    previous = None
    if resume:
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            previous = None
    if previous and not previous.get("finished_at") and previous.get("run_id"):
        return str(previous["run_id"]), True
    run_id = uuid.uuid4().hex
    _write_json_atomic(
        run_file,
        {
            "run_id": run_id,
            "started_at": _now_iso(),
            "finished_at": None,
            "source_type": source_type,
        },
    )
    return run_id, False


def _finish_run(path: Path, run_id: str, counts: dict[str, int]) -> None:
    run_file = _control_dir(path) / RUN_FILE
    try:
        state = json.loads(run_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        state = {"run_id": run_id}
    state.update(finished_at=_now_iso(), counts=counts)
    _write_json_atomic(run_file, state)


def _fresh(entry: dict | None, run_id: str, max_age: pd.Timedelta | None, now: pd.Timestamp):
    if not entry:
        return False
    meta = entry.get("meta") or {}
    if meta.get("portfolio_run_id") == run_id:
        return True
    if max_age is None:
        return False
    stamp = meta.get("fetched_at") or entry.get("written_at")
    if not stamp:
        return False
    try:
        when = pd.Timestamp(stamp)
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.tz_localize("UTC")
    return now - when <= max_age


# ------------------------------------------------------------------------------ the driver


@dataclass
class PortfolioResult:
    """``read_portfolio`` without ``path``: the summary and every connection's frames."""

    summary: pd.DataFrame
    frames: Any  # CustomerFrames
    run: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.frames, self.summary))

    def __repr__(self) -> str:
        counts = self.summary["status"].value_counts().to_dict() if len(self.summary) else {}
        return f"PortfolioResult({len(self.summary)} connections {counts}, frames={self.frames!r})"


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _max_age(value: Any) -> pd.Timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(
            f"max_age must be a timedelta, seconds or a string like '6h', not {value!r}"
        )
    try:
        if isinstance(value, int | float):
            td = pd.Timedelta(seconds=value)
        else:
            td = pd.Timedelta(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"max_age must be a timedelta, seconds or a string like '6h', not {value!r}"
        ) from None
    if pd.isna(td) or td < pd.Timedelta(0):
        raise ValueError(f"max_age must be >= 0, got {value!r}")
    return td


def _company_inputs(companies: Any) -> list[dict] | None:
    if companies is None:
        return None
    if isinstance(companies, str | models.Company):
        companies = [companies]
    out = []
    for c in companies:
        if isinstance(c, models.Company):
            cid, name = c.id, c.name
        elif isinstance(c, str):
            cid, name = c, None
        else:
            raise ValueError(f"companies must hold company ids or models.Company, got {c!r}")
        # validates the id before any request (a UUID), naming the parameter
        models.ListConnectionsRequest.coerce({"company_id": cid})
        out.append({"id": cid, "name": name})
    return out


def _conn_dict(c: models.Connection) -> dict:
    return {
        "id": c.id,
        "platform_name": c.platform_name,
        "source_type": c.source_type,
        "status": c.status,
        "errors": c.data_connection_errors,
    }


def _skip_reason(conn: dict, source_type: str | None) -> str | None:
    if source_type is not None and conn.get("source_type") != source_type:
        return f"source type {conn.get('source_type')!r} is not {source_type!r}"
    if conn.get("status") != "Linked":
        reason = f"connection status {conn.get('status')!r}: cannot serve data until Linked"
        errs = [e for e in conn.get("errors") or [] if isinstance(e, dict)]
        if errs and errs[-1].get("errorMessage"):
            reason += f" ({errs[-1]['errorMessage']})"
        return reason
    return None


def _resolve_executor(executor: Any) -> tuple[Executor | None, bool]:
    """(executor, in_process): None means 'make a thread pool'."""
    if executor is None:
        return None, True
    if not isinstance(executor, Executor) and callable(getattr(executor, "get_executor", None)):
        executor = executor.get_executor()  # a dask.distributed.Client
    if not isinstance(executor, Executor):
        raise TypeError(
            "executor must be a concurrent.futures.Executor (e.g. ThreadPoolExecutor, "
            f"dask.distributed Client.get_executor()), got {type(executor).__name__}"
        )
    return executor, isinstance(executor, ThreadPoolExecutor)


def _summary_frame(rows: list[dict]) -> pd.DataFrame:
    from codat_frames.frames import STRING_DTYPE

    df = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for col in SUMMARY_COLUMNS:
        if col in ("rows", "addresses"):
            df[col] = df[col].astype("Int64")
        elif col == "seconds":
            df[col] = df[col].astype("float64").round(3)
        else:
            df[col] = df[col].astype(STRING_DTYPE)
    return df


def _concat_frames(parts: list) -> Any:
    from codat_frames import frames as _frames

    if not parts:
        out = _frames.empty_frames()
        out.meta.update(connections=[])
        return out
    customers = pd.concat([p.customers for p in parts], ignore_index=True)
    addresses = pd.concat([p.addresses for p in parts], ignore_index=True)
    metas = [dict(p.meta) for p in parts]
    fetched = [m["fetched_at"] for m in metas if m.get("fetched_at")]
    meta = {
        "company_id": None,
        "connection_id": None,
        "fetched_at": min(fetched) if fetched else None,
        "total_results": len(customers),
        "connections": metas,
    }
    return _frames.CustomerFrames(customers=customers, addresses=addresses, meta=meta)


def _list_companies(s: Any, companies: list[dict] | None) -> list[dict]:
    if companies is None:
        companies = [
            {"id": c.id, "name": c.name} for c in s.companies.iter_all(page_size=_LIST_PAGE_SIZE)
        ]
    seen: set[str] = set()
    return [c for c in companies if not (c["id"] in seen or seen.add(c["id"]))]


def _list_connections(s: Any, company: dict) -> list[dict]:
    return [_conn_dict(c) for c in s.connections.iter_all(company["id"], page_size=_LIST_PAGE_SIZE)]


_COUNTERS = ("requests", "retries", "throttled")


def _run_stats(local_before: dict, local_after: dict, spans: dict[str, tuple[dict, dict]]) -> dict:
    """The run's request counters: ``s``'s and every worker client's, over the run."""
    out = {k: local_after[k] - local_before[k] for k in _COUNTERS}
    peak = local_after["max_in_flight"]
    for first, last in spans.values():
        for k in _COUNTERS:
            out[k] += last[k] - first[k]
        peak = max(peak, last["max_in_flight"])
    return {**out, "max_in_flight": peak}


def read_portfolio(
    s: Any,
    companies: Iterable[str | models.Company] | str | None = None,
    source_type: str | None = "Commerce",
    path: str | os.PathLike | None = None,
    executor: Any = None,
    *,
    workers: int | None = None,
    max_age: timedelta | float | str | None = None,
    progress: bool | Callable[[int, int, int], None] | None = None,
    local_tz: str = "UTC",
    page_size: int | None = None,
    resume: bool = True,
    key_provider: Callable[[], str] | None = None,
) -> pd.DataFrame | PortfolioResult:
    """Read every eligible connection of every company (see the module docstring).

    ``s``: a ``CodatCommerce`` (used for listing, and for fetching when tasks run in this
    process). ``companies``: ids or ``models.Company`` (default: every company).
    ``source_type``: connections of other types are skipped (None: try every connection).
    ``path``: the parquet folder every connection is written into (None: return frames).
    ``executor``: see "Executors and Dask". ``workers``: company tasks at once (default 8).
    ``max_age``: also treat connections fetched less than this ago as fresh. ``progress``:
    True/False/None (auto) or ``fn(connections_done, connections_total, rows)``.
    ``page_size``: passed to ``read_customers``. ``resume``: pick up an unfinished run in
    ``path``.
    ``key_provider``: how remote workers get the key (default: their ``CODAT_API_KEY``).

    Returns the summary frame with ``path``, else a :class:`PortfolioResult`. Raises
    ValueError/TypeError for bad arguments before any request, a CodatError when listing
    companies fails, :class:`PortfolioConfigError` when workers cannot run.
    """
    _check_positive("workers", workers)
    _check_positive("page_size", page_size)
    if source_type is not None and not isinstance(source_type, str):
        raise ValueError(f"source_type must be a string or None, got {source_type!r}")
    if not isinstance(local_tz, str):
        raise ValueError(f"local_tz must be an IANA time zone name, got {local_tz!r}")
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise ValueError(f"progress must be True, False, None or a callable, got {progress!r}")
    age = _max_age(max_age)
    wanted = _company_inputs(companies)
    pool, in_process = _resolve_executor(executor)
    root = None
    if path is not None:
        if isinstance(path, bytes) or not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike folder, not {type(path).__name__}")
        root = Path(os.fspath(path))
        if root.exists() and not root.is_dir():
            raise ValueError(f"path {str(root)!r} exists and is not a folder")
    workers = workers or DEFAULT_WORKERS
    if in_process:
        source: Any = s
    else:
        source = WorkerConfig(
            server_url=s.server_url,
            max_concurrency=s.max_concurrency,
            retry_config=s.retry_config,
            max_requests=s.max_requests,
            timeout_ms=s.timeout_ms,
            key_provider=key_provider,
        )

    started, stats_before = time.monotonic(), s.stats
    run_id, resumed = uuid.uuid4().hex, False
    entries: dict[tuple[str, str], dict] = {}
    if root is not None:
        _init_dataset(root)
        run_id, resumed = _start_run(root, resume, source_type)
        entries = _load_manifest_entries(root)
    now = pd.Timestamp.now(tz="UTC")
    listed = _list_companies(s, wanted)

    rows: dict[tuple[str, str | None], dict] = {}
    order: list[tuple[str, str | None]] = []

    def classify(company: dict, listing: Future) -> list[dict]:
        """Summary rows for what needn't be fetched; returns the connections to fetch."""
        try:
            conns = listing.result()
        except models.CodatError as e:  # e.g. the company was deleted since it was listed
            order.append((company["id"], None))
            rows[(company["id"], None)] = _row(
                company, {"id": None}, "failed", error=f"listing connections: {e}"
            )
            return []
        todo = []
        for conn in conns:
            key = (company["id"], conn["id"])
            order.append(key)
            reason = _skip_reason(conn, source_type)
            entry = entries.get(key)
            if reason is not None:
                rows[key] = _row(company, conn, "skipped", error=reason)
            elif _fresh(entry, run_id, age, now):
                files = entry.get("files") or {}
                rows[key] = _row(
                    company,
                    conn,
                    "fresh",
                    rows=(files.get("customers") or {}).get("rows"),
                    addresses=(files.get("addresses") or {}).get("rows"),
                )
            else:
                todo.append({k: v for k, v in conn.items() if k != "errors"})
        return todo

    opts = _Options(
        run_id=run_id,
        path=None if root is None else os.fspath(root),
        local_tz=local_tz,
        page_size=page_size,
    )
    frames_by_key: dict[tuple[str, str], Any] = {}
    bar = Progress(progress, desc="portfolio", unit="conn", noun="rows")
    spans: dict[str, tuple[dict, dict]] = {}
    own_pool = pool is None
    if own_pool:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="codat-portfolio")
    # connections are listed in the background while the first companies are fetched
    lister = ThreadPoolExecutor(max(1, min(16, 2 * workers, len(listed))), "codat-list")
    ok = False
    try:
        listings = [lister.submit(_list_connections, s, c) for c in listed]

        def jobs() -> Iterator[tuple[dict, list[dict]]]:
            for company, listing in zip(listed, listings, strict=True):
                todo = classify(company, listing)
                if todo:
                    bar.add_total(len(todo))
                    yield company, todo

        for job_rows, job_frames, usage in _run_jobs(pool, source, jobs(), opts, workers, bar):
            for r in job_rows:
                rows[(r["company_id"], r["connection_id"])] = r
            frames_by_key.update(job_frames)
            if usage is not None:
                tag, first, last = usage
                if tag in spans:
                    f0, l0 = spans[tag]
                    first = {k: min(v, f0[k]) for k, v in first.items()}
                    last = {k: max(v, l0[k]) for k, v in last.items()}
                spans[tag] = (first, last)
        ok = True
    finally:
        lister.shutdown(wait=ok, cancel_futures=True)
        if own_pool:
            pool.shutdown(wait=ok, cancel_futures=True)
        bar.close()

    summary = _summary_frame([rows[k] for k in order])
    counts = {k: int(v) for k, v in summary["status"].value_counts().items()}
    run = {
        "run_id": run_id,
        "resumed": resumed,
        "seconds": round(time.monotonic() - started, 3),
        "companies": len(listed),
        "connections": int(summary["connection_id"].notna().sum()),
        "counts": counts,
        "executor": "threads" if in_process else type(pool).__name__,
        **_run_stats(stats_before, s.stats, spans),
    }
    summary.attrs["run"] = run
    if root is not None:
        _finish_run(root, run_id, counts)
        return summary
    parts = [frames_by_key[k] for k in order if k in frames_by_key]
    return PortfolioResult(summary=summary, frames=_concat_frames(parts), run=run)


def _run_jobs(
    pool: Executor,
    source: Any,
    jobs: Iterator[tuple[dict, list[dict]]],
    opts: _Options,
    workers: int,
    bar: Progress,
) -> Iterator[tuple[list[dict], list, Any]]:
    """Submit company tasks, never more than ``workers`` at once; yield results as they end."""
    running: set[Future] = set()
    more = True
    try:
        while more or running:
            while more and len(running) < workers:
                job = next(jobs, None)
                if job is None:
                    more = False
                    break
                running.add(pool.submit(_fetch_company, source, job[0], job[1], opts))
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                running.discard(fut)
                job_rows, job_frames, usage = fut.result()  # PortfolioConfigError etc. end the run
                bar.advance(len(job_rows), count=sum(r["rows"] or 0 for r in job_rows))
                yield job_rows, job_frames, usage
    finally:
        for fut in running:
            fut.cancel()
