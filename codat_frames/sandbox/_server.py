"""The sandbox HTTP server and the :class:`Sandbox` object tests talk to."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import random
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from codat_frames.sandbox._data import (
    COMPANIES_DATASET,
    CONNECTIONS_DATASET,
    CUSTOMERS_DATASET,
    Company,
    Connection,
    CustomerStore,
    build_companies,
    sandbox_epoch_after,
)
from codat_frames.sandbox._query import QueryError, compile_order_by, compile_query

FAULT_KINDS: tuple[str, ...] = (
    "500", "503", "429", "502-html", "503-html", "504-html", "drop", "slow",
)
"""Injectable faults: JSON 500/503/429 (429 with Retry-After), gateway HTML 502/503/504,
``drop`` (socket closed without a response) and ``slow`` (sleep ``slow_reply_s``, then a normal
reply)."""

MAX_PAGE_SIZE = 5000

_HTML = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


class _Reply(Exception):
    """Raised inside handlers to send an error reply."""

    def __init__(self, status: int, error: str, service: str = "PublicApi",
                 can_be_retried: str = "Unknown", headers: Mapping[str, str] | None = None,
                 validation_errors: list[str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.service = service
        self.can_be_retried = can_be_retried
        self.headers = dict(headers or {})
        self.validation_errors = validation_errors or []


class _Drop(Exception):
    """Close the socket without replying."""


@dataclass
class SandboxStats:
    """Counters, updated under the sandbox lock. Read them directly or via :meth:`snapshot`.

    requests: every request received (drops included). status: Counter of HTTP statuses sent.
    faults: Counter of injected fault kinds. rate_limited: 429s from the concurrency limiter
    (not injected ones). max_in_flight: company id -> most requests for it served at once.
    max_in_flight_any: most requests served at once overall. customer_pages: customer list
    pages served with 200. in_flight: company id -> requests being served now.
    """

    requests: int = 0
    status: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    rate_limited: int = 0
    customer_pages: int = 0
    max_in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight_any: int = 0
    in_flight: Counter = field(default_factory=Counter)
    in_flight_any: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "status": dict(self.status),
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "customer_pages": self.customer_pages,
            "max_in_flight": dict(self.max_in_flight),
            "max_in_flight_any": self.max_in_flight_any,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.open_sockets: set[socket.socket] = set()
        self.sock_lock = threading.Lock()
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "codat-frames-sandbox"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this

    server: _Server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.sock_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(Exception):
            super().finish()
        with self.server.sock_lock:
            self.server.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        sb = self.server.sandbox
        try:
            status, headers, body = sb._handle(self)
        except _Drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        # headers and body in one write (no Nagle/delayed-ACK stall between them)
        self._headers_buffer.append(b"\r\n" + body)
        with contextlib.suppress(OSError):
            self.flush_headers()
            self.wfile.flush()


def _page_params(qs: dict[str, list[str]]) -> tuple[int, int]:
    def one(name: str, default: int) -> int:
        vals = qs.get(name)
        if not vals or vals[-1] == "":
            return default
        try:
            return int(vals[-1])
        except ValueError:
            raise _Reply(400, f"The value '{vals[-1]}' is not valid for {name}.",
                         validation_errors=[f"{name} must be an integer"]) from None

    page = one("page", 1)
    size = one("pageSize", 100)
    if page < 1:
        raise _Reply(400, "Page number must be greater than 0.",
                     validation_errors=["page must be at least 1"])
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise _Reply(400, f"Page size must be between 1 and {MAX_PAGE_SIZE}.",
                     validation_errors=[f"pageSize must be 1..{MAX_PAGE_SIZE}"])
    return page, size


class Sandbox:
    """A local Codat-like API server with deterministic data (see ``codat_frames.sandbox``).

    Use ``with serve(...) as sb`` or ``Sandbox(...).start()`` / ``.stop()``.
    """

    def __init__(
        self,
        seed: int = 1,
        customers: int | Mapping[str, int] | None = None,
        latency_ms: float = 0,
        fault_rate: float = 0.0,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        companies: int | None = None,
        latency_per_record_ms: float = 0.0,
        retry_after_s: int = 1,
        fault_kinds: Iterable[str] | None = None,
        slow_reply_s: float = 1.5,
        max_concurrent_per_company: int = 10,
        page_size_cap: int = 2000,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        kinds = tuple(FAULT_KINDS if fault_kinds is None else fault_kinds)
        bad = [k for k in kinds if k not in FAULT_KINDS]
        if bad or not kinds:
            raise ValueError(f"fault_kinds must be a non-empty subset of {FAULT_KINDS}")
        self.seed = seed
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.latency_per_record_ms = latency_per_record_ms
        self.fault_rate = fault_rate
        self.fault_kinds = kinds
        self.retry_after_s = retry_after_s
        self.slow_reply_s = slow_reply_s
        self.max_concurrent_per_company = max_concurrent_per_company
        self.page_size_cap = page_size_cap
        self.api_key = "sbx_" + hashlib.sha256(f"codat-frames-sandbox:{seed}".encode()).hexdigest(
        )[:32]
        self._auth = "Basic " + base64.b64encode(self.api_key.encode()).decode()
        self._lock = threading.RLock()
        self._world: list[Company] = build_companies(seed, companies, customers)
        self._by_id: dict[str, Company] = {c.id: c for c in self._world}
        self._clock = sandbox_epoch_after(self._world)
        self._fault_rng = random.Random(f"faults:{seed}")
        self._hooks: list[Callable[[str, int], Any]] = []
        self._cache: OrderedDict[tuple, list[int]] = OrderedDict()
        self.stats = SandboxStats()
        self.daily_limit = 1000 + 1000 * len(self._world)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("sandbox not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Sandbox:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="codat-frames-sandbox", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        with srv.sock_lock:
            socks = list(srv.open_sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- ground truth -------------------------------------------------------------------
    @property
    def companies(self) -> list[dict[str, Any]]:
        """Companies exactly as ``GET /companies`` returns them (with ``dataConnections``)."""
        return [self._company_json(c) for c in self._world]

    def company(self, company_id: str) -> dict[str, Any]:
        return self._company_json(self._by_id[company_id])

    def connections(self, company_id: str) -> list[dict[str, Any]]:
        """Connections of a company as ``GET /companies/{id}/connections`` returns them."""
        return [dict(k.json) for k in self._by_id[company_id].connections]

    def commerce_connections(self) -> list[tuple[str, str]]:
        """(company_id, connection_id) of every Linked, synced commerce connection (200s)."""
        return [(c.id, k.id) for c in self._world for k in c.connections if k.serves_data]

    def unsynced_connections(self) -> list[tuple[str, str]]:
        """Commerce connections whose customers give 409 (PendingAuth, Deauthorized, unsynced)."""
        return [(c.id, k.id) for c in self._world for k in c.connections
                if k.source_type == "Commerce" and not k.serves_data]

    def non_commerce_connections(self) -> list[tuple[str, str]]:
        """Accounting/banking connections: customers there give 404 (data type unsupported)."""
        return [(c.id, k.id) for c in self._world for k in c.connections
                if k.source_type != "Commerce"]

    def connection_info(self, company_id: str, connection_id: str) -> Connection:
        return self._conn(company_id, connection_id)

    def customer_records(self, company_id: str, connection_id: str) -> Iterator[dict[str, Any]]:
        """Current customers, API JSON dicts, in default order (a snapshot of the indexes)."""
        store = self._store(company_id, connection_id)
        with self._lock:
            idx = list(store.indexes())
        for i in idx:
            yield store.record(i)

    def customer_ids(self, company_id: str, connection_id: str) -> list[str]:
        return [r["id"] for r in self.customer_records(company_id, connection_id)]

    def customer_count(self, company_id: str, connection_id: str) -> int:
        store = self._store(company_id, connection_id)
        with self._lock:
            return store.count()

    def customer(self, company_id: str, connection_id: str, customer_id: str) -> dict | None:
        """The current record with that id, or None."""
        store = self._store(company_id, connection_id)
        with self._lock:
            i = store.find(customer_id)
            return None if i is None else store.record(i)

    def customer_at(self, company_id: str, connection_id: str, position: int) -> dict[str, Any]:
        """Record at a position of the default order (O(1) even for 1,000,000 records)."""
        store = self._store(company_id, connection_id)
        with self._lock:
            i = next(store.indexes(position, position + 1))
            return store.record(i)

    def now(self) -> str:
        """The sandbox clock (Z string): later than every generated date; mutations advance it."""
        with self._lock:
            return self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- mutations ----------------------------------------------------------------------
    def _tick(self) -> str:
        self._clock += timedelta(seconds=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    def insert(self, company_id: str, connection_id: str, n: int = 1,
               at: str = "front") -> list[str]:
        """Add n new customers at the front or end of the default order; returns their ids.

        Their createdDate/modifiedDate/sourceModifiedDate = a new sandbox clock tick.
        """
        store = self._store(company_id, connection_id)
        with self._lock:
            new = store.insert(n, at, self._tick())
            return [store.codec.encode(i) for i in new]

    def delete(self, company_id: str, connection_id: str,
               which: str | int | Iterable[str | int]) -> list[str]:
        """Delete customers by id (str) or by position in the current default order (int).

        Positions all refer to the order before this call. Returns the deleted ids; unknown ids
        raise KeyError.
        """
        store = self._store(company_id, connection_id)
        items = [which] if isinstance(which, str | int) else list(which)
        with self._lock:
            idx = [self._resolve(store, w) for w in items]
            out = []
            for i in idx:
                out.append(store.codec.encode(i))
                store.delete(i)
            return out

    def modify(self, company_id: str, connection_id: str,
               which: str | int | Iterable[str | int],
               changes: Mapping[str, Any] | None = None) -> list[str]:
        """Touch customers (id or position): modifiedDate and sourceModifiedDate = a new clock
        tick (later than all data), plus optional field ``changes``. Returns the ids."""
        store = self._store(company_id, connection_id)
        items = [which] if isinstance(which, str | int) else list(which)
        with self._lock:
            idx = [self._resolve(store, w) for w in items]
            stamp = self._tick()
            for i in idx:
                store.modify(i, stamp, dict(changes) if changes else None)
            return [store.codec.encode(i) for i in idx]

    def on_request(self, fn: Callable[[str, int], Any] | None) -> None:
        """Call ``fn(path, page)`` before serving each customers list page (in the handler
        thread, after auth and the limiter, before the page is computed). None clears."""
        with self._lock:
            if fn is None:
                self._hooks.clear()
            else:
                self._hooks.append(fn)

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = SandboxStats()

    @staticmethod
    def _resolve(store: CustomerStore, w: str | int) -> int:
        if isinstance(w, int):
            if not 0 <= w < store.count():
                raise IndexError(w)
            return next(store.indexes(w, w + 1))
        i = store.find(w)
        if i is None:
            raise KeyError(w)
        return i

    # -- internals ----------------------------------------------------------------------
    def _company_json(self, c: Company) -> dict[str, Any]:
        d = dict(c.json)
        d["dataConnections"] = [dict(k.json) for k in c.connections]
        return d

    def _conn(self, company_id: str, connection_id: str) -> Connection:
        comp = self._by_id.get(company_id)
        if comp is None:
            raise KeyError(company_id)
        for k in comp.connections:
            if k.id == connection_id:
                return k
        raise KeyError(connection_id)

    def _store(self, company_id: str, connection_id: str) -> CustomerStore:
        k = self._conn(company_id, connection_id)
        if k.store is None:
            raise KeyError(f"{connection_id} is not a commerce connection")
        return k.store

    def _rate_headers(self) -> dict[str, str]:
        reset = (datetime.now(UTC) + timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0)
        return {
            "X-Rate-Limit-Limit": str(self.daily_limit),
            "X-Rate-Limit-Remaining": str(max(0, self.daily_limit - self.stats.requests)),
            "X-Rate-Limit-Reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def _retry_after(self) -> str:
        return str(max(0, math.ceil(self.retry_after_s)))

    def _error(self, req_key: str, e: _Reply) -> tuple[int, dict[str, str], bytes]:
        body = {
            "statusCode": e.status,
            "service": e.service,
            "error": e.error,
            "correlationId": hashlib.md5(req_key.encode()).hexdigest(),
            "canBeRetried": e.can_be_retried,
            "detailedErrorCode": 0,
            "validation": {
                "errors": [{"itemId": None, "message": m, "validatorName": "Request"}
                           for m in e.validation_errors],
                "warnings": [],
            },
        }
        return e.status, {"Content-Type": "application/json", **e.headers}, _dumps(body)

    def _handle(self, h: _Handler) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.stats.requests += 1
            rate = self._rate_headers()
        held: list[str] = []  # company id whose concurrency slot this request holds
        # Latency: the response leaves no sooner than latency_ms after the request arrived.
        # The work of building it overlaps that time, as a real server's does with the network.
        deadline = time.monotonic() + self.latency_ms / 1000.0
        try:
            try:
                status, headers, body = self._route(h, held)
            except _Reply as e:
                status, headers, body = self._error(h.path, e)
            except _Drop:
                raise
            except Exception as exc:  # pragma: no cover - a sandbox bug -> visible 500
                status, headers, body = self._error(
                    h.path, _Reply(500, f"Sandbox error: {type(exc).__name__}: {exc}"))
            if (left := deadline - time.monotonic()) > 0:
                time.sleep(left)
        finally:
            if held:
                with self._lock:
                    self.stats.in_flight[held[0]] -= 1
                    self.stats.in_flight_any -= 1
        with self._lock:
            self.stats.status[status] += 1
        return status, {**rate, **headers}, body

    def _acquire(self, company_id: str, held: list[str]) -> None:
        with self._lock:
            st = self.stats
            if st.in_flight[company_id] >= self.max_concurrent_per_company:
                st.rate_limited += 1
                raise _Reply(
                    429,
                    "You have made too many requests in a given amount of time; "
                    "please retry later.",
                    can_be_retried="True", headers={"Retry-After": self._retry_after()},
                )
            st.in_flight[company_id] += 1
            st.in_flight_any += 1
            held.append(company_id)
            st.max_in_flight[company_id] = max(st.max_in_flight.get(company_id, 0),
                                               st.in_flight[company_id])
            st.max_in_flight_any = max(st.max_in_flight_any, st.in_flight_any)

    def _fault(self) -> str | None:
        if self.fault_rate <= 0:
            return None
        with self._lock:
            if self._fault_rng.random() >= self.fault_rate:
                return None
            kind = self._fault_rng.choice(self.fault_kinds)
            self.stats.faults[kind] += 1
            return kind

    def _apply_fault(self, kind: str) -> tuple[int, dict[str, str], bytes] | None:
        if kind == "drop":
            raise _Drop
        if kind == "slow":
            time.sleep(self.slow_reply_s)
            return None
        if kind.endswith("-html"):
            code = int(kind[:3])
            body = _HTML.format(code=code, reason=_REASONS[code]).encode()
            return code, {"Content-Type": "text/html"}, body
        if kind == "500":
            raise _Reply(500, "There is a problem with our server. Please try again later.",
                         can_be_retried="True")
        if kind == "503":
            raise _Reply(503, "The Codat API is temporarily offline for maintenance. "
                         "Please try again later.", can_be_retried="True")
        if kind == "429":
            raise _Reply(429, "You have made too many requests in a given amount of time; "
                         "please retry later.", can_be_retried="True",
                         headers={"Retry-After": self._retry_after()})
        raise AssertionError(kind)  # pragma: no cover

    def _route(self, h: _Handler, held: list[str]) -> tuple[int, dict[str, str], bytes]:
        if h.headers.get("Authorization", "").strip() != self._auth:
            raise _Reply(401, "Unauthorized")
        split = urlsplit(h.path)
        raw_path = split.path.rstrip("/") or "/"
        segs = [unquote(s) for s in raw_path.split("/")[1:]]
        qs = parse_qs(split.query, keep_blank_values=True)
        n = len(segs)
        shape_ok = (
            n >= 1 and segs[0] == "companies"
            and (n < 3 or segs[2] == "connections")
            and (n < 5 or (n >= 6 and segs[4] == "data" and segs[5] == "commerce-customers"))
            and n <= 7
        )
        if not shape_ok:
            raise _Reply(404, f"No resource found at {raw_path}")
        if n == 1:
            return self._list(qs, raw_path, self.companies, COMPANIES_DATASET)
        company_id = segs[1]
        self._acquire(company_id, held)
        if n >= 6:  # data endpoints: faults apply here only
            kind = self._fault()
            if kind is not None:
                faulted = self._apply_fault(kind)
                if faulted is not None:
                    return faulted
        comp = self._by_id.get(company_id)
        if comp is None:
            raise _Reply(404, f"No company was found with ID {company_id}", service="ClientsApi")
        if n == 2:
            return 200, _JSON, _dumps(self._company_json(comp))
        if n == 3:
            conns = [dict(k.json) for k in comp.connections]
            return self._list(qs, raw_path, conns, CONNECTIONS_DATASET)
        conn = next((k for k in comp.connections if k.id == segs[3]), None)
        if conn is None:
            raise _Reply(404, f"Data connection {segs[3]} not found")
        if n == 4:
            return 200, _JSON, _dumps(conn.json)
        if conn.store is None:
            raise _Reply(404, f"Data type commerce-customers is not supported by platform "
                              f"{conn.platform}.")
        if not conn.serves_data:
            raise _Reply(409, "The data set has not been requested.")
        if n == 7:
            return self._get_customer(conn.store, segs[6])
        return self._list_customers(qs, raw_path, company_id, conn)

    def _sleep(self, ms: float) -> None:
        if ms > 0:
            time.sleep(ms / 1000.0)

    def _list_params(self, qs: dict, dataset: Any) -> tuple[int, int, str | None, str | None,
                                                            Any, Any]:
        page, size = _page_params(qs)
        size = min(size, self.page_size_cap)
        query = ((qs.get("query") or [""])[-1]).strip() or None  # blank = no query
        order_by = ((qs.get("orderBy") or [""])[-1]).strip() or None
        try:
            pred = compile_query(query, dataset) if query else None
            order = compile_order_by(order_by, dataset) if order_by else None
        except QueryError as e:
            raise _Reply(400, str(e), validation_errors=[str(e)]) from None
        return page, size, query, order_by, pred, order

    @staticmethod
    def _envelope(results: list, page: int, size: int, total: int, raw_path: str,
                  query: str | None, order_by: str | None) -> dict[str, Any]:
        extra = ""
        if query:
            extra += "&query=" + quote(query, safe="")
        if order_by:
            extra += "&orderBy=" + quote(order_by, safe="")

        def link(p: int) -> dict[str, str]:
            return {"href": f"{raw_path}?page={p}&pageSize={size}{extra}"}

        links: dict[str, Any] = {"self": {"href": raw_path}, "current": link(page)}
        if page * size < total:
            links["next"] = link(page + 1)
        if page > 1:
            links["previous"] = link(page - 1)
        return {"results": results, "pageNumber": page, "pageSize": size,
                "totalResults": total, "_links": links}

    def _list(self, qs: dict, raw_path: str, records: list[dict], dataset: Any
              ) -> tuple[int, dict[str, str], bytes]:
        page, size, query, order_by, pred, order = self._list_params(qs, dataset)
        rows = [r for r in records if pred is None or pred(r)]
        if order is not None:
            rows.sort(key=order[0], reverse=order[1])
        total = len(rows)
        results = rows[(page - 1) * size: page * size]
        env = self._envelope(results, page, size, total, raw_path, query, order_by)
        return 200, _JSON, _dumps(env)

    def _get_customer(self, store: CustomerStore, customer_id: str
                      ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            i = store.find(customer_id)
            rec = None if i is None else store.record(i)
        if rec is None:
            raise _Reply(404, f"No data available for commerce-customers for ID {customer_id}")
        self._sleep(self.latency_per_record_ms)
        return 200, _JSON, _dumps(rec)

    def _list_customers(self, qs: dict, raw_path: str, company_id: str, conn: Connection
                        ) -> tuple[int, dict[str, str], bytes]:
        page, size, query, order_by, pred, order = self._list_params(qs, CUSTOMERS_DATASET)
        with self._lock:
            hooks = list(self._hooks)
        for fn in hooks:
            fn(raw_path, page)
        store = conn.store
        assert store is not None
        start = (page - 1) * size
        with self._lock:
            if pred is None and order is None:
                total = store.count()
                results = [store.record(i) for i in store.indexes(start, start + size)]
            else:
                key = (company_id, conn.id, store.version, query, order_by)
                idx = self._cache.get(key)
                if idx is None:
                    idx = self._select(store, pred, order)
                    self._cache[key] = idx
                    while len(self._cache) > 16:
                        self._cache.popitem(last=False)
                else:
                    self._cache.move_to_end(key)
                total = len(idx)
                results = [store.record(i) for i in idx[start: start + size]]
            self.stats.customer_pages += 1
        self._sleep(self.latency_per_record_ms * len(results))
        env = self._envelope(results, page, size, total, raw_path, query, order_by)
        return 200, _JSON, _dumps(env)

    @staticmethod
    def _select(store: CustomerStore, pred: Any, order: Any) -> list[int]:
        """Matching indexes in result order (a full scan; cached per store version)."""
        if order is None:
            return [i for i in store.indexes() if pred(store.record(i))]
        key, desc = order
        keyed = []
        for i in store.indexes():
            rec = store.record(i)
            if pred is None or pred(rec):
                keyed.append((key(rec), i))
        # stable: ties keep default order in both directions
        keyed.sort(key=lambda t: t[0], reverse=desc)
        return [i for _, i in keyed]

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"<Sandbox seed={self.seed} {where}>"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_JSON = {"Content-Type": "application/json"}


@contextlib.contextmanager
def serve(
    seed: int = 1,
    customers: int | Mapping[str, int] | None = None,
    latency_ms: float = 0,
    fault_rate: float = 0.0,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    companies: int | None = None,
    latency_per_record_ms: float = 0.0,
    retry_after_s: int = 1,
    fault_kinds: Iterable[str] | None = None,
    slow_reply_s: float = 1.5,
    max_concurrent_per_company: int = 10,
    page_size_cap: int = 2000,
) -> Iterator[Sandbox]:
    """Run a :class:`Sandbox` for the duration of a ``with`` block (see the package docs)."""
    sb = Sandbox(
        seed, customers, latency_ms, fault_rate, host=host, port=port, companies=companies,
        latency_per_record_ms=latency_per_record_ms, retry_after_s=retry_after_s,
        fault_kinds=fault_kinds, slow_reply_s=slow_reply_s,
        max_concurrent_per_company=max_concurrent_per_company, page_size_cap=page_size_cap,
    )
    sb.start()
    try:
        yield sb
    finally:
        sb.stop()


def _print(text: str) -> None:
    print(text, flush=True)  # flushed: whoever reads a piped stdout needs the URL now


def serve_forever(*, print_fn: Callable[[str], Any] = _print,
                  stop_event: threading.Event | None = None, **kwargs: Any) -> None:
    """Serve in the foreground until Ctrl-C (or ``stop_event`` is set); prints URL and key."""
    sb = Sandbox(**kwargs).start()
    try:
        print_fn(f"Codat sandbox listening on {sb.url}")
        print_fn(f"API key: {sb.api_key}")
        print_fn(f"  export CODAT_API_KEY={sb.api_key}")
        print_fn("Commerce connections (company_id connection_id platform customers):")
        for comp_id, conn_id in sb.commerce_connections():
            info = sb.connection_info(comp_id, conn_id)
            print_fn(f"  {comp_id} {conn_id} {info.platform} "
                     f"{sb.customer_count(comp_id, conn_id)}")
        print_fn("Press Ctrl-C to stop.")
        ev = stop_event or threading.Event()
        try:
            while not ev.wait(0.5):
                pass
        except KeyboardInterrupt:
            print_fn("Stopping sandbox.")
    finally:
        sb.stop()


def run(host: str = "127.0.0.1", port: int = 0, seed: int = 1, customers: int | None = None,
        latency_ms: float = 0, fault_rate: float = 0.0, **kwargs: Any) -> None:
    """Entry point for ``codat-frames sandbox``: foreground server until Ctrl-C."""
    serve_forever(host=host, port=port, seed=seed, customers=customers, latency_ms=latency_ms,
                  fault_rate=fault_rate, **kwargs)


__all__ = ["FAULT_KINDS", "Sandbox", "SandboxStats", "run", "serve", "serve_forever"]
