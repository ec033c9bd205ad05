"""Where the system programs some tests drive are: nginx and Chromium.

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


# A test using one of these fixtures needs the program: fixture -> (finder, reason).
REQUIRED_BY_FIXTURE = {
    "nginx_bin": (nginx_binary, NGINX_MISSING),
    "proxied_board": (nginx_binary, NGINX_MISSING),
    "browser": (chromium_binary, CHROMIUM_MISSING),
}
