"""The request header block of the gevent process's HTTP/1.1 handler, read without `email`.

gevent's pywsgi reads request headers with `http.client.parse_headers`, which runs the
`email` package's feed parser over them: about a tenth of the evented process's CPU
during a ramp of websocket handshakes (py-spy, issue 17). `RequestHeaders.read` reads
the same block with the same limits and gives pywsgi the same interface
(`get`, `getheader`, `del`, `typeheader`, `headers`, `status`), with the values the
`email` parser's compat32 policy would give:

- at most `MAX_LINE` bytes per line (longer: `status` "Line too long", which pywsgi
  answers with 400) and `MAX_HEADERS` lines (more: `http.client.HTTPException`, as
  `parse_headers` raises);
- names are matched without regard to case, the first of repeated names wins in `get`;
- a value loses its leading blanks and its line end; a folded continuation line (one that
  starts with a blank) is kept, line end included, in the value it continues;
- a line that is neither a header nor a continuation ends the headers, as it would begin
  the body for `email` (what follows it is ignored); a header with an empty name, a
  continuation before any header and a "From " envelope line are dropped.
"""

from __future__ import annotations

import http.client
import re

MAX_LINE = 65536       # http.client._MAXLINE
MAX_HEADERS = 100      # http.client._MAXHEADERS
_END = (b"\r\n", b"\n", b"")
# The email package's header line: a name of printable ASCII without ':' (possibly
# empty), then ':'.
_NAME = re.compile(r"[\041-\071\073-\176]*:")


class RequestHeaders:
    """One request's header lines, in order, as (name, value) pairs."""

    __slots__ = ("_headers", "status")

    def __init__(self, pairs: list[tuple[str, str]] | None = None, status: str = ""):
        self._headers = pairs if pairs is not None else []
        self.status = status

    @classmethod
    def read(cls, fp, *_ignored) -> "RequestHeaders":
        """Read the header block from binary file `fp`, up to its empty line."""
        lines = []
        while True:
            line = fp.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                return cls(status="Line too long")
            lines.append(line)
            if len(lines) > MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
            if line in _END:
                break
        return cls(_parse([line.decode("iso-8859-1") for line in lines[:-1]]))

    def get(self, name: str, default=None):
        name = name.lower()
        for key, value in self._headers:
            if key.lower() == name:
                return value
        return default

    getheader = get

    def __delitem__(self, name: str) -> None:
        # Like email.message.Message: every occurrence goes, and a missing name is no error.
        name = name.lower()
        self._headers = [(k, v) for k, v in self._headers if k.lower() != name]

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def items(self) -> list[tuple[str, str]]:
        return list(self._headers)

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")

    @property
    def headers(self):
        """The lines as pywsgi's environ builder reads them: "Name: value\\r\\n"."""
        for key, value in self._headers:
            yield f"{key}: {value}\r\n"


def _parse(lines: list[str]) -> list[tuple[str, str]]:
    pairs: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if pairs:
                pairs[-1][1] += line
            continue       # a continuation with nothing to continue is dropped
        if line.startswith("From "):
            continue       # a Unix mailbox envelope line: email drops it too
        if not _NAME.match(line):
            break          # email starts the body here
        name, _, value = line.partition(":")
        if name:           # an empty name is dropped
            pairs.append([name, value.lstrip(" \t")])
    return [(name, value.rstrip("\r\n")) for name, value in pairs]
