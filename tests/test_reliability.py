"""Reliability, measured (CI size): fault storms and shifting data against the sandbox, with
zero lost and zero duplicated records against its ground truth.

The same scenarios run at full size (100,000 customers per storm, 1,000,000 into parquet) in
``benchmarks/reliability.py``; both use ``benchmarks/_common.py``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common as C  # noqa: E402

from codat_frames import sandbox  # noqa: E402

SEEDS = (1, 2, 3)
_storms: dict[int, C.Row] = {}


@pytest.mark.parametrize("seed", SEEDS)
def test_fault_storm_returns_exactly_the_ground_truth(seed):
    # 5,000 customers in pages of 50: ~100 pages, ~20% of requests faulted. The client's
    # timeout (150 ms) is shorter than the slow fault (300 ms); Retry-After (1 s) is honoured
    # up to the fast retry config's max interval (50 ms) to keep CI quick.
    row = C.fault_storm(5_000, seed, page_size=50, timeout_ms=150, slow_reply_s=0.3,
                        max_interval_ms=50)  # fmt: skip
    _storms[seed] = row
    assert row.faults >= 10 and row.retries >= row.faults - row.fault_kinds["slow"], row
    assert (row.lost, row.duplicated) == (0, 0), row
    assert row.returned == row.expected == 5_000
    assert all(row.checks.values()), row.checks


def test_fault_storms_injected_every_fault_kind():
    if len(_storms) != len(SEEDS):
        pytest.skip("runs after the storms")
    kinds = sum((r.fault_kinds for r in _storms.values()), Counter())
    assert set(kinds) == set(sandbox.FAULT_KINDS), kinds


@pytest.mark.parametrize("seed", (1, 2))
def test_shifting_data_during_the_first_pass_then_sync(seed):
    rows = C.shifting_data(3_000, seed, page_size=100, per_request=(3, 2, 2),
                           between=(40, 15, 40))  # fmt: skip
    during, sync = rows
    for row in rows:
        assert (row.lost, row.duplicated) == (0, 0), row
        assert all(row.checks.values()), (row.scenario, row.checks, row.notes)
    assert during.expected < 3_000 < during.returned  # deletes and inserts both happened
    assert sync.expected == sync.returned


def test_shifting_data_during_every_pass():
    (row,) = C.shifting_data(3_000, 5, page_size=100, per_request=(2, 2, 2), every_pass=True)
    assert (row.lost, row.duplicated) == (0, 0), row
    assert all(row.checks.values()), (row.checks, row.notes)


def test_table_shows_every_column():
    text = C.table([C.Row("x", 1, 2, 3, 4, 4, 0, 0, 12.6)])
    header = text.splitlines()[0]
    for col in C.COLUMNS:
        assert col in header
    assert "| x " in text and "13 MB" in text
