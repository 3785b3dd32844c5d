"""The ``codat-frames`` command: demo, customers, sync, companies, portfolio, sandbox.

Exit codes: 0 ok, 1 an API error (its message printed, no traceback), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from codat_frames import models
from codat_frames._http import BackoffStrategy, RetryConfig

EXIT_OK, EXIT_API, EXIT_USAGE = 0, 1, 2
#: Retries as Codat's SDK, but a request gives up after 2 minutes (not 1 hour): at a terminal,
#: an unreachable server should be reported, not waited on.
CLI_RETRY = RetryConfig("backoff", BackoffStrategy(500, 30_000, 1.5, 120_000), True)
#: Customers per commerce connection in the demo's sandbox: enough to see paging at work.
DEMO_CUSTOMERS = 20_000


class UsageError(Exception):
    """Bad arguments or configuration: exit code 2."""


def _client(args: argparse.Namespace):
    from codat_frames.commerce import CodatCommerce

    if not os.environ.get("CODAT_API_KEY"):
        raise UsageError(
            "set CODAT_API_KEY to your Codat API key (or run `codat-frames demo`, "
            "which needs no key)"
        )
    return CodatCommerce(server_url=args.server_url, retry_config=CLI_RETRY)


def _int_at_least(lo: int):
    """An argparse type: a whole number >= lo."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} must be at least {lo}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return value


def _summary(frames, out: str | None, seconds: float) -> str:
    c, a = frames.customers, frames.addresses
    lines = [f"customers: {len(c):,}   addresses: {len(a):,}   time: {seconds:.2f} s"]
    countries = a["country"].replace("", None).dropna().value_counts().head(5)
    if len(countries):
        lines.append("top countries: " + ", ".join(f"{k} ({v:,})" for k, v in countries.items()))
    modified = c["modified_date"].dropna()
    if len(modified):
        lines.append(f"modified: {modified.min():%Y-%m-%d} .. {modified.max():%Y-%m-%d}")
    if out:
        customers, addresses = os.path.join(out, "customers"), os.path.join(out, "addresses")
        lines.append(f"parquet: {customers}/ and {addresses}/")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from codat_frames import sandbox
    from codat_frames.commerce import CodatCommerce
    from codat_frames.paging import read_customers
    from codat_frames.parquet import to_parquet

    started = time.monotonic()
    with sandbox.serve(seed=args.seed, customers=args.customers) as sb:
        print(f"sandbox running at {sb.url} (a local stand-in for api.codat.io; no key needed)")
        with CodatCommerce(api_key=sb.api_key, server_url=sb.url) as s:
            company, conn = _first_commerce_connection(s)
            print(f"company: {company.name}   connection: {conn.platform_name} ({conn.status})")
            frames = read_customers(s, company.id, conn.id, progress=args.progress)
    to_parquet(frames, args.out)
    print(_summary(frames, args.out, time.monotonic() - started))
    print(
        f"read it back: codat_frames.read_parquet({args.out!r}); or in DuckDB: select count(*) "
        f"from read_parquet('{args.out}/customers/**/*.parquet', hive_partitioning=true)"
    )
    return EXIT_OK


def _first_commerce_connection(s) -> tuple[models.Company, models.Connection]:
    for company in s.companies.iter_all():
        for conn in s.connections.iter_all(company.id):
            if conn.source_type == "Commerce" and conn.status == "Linked":
                try:
                    s.customers.list(
                        request={
                            "company_id": company.id,
                            "connection_id": conn.id,
                            "page_size": 1,
                        }
                    )
                except models.ErrorMessage as e:
                    if e.status_code in (404, 409):
                        continue
                    raise
                return company, conn
    raise UsageError("no linked commerce connection with data was found")


def _cmd_customers(args: argparse.Namespace) -> int:
    from codat_frames.paging import read_customers
    from codat_frames.parquet import to_parquet

    started = time.monotonic()
    with _client(args) as s:
        frames = read_customers(
            s,
            args.company_id,
            args.connection_id,
            query=args.query,
            order_by=args.order_by,
            page_size=args.page_size,
            progress=args.progress,
            local_tz=args.local_tz,
        )
    to_parquet(frames, args.out)
    print(_summary(frames, args.out, time.monotonic() - started))
    return EXIT_OK


def _cmd_sync(args: argparse.Namespace) -> int:
    from codat_frames.parquet import sync_customers

    started = time.monotonic()
    with _client(args) as s:
        result = sync_customers(
            s,
            args.company_id,
            args.connection_id,
            args.out,
            local_tz=args.local_tz,
            progress=args.progress,
            full=args.full,
            query=args.query,
            order_by=args.order_by,
        )
    print(
        f"fetched {result.fetched:,}  inserted {result.inserted:,}  updated {result.updated:,}  "
        f"total {result.total:,}  in {time.monotonic() - started:.2f} s -> {args.out}"
    )
    return EXIT_OK


