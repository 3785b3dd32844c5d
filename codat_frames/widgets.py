"""Notebook widgets: pick a company and connection, load its customers (CONTRACT section 4).

The only module of the package that imports ipywidgets::

    from codat_frames.widgets import CompanyConnectionPicker, sandbox_or_key
    s = sandbox_or_key()                  # CODAT_API_KEY if set, else the embedded sandbox
    picker = CompanyConnectionPicker(s)   # display it: last line of a cell
    frames = picker.ensure_loaded()       # what was loaded, or the first loadable connection

Errors never show as a traceback in the widget: they are turned into one short sentence
(:func:`describe_error`). The API key is never echoed, displayed or kept in widget state.
"""

from __future__ import annotations

import atexit
import html
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from codat_frames import models

__all__ = [
    "CompanyConnectionPicker",
    "KeyPrompt",
    "connect",
    "connection_reason",
    "describe_error",
    "sandbox_or_key",
]

_OK_STYLE = "color:#1b5e20"
_WARN_STYLE = "color:#8a5300"
_ERR_STYLE = "color:#b00020"


# --------------------------------------------------------------------------- messages


def connection_reason(conn: models.Connection) -> str | None:
    """Why customers can't be loaded from ``conn``, or None when they can."""
    platform = conn.platform_name or "this platform"
    if (conn.source_type or "").lower() != "commerce":
        kind = conn.source_type or "non-commerce"
        also = "" if conn.status in (None, "Linked") else f" (and it is {conn.status})"
        return (
            f"{platform} is a {kind} connection{also}: customers are read from commerce "
            "connections only."
        )
    if conn.status == "PendingAuth":
        return (
            f"This {platform} connection is PendingAuth: the company has not finished "
            "authorising it, so Codat has no data for it yet."
        )
    if conn.status == "Deauthorized":
        why = ""
        for err in conn.data_connection_errors or []:
            if isinstance(err, dict) and err.get("errorMessage"):
                why = f" ({err['errorMessage']})"
        return (
            f"This {platform} connection is Deauthorized{why}: the company must link it "
            "again before its data can be read."
        )
    if not conn.can_serve_data:
        state = conn.status or "in an unknown state"
        return f"This {platform} connection is {state}: Codat cannot serve its data."
    return None


_STATUS_HINTS = {
    401: "the API key was not accepted. Check CODAT_API_KEY (or the key you entered).",
    402: "your Codat account's plan or free-trial limit does not allow this request.",
    403: "the API key is not allowed to read this data.",
    404: "Codat found nothing there (unknown company or connection, or the platform does "
    "not support customers).",
    409: "Codat has no customers data for this connection yet (not synced or not "
    "authorised). Queue a sync of commerce customers in Codat, then load again.",
    429: "Codat's rate limit was reached even after retrying. Wait a minute and try again.",
}


def describe_error(exc: BaseException) -> str:
    """One short readable sentence for an exception: no traceback, never the API key."""
    if isinstance(exc, models.ErrorMessage):
        code = exc.status_code
        detail = (exc.data.error or "").strip()
        hint = _STATUS_HINTS.get(code)
        if hint is None:
            hint = (
                "Codat had a problem answering; try again later."
                if code and code >= 500
                else "the request was refused."
            )
        text = f"Error {code}: {hint}"
        if detail:
            text += f' Codat said: "{_short(detail, 200)}"'
        return text + _context(exc)
    if isinstance(exc, models.SDKError):
        code = exc.status_code
        if code is None or code < 0:
            return f"Could not reach the Codat API: {_short(exc.message, 240)}"
        hint = _STATUS_HINTS.get(code, "the API answered with an unexpected response.")
        return f"Error {code}: {hint}" + _context(exc)
    if isinstance(exc, OSError):
        return f"Network problem: {type(exc).__name__}: {_short(str(exc), 240)}"
    if isinstance(exc, ValueError):
        return f"Invalid input: {_short(str(exc), 300)}"
    return f"Unexpected problem: {type(exc).__name__}: {_short(str(exc), 300)}"


