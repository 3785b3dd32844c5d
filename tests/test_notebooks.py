"""The example notebooks run top to bottom headless (nbclient + the venv's ipykernel) with no
CODAT_API_KEY, i.e. against the embedded sandbox, and never show the key."""

from __future__ import annotations

import base64
import json
import re

import nbclient
import nbformat
import pytest
from browser_helpers import NOTEBOOKS, jupyter_env  # noqa: E402

from codat_frames.sandbox import Sandbox  # noqa: E402


@pytest.fixture(scope="module")
def truth():
    """The sandbox the notebooks start (seed 1, default volume), not started: ground truth."""
    return Sandbox(seed=1)


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    for k, v in jupyter_env(tmp_path / "jupyter").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CODAT_API_KEY", raising=False)


def _run(name: str, cwd) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, (
            f"{name} is stored with outputs: regenerate it with notebooks/make_notebooks.py"
        )
    client = nbclient.NotebookClient(
        nb, timeout=90, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        client.execute()  # raises CellExecutionError on any error
    finally:
        nbformat.write(nb, cwd / name)  # the executed copy, for a look when debugging
    return nb


def _texts(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                out.append(o.text)
            elif "data" in o:
                out.extend(str(v) for k, v in o.data.items() if not k.startswith("image/"))
    return "\n".join(out)


def _assert_no_key(nb, key: str) -> None:
    raw = json.dumps(nb)
    for secret in (key, base64.b64encode(key.encode()).decode()):
        assert secret not in raw
    assert "Traceback" not in _texts(nb)


def test_explore_customers_notebook(kernel_env, tmp_path, truth):
    nb = _run("01_explore_customers.ipynb", tmp_path)
    text = _texts(nb)
    _assert_no_key(nb, truth.api_key)
    assert "using the embedded sandbox at http://127.0.0.1:" in text

    m = re.search(r"([0-9a-f-]{36}) ([0-9a-f-]{36}): ([\d,]+) customers, ([\d,]+) addresses", text)
    assert m, text[:2000]
    company_id, connection_id, n = m.group(1), m.group(2), int(m.group(3).replace(",", ""))
    assert (company_id, connection_id) in truth.commerce_connections()
    assert n == truth.customer_count(company_id, connection_id)
    assert f"Done: DuckDB counts {n:,} customers in the parquet export." in text
    # The picker widget was displayed, the plots were drawn, the quality table shown.
    kinds = [k for c in nb.cells for o in c.get("outputs", []) for k in o.get("data", {})]
    assert "application/vnd.jupyter.widget-view+json" in kinds
    assert kinds.count("image/png") >= 3
    assert "missing email" in text and "addresses per customer" in text


def test_portfolio_notebook(kernel_env, tmp_path, truth):
    nb = _run("02_portfolio.ipynb", tmp_path)
    text = _texts(nb)
    _assert_no_key(nb, truth.api_key)
    good = truth.commerce_connections()
    total = sum(truth.customer_count(c, k) for c, k in good)
    n_all = sum(len(truth.connections(c["id"])) for c in truth.companies)
    assert (
        f"{len(good)} connections loaded, {n_all - len(good)} skipped, "
        f"{total:,} customers written to" in text
    ), text[:2000]
    assert "Error 409" in text  # the Linked-but-never-synced connection, skipped with reason
    assert "PendingAuth" in text and "commerce connections only" in text
