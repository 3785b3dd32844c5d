"""Fetch every page of a connection's customers: concurrent, bounded, loss-free, with progress.

Page 1 first (it tells how many pages there are), then the rest concurrently on a thread pool
no wider than ``s.max_concurrency`` (the transport also caps in-flight requests per company).
Each page's bytes are turned into an Arrow table as soon as it arrives, so memory holds Arrow
tables, never every page's JSON.

Offset paging can shift rows when data changes mid-read. A *pass* reads all pages; it is clean
when every page reported the same ``totalResults``, the rows add up to it and no id came twice.
A clean pass is a snapshot: it holds every record that existed for the whole read. A pass that
is not clean is followed by another (up to ``max_passes``); if none is clean, the union of all
passes is returned (deduplicated by id, later ``modifiedDate`` kept) with a warning saying so.
"""

from __future__ import annotations

import asyncio
import math
import time
import warnings
import zoneinfo
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from codat_frames import frames as _frames
from codat_frames import models
from codat_frames._progress import Progress, ProgressCallback

__all__ = ["read_customers", "read_customers_async", "DataChangedWarning", "DEFAULT_PAGE_SIZE"]

#: The largest page the API's response schema allows (``pageSize`` maximum 2000).
DEFAULT_PAGE_SIZE = 2000
#: A first page announcing more pages than this is refused: a broken or hostile
#: ``totalResults`` (say 2**80) would otherwise keep a read requesting pages forever.
MAX_PAGES = 5_000_000


class DataChangedWarning(_frames.DataQualityWarning):
    """The data changed during every pass of a read; the result is a best-effort union."""


@dataclass
class _Pass:
    total: int
    page_size: int
    pages: dict[int, pa.Table] = field(default_factory=dict)
    totals_seen: set[int] = field(default_factory=set)

    @property
    def n_pages(self) -> int:
        return math.ceil(self.total / self.page_size) if self.page_size else 0

    def tables(self) -> list[pa.Table]:
        return [self.pages[p] for p in sorted(self.pages)]

    def rows(self) -> int:
        return sum(t.num_rows for t in self.pages.values())

    def problems(self) -> list[str]:
        """Why this pass may not be a snapshot (empty when it is clean)."""
        out = []
        if self.totals_seen != {self.total}:
            seen = sorted(self.totals_seen, key=lambda t: -1 if t is None else t)  # None: hostile
            out.append(f"totalResults moved ({', '.join(map(str, seen))})")
        rows = self.rows()
        if rows != self.total:
            out.append(f"{rows} rows read for totalResults {self.total}")
        if rows:
            ids = pa.chunked_array([t.column("id") for t in self.pages.values()])
            distinct = pc.count_distinct(ids, mode="only_valid").as_py()
            if distinct != rows:
                out.append(f"{rows - distinct} id(s) seen twice (rows shifted between pages)")
        return out


def _with_page(err: models.CodatError, page: int, n_pages: int) -> models.CodatError:
    err.add_context(f"page {page} of {n_pages}" if n_pages else f"page {page}")
    return err


def read_customers(
    s: Any,
    company_id: str,
    connection_id: str,
    query: str | None = None,
    order_by: str | None = None,
    page_size: int | None = None,
    progress: bool | ProgressCallback | None = None,
    local_tz: str = "UTC",
    *,
    max_passes: int = 3,
) -> _frames.CustomerFrames:
    """Every customer of one connection as typed frames (customers and addresses).

    ``progress``: True/False, None (on in notebooks and terminals), or a callable
    ``fn(pages_done, pages_total, records_done)``. Raises a CodatError naming the page when a
    page fails for good; ValueError for bad arguments before any request.
    """
    page_size = DEFAULT_PAGE_SIZE if page_size is None else page_size
    base = models.ListCustomersRequest.coerce(
        {
            "company_id": company_id,
            "connection_id": connection_id,
            "query": query,
            "order_by": order_by,
            "page": 1,
            "page_size": page_size,
        }
    )
    if not isinstance(local_tz, str):
        raise ValueError(f"local_tz must be an IANA time zone name, got {local_tz!r}")
    try:
        zoneinfo.ZoneInfo(local_tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"local_tz {local_tz!r} is not a known IANA time zone") from None
    if isinstance(max_passes, bool) or not isinstance(max_passes, int) or max_passes < 1:
        raise ValueError(f"max_passes must be an integer >= 1, got {max_passes!r}")

    fetched_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    started = time.monotonic()
    bar = Progress(progress, desc="customers", unit="page", noun="customers")
    passes: list[_Pass] = []
    # Twice as many threads as requests allowed in flight: while some threads turn pages into
    # Arrow, others already wait on the next requests. The transport's per-company semaphore
    # keeps requests in flight within max_concurrency.
    pool = ThreadPoolExecutor(max_workers=2 * s.max_concurrency, thread_name_prefix="codat-page")
    ok = False
    problems: list[str] = []
    try:
        for _ in range(max_passes):
            p = _read_pass(s, base, pool, bar)
            passes.append(p)
            problems = p.problems()  # counts every id of the pass: once per pass
            if not problems:
                break
        ok = True
    finally:
        # On failure, don't wait for pages still retrying: their results are not needed.
        pool.shutdown(wait=ok, cancel_futures=True)
        bar.close()

    last = passes[-1]
    if problems:
        tables = [t for p in passes for t in p.tables()]
        warnings.warn(
            f"customers of connection {connection_id} changed during all {len(passes)} "
            f"read passes ({'; '.join(problems)}); returning the union of every pass, "
            "deduplicated by id. Records deleted mid-read may be included; run again to "
            "get a clean snapshot.",
            DataChangedWarning,
            stacklevel=2,
        )
    else:
        tables = last.tables()
    meta = {
        "query": query,
        "order_by": order_by,
        "fetched_at": fetched_at,
        "total_results": last.total,
        "pages": last.n_pages,
        "passes": len(passes),
        "seconds": round(time.monotonic() - started, 3),
    }
    return _frames.build_frames(
        tables, company_id=company_id, connection_id=connection_id, local_tz=local_tz, meta=meta
    )


