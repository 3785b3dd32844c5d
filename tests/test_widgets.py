"""CompanyConnectionPicker driven through its Python API against a real sandbox (127.0.0.1)."""

from __future__ import annotations

import socket

import pytest

import codat_frames as cf  # noqa: E402
from codat_frames import widgets  # noqa: E402
from codat_frames.sandbox import serve  # noqa: E402
from codat_frames.widgets import CompanyConnectionPicker, KeyPrompt  # noqa: E402

NO_RETRY = cf.RetryConfig("none", cf.BackoffStrategy(10, 10, 1.0, 10), False)


@pytest.fixture(scope="module")
def sb():
    with serve(seed=1, customers=150) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def client(sb):
    with cf.CodatCommerce(api_key=sb.api_key, server_url=sb.url) as s:
        yield s


def _find(sb, pred):
    """(company_id, connection dict) of the first connection matching ``pred``."""
    for comp in sb.companies:
        for conn in sb.connections(comp["id"]):
            if pred(comp["id"], conn):
                return comp["id"], conn
    raise AssertionError("the sandbox has no such connection")


def _no_traceback(picker):
    text = picker.message.value + picker.reason.value + picker.table.value
    assert "Traceback" not in text and 'File "' not in text


def test_companies_search_and_connections_commerce_first(sb, client):
    picker = CompanyConnectionPicker(client)
    names = [c["name"] for c in sb.companies]
    assert [label for label, _ in picker.company_select.options] == names
    assert picker.company_id is None and picker.connection_id is None and picker.frames is None
    assert picker.load_button.disabled

    # The search box narrows the list (case-insensitive), and clearing it restores it.
    target = sb.companies[3]
    picker.search.value = target["name"][:4].upper()
    shown = [v for _, v in picker.company_select.options]
    assert target["id"] in shown and len(shown) < len(names)
    picker.search.value = ""
    assert len(picker.company_select.options) == len(names)

    # A company with commerce and non-commerce connections: commerce listed first.
    cid, _ = _find(sb, lambda c, k: k["sourceType"] != "Commerce")
    picker.company_select.value = cid
    conns = sb.connections(cid)
    labels = [label for label, _ in picker.connection_select.options]
    assert sorted(labels) == sorted(f"{k['platformName']} - {k['status']}" for k in conns)
    kinds = [picker.connections[i].source_type == "Commerce" for i in range(len(labels))]
    assert kinds == sorted(kinds, reverse=True), labels
    assert kinds[0] and not kinds[-1]
    # The first (commerce, loadable) connection is chosen for you and Load is enabled.
    assert picker.company_id == cid and picker.connection_id == picker.connections[0].id
    assert not picker.load_button.disabled

    # Non-commerce: listed, but it says why and Load is disabled.
    other = next(c for c in picker.connections if c.source_type != "Commerce")
    picker.connection_select.value = other.id
    assert picker.load_button.disabled
    assert "commerce connections only" in picker.reason.value
    assert picker.load() is None  # refused without a request


def test_every_page_of_companies_is_listed():
    # The server serves at most 4 records a page: 13 companies take 4 pages.
    with serve(seed=2, customers=5, companies=13, page_size_cap=4) as big:
        with cf.CodatCommerce(api_key=big.api_key, server_url=big.url) as s:
            picker = CompanyConnectionPicker(s)
            ids = [c["id"] for c in big.companies]
            assert [v for _, v in picker.company_select.options] == ids
            assert len({label for label, _ in picker.company_select.options}) == 13
            picker.search.value = "xyz-no-such-company"
            assert picker.company_select.options == () and picker.company_id is None
            picker.search.value = ids[7][:8]  # the id works too
            assert [v for _, v in picker.company_select.options] == [ids[7]]


@pytest.mark.parametrize("status", ["PendingAuth", "Deauthorized"])
def test_unusable_connection_shows_reason_and_disables_load(sb, client, status):
    cid, conn = _find(sb, lambda c, k: k["status"] == status and k["sourceType"] == "Commerce")
    picker = CompanyConnectionPicker(client)
    picker.company_select.value = cid
    label = f"{conn['platformName']} - {status}"
    assert (label, conn["id"]) in picker.connection_select.options
    picker.connection_select.value = conn["id"]
    assert picker.load_button.disabled
    assert status in picker.reason.value and "Cannot load" in picker.reason.value
    picker.load_button.click()  # a disabled button's click from Python still must not load
    assert picker.frames is None and not picker.loading
    _no_traceback(picker)


