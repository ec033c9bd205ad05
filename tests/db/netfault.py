"""A PostgreSQL that vanishes without a word, for the keepalive test: run inside a network
namespace of its own (``unshare -rn``), where silencing an address harms nobody else.

``python netfault.py SPEC`` (SPEC is JSON: the PostgreSQL Unix socket, the database, the
rtbus-server program, its extra environment and a work directory):

1. brings the namespace's loopback up and starts a TCP proxy on 127.0.0.2 in front of the
   PostgreSQL socket (sockets on the file system cross network namespaces);
2. starts ``rtbus-server --workers=0`` connecting through the proxy, waits until it serves,
   and has it use a pooled connection once (``/websocket/health?db_server_status=1``);
3. makes the proxy's address drop every packet, both ways (a policy route to a blackhole),
   and closes the proxy's sockets, whose FIN is dropped as well: the server vanished as a
   powered-off host does, without FIN or RST;
4. waits for rtbus to log that its LISTEN connection is lost, and measures how long it took;
5. lifts the blackhole, waits for the LISTEN connection to come back, and asks for a
   database health check once: the pooled connection that died meanwhile must have been
   noticed, not handed to this request.

Prints one JSON object with the measurements on stdout; the test decides.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from serverproc import http_get  # noqa: E402
from waiting import poll  # noqa: E402

PROXY_ADDRESS = "127.0.0.2"


def sh(command: str) -> None:
    subprocess.run(command, shell=True, check=True, capture_output=True)


class Proxy:
    """127.0.0.2:<port> → a Unix socket, one pair of pump threads per connection."""

    def __init__(self, target: str):
        self.target = target
        self.listener = socket.create_server((PROXY_ADDRESS, 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def vanish(self) -> None:
        """Drop every packet to or from the proxy's address, then forget its connections."""
        sh(f"ip rule add pref 10 from {PROXY_ADDRESS} table 100")
        sh(f"ip rule add pref 11 to {PROXY_ADDRESS} table 100")
        sh("ip route add blackhole default table 100")
        # The local table is consulted first by default: move it after our rules.
        sh("ip rule del pref 0")
        sh("ip rule add pref 20 table local")
        with self.lock:
            for sock in self.sockets:
                sock.close()
            self.sockets.clear()

    def come_back(self) -> None:
        sh("ip rule del pref 10")
        sh("ip rule del pref 11")


def wait_log(path: str, pattern: str, timeout: float, since: int = 0) -> float | None:
    """Seconds until `pattern` appears in the log after byte `since`, or None."""
    started = time.monotonic()
    regexp = re.compile(pattern)

    def logged():
        with open(path, "r", errors="replace") as log:
            log.seek(since)
            return regexp.search(log.read()) is not None

    return time.monotonic() - started if poll(logged, timeout) else None


def health(port: int) -> int:
    try:
        return http_get(port, "/websocket/health?db_server_status=1", timeout=20)[0]
    except OSError:
        return 0


def dead_connections(port: int) -> int | None:
    """rtbus_pool_dead_connections_total of the single process's own pool, from /metrics."""
    try:
        text = http_get(port, "/metrics", timeout=20)[2].decode()
    except OSError:
        return None
    match = re.search(r'^rtbus_pool_dead_connections_total\{[^}]*pool="single"\} (\d+)$', text, re.M)
    return int(match.group(1)) if match else None


def main() -> None:
    spec = json.loads(sys.argv[1])
    sh("ip link set lo up")
    proxy = Proxy(spec["socket"])
    log_path = os.path.join(spec["workdir"], "server.log")
    env = {**spec["env"], "RTBUS_DB_HOST": PROXY_ADDRESS, "RTBUS_DB_PORT": str(proxy.port),
           "RTBUS_DB_NAME": spec["db"]}
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [spec["program"], "--workers=0", "--max-cron-threads=0", "--http-port=0",
             f"--runtime-dir={os.path.join(spec['workdir'], 'run')}", *spec.get("args", [])],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    result: dict = {}
    try:
        if (wait_log(log_path, r"serving every route on", 30) is None
                or wait_log(log_path, r"ImDispatch listening on", 30) is None):
            raise SystemExit(f"rtbus-server did not start:\n{open(log_path).read()[-3000:]}")
        port = int(re.search(r"serving every route on [\d.]+:(\d+)", open(log_path).read()).group(1))
        result["health_before"] = health(port)
        offset = os.path.getsize(log_path)
        proxy.vanish()
        result["noticed_after"] = wait_log(log_path, r"ImDispatch lost its LISTEN connection",
                                           spec.get("notice_timeout", 90), offset)
        time.sleep(spec.get("hold", 0))      # bounded: how long the server stays away
        offset = os.path.getsize(log_path)
        proxy.come_back()
        result["restored_after"] = wait_log(log_path, r"ImDispatch LISTEN restored", 60, offset)
        result["health_after"] = health(port)
        result["dead_discarded"] = dead_connections(port)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    result["log_tail"] = open(log_path, errors="replace").read()[-2000:]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
