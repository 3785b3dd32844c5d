"""The HTTP transport: auth, retries with backoff and Retry-After, timeouts, per-company limits.

One pooled ``httpx.Client`` (and one ``httpx.AsyncClient`` per event loop) per ``CodatCommerce``.
The API key lives only in a ``_Secret`` whose repr is masked; nothing here logs headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from codat_frames import models
from codat_frames._version import __version__

log = logging.getLogger("codat_frames")

USER_AGENT = f"codat-frames/{__version__}"
DEFAULT_SERVER_URL = "https://api.codat.io"
#: Codat allows at most this many concurrent requests per company.
CODAT_MAX_CONCURRENCY = 10

__all__ = ["BackoffStrategy", "RetryConfig", "DEFAULT_RETRY_CONFIG"]


@dataclass(frozen=True)
class BackoffStrategy:
    """Exponential backoff, intervals in milliseconds, as in Codat's SDK."""

    initial_interval: int
    max_interval: int
    exponent: float
    max_elapsed_time: int

    def __post_init__(self) -> None:
        for name in ("initial_interval", "max_interval", "max_elapsed_time"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"BackoffStrategy.{name} must be a number >= 0 (ms), got {v!r}")
        if not isinstance(self.exponent, (int, float)) or self.exponent < 1:
            raise ValueError(f"BackoffStrategy.exponent must be >= 1, got {self.exponent!r}")


@dataclass(frozen=True)
class RetryConfig:
    """``RetryConfig("backoff", BackoffStrategy(...), retry_connection_errors)``.

    Strategy ``"none"`` disables retries.
    """

    strategy: str
    backoff: BackoffStrategy | None = None
    retry_connection_errors: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in ("backoff", "none"):
            raise ValueError(
                f"RetryConfig.strategy must be 'backoff' or 'none', got {self.strategy!r}"
            )
        if self.strategy == "backoff" and self.backoff is None:
            raise ValueError("RetryConfig('backoff', ...) needs a BackoffStrategy")


#: Codat SDK defaults: 500 ms, 60 s, 1.5, 1 h; retry 408, 429, 5XX and connection errors.
DEFAULT_RETRY_CONFIG = RetryConfig("backoff", BackoffStrategy(500, 60_000, 1.5, 3_600_000), True)


def _retryable_status(code: int) -> bool:
    return code in (408, 429) or 500 <= code <= 599


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class _Secret:
    """Holds the Authorization header; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("the API key cannot be pickled")


_SSL_CONTEXT = None
_COMPANY_RE = re.compile(r"^/companies/([^/]+)")

#: Statuses each operation documents as a JSON ``ErrorMessage`` (the seed's tables).
ERRORS_WITH_400 = frozenset({400, 401, 402, 403, 404, 409, 429, 500, 503})
ERRORS_WITHOUT_400 = ERRORS_WITH_400 - {400}


def _segment(value: object) -> str:
    """One path segment: every reserved character escaped, and ``.``/``..`` too, which httpx
    would otherwise resolve as dot segments (``customer_id=".."`` must not reach another path)."""
    seg = quote(str(value), safe="")
    return seg.replace(".", "%2E") if seg in (".", "..") else seg


def path(template: str, **values: str) -> str:
    """Fill a path template, URL-escaping every value (``/`` included)."""
    return template.format(**{k: _segment(v) for k, v in values.items()})


def raise_for_response(response: httpx.Response, documented: frozenset[int]) -> None:
    """Raise ErrorMessage or SDKError for a 4xx/5xx response, as the seed's error tables say."""
    code = response.status_code
    if code < 400:
        return
    ctype = response.headers.get("content-type", "")
    if code in documented and "json" in ctype:
        try:
            data = models.parse_json_object(response)
            err = models.ErrorMessage(models.ErrorMessageData.from_json(data), response)
        except (models.SDKError, TypeError, ValueError, AttributeError, RecursionError):
            # Not the documented error shape (e.g. deeply nested, or validation.errors not a
            # list): report it as an SDKError with the body rather than let it escape.
            err = None
        if err is not None:
            raise err
    raise models.SDKError("API error occurred", code, response.text, response)