def _context(exc: models.CodatError) -> str:
    return f" ({exc.context})" if exc.context else ""


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _html(text: str, style: str = "") -> str:
    return f'<span style="{style}">{html.escape(text)}</span>'


# --------------------------------------------------------------------------- the picker


class CompanyConnectionPicker(w.VBox):
    """Choose a company and one of its connections, then "Load customers".

    Attributes: ``company_id``, ``connection_id`` (None until chosen), ``frames``
    (CustomerFrames after a load, else None), ``error`` (the last error's message or None),
    ``companies`` (every ``models.Company``) and ``connections`` (of the chosen company).
    Child widgets (for tests and custom layouts): ``search``, ``company_select``,
    ``connection_select``, ``reason``, ``load_button``, ``progress``, ``progress_label``,
    ``message``, ``table``.
    """

    def __init__(
        self,
        s: Any,
        *,
        head_rows: int = 5,
        page_size: int | None = None,
        local_tz: str = "UTC",
        **kwargs: Any,
    ):
        self._s = s
        self.head_rows = head_rows
        self.page_size = page_size
        self.local_tz = local_tz
        self.companies: list[models.Company] = []
        self.connections: list[models.Connection] = []
        self.frames = None
        self.error: str | None = None
        self._callbacks: list[Callable[[Any], Any]] = []
        self._thread: threading.Thread | None = None
        self._quiet = False
        self._busy = False

        self.search = w.Text(
            placeholder="Search companies by name or id", description="Search",
            continuous_update=True, layout=w.Layout(width="420px"),
        )
        self.company_select = w.Select(
            options=[], rows=6, description="Company", layout=w.Layout(width="420px")
        )
        self.connection_select = w.Select(
            options=[], rows=4, description="Connection", layout=w.Layout(width="420px")
        )
        self.reason = w.HTML("")
        self.load_button = w.Button(
            description="Load customers", button_style="primary", icon="download",
            disabled=True,
        )
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Pages")
        self.progress_label = w.Label("")
        self.message = w.HTML("")
        self.table = w.HTML("")
        self.add_class("codat-picker")
        self.message.add_class("codat-picker-message")

        self.search.observe(self._on_search, names="value")
        self.company_select.observe(self._on_company, names="value")
        self.connection_select.observe(self._on_connection, names="value")
        self.load_button.on_click(lambda _b: self.load())

        super().__init__(
            children=[
                w.HTML("<b>Codat customers</b>: choose a company and a commerce connection"),
                self.search,
                self.company_select,
                self.connection_select,
                self.reason,
                w.HBox([self.load_button, self.progress, self.progress_label]),
                self.message,
                self.table,
            ],
            **kwargs,
        )
        self.refresh()

    # -- public API ------------------------------------------------------------------------
    @property
    def company_id(self) -> str | None:
        return self.company_select.value

    @property
    def connection_id(self) -> str | None:
        return self.connection_select.value

    @property
    def connection(self) -> models.Connection | None:
        """The chosen ``models.Connection`` (None until chosen)."""
        return next((c for c in self.connections if c.id == self.connection_id), None)

    @property
    def company(self) -> models.Company | None:
        return next((c for c in self.companies if c.id == self.company_id), None)

    @property
    def loading(self) -> bool:
        return self._busy

    def on_load(self, fn: Callable[[Any], Any]) -> None:
        """Call ``fn(frames)`` after each successful load (in the loading thread)."""
        self._callbacks.append(fn)

    def refresh(self) -> None:
        """(Re)read every page of companies; the search box and choice are kept if possible."""
        try:
            self.companies = list(self._s.companies.iter_all())
        except Exception as e:  # noqa: BLE001 - shown in the widget, never raised
            self.companies = []
            self._show_error(e)
        else:
            self._set_message(
                f"{len(self.companies)} companies. Choose one to list its connections.", ""
            )
        self._fill_companies()

    def select(self, company_id: str, connection_id: str | None = None) -> None:
        """Choose a company (and a connection) as a user would."""
        if company_id not in [v for _, v in self.company_select.options]:
            self.search.value = ""
        self.company_select.value = company_id
        if connection_id is not None:
            self.connection_select.value = connection_id

    def load(self, wait: bool = False, timeout: float | None = None) -> threading.Thread | None:
        """Load the chosen connection's customers in a background thread.

        ``wait=True`` blocks until done (for scripts, tests and headless notebooks). Returns
        the thread, or None when nothing loadable is chosen (the reason is shown).
        """
        if self.loading:
            if wait:
                self.wait(timeout)
            return self._thread
        conn, company_id = self.connection, self.company_id
        if conn is None or company_id is None:
            self._set_message("Choose a company and a connection first.", _WARN_STYLE)
            return None
        reason = connection_reason(conn)
        if reason is not None:
            self._set_message(reason, _WARN_STYLE)
            return None
        self.load_button.disabled = True
        self._busy = True
        self.error = None
        self.progress.value, self.progress.max = 0, 1
        self.progress.bar_style = ""
        self.progress_label.value = "starting\u2026"
        self._set_message(
            f"Loading customers of {self._conn_label(conn)} ({self._company_name()})\u2026", ""
        )
        self.table.value = ""
        self._thread = threading.Thread(
            target=self._load_worker, args=(company_id, conn), name="codat-picker-load",
            daemon=True,
        )
        self._thread.start()
        if wait:
            self.wait(timeout)
        return self._thread

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the current load finishes; return ``frames`` (None if it failed)."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"loading customers took longer than {timeout} s")
        return self.frames

    def first_loadable(self) -> tuple[str, str] | None:
        """(company_id, connection_id) of the first connection customers can be read from."""
        for comp in self.companies:
            try:
                conns = self._connections_of(comp.id)
            except Exception:  # noqa: BLE001 - skip companies we cannot list
                continue
            for conn in conns:
                if connection_reason(conn) is None:
                    return comp.id, conn.id
        return None

    def ensure_loaded(self, timeout: float | None = 300) -> Any:
        """The loaded frames; loads the chosen connection, or else the first loadable one.

        Lets a notebook run top to bottom with nobody clicking (nbclient, "Run All"), while
        a human's choice wins when they made one. Returns None only when nothing could load.
        """
        if self.loading:
            self.wait(timeout)
        if self.frames is not None:
            return self.frames
        conn = self.connection
        if conn is None or connection_reason(conn) is not None:
            first = self.first_loadable()
            if first is None:
                self._set_message("No connection here can serve customers.", _WARN_STYLE)
                return None
            self.select(*first)
        self.load(wait=True, timeout=timeout)
        return self.frames

    # -- events ----------------------------------------------------------------------------
    def _fill_companies(self) -> None:
        needle = self.search.value.strip().casefold()
        names = [c.name or c.id for c in self.companies]
        dup = {n for n in names if names.count(n) > 1}
        opts = []
        for comp, name in zip(self.companies, names, strict=True):
            label = f"{name} ({comp.id[:8]})" if name in dup else name
            if needle and needle not in label.casefold() and needle not in comp.id.casefold():
                continue
            opts.append((label, comp.id))
        current = self.company_select.value
        self._quiet = True
        try:
            self.company_select.options = opts
            if current in [v for _, v in opts]:
                self.company_select.value = current
            else:
                self.company_select.index = None
        finally:
            self._quiet = False
        if self.company_select.value != current:
            self._company_changed(self.company_select.value)

    def _on_search(self, _change: dict) -> None:
        self._fill_companies()

    def _on_company(self, change: dict) -> None:
        if not self._quiet:
            self._company_changed(change["new"])

    def _company_changed(self, company_id: str | None) -> None:
        self.frames = None
        self.table.value = ""
        self.connections = []
        if company_id is None:
            self._fill_connections()
            return
        try:
            self.connections = self._connections_of(company_id)
        except Exception as e:  # noqa: BLE001
            self._show_error(e)
        else:
            n = len(self.connections)
            self._set_message(
                f"{self._company_name()}: {n} connection{'s' if n != 1 else ''}.", ""
            )
        self._fill_connections()

    def _connections_of(self, company_id: str) -> list[models.Connection]:
        conns = list(self._s.connections.iter_all(company_id))
        # Commerce first; within each group loadable first, then by platform name.
        return sorted(
            conns,
            key=lambda c: (
                (c.source_type or "").lower() != "commerce",
                connection_reason(c) is not None,
                (c.platform_name or "").casefold(),
            ),
        )

    def _fill_connections(self) -> None:
        opts = [(self._conn_label(c), c.id) for c in self.connections]
        self._quiet = True
        try:
            self.connection_select.options = opts
            self.connection_select.index = 0 if opts else None
        finally:
            self._quiet = False
        self._connection_changed()

    def _on_connection(self, _change: dict) -> None:
        if not self._quiet:
            self.frames = None
            self.table.value = ""
            self._connection_changed()

    def _connection_changed(self) -> None:
        conn = self.connection
        if conn is None:
            self.reason.value = ""
            self.load_button.disabled = True
            return
        why = connection_reason(conn)
        if why is None:
            self.reason.value = _html(
                f"{self._conn_label(conn)}: ready to load customers.", _OK_STYLE
            )
            self.load_button.disabled = self.loading
        else:
            self.reason.value = _html(f"Cannot load: {why}", _WARN_STYLE)
            self.load_button.disabled = True

    # -- loading ---------------------------------------------------------------------------
    def _progress(self, done: int, total: int, records: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, self.progress.max)
        self.progress_label.value = f"page {done} of {total}, {records:,} customers"

    def _load_worker(self, company_id: str, conn: models.Connection) -> None:
        from codat_frames.paging import read_customers

        started = time.monotonic()
        try:
            frames = read_customers(
                self._s, company_id, conn.id, page_size=self.page_size,
                progress=self._progress, local_tz=self.local_tz,
            )
        except Exception as e:  # noqa: BLE001 - shown in the widget
            self._busy = False
            self.progress.bar_style = "danger"
            self.progress_label.value = "failed"
            self._show_error(e)
            self._connection_changed()
            return
        seconds = time.monotonic() - started
        self._busy = False
        still_chosen = self.company_id == company_id and self.connection_id == conn.id
        if still_chosen:
            self.frames = frames
        self.progress.bar_style = "success"
        self.progress.value = self.progress.max
        n_c, n_a = len(frames.customers), len(frames.addresses)
        self._set_message(
            f"Loaded {n_c:,} customers and {n_a:,} addresses from "
            f"{self._conn_label(conn)} ({self._company_name(company_id)}) in {seconds:.1f} s.",
            _OK_STYLE,
        )
        self.table.value = self._head_html(frames)
        self._connection_changed()
        for fn in list(self._callbacks):
            try:
                fn(frames)
            except Exception as e:  # noqa: BLE001
                self._show_error(e, prefix="An on_load callback failed: ")

    def _head_html(self, frames: Any) -> str:
        head = frames.customers.head(self.head_rows)
        cols = [c for c in head.columns if c not in ("company_id", "connection_id")]
        head = head[cols].copy()
        for col in cols:
            if str(head[col].dtype).startswith("datetime64"):
                head[col] = head[col].dt.strftime("%Y-%m-%d %H:%M")
        head = head.astype(object).where(head.notna(), "")
        table = head.to_html(index=False, border=0, max_cols=12)
        return (
            "<style>.codat-head td, .codat-head th {white-space: nowrap; padding: 1px 8px;"
            " text-align: left !important}</style>"
            '<div class="codat-head" style="max-width:100%;overflow-x:auto;font-size:12px">'
            f"<i>First {len(head)} rows of picker.frames.customers</i>{table}</div>"
        )

    # -- helpers ---------------------------------------------------------------------------
    def _conn_label(self, conn: models.Connection) -> str:
        return f"{conn.platform_name or conn.id} - {conn.status or 'Unknown'}"

    def _company_name(self, company_id: str | None = None) -> str:
        cid = company_id or self.company_id
        comp = next((c for c in self.companies if c.id == cid), None)
        return (comp.name or comp.id) if comp else str(cid)

    def _set_message(self, text: str, style: str) -> None:
        self.message.value = _html(text, style)

    def _show_error(self, exc: BaseException, prefix: str = "") -> None:
        self.error = prefix + describe_error(exc)
        self._set_message(self.error, _ERR_STYLE)


