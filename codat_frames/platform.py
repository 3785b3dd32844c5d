"""Companies and their connections (Codat's platform API), every page when asked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from codat_frames import models
from codat_frames._http import RetryConfig, Transport, path

__all__ = ["CompaniesSDK", "ConnectionsSDK"]


class CompaniesSDK:
    """``s.companies``: list companies, one page or all of them."""

    def __init__(self, transport: Transport):
        self._t = transport

    def list(
        self,
        *,
        request: models.ListCompaniesRequest | dict[str, Any] | None = None,
        retries: RetryConfig | None = None,
    ) -> models.Companies:
        """One page of companies."""
        r = models.ListCompaniesRequest.coerce(request if request is not None else {})
        resp = self._t.request("/companies", models.paging_params(r), retries=retries)
        return models.Companies.from_json(models.parse_json_object(resp))

    async def list_async(
        self,
        *,
        request: models.ListCompaniesRequest | dict[str, Any] | None = None,
        retries: RetryConfig | None = None,
    ) -> models.Companies:
        """Async twin of :meth:`list`."""
        r = models.ListCompaniesRequest.coerce(request if request is not None else {})
        resp = await self._t.arequest("/companies", models.paging_params(r), retries=retries)
        return models.Companies.from_json(models.parse_json_object(resp))

    def iter_all(
        self, *, query: str | None = None, page_size: int = 500
    ) -> Iterator[models.Company]:
        """Every company, page after page."""
        return _iter_pages(
            lambda page: self.list(request={"page": page, "page_size": page_size, "query": query})
        )


class ConnectionsSDK:
    """``s.connections``: list a company's connections, one page or all of them."""

    def __init__(self, transport: Transport):
        self._t = transport

    def list(
        self,
        *,
        request: models.ListConnectionsRequest | dict[str, Any],
        retries: RetryConfig | None = None,
    ) -> models.Connections:
        """One page of a company's connections."""
        r = models.ListConnectionsRequest.coerce(request)
        url = path("/companies/{company_id}/connections", company_id=r.company_id)
        resp = self._t.request(url, models.paging_params(r), retries=retries)
        return models.Connections.from_json(models.parse_json_object(resp))

    async def list_async(
        self,
        *,
        request: models.ListConnectionsRequest | dict[str, Any],
        retries: RetryConfig | None = None,
    ) -> models.Connections:
        """Async twin of :meth:`list`."""
        r = models.ListConnectionsRequest.coerce(request)
        url = path("/companies/{company_id}/connections", company_id=r.company_id)
        resp = await self._t.arequest(url, models.paging_params(r), retries=retries)
        return models.Connections.from_json(models.parse_json_object(resp))

    def iter_all(self, company_id: str, *, page_size: int = 500) -> Iterator[models.Connection]:
        """Every connection of a company, page after page."""
        return _iter_pages(
            lambda page: self.list(
                request={"company_id": company_id, "page": page, "page_size": page_size}
            )
        )


def _iter_pages(fetch) -> Iterator[Any]:
    page = 1
    while True:
        res = fetch(page)
        yield from res.results
        size = res.page_size or len(res.results)
        if not res.results or size <= 0 or page * size >= res.total_results:
            return
        page += 1