class Transport:
    """Sends requests with auth, retries and Codat's per-company concurrency limit."""

    def __init__(
        self,
        *,
        auth_header: str,
        server_url: str,
        timeout_ms: int | None,
        retry_config: RetryConfig,
        max_concurrency: int,
        max_requests: int | None = None,
        sleep: Callable[[float], None] | None = None,
        async_sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._auth = _Secret(auth_header)
        self.server_url = server_url.rstrip("/")
        self.timeout_ms = timeout_ms
        self.timeout = httpx.Timeout(timeout_ms / 1000 if timeout_ms else None)
        self.retry_config = retry_config
        self.max_concurrency = max_concurrency
        self.max_requests = max_requests
        self._sleep = sleep or time.sleep
        self._async_sleep = async_sleep or asyncio.sleep
        self._clock = clock or time.monotonic
        self._transport = transport
        self._async_transport = async_transport
        self._client: httpx.Client | None = None
        self._aclients: dict[int, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}
        self._lock = threading.Lock()
        self._company_sems: dict[str, threading.BoundedSemaphore] = {}
        self._async_sems: dict[tuple[int, str], asyncio.Semaphore] = {}
        self._all_sem = threading.BoundedSemaphore(max_requests) if max_requests else None
        self._pause_until = 0.0
        self._in_flight = 0
        self.stats = {"requests": 0, "retries": 0, "throttled": 0, "max_in_flight": 0}

    # ---------------------------------------------------------------- clients

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": self._auth.reveal(),
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    @staticmethod
    def _verify():
        """One SSL context for every client: building one costs ~50 ms."""
        global _SSL_CONTEXT
        if _SSL_CONTEXT is None:
            _SSL_CONTEXT = httpx.create_ssl_context()
        return _SSL_CONTEXT

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=max(20, self.max_concurrency * 4), max_keepalive_connections=20
        )

    @property
    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.server_url,
                    headers=self._headers(),
                    timeout=self.timeout,
                    limits=self._limits(),
                    verify=self._verify(),
                    transport=self._transport,
                )
            return self._client

    def aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._aclients.get(id(loop))
            if entry is None or entry[0] is not loop:
                ac = httpx.AsyncClient(
                    base_url=self.server_url,
                    headers=self._headers(),
                    timeout=self.timeout,
                    limits=self._limits(),
                    verify=self._verify(),
                    transport=self._async_transport,
                )
                self._aclients[id(loop)] = (loop, ac)
                return ac
            return entry[1]

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            aclients, self._aclients = list(self._aclients.values()), {}
        for loop, ac in aclients:
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                loop.create_task(ac.aclose())
            elif not loop.is_running():
                loop.run_until_complete(ac.aclose())

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._aclients.pop(id(loop), None)
        if entry is not None:
            await entry[1].aclose()
        self.close()

    # ---------------------------------------------------------------- limits

    def _company(self, url_path: str) -> str:
        m = _COMPANY_RE.match(url_path)
        return m.group(1) if m else ""

    def _sem(self, company: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._company_sems.get(company)
            if sem is None:
                sem = self._company_sems[company] = threading.BoundedSemaphore(self.max_concurrency)
            return sem

    def _asem(self, company: str) -> asyncio.Semaphore:
        """Per (event loop, company); company "*" is the overall ``max_requests`` cap."""
        key = (id(asyncio.get_running_loop()), company)
        with self._lock:
            sem = self._async_sems.get(key)
            if sem is None:
                size = self.max_requests if company == "*" else self.max_concurrency
                sem = self._async_sems[key] = asyncio.Semaphore(size)
            return sem

    @contextlib.contextmanager
    def _slot(self, company: str) -> Iterator[None]:
        """A place among the overall and the company's requests in flight."""
        with self._all_sem or contextlib.nullcontext(), self._sem(company):
            with self._counted():
                yield

    @contextlib.asynccontextmanager
    async def _aslot(self, company: str) -> AsyncIterator[None]:
        async with self._asem("*") if self.max_requests else contextlib.nullcontext():
            async with self._asem(company):
                with self._counted():
                    yield

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.stats["requests"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _pause_left(self) -> float:
        """Seconds every request still waits after a 429's Retry-After (all companies)."""
        return max(0.0, self._pause_until - self._clock())

    def _note_retry_after(self, seconds: float) -> None:
        with self._lock:
            self._pause_until = max(self._pause_until, self._clock() + seconds)

    # ---------------------------------------------------------------- retries

    def _plan(self, retries: RetryConfig | None) -> RetryConfig:
        rc = retries if retries is not None else self.retry_config
        if not isinstance(rc, RetryConfig):
            raise ValueError(f"retries must be a RetryConfig, got {type(rc).__name__}")
        return rc

    def _next_wait(
        self,
        rc: RetryConfig,
        attempt: int,
        started: float,
        response: httpx.Response | None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when retries are exhausted."""
        if rc.strategy == "none" or rc.backoff is None:
            return None
        b = rc.backoff
        elapsed_ms = (self._clock() - started) * 1000
        if elapsed_ms > b.max_elapsed_time:
            return None
        wait = b.initial_interval / 1000 * b.exponent**attempt
        wait += random.uniform(0, min(0.25, wait / 4))  # jitter, so retries don't march in step
        if response is not None:
            ra = retry_after_seconds(response)
            if ra is not None:
                wait = ra
            if response.status_code == 429:
                self._count("throttled")
                # Codat's limits are per company and per IP: hold every request, not just this.
                self._note_retry_after(min(wait, b.max_interval / 1000))
        wait = min(wait, b.max_interval / 1000)
        if elapsed_ms + wait * 1000 > b.max_elapsed_time:
            return None
        return wait

    def _outcome_error(self, rc, attempt, started, exc, url_path) -> float:
        """Wait before retrying after a connection error, or raise it as an SDKError."""
        log.debug("GET %s failed: %s", url_path, type(exc).__name__)
        if rc.strategy == "backoff" and rc.retry_connection_errors:
            wait = self._next_wait(rc, attempt, started, None)
            if wait is not None:
                return wait
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
        raise models.SDKError(
            f"request to {url_path} {kind}: {type(exc).__name__}: {exc}", -1, "", None
        ) from None

    def _outcome_response(self, rc, attempt, started, response, documented):
        """None when ``response`` is final (returned or raised), else seconds to wait."""
        log.debug("GET %s -> %s", response.url.path, response.status_code)
        if _retryable_status(response.status_code):
            wait = self._next_wait(rc, attempt, started, response)
            if wait is not None:
                return wait
        raise_for_response(response, documented)
        return None

    def request(
        self,
        url_path: str,
        params: dict[str, Any] | None = None,
        *,
        retries: RetryConfig | None = None,
        documented: frozenset[int] = ERRORS_WITH_400,
    ) -> httpx.Response:
        """GET ``url_path`` with retries; return the 2xx response or raise a CodatError."""
        rc, company, started = self._plan(retries), self._company(url_path), self._clock()
        attempt = 0
        while True:
            if pause := self._pause_left():
                self._sleep(pause)
            try:
                with self._slot(company):
                    response = self.client.get(url_path, params=params)
                    response.read()
            except httpx.TransportError as exc:
                wait = self._outcome_error(rc, attempt, started, exc, url_path)
            else:
                wait = self._outcome_response(rc, attempt, started, response, documented)
                if wait is None:
                    return response
            attempt += 1
            self._count("retries")
            self._sleep(wait)

    async def arequest(
        self,
        url_path: str,
        params: dict[str, Any] | None = None,
        *,
        retries: RetryConfig | None = None,
        documented: frozenset[int] = ERRORS_WITH_400,
    ) -> httpx.Response:
        """Async twin of :meth:`request`."""
        rc, company, started = self._plan(retries), self._company(url_path), self._clock()
        attempt = 0
        while True:
            if pause := self._pause_left():
                await self._async_sleep(pause)
            try:
                async with self._aslot(company):
                    response = await self.aclient().get(url_path, params=params)
                    await response.aread()
            except httpx.TransportError as exc:
                wait = self._outcome_error(rc, attempt, started, exc, url_path)
            else:
                wait = self._outcome_response(rc, attempt, started, response, documented)
                if wait is None:
                    return response
            attempt += 1
            self._count("retries")
            await self._async_sleep(wait)