# --------------------------------------------------------------------------- connecting


class KeyPrompt(w.VBox):
    """Ask for an API key with a Password box; the key is read once and then cleared.

    ``client`` is None until the user clicks Connect (or presses Enter). The key never
    stays in the widget (so it is not saved with the notebook's widget state) and is never
    echoed.
    """

    def __init__(self, server_url: str | None = None, **kwargs: Any):
        self.server_url = server_url
        self.client = None
        self._callbacks: list[Callable[[Any], Any]] = []
        self.password = w.Password(
            placeholder="Codat API key", description="API key", continuous_update=False
        )
        self.button = w.Button(description="Connect", button_style="primary")
        self.status = w.HTML(
            "CODAT_API_KEY is not set: paste your key (it is not stored in the notebook)."
        )
        self.button.on_click(lambda _b: self.submit())
        self.password.observe(self._on_value, names="value")
        super().__init__(children=[w.HBox([self.password, self.button]), self.status], **kwargs)

    def on_connect(self, fn: Callable[[Any], Any]) -> None:
        """Call ``fn(client)`` once connected."""
        self._callbacks.append(fn)
        if self.client is not None:
            fn(self.client)

    def _on_value(self, change: dict) -> None:
        if change["new"]:
            self.submit()

    def submit(self) -> Any:
        key = self.password.value.strip()
        self.password.value = ""  # never keep the key in widget state
        if not key:
            return self.client
        from codat_frames import CodatCommerce

        try:
            client = CodatCommerce(api_key=key, server_url=self.server_url)
            del key
            n = sum(1 for _ in client.companies.iter_all())
        except Exception as e:  # noqa: BLE001
            self.status.value = _html(describe_error(e), _ERR_STYLE)
            return None
        self.client = client
        self.status.value = _html(f"Connected: {n} companies. Run the next cell.", _OK_STYLE)
        for fn in self._callbacks:
            fn(client)
        return client


