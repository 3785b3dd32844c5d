"""A local HTTP server that behaves like Codat's API (companies, connections, commerce customers).

    from codat_frames import sandbox
    with sandbox.serve(seed=1) as sb:
        sb.url       # "http://127.0.0.1:PORT"
        sb.api_key   # send Authorization: Basic base64(api_key)

Stdlib only (ThreadingHTTPServer, HTTP/1.1 keep-alive, daemon threads), real loopback sockets.

Endpoints (GET): ``/companies``, ``/companies/{id}``, ``/companies/{id}/connections``,
``/companies/{id}/connections/{id}``,
``/companies/{c}/connections/{k}/data/commerce-customers`` and ``.../commerce-customers/{id}``
(the customer id is URL-decoded, any string).

Default data (any seed; ids differ per seed, layout does not), 6 companies in this order:

====  ==========================================================================
 #    connections (platform, status) -> what customers endpoints answer
====  ==========================================================================
 0    Shopify Linked (200)
 1    Square Linked (200), Stripe Linked (200)
 2    Mollie Linked (200), Stripe Linked but *not yet synced* (409),
      Square PendingAuth (409)
 3    Clover Linked (200), WooCommerce Linked (200), Shopify Deauthorized (409)
 4    BigCommerce Linked (200), Zettle Linked (200), Xero Linked (404: not supported)
 5    PrestaShop Linked (200), QuickBooks Online PendingAuth (404), Plaid Linked (404)
====  ==========================================================================

``companies=N`` truncates that list or extends it with random commerce companies.
``customers`` = customers per serving commerce connection: an int for all, a mapping
(connection id or platform name) -> int, or None for a default of 120..479 varying per
connection. Records are
generated on demand from (seed, connection, index), so 1,000,000 per connection is cheap;
ids are an invertible per-platform encoding (Shopify 13 digits, Square 26 upper alnum,
Stripe ``cus_...``, Clover 13 upper alnum, Mollie ``cst_...``, BigCommerce ``1, 2, ...``,
WooCommerce 10 digits, PrestaShop uuid, Zettle e-mail). Every quirk of the real examples
appears: all date shapes, the ``0001-01-01T00:00:00`` sentinel, null modifiedDate (~2%),
null/missing sourceModifiedDate, lower-case address types, "" and null phones, "" names,
``XXX`` and lower-case currencies, unicode, quotes and SQL-looking text, 0-3 or missing
addresses. ``modifiedDate`` is non-decreasing by index (sync batches) apart from nulls and a
sub-second fraction on ~10% of records.

Behaviour:

* Paging: ``page`` >= 1 (default 1), ``pageSize`` 1..5000 (default 100); anything else is 400.
  At most ``page_size_cap`` (2000, the response schema's maximum) records are served per
  page and the reported ``pageSize`` is that effective size (the links use it too).
  ``totalResults`` counts after the query. ``_links``: self (path only), current, next when
  ``page * pageSize < totalResults``, previous when page > 1 (query/orderBy carried along).
  A page past the end: 200 with empty results. Unqueried, unordered paging is O(page).
* ``query``/``orderBy``: see :mod:`codat_frames.sandbox._query` (&& binds tighter than ||;
  strings ignore case; nulls never match; arrays can't be queried -> 400 "Could not resolve").
  Queries and orderBy scan the whole connection once per (data version, query, orderBy).
  ``/companies`` and ``/companies/{id}/connections`` support the same paging/query/orderBy.
* Errors: Codat JSON (statusCode, service, error, correlationId, canBeRetried,
  detailedErrorCode, validation{errors, warnings}). 401 bad/missing key (checked first);
  404 unknown company/connection/customer/path and customers of a non-commerce connection;
  409 customers of a commerce connection that is not Linked+synced; 400 bad paging or query;
  429 + ``Retry-After: retry_after_s`` when more than ``max_concurrent_per_company`` requests
  for one company (any ``/companies/{id}...`` path) are in flight.
* Every response: ``X-Rate-Limit-Limit/Remaining/Reset`` and a Content-Type.
* Knobs: ``latency_ms`` per request, ``latency_per_record_ms`` per record served,
  ``fault_rate`` / ``fault_kinds`` (:data:`FAULT_KINDS`) drawn from an RNG seeded by ``seed``;
  faults apply only to the two data (commerce-customers) endpoints, after the auth check and
  the concurrency limiter. ``slow_reply_s`` is the delay of the ``slow`` fault.
* Ground truth / mutation: see :class:`Sandbox` (``companies``, ``connections()``,
  ``commerce_connections()``, ``customer_records()``, ``insert/delete/modify``,
  ``on_request``, ``stats``).
"""

from codat_frames.sandbox._data import COMPANY_NAMES, DEFAULT_LAYOUT, PLATFORMS
from codat_frames.sandbox._query import QueryError, parse_date_ticks
from codat_frames.sandbox._server import (
    FAULT_KINDS,
    Sandbox,
    SandboxStats,
    run,
    serve,
    serve_forever,
)

__all__ = [
    "COMPANY_NAMES",
    "DEFAULT_LAYOUT",
    "FAULT_KINDS",
    "PLATFORMS",
    "QueryError",
    "Sandbox",
    "SandboxStats",
    "parse_date_ticks",
    "run",
    "serve",
    "serve_forever",
]