async def read_customers_async(
    s: Any,
    company_id: str,
    connection_id: str,
    query: str | None = None,
    order_by: str | None = None,
    page_size: int | None = None,
    progress: bool | ProgressCallback | None = None,
    local_tz: str = "UTC",
    *,
    max_passes: int = 3,
) -> _frames.CustomerFrames:
    """Async twin of :func:`read_customers`: the same read on a worker thread.

    The read already fetches pages concurrently on its own threads, so awaiting it leaves the
    event loop free (e.g. a web app or a notebook keeps responding) at no cost in speed.
    """
    return await asyncio.to_thread(
        read_customers, s, company_id, connection_id, query, order_by, page_size, progress,
        local_tz, max_passes=max_passes,
    )  # fmt: skip


def _fetch(s: Any, base: models.ListCustomersRequest, page: int, n_pages: int):
    try:
        raw = s.customers.list_raw(replace(base, page=page)).content
    except models.CodatError as e:
        raise _with_page(e, page, n_pages) from None
    try:
        return _frames.parse_customers_page(raw)
    except _frames.PageFormatError as e:
        raise models.SDKError(
            f"page {page} of {n_pages} is not a customers page: {e}",
            200,
            raw[:500].decode("utf-8", "replace"),
        ) from None


def _read_pass(
    s: Any, base: models.ListCustomersRequest, pool: ThreadPoolExecutor, bar: Progress
) -> _Pass:
    first = _fetch(s, base, 1, 0)
    if first.total_results is None or first.total_results < 0:
        total = first.total_results
        raise models.SDKError(f"page 1 is not a customers page: totalResults is {total!r}", 200)
    size = first.page_size if first.page_size and first.page_size > 0 else base.page_size
    p = _Pass(total=first.total_results, page_size=size)
    p.pages[1] = first.table
    p.totals_seen.add(first.total_results)
    bar.set_total(bar.done + max(p.n_pages, 1))
    bar.advance(count=first.table.num_rows)
    if p.n_pages > MAX_PAGES:
        raise models.SDKError(
            f"page 1 is not a plausible customers page: totalResults {p.total} would take "
            f"{p.n_pages} pages of {size} (a read requests at most {MAX_PAGES})",
            200,
        )
    if size != base.page_size:
        # The server clamped the page size: ask for what it serves so offsets line up.
        base = replace(base, page_size=size)
    # Submit pages through a small window rather than all at once: a huge (or hostile)
    # totalResults then costs requests, never a million queued futures.
    todo = iter(range(2, p.n_pages + 1))
    pending: dict[Future, int] = {}

    def submit_next() -> None:
        n = next(todo, None)
        if n is not None:
            pending[pool.submit(_fetch, s, base, n, p.n_pages)] = n

    for _ in range(3 * s.max_concurrency):
        submit_next()
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                n = pending.pop(fut)
                page = fut.result()
                p.pages[n] = page.table
                p.totals_seen.add(page.total_results)
                bar.advance(count=page.table.num_rows)
                submit_next()
    finally:
        for fut in pending:
            fut.cancel()
    return p