def test_load_customers_matches_sandbox(sb, client):
    cid, kid = sb.commerce_connections()[1]
    picker = CompanyConnectionPicker(client, head_rows=3)
    seen = []
    picker.on_load(seen.append)
    picker.company_select.value = cid
    picker.connection_select.value = kid
    assert not picker.load_button.disabled
    picker.load_button.click()
    frames = picker.wait(timeout=60)

    expected = sb.customer_count(cid, kid)
    assert frames is not None and picker.frames is frames
    assert len(frames.customers) == expected
    assert set(frames.customers["id"]) == set(sb.customer_ids(cid, kid))
    assert seen == [frames]
    assert (picker.company_id, picker.connection_id) == (cid, kid)
    assert f"Loaded {expected:,} customers" in picker.message.value
    assert picker.progress.value == picker.progress.max and picker.progress.bar_style == "success"
    assert "page" in picker.progress_label.value
    assert picker.table.value.count("</tr>") == 1 + 3  # header + head_rows
    assert not picker.load_button.disabled
    _no_traceback(picker)

    # Choosing another connection forgets the frames; ensure_loaded loads the choice.
    cid2, kid2 = sb.commerce_connections()[0]
    picker.select(cid2, kid2)
    assert picker.frames is None
    frames2 = picker.ensure_loaded(timeout=60)
    assert len(frames2.customers) == sb.customer_count(cid2, kid2)
    assert seen == [frames, frames2]


def test_ensure_loaded_picks_first_loadable(sb, client):
    picker = CompanyConnectionPicker(client)
    frames = picker.ensure_loaded(timeout=60)
    cid, kid = picker.first_loadable()
    assert (picker.company_id, picker.connection_id) == (cid, kid)
    assert len(frames.customers) == sb.customer_count(cid, kid)


def test_409_is_a_readable_message(sb, client):
    # Linked (so the picker lets you try) but never synced: the API answers 409.
    unsynced = set(sb.unsynced_connections())
    cid, conn = _find(sb, lambda c, k: k["status"] == "Linked" and (c, k["id"]) in unsynced)
    picker = CompanyConnectionPicker(client)
    picker.select(cid, conn["id"])
    assert not picker.load_button.disabled
    picker.load(wait=True, timeout=60)
    assert picker.frames is None
    assert picker.error.startswith("Error 409:") and "sync" in picker.error
    assert "409" in picker.message.value and picker.progress.bar_style == "danger"
    assert not picker.load_button.disabled  # you may try again
    _no_traceback(picker)


def test_401_is_a_readable_message(sb):
    with cf.CodatCommerce(api_key="not-the-key", server_url=sb.url) as bad:
        picker = CompanyConnectionPicker(bad)
    assert picker.company_select.options == ()
    assert picker.error.startswith("Error 401:") and "API key" in picker.error
    assert "401" in picker.message.value
    assert "not-the-key" not in picker.message.value
    _no_traceback(picker)


def test_network_error_is_a_readable_message():
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with cf.CodatCommerce(
        api_key="k", server_url=f"http://127.0.0.1:{port}", retry_config=NO_RETRY
    ) as s:
        picker = CompanyConnectionPicker(s)
    assert picker.error.startswith("Could not reach the Codat API")
    _no_traceback(picker)


def test_key_prompt_clears_the_password(sb, monkeypatch):
    monkeypatch.delenv("CODAT_API_KEY", raising=False)
    prompt = widgets.connect(server_url=sb.url)
    assert isinstance(prompt, KeyPrompt) and prompt.client is None
    connected = []
    prompt.on_connect(connected.append)
    prompt.password.value = "wrong-key"  # Enter/blur syncs the value: it is submitted
    assert prompt.password.value == "" and prompt.client is None
    assert "401" in prompt.status.value and "wrong-key" not in prompt.status.value
    prompt.password.value = sb.api_key
    assert prompt.password.value == ""
    assert prompt.client is not None and connected == [prompt.client]
    assert sb.api_key not in prompt.status.value and "Connected" in prompt.status.value
    prompt.client.close()


def test_connect_and_sandbox_or_key_use_the_environment(sb, monkeypatch, capsys):
    monkeypatch.setenv("CODAT_API_KEY", sb.api_key)
    with widgets.connect(server_url=sb.url) as s:
        assert len(list(s.companies.iter_all())) == len(sb.companies)
    with widgets.sandbox_or_key(server_url=sb.url) as s:
        assert s.server_url.rstrip("/") == sb.url
    monkeypatch.delenv("CODAT_API_KEY")
    with widgets.sandbox_or_key() as s:
        assert s.server_url.startswith("http://127.0.0.1:")
        assert len(list(s.companies.iter_all())) > 0
    emb = widgets.running_sandbox()
    assert emb is not None and emb.api_key not in capsys.readouterr().out
