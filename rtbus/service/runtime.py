"""The runtime directory of one deployment: where its processes leave status and metrics.

`runtime_dir` when set, used as given (like a pidfile, it must differ between
deployments); otherwise ``$XDG_RUNTIME_DIR/rtbus/<http_port>`` or
``/tmp/rtbus-<uid>/<http_port>``, so two deployments on one host (which cannot
share an HTTP port) never share a directory, and ``rtbus-server status`` run
with the same configuration finds it. The directory is private to the user
(mode 0700); one found owned by someone else, or as a symlink, is refused.
"""

from __future__ import annotations

import os
import stat

from rtbus.errors import ConfigError, StartupError


def deployment_dir(config, http_port: int | None = None, environ=os.environ) -> str:
    """The runtime directory of `config`'s deployment; `http_port` is the port actually bound.

    Raises ConfigError when it cannot be derived (no runtime_dir and port 0).
    """
    if config.runtime_dir:
        return os.path.abspath(config.runtime_dir)
    port = http_port if http_port is not None else config.http_port
    if not port:
        raise ConfigError("http_port is 0 (a free port picked at start): set runtime_dir so that "
                          "the processes and 'rtbus-server status' agree on a runtime directory")
    xdg = environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(xdg, "rtbus") if xdg else f"/tmp/rtbus-{os.geteuid()}"
    return os.path.join(base, str(port))


def prepare(path: str) -> str:
    """Create `path` (and a default base) private to this user; StartupError if unusable."""
    base = os.path.dirname(path)
    for directory in (base, path):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            if directory == base and os.path.isdir(base):
                continue
            raise StartupError(f"cannot create the runtime directory {directory}: {exc.strerror}") from None
    _check_owned(path)
    return path


def _check_owned(path: str) -> None:
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise StartupError(f"cannot use the runtime directory {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"the runtime directory {path} is not a directory (a symlink is refused)")
    if info.st_uid != os.geteuid():
        raise StartupError(f"the runtime directory {path} belongs to uid {info.st_uid}, "
                           f"not to this user ({os.geteuid()}): set runtime_dir elsewhere")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"the runtime directory {path} is not writable")


def claim(config, http_port: int | None = None) -> str:
    """Prepare the deployment's directory for a starting master (or single process).

    Refuses (StartupError) a directory that another live master or single process
    still writes to; otherwise clears the snapshots a previous run left behind.
    Returns the directory.
    """
    from rtbus.metrics import snapshots

    path = prepare(deployment_dir(config, http_port))
    owner = snapshots.live_owner(path)
    if owner is not None:
        raise StartupError(f"the runtime directory {path} is in use by rtbus process {owner}: "
                           f"give each deployment its own runtime_dir")
    snapshots.prune(path, keep={os.getpid()})
    return path


def release(path: str, *, remove_dir: bool) -> None:
    """Remove the snapshots left in `path` at a clean exit, and `path` itself if `remove_dir`
    (a default directory, which only this deployment uses)."""
    from rtbus.metrics import snapshots

    snapshots.prune(path, keep=set())
    if remove_dir:
        try:
            os.rmdir(path)
        except OSError:
            pass
