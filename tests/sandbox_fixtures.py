"""Sandbox fixtures (to be wired into conftest.py: ``from sandbox_fixtures import *``).

* ``sandbox_server``: one default sandbox (seed=1, default data) for the session. Don't mutate
  it: use ``make_sandbox`` for tests that change data or need knobs.
* ``sandbox_http``: an ``httpx.Client`` bound to it, with the Basic auth header.
* ``make_sandbox(**kwargs)``: start a private sandbox (same arguments as ``sandbox.serve``),
  stopped at the end of the test.
* ``sandbox_auth(sb)``: the headers a client must send.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from codat_frames import sandbox


def sandbox_auth(sb: sandbox.Sandbox) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(sb.api_key.encode()).decode()}


def sandbox_client(sb: sandbox.Sandbox, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("timeout", 10.0)
    return httpx.Client(base_url=sb.url, headers=sandbox_auth(sb), **kwargs)


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[sandbox.Sandbox]:
    with sandbox.serve(seed=1) as sb:
        yield sb


@pytest.fixture(scope="session")
def sandbox_http(sandbox_server: sandbox.Sandbox) -> Iterator[httpx.Client]:
    with sandbox_client(sandbox_server) as client:
        yield client


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., sandbox.Sandbox]]:
    started: list[sandbox.Sandbox] = []

    def make(**kwargs: Any) -> sandbox.Sandbox:
        sb = sandbox.Sandbox(**kwargs).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()
