"""Shared fixtures: the sandbox (real loopback sockets) and clients bound to it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from sandbox_fixtures import make_sandbox, sandbox_http, sandbox_server  # noqa: E402, F401
