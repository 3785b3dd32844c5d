"""The codat-frames command end to end against the sandbox: output, files, exit codes."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from codat_frames import cli, sandbox
from codat_frames.parquet import read_parquet


@pytest.fixture(scope="module")
def sb():
    with sandbox.serve(seed=2, customers=250) as server:
        yield server


@pytest.fixture
def env_key(sb, monkeypatch):
    monkeypatch.setenv("CODAT_API_KEY", sb.api_key)
    return sb.api_key


def run(*args: str) -> tuple[int, str, str]:
    """Run the real console entry point in a subprocess (as a user would)."""
    proc = subprocess.run(
        [sys.executable, "-m", "codat_frames", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_demo_writes_a_dataset_duckdb_reads(tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run("demo", "--out", str(out), "--no-progress")
    assert code == 0, stderr
    assert "customers:" in stdout and "top countries:" in stdout
    n = duckdb.sql(
        f"select count(*) from read_parquet('{out}/customers/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0][0]
    frames = read_parquet(out)
    assert n == len(frames.customers) > 0
    assert f"customers: {n:,}" in stdout


def test_customers_command(sb, env_key, tmp_path, capsys):
    company_id, connection_id = sb.commerce_connections()[1]
    out = tmp_path / "c"
    code = cli.main(["customers", "--company-id", company_id, "--connection-id", connection_id,
                     "--out", str(out), "--server-url", sb.url, "--no-progress"])  # fmt: skip
    assert code == 0
    frames = read_parquet(out, company_id, connection_id)
    assert len(frames.customers) == sb.customer_count(company_id, connection_id)
    assert f"customers: {len(frames.customers):,}" in capsys.readouterr().out


def test_sync_command_twice(sb, env_key, tmp_path, capsys):
    company_id, connection_id = sb.commerce_connections()[0]
    out = tmp_path / "s"
    args = ["sync", "--company-id", company_id, "--connection-id", connection_id,
            "--out", str(out), "--server-url", sb.url, "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    total = sb.customer_count(company_id, connection_id)
    assert f"inserted {total:,}" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert "inserted 0" in capsys.readouterr().out


def test_companies_table(sb, env_key, capsys):
    assert cli.main(["companies", "--server-url", sb.url]) == 0
    out = capsys.readouterr().out
    for company in sb.companies:
        assert company["id"] in out
    assert "Linked" in out and "PendingAuth" in out


def test_wrong_key_is_exit_1_with_message_and_no_traceback(sb, monkeypatch):
    monkeypatch.setenv("CODAT_API_KEY", "definitely-wrong-key")
    code, stdout, stderr = run("companies", "--server-url", sb.url)
    assert code == 1
    assert "401" in stderr and "Traceback" not in stderr
    for leak in ("definitely-wrong-key", base64.b64encode(b"definitely-wrong-key").decode()):
        assert leak not in stderr + stdout


@pytest.mark.parametrize(
    "args",
    [
        ["customers", "--company-id", "x"],  # missing options
        ["nosuchcommand"],
        ["sandbox", "--port", "-1"],
        ["sandbox", "--fault-rate", "2"],
        ["demo", "--customers", "0"],
    ],
)
def test_bad_usage_is_exit_2(args):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2


def test_invalid_ids_are_exit_2_before_any_request(sb, env_key, tmp_path, capsys):
    before = sb.stats.requests
    code = cli.main(["customers", "--company-id", "not-a-uuid", "--connection-id",
                     "also-bad", "--out", str(tmp_path / "x"), "--server-url", sb.url])  # fmt: skip
    assert code == 2
    assert "company_id" in capsys.readouterr().err
    assert sb.stats.requests == before
    assert not (tmp_path / "x").exists()


def test_missing_key_is_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CODAT_API_KEY", raising=False)
    assert cli.main(["companies"]) == 2
    assert "CODAT_API_KEY" in capsys.readouterr().err


def test_help_for_every_command():
    for command in ("demo", "customers", "sync", "companies", "sandbox", "portfolio"):
        code, stdout, _ = run(command, "--help")
        assert code == 0 and "usage: codat-frames" in stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "codat-frames"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("codat-frames ")


def test_sandbox_command_serves_the_seed_examples_until_interrupted():
    """`codat-frames sandbox --port N` in the foreground; the seed's list example reads it."""
    import signal
    import socket

    import codat_frames as cf

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "codat_frames", "sandbox", "--port", str(port), "--customers", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = []
        while not any("Press Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        key = next(x.split("CODAT_API_KEY=", 1)[1].strip() for x in lines if "CODAT_API_KEY=" in x)
        company_id, connection_id = next(
            x.split()[:2] for x in lines if x.startswith("  ") and "export" not in x
        )
        s = cf.CodatCommerce(api_key=key, server_url=f"http://127.0.0.1:{port}")
        res = s.customers.list(request={
            "company_id": company_id,
            "connection_id": connection_id,
            "order_by": "-modifiedDate",
            "page": 1,
            "page_size": 100,
        })  # fmt: skip
        assert res.total_results == 30 == len(res.results)
        s.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode in (0, 130) and "Stopping sandbox" in out
