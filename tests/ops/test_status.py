"""``rtbus-server status``: every process of the running deployment, read from its runtime directory."""

from __future__ import annotations

import re

import pytest

from ops_helpers import ops_env
from rtbus.service import runtime
from rtbus.service.status import format_duration, render
from serverproc import run_cli, wait_until

pytestmark = pytest.mark.timeout(60)


def test_status_lists_every_process(ops_server, pg_cluster, ops_db):
    env = ops_env(pg_cluster, ops_db)

    def complete():
        result = run_cli(["status", f"--runtime-dir={ops_server.runtime_dir}"], env)
        if result.returncode != 0:
            return None
        pids = {int(m.group(2)): m.group(1) for m in
                re.finditer(r"^(master|http|gevent|cron)\s+(\d+)\s", result.stdout, re.M)}
        return result.stdout if set(ops_server.children()) | {ops_server.pid} <= set(pids) else None

    out = wait_until(complete, 15, message="a status listing every process")
    assert out.startswith(f"rtbus master {ops_server.pid}: up ")
    assert f"longpolling on 127.0.0.1:{ops_server.longpolling_port}" in out
    header = next(line for line in out.splitlines() if line.startswith("KIND"))
    assert header.split() == ["KIND", "PID", "AGE", "REQUESTS", "RSS", "SERVING"]
    for pid in ops_server.children_titled("rtbus: http worker"):
        row = next(line for line in out.splitlines() if re.match(rf"http\s+{pid}\s", line))
        assert re.search(r"\d+\.\d MiB", row), row


def test_status_when_nothing_runs(tmp_path, pg_cluster, ops_db):
    result = run_cli(["status", f"--runtime-dir={tmp_path}"], ops_env(pg_cluster, ops_db))
    assert result.returncode == 1
    assert "rtbus is not running here" in result.stderr


def test_status_needs_a_runtime_dir_with_port_0(pg_cluster, ops_db):
    result = run_cli(["status", "--http-port=0"], ops_env(pg_cluster, ops_db))
    assert result.returncode == 2
    assert "set runtime_dir" in result.stderr


def test_default_runtime_dir_is_per_port(monkeypatch):
    from rtbus.config import Config

    config = Config.defaults()
    assert runtime.deployment_dir(config, environ={"XDG_RUNTIME_DIR": "/run/user/7"}) == "/run/user/7/rtbus/8069"
    assert runtime.deployment_dir(config, 9000, environ={}).endswith("/9000")
    assert runtime.deployment_dir(config.replace(runtime_dir="/srv/x"), environ={}) == "/srv/x"


def test_a_runtime_dir_owned_by_another_user_is_refused(tmp_path):
    import os

    from rtbus.errors import StartupError

    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(StartupError, match="symlink"):
        runtime.prepare(str(link))
    if os.geteuid() == 0:
        os.chown(target, 12345, 12345)
        with pytest.raises(StartupError, match="belongs to uid 12345"):
            runtime.prepare(str(target))


def test_render_of_a_single_process():
    text = render({"kind": "single", "pid": 42, "started": 1000.0, "written": 1100.0,
                   "metrics": {"rtbus_process_resident_memory_bytes": 3 << 20}}, now=1101.0)
    assert text.splitlines()[0] == "rtbus single process 42: up 1m41s, serving every route"
    assert re.search(r"^single\s+42\s+1m41s\s+-\s+3\.0 MiB$", text, re.M)
    assert format_duration(90061) == "1d01h"


def test_render_tells_several_gevent_workers_apart():
    children = [{"kind": "gevent", "pid": pid, "age": 5.0, "requests": 0, "rss": 0, "slot": slot}
                for slot, pid in enumerate((51, 52))]
    text = render({"kind": "master", "pid": 50, "started": 1000.0, "written": 1100.0, "metrics": {},
                   "children": children + [{"kind": "http", "pid": 53, "age": 5.0, "slot": 0}]},
                  now=1100.0)
    assert re.search(r"^gevent 0\s+51\s", text, re.M) and re.search(r"^gevent 1\s+52\s", text, re.M)
    assert re.search(r"^http\s+53\s", text, re.M)


def test_status_of_a_single_process_deployment(pg_cluster, ops_db, tmp_path):
    from serverproc import ServerProcess

    runtime_dir = str(tmp_path / "run")
    env = ops_env(pg_cluster, ops_db)
    server = ServerProcess(["--workers=0", "--max-cron-threads=0", "--http-port=0",
                            f"--runtime-dir={runtime_dir}"], env, str(tmp_path / "single.log"))
    server.start()
    try:
        result = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(
            run_cli(["status", f"--runtime-dir={runtime_dir}"], env)), 15, message="a status")
        assert result.stdout.startswith(f"rtbus single process {server.pid}: up ")
        assert re.search(rf"^single\s+{server.pid}\s", result.stdout, re.M)
    finally:
        server.stop()
    # A clean stop leaves nothing behind for the next run to mistake for a live deployment.
    result = run_cli(["status", f"--runtime-dir={runtime_dir}"], env)
    assert result.returncode == 1