def connect(api_key: str | None = None, server_url: str | None = None) -> Any:
    """A client from ``api_key``, else ``CODAT_API_KEY``; else a :class:`KeyPrompt` widget.

    In the last case display the returned prompt and use ``prompt.client`` once connected.
    """
    from codat_frames import CodatCommerce

    if api_key:
        return CodatCommerce(api_key=api_key, server_url=server_url)
    if os.environ.get("CODAT_API_KEY"):
        return CodatCommerce(server_url=server_url)
    return KeyPrompt(server_url=server_url)


_SANDBOX: Any = None
_SANDBOX_LOCK = threading.Lock()


def sandbox_or_key(
    server_url: str | None = None, *, seed: int = 1, customers: Any = None, quiet: bool = False
) -> Any:
    """A client: with ``CODAT_API_KEY`` set, for Codat (or ``server_url``); otherwise for the
    embedded sandbox, started once and kept running for the life of the kernel."""
    from codat_frames import CodatCommerce

    if os.environ.get("CODAT_API_KEY"):
        if not quiet:
            print(f"Using CODAT_API_KEY with {server_url or 'https://api.codat.io'}")
        return CodatCommerce(server_url=server_url)
    global _SANDBOX
    with _SANDBOX_LOCK:
        if _SANDBOX is None:
            from codat_frames.sandbox import Sandbox

            _SANDBOX = Sandbox(seed=seed, customers=customers).start()
            atexit.register(_SANDBOX.stop)
    if not quiet:
        print(f"CODAT_API_KEY is not set: using the embedded sandbox at {_SANDBOX.url}")
    return CodatCommerce(api_key=_SANDBOX.api_key, server_url=_SANDBOX.url)


def running_sandbox() -> Any:
    """The sandbox started by :func:`sandbox_or_key` (None if none was started)."""
    return _SANDBOX
