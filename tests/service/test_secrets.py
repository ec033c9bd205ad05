"""The API key stays out of `ps`: read from a file (or the environment), and a key given on
the command line is gone from every process's command line once the server is up."""

from __future__ import annotations

import pytest

from http_client import post_json
from serverproc import run_cli

pytestmark = pytest.mark.timeout(90)

KEY = "k3y-that-must-not-show-" + "x" * 20


def visible_to_ps(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def every_process(server) -> list[int]:
    return [server.pid, *server.children()]


def publish(port: int, key: str):
    return post_json(port, "/bus/publish",
                     {"jsonrpc": "2.0", "method": "call", "id": 1,
                      "params": {"channel": "broadcast", "type": "secret.test"}},
                     {"Authorization": f"Bearer {key}"})


def test_the_key_file_keeps_the_key_out_of_ps_and_the_environment(start_server, schema_db, server_env,
                                                                   tmp_path):
    key_file = tmp_path / "bus.key"
    key_file.write_text(KEY + "\n")
    server = start_server("--workers=1", "--max-cron-threads=0", f"--bus-api-key-file={key_file}",
                          env=dict(server_env, RTBUS_DB_NAME=schema_db))
    status, _headers, answer = publish(server.http_port, KEY)
    assert status == 200 and answer["result"]["ids"], answer
    assert publish(server.http_port, KEY + "x")[0] == 403     # the first line, stripped, exactly
    for pid in every_process(server):
        assert KEY not in visible_to_ps(pid)
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert KEY.encode() not in f.read()


def test_a_key_on_the_command_line_is_gone_from_ps_and_a_warning_says_so(start_server, schema_db,
                                                                         server_env):
    server = start_server("--workers=1", "--max-cron-threads=0", f"--bus-api-key={KEY}",
                          env=dict(server_env, RTBUS_DB_NAME=schema_db))
    for pid in every_process(server):
        assert KEY not in visible_to_ps(pid), visible_to_ps(pid)
    server.wait_log(r"bus_api_key was given on the command line, which every local user can read")
    assert publish(server.http_port, KEY)[0] == 200


def test_a_key_and_a_key_file_together_are_refused(server_env, tmp_path):
    key_file = tmp_path / "bus.key"
    key_file.write_text(KEY)
    result = run_cli([f"--bus-api-key-file={key_file}", "budget"], dict(server_env, RTBUS_BUS_API_KEY=KEY))
    assert result.returncode == 2
    assert "bus_api_key (env RTBUS_BUS_API_KEY) and bus_api_key_file" in result.stderr
    assert KEY not in result.stderr


@pytest.mark.parametrize("content", [None, "", "\n\nkey-on-line-3"])
def test_a_missing_or_empty_key_file_is_refused(server_env, tmp_path, content):
    key_file = tmp_path / "bus.key"
    if content is not None:
        key_file.write_text(content)
    result = run_cli([f"--bus-api-key-file={key_file}", "budget"], server_env)
    assert result.returncode == 2
    assert str(key_file) in result.stderr and "Traceback" not in result.stderr
