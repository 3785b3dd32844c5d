"""Reliability scenarios shared by ``benchmarks/reliability.py`` (full size) and
``tests/test_reliability.py`` (small, for CI): run one scenario against the sandbox, compare
with its ground truth and return a :class:`Row` of the table.

lost = expected ids missing from the result; duplicated = rows beyond one per id.
"""

from __future__ import annotations

import random
import resource
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

import codat_frames as cf
from codat_frames import frames as F
from codat_frames import sandbox
from codat_frames.paging import read_customers
from codat_frames.parquet import read_parquet, sync_customers, to_parquet

COLUMNS = ("scenario", "requests", "faults injected", "retries", "records expected",
           "records returned", "lost", "duplicated", "peak memory")  # fmt: skip


@dataclass
class Row:
    scenario: str
    requests: int = 0
    faults: int = 0
    retries: int = 0
    expected: int = 0
    returned: int = 0
    lost: int = 0
    duplicated: int = 0
    peak_mb: float | None = None
    seconds: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)
    notes: str = ""
    fault_kinds: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and all(self.checks.values())

    def cells(self) -> list[str]:
        peak = "-" if self.peak_mb is None else f"{self.peak_mb:,.0f} MB"
        return [self.scenario, f"{self.requests:,}", f"{self.faults:,}", f"{self.retries:,}",
                f"{self.expected:,}", f"{self.returned:,}", f"{self.lost:,}",
                f"{self.duplicated:,}", peak]  # fmt: skip


def table(rows: Iterable[Row]) -> str:
    """A Markdown table (pastes into the README as is)."""
    body = [r.cells() for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(COLUMNS)]
    def line(cells):  # noqa: E306
        pairs = enumerate(zip(cells, widths, strict=True))
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ("-" if i == 0 else ":")) for i, w in
                         enumerate(widths)) + "|"  # fmt: skip
    return "\n".join([line(COLUMNS), sep, *(line(b) for b in body)])


def score(got_ids: Iterable[str], expected: set[str]) -> tuple[int, int, int]:
    """(returned distinct, lost, duplicated) of a result's ids against the expected ids."""
    counts = Counter(got_ids)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    lost = len(expected - counts.keys())
    return len(counts), lost, duplicated


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def truth_frames(sb, company_id: str, connection_id: str) -> cf.CustomerFrames:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = list(sb.customer_records(company_id, connection_id))
        return cf.normalize_customers(records, company_id=company_id, connection_id=connection_id)


def same_content(got: cf.CustomerFrames, want: cf.CustomerFrames) -> bool:
    """Same customers and addresses (contract columns), regardless of row order."""
    def norm(df, cols, keys):
        return df[list(cols)].sort_values(keys, ignore_index=True)
    try:
        pd.testing.assert_frame_equal(norm(got.customers, F.CUSTOMER_COLUMNS, ["id"]),
                                      norm(want.customers, F.CUSTOMER_COLUMNS, ["id"]))
        keys = ["customer_id", "address_index"]
        pd.testing.assert_frame_equal(norm(got.addresses, F.ADDRESS_COLUMNS, keys),
                                      norm(want.addresses, F.ADDRESS_COLUMNS, keys))  # fmt: skip
    except AssertionError:
        return False
    return True


def storm_retry(max_interval_ms: int) -> cf.RetryConfig:
    """Backoff from 10 ms; Retry-After is honoured up to ``max_interval_ms``."""
    return cf.RetryConfig("backoff", cf.BackoffStrategy(10, max_interval_ms, 1.5, 300_000), True)


# ------------------------------------------------------------------------------ fault storm


def fault_storm(customers: int, seed: int, *, fault_rate: float = 0.2, page_size: int = 500,
                timeout_ms: int = 300, slow_reply_s: float = 0.6, retry_after_s: int = 1,
                max_interval_ms: int = 1000, check_content: bool = True) -> Row:  # fmt: skip
    """Every fault kind at ``fault_rate`` (429 + Retry-After, 500, 503 JSON, 502/503/504 HTML,
    dropped connections, replies slower than the client's timeout)."""
    assert timeout_ms / 1000 < slow_reply_s, "the slow fault must outlast the client timeout"
    started = time.monotonic()
    with sandbox.serve(seed=seed, customers=customers, companies=1, fault_rate=fault_rate,
                       slow_reply_s=slow_reply_s, retry_after_s=retry_after_s) as sb:  # fmt: skip
        company_id, connection_id = sb.commerce_connections()[0]
        with cf.CodatCommerce(api_key=sb.api_key, server_url=sb.url, timeout_ms=timeout_ms,
                              retry_config=storm_retry(max_interval_ms)) as s:  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", cf.DataQualityWarning)
                got = read_customers(s, company_id, connection_id, page_size=page_size,
                                     progress=False)  # fmt: skip
            retries = s.stats["retries"]
        expected = set(sb.customer_ids(company_id, connection_id))
        returned, lost, dup = score(got.customers["id"], expected)
        st = sb.stats
        checks = {}
        if check_content:
            checks["content equals ground truth"] = same_content(
                got, truth_frames(sb, company_id, connection_id)
            )
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(st.faults.items()))
        return Row(f"fault storm {fault_rate:.0%}, seed {seed}", st.requests,
                   sum(st.faults.values()), retries, len(expected), returned, lost, dup,
                   peak_rss_mb(), time.monotonic() - started, checks,
                   f"faults: {kinds}; limiter 429s: {st.rate_limited}",
                   Counter(st.faults))  # fmt: skip


# ------------------------------------------------------------------------------ shifting data


