"""End to end in a real browser: JupyterLab (127.0.0.1, token) + Debian's headless Chromium via
Playwright. Runs notebook 01, then uses the picker like a person: choose a company and a
connection, click "Load customers", see the count.

Skipped only when /usr/bin/chromium is missing and CI is not set; under CI it fails instead.
Playwright never downloads a browser here, and every non-loopback request is blocked.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser_helpers import NOTEBOOKS, JupyterLab

from codat_frames.sandbox import Sandbox

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTEBOOK = "01_explore_customers.ipynb"


def _require_browser():
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright Python package is missing"
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run under CI: {problem}")
    pytest.skip(problem)


def _loopback_only(route):
    host = urlsplit(route.request.url).hostname or ""
    if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        route.abort()


def _pick_target(truth: Sandbox) -> tuple[str, str, str, int]:
    """A (company name, connection label, ...) that is not what "Run All" loads by itself and
    whose label is unique within its company."""
    pairs = truth.commerce_connections()
    for cid, kid in pairs[1:]:
        if cid == pairs[0][0]:
            continue
        conns = truth.connections(cid)
        labels = [f"{k['platformName']} - {k['status']}" for k in conns]
        label = next(lab for lab, k in zip(labels, conns, strict=True) if k["id"] == kid)
        if labels.count(label) == 1:
            return truth.company(cid)["name"], label, kid, truth.customer_count(cid, kid)
    raise AssertionError("no suitable connection in the sandbox")


def test_picker_in_jupyterlab(tmp_path):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOKS / NOTEBOOK, root / NOTEBOOK)
    truth = Sandbox(seed=1)  # what the notebook's embedded sandbox serves (not started)
    company, label, _kid, n = _pick_target(truth)

    lab = JupyterLab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log").start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(30_000)
                page.route("**/*", _loopback_only)
                try:
                    _drive(page, expect, lab, company, label, n, tmp_path)
                finally:
                    page.screenshot(path=str(tmp_path / "jupyterlab.png"))
            finally:
                browser.close()
    except Exception:
        print(lab.log())
        raise
    finally:
        lab.stop()
    assert (tmp_path / "jupyterlab.png").stat().st_size > 0
    assert time.monotonic() - started < 120


def _drive(page, expect, lab, company, label, n, tmp_path):
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}")
    expect(page.locator(".jp-NotebookPanel .jp-Cell").first).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first).to_be_visible(
        timeout=60_000
    )

    # Run > Run All Cells
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    expect(page.get_by_text(re.compile(r"Done: DuckDB counts [\d,]+ customers"))).to_be_visible(
        timeout=90_000
    )

    picker = page.locator(".codat-picker")
    expect(picker).to_be_visible()
    picker.scroll_into_view_if_needed()
    selects = picker.locator(".widget-select select")
    expect(selects.nth(0).locator("option", has_text=company)).to_have_count(1)

    selects.nth(0).select_option(label=company)
    message = picker.locator(".codat-picker-message")
    expect(message).to_contain_text(f"{company}:")
    expect(selects.nth(1).locator("option", has_text=label)).to_have_count(1)
    selects.nth(1).select_option(label=label)
    expect(picker).to_contain_text("ready to load customers")

    button = picker.get_by_role("button", name="Load customers")
    expect(button).to_be_enabled()
    button.click()
    expect(message).to_contain_text(f"Loaded {n:,} customers", timeout=30_000)
    expect(picker.locator("table.dataframe")).to_be_visible()
    picker.screenshot(path=str(tmp_path / "picker.png"))
