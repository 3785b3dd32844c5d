"""``CodatCommerce`` and its ``customers`` operations, as Codat's Python SDK documents them."""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx

from codat_frames import models
from codat_frames._http import (
    CODAT_MAX_CONCURRENCY,
    DEFAULT_RETRY_CONFIG,
    DEFAULT_SERVER_URL,
    ERRORS_WITH_400,
    ERRORS_WITHOUT_400,
    RetryConfig,
    Transport,
    path,
)

__all__ = ["CodatCommerce", "CustomersSDK"]

CUSTOMERS_PATH = "/companies/{company_id}/connections/{connection_id}/data/commerce-customers"
CUSTOMER_PATH = CUSTOMERS_PATH + "/{customer_id}"


class CustomersSDK:
    """``s.customers``: get one customer or list a page of them."""

    def __init__(self, transport: Transport):
        self._t = transport

    @staticmethod
    def _list_call(request: Any) -> tuple[str, dict[str, Any]]:
        r = models.ListCustomersRequest.coerce(request)
        url = path(CUSTOMERS_PATH, company_id=r.company_id, connection_id=r.connection_id)
        return url, models.paging_params(r)

    @staticmethod
    def _get_path(request: Any) -> str:
        r = models.GetCustomerRequest.coerce(request)
        return path(
            CUSTOMER_PATH,
            company_id=r.company_id,
            connection_id=r.connection_id,
            customer_id=r.customer_id,
        )

    def get(
        self,
        *,
        request: models.GetCustomerRequest | dict[str, Any],
        retries: RetryConfig | None = None,
    ) -> models.Customer:
        """Get one customer by id."""
        resp = self._t.request(
            self._get_path(request), retries=retries, documented=ERRORS_WITHOUT_400
        )
        return models.Customer.from_json(models.parse_json_object(resp))

    async def get_async(
        self,
        *,
        request: models.GetCustomerRequest | dict[str, Any],
        retries: RetryConfig | None = None,
    ) -> models.Customer:
        """Async twin of :meth:`get`."""
        resp = await self._t.arequest(
            self._get_path(request), retries=retries, documented=ERRORS_WITHOUT_400
        )
        return models.Customer.from_json(models.parse_json_object(resp))

    def list(
        self,
        *,
        request: models.ListCustomersRequest | dict[str, Any],
        retries: RetryConfig | None = None,
    ) -> models.Customers:
        """List one page of a connection's customers."""
        return models.Customers.from_json(models.parse_json_object(self.list_raw(request, retries)))

    async def list_async(
        self,
        *,
        request: models.ListCustomersRequest | dict[str, Any],
        retries: RetryConfig | None = None,
    ) -> models.Customers:
        """Async twin of :meth:`list`."""
        url, params = self._list_call(request)
        resp = await self._t.arequest(url, params, retries=retries, documented=ERRORS_WITH_400)
        return models.Customers.from_json(models.parse_json_object(resp))

    def list_raw(
        self,
        request: models.ListCustomersRequest | dict[str, Any],
        retries: RetryConfig | None = None,
    ) -> httpx.Response:
        """One page as the raw HTTP response, for the fast bytes -> Arrow path."""
        url, params = self._list_call(request)
        return self._t.request(url, params, retries=retries, documented=ERRORS_WITH_400)


def _auth_from(auth_header: str | None, api_key: str | None) -> str:
    if auth_header is not None and api_key is not None:
        raise ValueError("give auth_header or api_key, not both")
    if auth_header is None:
        if api_key is None:
            api_key = os.environ.get("CODAT_API_KEY")
            if not api_key:
                raise ValueError(
                    "no API key: pass auth_header='Basic <base64 key>' or api_key='...', "
                    "or set the CODAT_API_KEY environment variable"
                )
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty string")
        auth_header = "Basic " + base64.b64encode(api_key.strip().encode()).decode()
    if not isinstance(auth_header, str) or not auth_header.strip():
        raise ValueError("auth_header must be a non-empty string such as 'Basic <base64 key>'")
    if any(c in auth_header for c in "\r\n"):
        raise ValueError("auth_header must not contain line breaks")
    return auth_header.strip()


