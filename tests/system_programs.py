"""Where the system programs some tests drive are: nginx, Chromium, and network namespaces.

`make test` installs both where it can (scripts/ensure-program.sh); where it cannot,
the tests that need one are marked skipped at collection, with the reason
(see REQUIRED_BY_FIXTURE and the root conftest).
"""

from __future__ import annotations

import shutil

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")

NGINX_MISSING = ("nginx is not installed (make test installs it with scripts/ensure-program.sh where "
                 "apt-get can; otherwise install the nginx-light or nginx package)")
CHROMIUM_MISSING = ("Chromium is not installed (make test installs Debian's chromium package with "
                    "scripts/ensure-program.sh where apt-get can)")


NETNS_MISSING = ("network namespaces are not available (the keepalive fault test runs PostgreSQL's "
                 "link in one of its own: it needs unshare from util-linux, ip from iproute2, and "
                 "root or unprivileged user namespaces)")


def find_program(candidates: tuple[str, ...]) -> str | None:
    """The first of `candidates` found on PATH or as a path, or None."""
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def nginx_binary() -> str | None:
    return find_program(NGINX_CANDIDATES)


def chromium_binary() -> str | None:
    return find_program(CHROMIUM_CANDIDATES)


def netns_command() -> list[str] | None:
    """The command prefix that runs a program in a new network namespace where it may change
    routes (``unshare -n`` as root, ``unshare -rn`` otherwise), or None when that fails here."""
    import os
    import subprocess

    unshare, ip = shutil.which("unshare"), find_program(("ip", "/usr/sbin/ip", "/sbin/ip"))
    if unshare is None or ip is None:
        return None
    command = [unshare, "-n" if os.geteuid() == 0 else "-rn"]
    try:
        probe = subprocess.run([*command, ip, "link", "set", "lo", "up"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return command if probe.returncode == 0 else None


# A test using one of these fixtures needs the program: fixture -> (finder, reason).
REQUIRED_BY_FIXTURE = {
    "nginx_bin": (nginx_binary, NGINX_MISSING),
    "proxied_board": (nginx_binary, NGINX_MISSING),
    "browser": (chromium_binary, CHROMIUM_MISSING),
    "netns": (netns_command, NETNS_MISSING),
}
