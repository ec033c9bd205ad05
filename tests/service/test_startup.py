"""Start-up failures: one clear line, a non-zero exit within seconds, never a hang or a loop."""

from __future__ import annotations

import socket
import time

from serverproc import run_cli


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unknown_flag_exits_2_with_one_line(server_env):
    result = run_cli(["--bogus"], server_env)
    assert result.returncode == 2
    line = _one_error_line(result)
    assert line.startswith("rtbus-server: error:") and "--bogus" in line


def test_bad_value_exits_2_with_one_line(server_env):
    result = run_cli(["--workers=many"], server_env)
    assert result.returncode == 2
    assert "workers" in _one_error_line(result)


def test_unreadable_config_file_exits_2(server_env, tmp_path):
    result = run_cli(["-c", str(tmp_path / "missing.conf")], server_env)
    assert result.returncode == 2
    assert "missing.conf" in _one_error_line(result)


def test_conflicting_port_aliases_exit_2_naming_both(server_env):
    result = run_cli(["--gevent-port=8072", "--longpolling-port=8073"], server_env)
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "gevent" in line and "longpolling" in line and "8072" in line and "8073" in line


def test_port_in_use_fails_fast(server_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = run_cli(["--workers=1", f"--http-port={port}", "--gevent-port=0"], server_env)
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert f"{port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_fails_fast_in_single_mode(server_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["--workers=0", f"--http-port={port}"], server_env)
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_database_fails_fast(server_env):
    env = dict(server_env, RTBUS_DB_HOST="127.0.0.1", RTBUS_DB_PORT=str(_closed_port()))
    started = time.monotonic()
    result = run_cli(["--workers=1", "--http-port=0", "--gevent-port=0"], env)
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert "Traceback" not in result.stderr
    assert "127.0.0.1" in result.stderr


def test_wrong_credentials_fail_fast(server_env):
    env = dict(server_env, RTBUS_DB_USER="no_such_role")
    started = time.monotonic()
    result = run_cli(["--workers=1", "--http-port=0", "--gevent-port=0"], env)
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert "no_such_role" in result.stderr
    assert "Traceback" not in result.stderr


def test_initdb_is_idempotent(server_env, fresh_db):
    env = dict(server_env, RTBUS_DB_NAME=fresh_db)
    first = run_cli(["initdb"], env)
    assert first.returncode == 0, first.stderr
    second = run_cli(["initdb"], env)
    assert second.returncode == 0, second.stderr
    assert fresh_db in second.stdout
