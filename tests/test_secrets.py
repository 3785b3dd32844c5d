"""The API key never leaves the process in anything the package emits.

One test per emitter, each scanning for the raw key, its base64 form (with and without
padding) and the full ``Basic ...`` header: reprs, exception text and formatted tracebacks
(HTTP errors, connection errors, timeouts, dropped connections, bad input), warnings, logs at
DEBUG from every logger, parquet bytes after ``to_parquet`` and ``sync_customers``, widget
state, and the stdout/stderr of every CLI command.

Executed notebook outputs are checked by ``tests/test_notebooks.py`` (``_assert_no_key``: raw
key and base64 in the whole executed notebook JSON); not duplicated here.

Deliberate exception: ``codat-frames sandbox`` prints the *sandbox's own* key so a user can
export it; that key is the server's, not the user's, and it is not checked here.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import pickle
import socket
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import codat_frames as cf
from codat_frames import models, sandbox
from codat_frames.paging import read_customers
from codat_frames.parquet import sync_customers, to_parquet

NO_RETRY = cf.RetryConfig("none")
FAST_RETRY = cf.RetryConfig("backoff", cf.BackoffStrategy(5, 50, 1.5, 10_000), True)


def secret_forms(key: str) -> list[str]:
    b64 = base64.b64encode(key.encode()).decode()
    return [key, b64, b64.rstrip("="), "Basic " + b64]


def assert_clean(text: str | bytes, key: str, where: str) -> None:
    for form in secret_forms(key):
        needle = form.encode() if isinstance(text, bytes) else form
        assert needle not in text, f"the key ({form[:6]}...) appears in {where}"


def exception_texts(exc: BaseException, *, frame_locals: bool = True) -> str:
    """Everything a user, a logger or an error tracker would render from an exception.

    ``frame_locals``: include the package frames' locals. Off for constructor errors, whose
    frames hold the key the caller just passed in as an argument (not a leak).
    """
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    if frame_locals:
        parts.append(_package_frame_locals(exc))
    parts.append(repr(vars(exc)))
    for name in ("raw_response", "data", "body", "message"):
        if hasattr(exc, name):
            parts.append(repr(getattr(exc, name)))
    raw = getattr(exc, "raw_response", None)
    if raw is not None:
        parts += [repr(raw.request), repr(raw.headers), repr(raw.request.headers)]
    return "\n".join(parts)


_PKG = str(Path(cf.__file__).parent)


def _safe_repr(value) -> str:
    try:
        return repr(value)
    except Exception as e:  # noqa: BLE001 - e.g. a half-built object in its __init__
        return f"<repr failed: {type(e).__name__}>"


def _package_frame_locals(exc: BaseException) -> str:
    """The locals of the package's own frames, as error trackers (or ``pytest -l``) show
    them; the caller's frames are left out (a test's own ``key`` variable is not a leak)."""
    out, seen = [], set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        for frame, lineno in traceback.walk_tb(e.__traceback__):
            if frame.f_code.co_filename.startswith(_PKG):
                local = {k: _safe_repr(v) for k, v in frame.f_locals.items()}
                out.append(f"{frame.f_code.co_filename}:{lineno} {local}")
        todo += [e.__cause__, e.__context__]
    return "\n".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sb():
    with sandbox.serve(seed=11, customers=300) as server:
        yield server


@pytest.fixture(scope="module")
def pair(sb):
    return sb.commerce_connections()[0]


def client(sb, key=None, **kw) -> cf.CodatCommerce:
    kw.setdefault("retry_config", NO_RETRY)
    return cf.CodatCommerce(api_key=key or sb.api_key, server_url=sb.url, **kw)


# ------------------------------------------------------------------------------ reprs


def test_reprs_and_pickling(sb, pair):
    key = sb.api_key
    header = "Basic " + base64.b64encode(key.encode()).decode()
    for s in (client(sb), cf.CodatCommerce(auth_header=header, server_url=sb.url)):
        with s:
            t = s._transport
            objs = [s, t, t._auth, s.customers, s.companies, s.connections, s.retry_config,
                    s.stats, vars(s), vars(t), t.client, t.client.headers]  # fmt: skip
            frames = read_customers(s, *pair, progress=False)
            objs += [frames, frames.meta]
            texts = [repr(o) for o in objs] + [str(o) for o in objs]
            assert_clean("\n".join(texts), key, "a repr/str")
            with pytest.raises(TypeError) as info:
                pickle.dumps(s)
            assert_clean(exception_texts(info.value), key, "the pickling error")


# ------------------------------------------------------------------------------ exceptions


def _errors(sb, pair) -> list[tuple[str, str, BaseException]]:
    """(what, key in use, exception) for every kind of failure a user can meet."""
    out = []
    company_id, connection_id = pair
    req = {"company_id": company_id, "connection_id": connection_id}

    def catch(what: str, key: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            out.append((what, key, e))
        else:
            pytest.fail(f"{what}: no exception")

    wrong = "sk_live_" + "Z" * 30  # a key the sandbox refuses: 401
    with client(sb, wrong) as s:
        catch("401 list", wrong, lambda: s.customers.list(request=req))
        catch("401 read_customers", wrong, lambda: read_customers(s, *pair, progress=False))
        catch("401 async", wrong, lambda: asyncio.run(s.customers.list_async(request=req)))
    key = sb.api_key
    with client(sb) as s:
        catch("404", key, lambda: s.customers.get(request={**req, "customer_id": "nope"}))
        catch("bad input", key, lambda: s.customers.list(request={**req, "page": 0}))
        catch("bad uuid", key, lambda: read_customers(s, "x", connection_id, progress=False))
    with cf.CodatCommerce(api_key=key, server_url=f"http://127.0.0.1:{free_port()}",
                          retry_config=NO_RETRY) as s:  # fmt: skip
        catch("connection refused", key, lambda: s.customers.list(request=req))
        catch("connection refused (read)", key, lambda: read_customers(s, *pair, progress=False))
    for kinds in (["drop"], ["slow"], ["502-html"], ["503"], ["429"]):
        with sandbox.serve(seed=11, customers=50, fault_rate=1.0, fault_kinds=kinds,
                           slow_reply_s=0.4) as bad:  # fmt: skip
            k2 = bad.api_key
            p2 = bad.commerce_connections()[0]
            with client(bad, timeout_ms=100) as s:
                catch(f"fault {kinds[0]}", k2, lambda s=s, p2=p2: read_customers(
                    s, *p2, progress=False))  # fmt: skip
            with client(bad, timeout_ms=100, retry_config=FAST_RETRY) as s:
                s._transport.retry_config = cf.RetryConfig(
                    "backoff", cf.BackoffStrategy(1, 5, 1.1, 150), True
                )
                catch(f"fault {kinds[0]} after retries", k2,
                      lambda s=s, p2=p2: s.customers.list(request={
                          "company_id": p2[0], "connection_id": p2[1]}))  # fmt: skip
    for bad_args in ({"api_key": key, "auth_header": "Basic " + key},
                     {"auth_header": "Basic " + key + "\r\nX: y"},
                     {"api_key": key, "server_url": "ftp://x"},
                     {"api_key": key, "timeout_ms": -1}):  # fmt: skip
        catch(f"constructor {sorted(bad_args)}", key, lambda a=bad_args: cf.CodatCommerce(**a))
    return out


def test_exceptions_and_tracebacks(sb, pair):
    errors = _errors(sb, pair)
    kinds = {type(e) for _, _, e in errors}
    assert {models.ErrorMessage, models.SDKError, ValueError} <= kinds
    for what, key, exc in errors:
        texts = exception_texts(exc, frame_locals=not what.startswith("constructor"))
        assert_clean(texts, key, f"the exception of {what}")


# ------------------------------------------------------------------------------ logs, warnings


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(repr(record.args))


@pytest.fixture
def debug_logs():
    root = logging.getLogger()
    handler = _Capture()
    old = root.level
    touched = []
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict) + ["httpx", "httpcore", "codat_frames"]:
        lg = logging.getLogger(name)
        touched.append((lg, lg.level, lg.disabled))
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        for lg, level, disabled in touched:
            lg.setLevel(level)
            lg.disabled = disabled


def test_debug_logs_and_warnings(sb, pair, debug_logs, tmp_path):
    key = sb.api_key
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sandbox.serve(seed=11, customers=2000, fault_rate=0.3, slow_reply_s=0.3) as flaky:
            with client(flaky, retry_config=FAST_RETRY, timeout_ms=150) as s:
                p = flaky.commerce_connections()[0]
                read_customers(s, *p, page_size=100, progress=False)
                flaky.modify(*p, [0, 5])
                sync_customers(s, *p, tmp_path / "pq", progress=False)
                assert s.stats["retries"] > 0
            assert_clean("\n".join(debug_logs.lines), flaky.api_key, "the DEBUG logs (faults)")
        with client(sb) as s:
            read_customers(s, *pair, progress=False)
            list(s.companies.iter_all())
            with pytest.raises(cf.CodatError):
                s.customers.get(request={"company_id": pair[0], "connection_id": pair[1],
                                         "customer_id": "missing"})  # fmt: skip
    text = "\n".join(debug_logs.lines)
    assert "httpx" in text and "codat_frames" in text  # the capture did see every logger
    assert_clean(text, key, "the DEBUG logs")
    assert_clean("\n".join(str(w.message) for w in caught), key, "a warning")


# ------------------------------------------------------------------------------ parquet


def test_parquet_bytes(sb, pair, tmp_path):
    key = sb.api_key
    out = tmp_path / "pq"
    with client(sb) as s:
        to_parquet(read_customers(s, *pair, progress=False), out)
        sb.modify(*pair, [1, 2, 3], {"note": "touched"})
        sync_customers(s, *pair, out, progress=False)
        sync_customers(s, *pair, out, progress=False, full=True)
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.suffix == ".parquet" for f in files)
    for f in files:
        assert_clean(f.read_bytes(), key, f"file {f.relative_to(out)}")
        if f.suffix == ".parquet":
            md = pq.read_metadata(f).metadata or {}
            assert_clean(b"\n".join(k + b"=" + v for k, v in md.items()), key, f"metadata {f}")
            # decompressed values too (snappy would hide a string from the byte scan)
            assert_clean(repr(pq.read_table(f).to_pylist()), key, f"values of {f}")


# ------------------------------------------------------------------------------ widgets


def test_widget_state(sb, pair):
    pytest.importorskip("ipywidgets")
    from codat_frames.widgets import CompanyConnectionPicker, KeyPrompt

    def states(widget) -> str:
        out, todo = [], [widget]
        while todo:
            wdg = todo.pop()
            out.append(repr(wdg.get_state()))
            todo.extend(getattr(wdg, "children", ()))
        return "\n".join(out)

    wrong = "sk_live_" + "Q" * 30
    with client(sb, wrong) as s:
        picker = CompanyConnectionPicker(s)
        assert picker.error  # the 401 shows as a message
        assert_clean(states(picker) + repr(picker.error), wrong, "the picker's widget state")
    with client(sb) as s:
        picker = CompanyConnectionPicker(s)
        assert_clean(states(picker), sb.api_key, "the picker's widget state")
    prompt = KeyPrompt(server_url=sb.url)
    prompt.password.value = wrong  # triggers submit: refused (401)
    assert prompt.client is None
    assert_clean(states(prompt), wrong, "the key prompt's widget state")
    prompt.password.value = sb.api_key
    assert prompt.client is not None
    assert_clean(states(prompt), sb.api_key, "the key prompt's widget state")
    prompt.client.close()


# ------------------------------------------------------------------------------ CLI


def _cli_runs(sb, pair, tmp: Path) -> list[tuple[str, str, list[str]]]:
    """(name, the key in CODAT_API_KEY, argv) for every command, happy and failing paths."""
    company_id, connection_id = pair
    url = ["--server-url", sb.url]
    ids = ["--company-id", company_id, "--connection-id", connection_id]
    wrong = "sk_live_" + "W" * 30
    key = sb.api_key
    return [
        ("customers", key, ["customers", *ids, "--out", str(tmp / "c"), *url, "--progress"]),
        ("sync", key, ["sync", *ids, "--out", str(tmp / "s"), *url, "--progress"]),
        ("companies", key, ["companies", *url]),
        ("portfolio", key, ["portfolio", "--out", str(tmp / "p"), *url, "--workers", "2",
                            "--progress"]),  # fmt: skip
        ("customers 401", wrong, ["customers", *ids, "--out", str(tmp / "x"), *url]),
        ("companies 401", wrong, ["companies", *url]),
        ("customers bad id", key, ["customers", "--company-id", "../x", "--connection-id",
                                   connection_id, "--out", str(tmp / "z"), *url]),  # fmt: skip
        ("demo", key, ["demo", "--out", str(tmp / "d"), "--customers", "200", "--progress"]),
    ]


def test_cli_output_of_every_command(sb, pair, tmp_path):
    runs = _cli_runs(sb, pair, tmp_path)
    procs = []
    for name, key, argv in runs:
        env = {**os.environ, "CODAT_API_KEY": key, "PYTHONWARNINGS": "always"}
        procs.append((name, key, subprocess.Popen(
            [sys.executable, "-m", "codat_frames", *argv], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )))  # fmt: skip
        if len(procs) % 3 == 0:  # a few at a time: the machine has 2 cores
            procs[-3][2].wait(timeout=120)
    codes = {}
    for name, key, proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        codes[name] = proc.returncode
        assert_clean(stdout, key, f"`{name}` stdout")
        assert_clean(stderr, key, f"`{name}` stderr")
        # demo uses its own embedded sandbox (seed 1): its key must not show either
        assert_clean(stdout + stderr, sandbox.Sandbox(seed=1).api_key, f"`{name}` output")
    assert codes["customers"] == codes["sync"] == codes["companies"] == codes["demo"] == 0
    assert codes["portfolio"] == 0
    assert codes["customers 401"] == codes["companies 401"] == 1
    assert codes["customers bad id"] == 2
