"""Fixtures that start real rtbus-server processes against the test cluster."""

from __future__ import annotations

import pytest

from serverproc import ServerProcess, clean_environ


@pytest.fixture
def server_env(pg_env) -> dict[str, str]:
    env = clean_environ()
    env.update(pg_env)
    return env


@pytest.fixture
def start_server(server_env, tmp_path):
    """Factory: ``start_server(*args, env=None, wait=True)`` → a started ServerProcess.

    Every server is stopped (SIGTERM, then SIGKILL of its process group) at teardown.
    """
    started: list[ServerProcess] = []

    def start(*args: str, env: dict | None = None, wait: bool = True, name: str = "server") -> ServerProcess:
        log_path = str(tmp_path / f"{name}-{len(started)}.log")
        server = ServerProcess(["--http-port=0", "--gevent-port=0", *args],
                               env if env is not None else server_env, log_path)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop(timeout=20)