class CodatCommerce:
    """Client for Codat's commerce customers endpoints, plus companies and connections.

    ``CodatCommerce(auth_header="Basic ...")`` as Codat's SDK, ``CodatCommerce(api_key=...)``, or
    ``CodatCommerce()`` with ``CODAT_API_KEY`` set. One pooled connection pool per instance; use it
    as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        auth_header: str | None = None,
        *,
        api_key: str | None = None,
        server_url: str | None = None,
        retry_config: RetryConfig | None = None,
        timeout_ms: int | None = 60_000,
        max_concurrency: int = CODAT_MAX_CONCURRENCY,
        max_requests: int | None = None,
        sleep: Any = None,
        async_sleep: Any = None,
        clock: Any = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ):
        """``max_concurrency``: requests in flight per company (Codat allows 10);
        ``max_requests``: across all companies (None: no overall cap).
        ``sleep``/``async_sleep``/``clock`` and ``transport`` are hooks for tests and tools.
        """
        header = _auth_from(auth_header, api_key)
        url = DEFAULT_SERVER_URL if server_url is None else server_url
        try:
            parsed = httpx.URL(url) if isinstance(url, str) else None
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"server_url must be an http(s) URL with a host, got {url!r}")
        if timeout_ms is not None and (
            isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms <= 0
        ):
            raise ValueError(f"timeout_ms must be a positive integer or None, got {timeout_ms!r}")
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or not 1 <= max_concurrency <= CODAT_MAX_CONCURRENCY
        ):
            raise ValueError(
                f"max_concurrency must be an integer from 1 to {CODAT_MAX_CONCURRENCY} "
                f"(Codat allows {CODAT_MAX_CONCURRENCY} concurrent requests per company), "
                f"got {max_concurrency!r}"
            )
        if max_requests is not None and (
            isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1
        ):
            raise ValueError(f"max_requests must be an integer >= 1 or None, got {max_requests!r}")
        if retry_config is not None and not isinstance(retry_config, RetryConfig):
            raise ValueError(
                f"retry_config must be a RetryConfig, got {type(retry_config).__name__}"
            )
        self._transport = Transport(
            auth_header=header,
            server_url=url,
            timeout_ms=timeout_ms,
            retry_config=retry_config or DEFAULT_RETRY_CONFIG,
            max_concurrency=max_concurrency,
            max_requests=max_requests,
            sleep=sleep,
            async_sleep=async_sleep,
            clock=clock,
            transport=transport,
            async_transport=async_transport,
        )
        from codat_frames.platform import CompaniesSDK, ConnectionsSDK

        self.customers = CustomersSDK(self._transport)
        self.companies = CompaniesSDK(self._transport)
        self.connections = ConnectionsSDK(self._transport)

    @property
    def server_url(self) -> str:
        return self._transport.server_url

    @property
    def max_concurrency(self) -> int:
        return self._transport.max_concurrency

    @property
    def timeout_ms(self) -> int | None:
        return self._transport.timeout_ms

    @property
    def max_requests(self) -> int | None:
        return self._transport.max_requests

    @property
    def stats(self) -> dict[str, int]:
        """Requests sent, retries, 429s seen and the most requests in flight at once."""
        return dict(self._transport.stats)

    @property
    def retry_config(self) -> RetryConfig:
        return self._transport.retry_config

    def close(self) -> None:
        """Close the connection pools."""
        self._transport.close()

    async def aclose(self) -> None:
        """Close the connection pools from async code."""
        await self._transport.aclose()

    def __enter__(self) -> CodatCommerce:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> CodatCommerce:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        transport = getattr(self, "_transport", None)  # None when __init__ refused its input
        url = transport.server_url if transport is not None else None
        return f"CodatCommerce(server_url={url!r}, auth=<secret>)"

    def __reduce__(self):
        raise TypeError("CodatCommerce holds an API key and cannot be pickled")
