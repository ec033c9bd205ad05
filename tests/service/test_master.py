"""The prefork master with real processes and real signals."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import time

import pytest

from serverproc import children_of, health_ok, http_get, is_alive, wait_until

HTTP = "rtbus: http worker"
GEVENT = "rtbus: gevent"
CRON = "rtbus: cron"


def freeze_until_replaced(server, title: str, victim: int, timeout: float) -> None:
    """SIGSTOP `victim` and wait until the master has replaced it by another `title` child."""
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_until(lambda: [p for p in server.children_titled(title) if p != victim], timeout,
                   message=f"the frozen {title} process {victim} replaced")
    finally:
        if is_alive(victim):
            os.kill(victim, signal.SIGCONT)


@pytest.fixture(scope="module")
def shared_server(pg_cluster, tmp_path_factory):
    """One prefork server shared by the tests that only kill and count children."""
    import pgcluster
    from serverproc import ServerProcess, clean_environ

    env = clean_environ()
    env.update(pgcluster.env_for(pg_cluster))
    log = str(tmp_path_factory.mktemp("shared") / "server.log")
    server = ServerProcess(["--workers=2", "--max-cron-threads=1", "--http-port=0", "--longpolling-port=0",
                            "--gevent-watchdog-timeout=3"], env, log)
    server.start()
    yield server
    server.stop(timeout=20)


def test_process_tree(shared_server):
    wait_until(lambda: len(shared_server.children_titled(HTTP)) == 2, 10, message="2 http workers")
    assert len(shared_server.children_titled(GEVENT)) == 1
    assert len(shared_server.children_titled(CRON)) == 1
    assert len(shared_server.children()) == 4
    with open(f"/proc/{shared_server.pid}/cmdline", "rb") as f:
        assert f.read().startswith(b"rtbus: master")


def test_health_on_both_ports_sets_no_cookie(shared_server):
    for port in (shared_server.http_port, shared_server.longpolling_port):
        status, headers, body = http_get(port, "/websocket/health")
        assert status == 200
        assert json.loads(body) == {"status": "pass"}
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-store"
        assert "Set-Cookie" not in headers


def test_log_names_the_alias_used_for_the_longpolling_port(shared_server):
    shared_server.wait_log(r"gevent_port = 0 \(set by --longpolling-port")


def test_killed_http_worker_is_replaced_within_2s(shared_server):
    wait_until(lambda: len(shared_server.children_titled(HTTP)) == 2, 10, message="2 http workers")
    victim = shared_server.children_titled(HTTP)[0]
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    wait_until(lambda: len(shared_server.children_titled(HTTP)) == 2 and victim not in shared_server.children(),
               2.0, message="a replacement http worker")
    assert time.monotonic() - started < 2.0
    shared_server.wait_log(rf"http worker {victim} died \(signal SIGKILL\); respawning")
    assert health_ok(shared_server.http_port)


def test_killed_gevent_process_is_replaced_within_2s(shared_server):
    (victim,) = shared_server.children_titled(GEVENT)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: [p for p in shared_server.children_titled(GEVENT) if p != victim], 2.0,
               message="a replacement gevent process")
    wait_until(lambda: health_ok(shared_server.longpolling_port), 5, message="longpolling health")


def test_ttin_and_ttou_change_the_number_of_http_workers(shared_server):
    wait_until(lambda: len(shared_server.children_titled(HTTP)) == 2, 10, message="2 http workers")
    shared_server.signal(signal.SIGTTIN)
    wait_until(lambda: len(shared_server.children_titled(HTTP)) == 3, 5, message="3 http workers")
    shared_server.signal(signal.SIGTTOU)
    wait_until(lambda: len(shared_server.children_titled(HTTP)) == 2, 5, message="back to 2 http workers")
    shared_server.wait_log(r"SIGTTOU: 2 HTTP workers wanted")


def test_blocked_gevent_loop_is_detected_and_replaced(shared_server):
    # SIGSTOP freezes the event loop (and everything else) of the gevent
    # process: only the master, in another process, can notice.
    (victim,) = shared_server.children_titled(GEVENT)
    freeze_until_replaced(shared_server, GEVENT, victim, timeout=10)
    shared_server.wait_log(rf"gevent process {victim} killed: gevent_watchdog_timeout \(3 s\) exceeded")
    wait_until(lambda: health_ok(shared_server.longpolling_port), 5, message="longpolling health")


def test_sigquit_stops_any_child_fast_and_it_is_respawned(shared_server):
    # One stop protocol for every kind (rtbus.service.child): QUIT drops what is in
    # progress and exits 0; the master, which did not ask, respawns the child.
    wait_until(lambda: len(shared_server.children()) == 4, 10, message="4 children")
    victims = {title: shared_server.children_titled(title)[0] for title in (HTTP, CRON, GEVENT)}
    for pid in victims.values():
        os.kill(pid, signal.SIGQUIT)
    for title, pid in victims.items():
        name = {HTTP: "http worker", CRON: "cron worker", GEVENT: "gevent process"}[title]
        shared_server.wait_log(rf"{name} {pid} exited \(exit status 0\); respawning")
    shared_server.wait_log(r"SIGQUIT: stopping fast")
    wait_until(lambda: len(shared_server.children()) == 4 and not set(victims.values()) & set(shared_server.children()),
               10, message="the three replaced")
    wait_until(lambda: health_ok(shared_server.longpolling_port), 5, message="longpolling health")


def test_gevent_process_past_its_soft_memory_limit_is_recycled(start_server):
    server = start_server("--workers=1", "--max-cron-threads=0", "--limit-memory-soft-gevent=64M")
    (first,) = server.children_titled(GEVENT)
    server.wait_log(r"limit_memory_soft_gevent reached \(\d+ > 67108864 bytes\): stopping gracefully")
    server.wait_log(rf"gevent process {first} exited \(exit status 0\); respawning")
    wait_until(lambda: [p for p in server.children_titled(GEVENT) if p != first], 10,
               message="a fresh gevent process")


def test_stuck_http_worker_is_killed_after_limit_time_real(start_server):
    server = start_server("--workers=1", "--max-cron-threads=0", "--limit-time-real=2")
    (victim,) = server.children_titled(HTTP)
    freeze_until_replaced(server, HTTP, victim, timeout=8)
    server.wait_log(rf"http worker {victim} killed: no heartbeat for")
    assert health_ok(server.http_port)


def test_limit_request_recycles_the_worker(start_server):
    server = start_server("--workers=1", "--max-cron-threads=0", "--limit-request=3")
    (first,) = server.children_titled(HTTP)
    for _ in range(3):
        assert health_ok(server.http_port)
    server.wait_log(rf"http worker {first} exits: limit_request reached \(3 requests\)")
    wait_until(lambda: server.children_titled(HTTP) and first not in server.children(), 5,
               message="a fresh http worker")
    assert health_ok(server.http_port)


def test_sigterm_stops_every_child_and_frees_the_ports(start_server):
    server = start_server("--workers=2", "--max-cron-threads=1")
    children = list(server.children())
    assert len(children) == 4
    ports = (server.http_port, server.longpolling_port)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    for pid in children:
        assert not is_alive(pid), f"child {pid} outlived the master"
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))   # raises if anything still listens
    log = server.log()
    assert "stopping gracefully" in log
    assert "Traceback" not in log


def test_gevent_process_stops_gracefully_on_sigterm(start_server):
    server = start_server("--workers=1", "--max-cron-threads=0")
    (gevent_pid,) = server.children_titled(GEVENT)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    log = server.log()
    assert f"gevent process {gevent_pid} stopped (exit status 0)" in log
    assert "SIGKILL" not in log


def test_hup_applies_a_changed_setting(start_server, tmp_path):
    conf = tmp_path / "rtbus.conf"
    conf.write_text("[options]\nworkers = 1\nmax_cron_threads = 0\n")
    server = start_server("-c", str(conf))
    (old_worker,) = server.children_titled(HTTP)
    (old_gevent,) = server.children_titled(GEVENT)
    conf.write_text("[options]\nworkers = 3\nmax_cron_threads = 0\n")
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(server.children_titled(HTTP)) == 3 and old_worker not in server.children(), 10,
               message="3 new http workers")
    wait_until(lambda: server.children_titled(GEVENT) and old_gevent not in server.children(), 10,
               message="a new gevent process")
    server.wait_log(r"SIGHUP: configuration re-read")
    # The listening sockets were kept: the same ports answer.
    assert health_ok(server.http_port)
    wait_until(lambda: health_ok(server.longpolling_port), 5, message="longpolling health")


def test_hup_with_a_broken_configuration_keeps_running(start_server, tmp_path):
    conf = tmp_path / "rtbus.conf"
    conf.write_text("[options]\nworkers = 1\nmax_cron_threads = 0\n")
    server = start_server("-c", str(conf))
    before = set(server.children())
    conf.write_text("[options]\nworkers = lots\n")
    server.signal(signal.SIGHUP)
    server.wait_log(r"SIGHUP: configuration refused, keeping the running one")
    assert set(server.children()) == before
    assert health_ok(server.http_port)


def test_a_child_dying_at_boot_is_respawned_with_backoff(start_server):
    # 40 MiB of address space cannot even hold the interpreter and gevent:
    # the gevent process dies at boot every time.
    server = start_server("--workers=1", "--max-cron-threads=0", "--limit-memory-hard-gevent=40M", wait=False)
    server.read_ports()
    server.wait_log(r"gevent process \d+ died during boot .* respawning in 2\.0 s", timeout=20)
    deaths = [(datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"), float(delay)) for stamp, delay
              in re.findall(r"^(\S+ \S+) .*died during boot .* respawning in ([\d.]+) s$", server.log(), re.M)]
    assert [delay for _, delay in deaths[:3]] == [0.5, 1.0, 2.0]
    for (died, delay), (next_died, _) in zip(deaths, deaths[1:3]):       # each delay was waited
        assert (next_died - died).total_seconds() >= delay, f"the master spins: {deaths}"
    assert server.proc.poll() is None   # the master itself stays up
    assert health_ok(server.http_port)


def test_master_exit_takes_no_orphans_with_it(start_server):
    server = start_server("--workers=1", "--max-cron-threads=1")
    children = list(server.children())
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    # Orphaned children notice that their master is gone and leave by themselves.
    wait_until(lambda: not any(is_alive(pid) for pid in children), 10, message="orphans to exit")
    assert children_of(server.pid) == {}


def test_request_stuck_on_a_lock_is_killed_and_named(start_server, server_env, pg_cluster, fresh_db):
    # The runbook's storm: a worker blocked on a database lock past limit_time_real.
    import threading

    from http_client import post_json

    env = dict(server_env, RTBUS_DB_NAME=fresh_db, RTBUS_BUS_API_KEY="k")
    server = start_server("--workers=1", "--max-cron-threads=0", "--limit-time-real=2", env=env)
    (victim,) = server.children_titled(HTTP)
    locker = pg_cluster.connect(fresh_db)
    try:
        with locker.cursor() as cr:
            cr.execute("LOCK TABLE bus_bus IN ACCESS EXCLUSIVE MODE")
        body = {"jsonrpc": "2.0", "method": "call", "id": 1,
                "params": {"channel": "broadcast", "type": "stuck"}}
        stuck = threading.Thread(target=post_json, daemon=True,
                                 args=(server.http_port, "/bus/publish", body, {"Authorization": "Bearer k"}))
        stuck.start()
        server.wait_log(rf"http worker {victim} killed: limit_time_real \(2 s\) exceeded: "
                        rf"serving POST /bus/publish for [\d.]+ s")
    finally:
        locker.rollback()
        locker.close()
    wait_until(lambda: [p for p in server.children_titled(HTTP) if p != victim], 5, message="a new worker")
    assert health_ok(server.http_port)


def test_dead_database_gives_503_not_a_traceback(crash_cluster, tmp_path):
    import pgcluster
    from http_client import post_json
    from serverproc import ServerProcess, clean_environ

    env = clean_environ()
    env.update(pgcluster.env_for(crash_cluster), RTBUS_BUS_API_KEY="k")
    server = ServerProcess(["--workers=1", "--max-cron-threads=0", "--http-port=0", "--gevent-port=0"],
                           env, str(tmp_path / "server.log"))
    body = {"jsonrpc": "2.0", "method": "call", "id": 1, "params": {"channel": "broadcast", "type": "x"}}
    auth = {"Authorization": "Bearer k"}
    try:
        server.start()
        assert post_json(server.http_port, "/bus/publish", body, auth)[0] == 200
        crash_cluster.stop()
        status, headers, reply = post_json(server.http_port, "/bus/publish", body, auth)
        assert status == 503
        assert headers["Retry-After"]
        assert reply["error"]["data"]["name"].startswith("psycopg2")
        crash_cluster.start()
        # The broken connection was discarded: the next call works again.
        wait_until(lambda: post_json(server.http_port, "/bus/publish", body, auth)[0] == 200, 10,
                   message="publishing to work again")
        assert "Traceback" not in server.log()
    finally:
        server.stop()
        if not crash_cluster.is_running():
            crash_cluster.start()