class _Mutator:
    """A sandbox ``on_request`` hook inserting, deleting and modifying customers mid-read."""

    def __init__(self, sb, company_id: str, connection_id: str, seed: int, *,
                 per_request: tuple[int, int, int], requests: int | None) -> None:  # fmt: skip
        self.sb, self.pair = sb, (company_id, connection_id)
        self.rng = random.Random(seed)
        self.inserts, self.deletes, self.modifies = per_request
        self.budget = requests  # None: mutate on every request
        self.lock = threading.Lock()
        self.inserted: set[str] = set()
        self.deleted: set[str] = set()
        self.modified: set[str] = set()
        self.calls = 0

    def __call__(self, path: str, page: int) -> None:
        with self.lock:
            self.calls += 1
            if self.budget is not None and self.calls > self.budget:
                return
            self.mutate(self.inserts, self.deletes, self.modifies)

    def mutate(self, inserts: int, deletes: int, modifies: int) -> None:
        sb, pair, rng = self.sb, self.pair, self.rng
        if inserts:
            at = rng.choice(["front", "end"])
            self.inserted.update(sb.insert(*pair, inserts, at=at))
        n = sb.customer_count(*pair)
        if deletes and n > deletes:
            self.deleted.update(sb.delete(*pair, rng.sample(range(n), deletes)))
        n = sb.customer_count(*pair)
        if modifies and n:
            self.modified.update(sb.modify(*pair, rng.sample(range(n), min(modifies, n)),
                                           {"note": f"changed {self.calls}"}))  # fmt: skip


def shifting_data(customers: int, seed: int, *, page_size: int = 500,
                  per_request: tuple[int, int, int] = (3, 2, 2), every_pass: bool = False,
                  between: tuple[int, int, int] = (50, 20, 50)) -> list[Row]:  # fmt: skip
    """Inserts, deletes and modifications while pages are read (during the first pass only,
    or during every pass), then between reads; ``sync_customers`` afterwards is compared with
    a fresh read. Expected = the records present for the whole read."""
    rows = []
    started = time.monotonic()
    with sandbox.serve(seed=seed, customers=customers, companies=1) as sb:
        pair = sb.commerce_connections()[0]
        initial = set(sb.customer_ids(*pair))
        n_pages = -(-customers // page_size)
        hook = _Mutator(sb, *pair, seed, per_request=per_request,
                        requests=None if every_pass else n_pages)  # fmt: skip
        sb.on_request(hook)
        with cf.CodatCommerce(api_key=sb.api_key, server_url=sb.url,
                              retry_config=storm_retry(200)) as s:  # fmt: skip
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = read_customers(s, *pair, page_size=page_size, progress=False)
            sb.on_request(None)
            changed_warning = any(issubclass(w.category, cf.paging.DataChangedWarning)
                                  for w in caught)  # fmt: skip
            final = set(sb.customer_ids(*pair))
            throughout = initial - hook.deleted
            returned, lost, dup = score(got.customers["id"], throughout)
            ids = set(got.customers["id"])
            checks = {
                "no record that never existed": ids <= initial | hook.inserted,
                "warned iff no clean pass": changed_warning == every_pass,
            }
            if not every_pass:
                checks["clean pass equals ground truth"] = same_content(
                    got, truth_frames(sb, *pair))
            mode = "every pass" if every_pass else "first pass"
            rows.append(Row(
                f"shifting data ({mode}), seed {seed}", sb.stats.requests, 0,
                s.stats["retries"], len(throughout), returned, lost, dup, peak_rss_mb(),
                time.monotonic() - started, checks,
                f"+{len(hook.inserted)} -{len(hook.deleted)} ~{len(hook.modified)} during; "
                f"{len(final)} at end; passes {got.meta.get('passes')}",
            ))  # fmt: skip
            if every_pass:
                return rows

            # ---- between reads, then sync vs a fresh read
            started = time.monotonic()
            with tempfile.TemporaryDirectory() as tmp:
                to_parquet(got, tmp)
                sb.reset_stats()
                before = set(sb.customer_ids(*pair))
                hook.deleted.clear()
                hook.mutate(*between)
                deleted_between = hook.deleted & before
                r1 = sync_customers(s, *pair, tmp, progress=False)
                fresh = read_customers(s, *pair, progress=False)
                synced = read_parquet(tmp, *pair)
                inc_ids = set(synced.customers["id"])
                fresh_ids = set(fresh.customers["id"])
                kept = synced.customers[synced.customers["id"].isin(fresh_ids)]
                inc_ok = inc_ids == fresh_ids | deleted_between and same_content(
                    cf.CustomerFrames(kept, synced.addresses[
                        synced.addresses["customer_id"].isin(fresh_ids)]), fresh)
                r2 = sync_customers(s, *pair, tmp, progress=False, full=True)
                synced_full = read_parquet(tmp, *pair)
                returned, lost, dup = score(synced_full.customers["id"], fresh_ids)
                rows.append(Row(
                    f"sync after changes, seed {seed}", sb.stats.requests, 0, 0,
                    len(fresh_ids), returned, lost, dup, peak_rss_mb(),
                    time.monotonic() - started,
                    {"incremental sync = fresh read + deleted ids": inc_ok,
                     "full sync = fresh read": same_content(synced_full, fresh)},
                    f"+{between[0]} -{between[1]} ~{between[2]} between; incremental fetched "
                    f"{r1.fetched} (ins {r1.inserted}, upd {r1.updated}); full deleted "
                    f"{r2.deleted}",
                ))  # fmt: skip
    return rows
