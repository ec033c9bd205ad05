"""Logging set-up: Odoo-like lines on stderr or a rotatable log file.

A line reads ``2026-11-23 02:22:06,123 4242 INFO mydb rtbus.service.master: message``:
time, pid, level, database (``?`` outside a database context), logger, message.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import sys

LINE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(dbname)s %(name)s: %(message)s"

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The database a log line is about, set by whoever serves a request for it.
current_dbname: contextvars.ContextVar[str] = contextvars.ContextVar("rtbus_dbname", default="?")


class _DbnameFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "dbname"):
            record.dbname = current_dbname.get()
        return True


def setup_logging(level: str = "info", logfile: str | None = None) -> None:
    """Route every log record to stderr, or to `logfile` when given.

    The file handler reopens the file when an external tool (logrotate) moved
    it away. Calling this again replaces the previous handlers, so a reloaded
    configuration takes effect.
    """
    if logfile:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(logfile)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    handler.addFilter(_DbnameFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    # No line shows the thread, and in a greenlet threading.current_thread() builds a
    # _DummyThread for every record: 6 % of a gevent process's CPU in a ramp of
    # websocket handshakes (one access line each), py-spy, issue 17.
    logging.logThreads = False
    root.setLevel(LEVELS.get(level, logging.INFO))
    logging.captureWarnings(True)


def log_notes(logger: logging.Logger, notes) -> None:
    """Log the configuration notes collected before logging existed."""
    for note in notes:
        if note.startswith("unknown option") or "ignored" in note:
            logger.warning("%s", note)
        else:
            logger.info("%s", note)
