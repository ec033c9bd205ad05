"""A PostgreSQL server that vanishes without closing is noticed in seconds, by the listening
connection and by the pool: a real fault (every packet dropped, no FIN, no RST) in a network
namespace of its own, against the real rtbus-server (see netfault.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serverproc import RTBUS_SERVER, clean_environ

pytestmark = pytest.mark.timeout(150)

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netfault.py")


@pytest.fixture
def netns():
    import system_programs

    return system_programs.netns_command()


def test_a_vanished_server_is_noticed_in_seconds(netns, pg_cluster, schema_db, tmp_path):
    kwargs = pg_cluster.connect_kwargs()
    env = clean_environ()
    env["RTBUS_DB_USER"] = kwargs["user"]
    spec = {"socket": f"{kwargs['host']}/.s.PGSQL.{kwargs['port']}", "db": schema_db,
            "program": RTBUS_SERVER, "env": env, "workdir": str(tmp_path), "hold": 3,
            "notice_timeout": 60,
            # idle 1 s, then 2 probes 1 s apart: a silent link is given up within ~3 s.
            "args": ["--db-keepalives-idle=1", "--db-keepalives-interval=1", "--db-keepalives-count=2",
                     "--db-tcp-user-timeout=3", "--db-connect-timeout=2"]}
    done = subprocess.run([*netns, sys.executable, DRIVER, json.dumps(spec)], capture_output=True,
                          text=True, timeout=140)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    tail = result.pop("log_tail")
    assert result["health_before"] == 200, tail
    # Without keepalives the LISTEN connection would wait for ever (libpq's default idle
    # time is the system's, two hours; the dispatcher's own fallback took a minute).
    assert result["noticed_after"] is not None and result["noticed_after"] < 10, (result, tail)
    assert result["restored_after"] is not None, (result, tail)
    # The pooled connection died during the outage too; it was replaced when lent, so the
    # first request after the outage did not fail on it.
    assert result["health_after"] == 200, (result, tail)
    assert result["dead_discarded"] >= 1, (result, tail)
