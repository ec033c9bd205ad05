"""An nginx with the Nchan module shaped for ``rtbus-bench --compare nchan:URL``.

One worker; websocket subscribers on ``/websocket`` for one channel (``bench`` by
default), each starting at the newest message; publishing by ``POST /pub/<channel>``.
Everything (configuration, pid file, logs, body buffers) lives in one temporary
directory. `NchanServer` starts it and stops only the nginx it started.

    python -m rtbus.bench.nchan --port 18272      # runs until Ctrl-C; prints its pid
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from rtbus.bench.probe import resolve_server_pids

NGINX = "/usr/sbin/nginx"
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
START_TIMEOUT = 10.0

NGINX_CONF = """\
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
load_module {module};
events {{ worker_connections 20000; }}
worker_rlimit_nofile 19000;
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  server {{
    listen 127.0.0.1:{port};
    location = /websocket {{
      nchan_subscriber websocket;
      nchan_channel_id {channel};
      nchan_subscriber_first_message newest;
    }}
    location ~ ^/pub/(.+)$ {{ nchan_publisher http; nchan_channel_id $1; }}
  }}
}}
"""


def available() -> str | None:
    """None when nginx and the Nchan module are installed, else what is missing."""
    for path in (NGINX, NCHAN_MODULE):
        if not os.path.exists(path):
            return f"{path} is not installed"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NchanServer:
    """``with NchanServer(port) as nchan:`` nginx runs, ``nchan.url`` and ``nchan.pid``
    (its master) are set; raises RuntimeError when it does not listen with its workers
    forked within 10 s."""

    def __init__(self, port: int = 0, channel: str = "bench", workers: int = 1):
        self.port = port or free_port()
        self.channel = channel
        self.workers = workers
        self.directory: str | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> "NchanServer":
        self.directory = tempfile.mkdtemp(prefix="rtbus-nchan-")
        conf = os.path.join(self.directory, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.directory, module=NCHAN_MODULE, port=self.port,
                                      channel=self.channel, workers=self.workers))
        self.process = subprocess.Popen(
            [NGINX, "-c", conf, "-e", os.path.join(self.directory, "error.log")],
            start_new_session=True, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self._listening() and self._serving()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.error_log()
                self.stop()
                raise RuntimeError(f"nginx with Nchan did not listen on {self.url} within "
                                   f"{START_TIMEOUT:.0f} s: {log[-300:]}")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def _serving(self) -> bool:
        """True once the master has forked its workers (it listens before that)."""
        try:
            resolve_server_pids(self.process.pid)
            return True
        except OSError:
            return False

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.directory, "error.log"), errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        """Stop the nginx this object started (its process group), then remove its files."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> "NchanServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rtbus.bench.nchan",
                                description="Run an nginx+Nchan for rtbus-bench --compare.")
    p.add_argument("--port", type=int, default=18272)
    p.add_argument("--channel", default="bench", help="the websocket location's channel")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    missing = available()
    if missing:
        sys.stderr.write(f"rtbus.bench.nchan: {missing}\n")
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    with NchanServer(args.port, args.channel, args.workers) as nchan:
        print(f"Nchan on {nchan.url}, nginx master pid {nchan.pid}: "
              f"rtbus-bench ... --compare nchan:{nchan.url} --compare-pid {nchan.pid}", flush=True)
        try:
            nchan.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