def _cmd_companies(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = [("company_id", "company", "connection_id", "platform", "type",
                                    "status")]  # fmt: skip
    with _client(args) as s:
        for company in s.companies.iter_all(query=args.query):
            conns = list(s.connections.iter_all(company.id))
            if not conns:
                rows.append((company.id, company.name or "", "", "", "", ""))
            for c in conns:
                rows.append(
                    (
                        company.id,
                        company.name or "",
                        c.id,
                        c.platform_name or "",
                        c.source_type or "",
                        c.status or "",
                    )
                )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def _cmd_portfolio(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from codat_frames.portfolio import read_portfolio

    dask_client: Any = nullcontext()
    if args.scheduler:
        try:
            from dask.distributed import Client
        except ImportError:
            raise UsageError("--scheduler needs Dask: pip install 'codat-frames[dask]'") from None
        dask_client = Client(args.scheduler)
    with dask_client as dc, _client(args) as s:
        summary = read_portfolio(
            s,
            source_type=args.source_type,
            path=args.out,
            executor=dc.get_executor() if dc is not None else None,
            workers=args.workers,
            max_age=args.max_age,
            progress=args.progress,
        )
    shown = summary.drop(columns=["company_id"])
    if len(shown) > 60:
        shown = shown[shown["status"].isin(["failed", "skipped"])]
    if len(shown):
        print(shown.to_string(index=False))
    counts = summary["status"].value_counts()
    print(
        f"connections: {len(summary):,}  "
        + "  ".join(f"{k} {v:,}" for k, v in counts.items())
        + f"  rows {int(summary['rows'].fillna(0).sum()):,} -> {args.out}"
    )
    return EXIT_API if counts.get("failed", 0) else EXIT_OK


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from codat_frames import sandbox

    sandbox.run(
        host=args.host,
        port=args.port,
        seed=args.seed,
        customers=args.customers,
        latency_ms=args.latency_ms,
        fault_rate=args.fault_rate,
        companies=args.companies,
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    from codat_frames._version import __version__

    parser = argparse.ArgumentParser(
        prog="codat-frames",
        description="Codat commerce customers into typed DataFrames and parquet.",
    )
    parser.add_argument("--version", action="version", version=f"codat-frames {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def progress_flags(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--progress", dest="progress", action="store_const", const=True,
                       default=None, help="always show a progress bar")  # fmt: skip
        g.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                       help="never show a progress bar")  # fmt: skip

    def server(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server-url", default="https://api.codat.io",
                       help="API base URL (default https://api.codat.io)")  # fmt: skip

    p = sub.add_parser("demo", help="read a sandbox connection into parquet (no key needed)")
    p.add_argument("--out", default="out", help="folder for the parquet datasets (default out)")
    p.add_argument("--seed", type=_non_negative_int, default=1, help="sandbox data seed")
    p.add_argument("--customers", type=_positive_int, default=DEMO_CUSTOMERS,
                   help=f"customers per connection (default {DEMO_CUSTOMERS:,})")  # fmt: skip
    progress_flags(p)
    p.set_defaults(func=_cmd_demo)

    for name, func, helptext in (
        ("customers", _cmd_customers, "read every customer of a connection into parquet"),
        ("sync", _cmd_sync, "incrementally update a parquet folder by modifiedDate"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--company-id", required=True)
        p.add_argument("--connection-id", required=True)
        p.add_argument("--out", required=True, help="folder for the parquet datasets")
        p.add_argument(
            "--local-tz", default="UTC", help="zone of dates sent without one (default UTC)"
        )
        server(p)
        progress_flags(p)
        p.add_argument("--query", default=None, help="Codat query, e.g. 'customerName~ltd'")
        p.add_argument("--order-by", default=None, help="e.g. -modifiedDate")
        if name == "customers":
            p.add_argument("--page-size", type=_positive_int, default=None)
        else:
            p.add_argument("--full", action="store_true", help="re-read everything")
        p.set_defaults(func=func)

    p = sub.add_parser("companies", help="list companies and their connections")
    p.add_argument("--query", default=None)
    server(p)
    p.set_defaults(func=_cmd_companies)

    p = sub.add_parser("portfolio", help="every connection of every company into one dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--source-type", default="Commerce")
    p.add_argument("--workers", type=_positive_int, default=None)
    p.add_argument("--scheduler", default=None, help="Dask scheduler address")
    p.add_argument("--max-age", default=None,
                   help="skip connections written less than this ago, e.g. 6h")  # fmt: skip
    server(p)
    progress_flags(p)
    p.set_defaults(func=_cmd_portfolio)

    p = sub.add_parser("sandbox", help="serve the local Codat-like sandbox API until Ctrl-C")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_non_negative_int, default=8000)
    p.add_argument("--seed", type=_non_negative_int, default=1)
    p.add_argument("--customers", type=_positive_int, default=None,
                   help="customers per commerce connection (default: 120-479 each)")  # fmt: skip
    p.add_argument("--latency-ms", type=_non_negative_int, default=0,
                   help="added to every request")  # fmt: skip
    p.add_argument("--fault-rate", type=_rate, default=0.0,
                   help="share of data requests that fail (5xx, 429, drops)")  # fmt: skip
    p.add_argument("--companies", type=_positive_int, default=None,
                   help="number of companies (default 6)")  # fmt: skip
    p.set_defaults(func=_cmd_sandbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError) as e:
        print(f"codat-frames {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except models.CodatError as e:
        print(f"codat-frames {args.command}: API error: {e}", file=sys.stderr)
        return EXIT_API
    except OSError as e:
        print(f"codat-frames {args.command}: error: {e}", file=sys.stderr)
        return EXIT_API
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
