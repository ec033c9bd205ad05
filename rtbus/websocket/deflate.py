"""permessage-deflate (RFC 7692) without I/O: negotiation, inflating client messages, and
compressing outgoing messages once for every connection that receives them.

Two choices make compression cheap for a bus, where one batch goes to many subscribers:

- The server always answers `server_no_context_takeover`: each outgoing message is
  compressed from an empty window, so its compressed bytes do not depend on what was
  sent before on that connection. One batch is compressed once and the same frame bytes
  are written to every subscriber that negotiated the same window size
  (`OutgoingMessage`).
- It always answers `client_no_context_takeover` too: each client message is inflated
  from an empty window by a decompressor that lives only while that message is being
  received (`MessageInflater`). An idle connection holds no zlib object, whatever it
  negotiated; its parameters are one of a few shared immutable objects.

Inflating never produces more than the message limit (plus one byte to notice the
excess): a small compressed message that would inflate to gigabytes is refused with
1009 after at most `limit` bytes of output.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import zlib
from collections.abc import Iterable

from rtbus.websocket.frames import CloseCode, Opcode, ProtocolError, encode_header

EXTENSION_NAME = "permessage-deflate"
# A sync flush ends with an empty stored block; RFC 7692 §7.2.1 drops its last 4 bytes on
# the wire, and the receiver appends them back before inflating.
_FLUSH_TAIL = b"\x00\x00\xff\xff"
MAX_WINDOW_BITS = 15
# zlib cannot deflate with a raw window of 2**8 (it refuses it; versions before 1.2.9
# silently used 2**9, which breaks the peer's limit): server_max_window_bits=8 is declined.
MIN_WINDOW_BITS = 9
# What one inflater costs while a compressed message is being received: zlib's 32 KiB
# window (inflating always uses the largest one, which reads streams made with any smaller
# window) and its state. Counted in the receive budget for fragmented compressed messages.
INFLATER_COST = 48 << 10


class _Declined(ValueError):
    """An extension offer we do not accept: the handshake goes on without compression."""


@functools.lru_cache(maxsize=8)   # one int object shared by every connection
def compressed_size_limit(max_message_size: int) -> int:
    """Largest compressed message whose inflated form can still fit `max_message_size`.

    Deflate grows incompressible data by 5 bytes per stored block (zlib's are 16 KiB or
    more; 4 KiB are allowed for here) plus a few bytes; the real check is on the inflated
    size.
    """
    return max_message_size + (max_message_size >> 12) * 5 + 64


@dataclasses.dataclass(frozen=True, slots=True)
class DeflateParams:
    """What a connection agreed: its server-to-client window. One shared object per size."""

    window_bits: int = MAX_WINDOW_BITS


_PARAMS = {bits: DeflateParams(bits) for bits in range(MIN_WINDOW_BITS, MAX_WINDOW_BITS + 1)}


# -- negotiation ---------------------------------------------------------------------------

# RFC 7230 tokens and quoted strings, as RFC 6455 §9.1 uses them.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf"\s*({_TOKEN})\s*(?:=\s*(?:({_TOKEN})|\"([^\"\\]*)\"))?\s*")


def parse_offers(header_values: Iterable[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Parse Sec-WebSocket-Extensions values into [(extension, [(param, value)])], in order.

    Several header lines read as one comma-separated list. Raises _Declined for text that
    does not follow the header's grammar (the caller then negotiates nothing).
    """
    offers = []
    for value in header_values:
        for item in _split_outside_quotes(value, ","):
            if not item.strip():
                continue                       # "a, , b": empty list elements are allowed
            name, *raw_params = _split_outside_quotes(item, ";")
            name = name.strip()
            if not re.fullmatch(_TOKEN, name):
                raise _Declined(f"invalid extension name {name!r}")
            params = []
            for raw in raw_params:
                match = _PARAM.fullmatch(raw)
                if match is None:
                    raise _Declined(f"invalid extension parameter {raw.strip()!r}")
                token_value, quoted_value = match.group(2), match.group(3)
                params.append((match.group(1).lower(),
                               token_value if quoted_value is None else quoted_value))
            offers.append((name.lower(), params))
    return offers


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, start, quoted = [], 0, False
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    if quoted:
        raise _Declined("unterminated quoted string")
    parts.append(text[start:])
    return parts


def _window_bits(value: str | None, *, required: bool) -> int | None:
    """A window size parameter's value: 8-15 (RFC 7692 §7.1.2); None when absent and allowed."""
    if value is None:
        if required:
            raise _Declined("needs a value")
        return None
    # A decimal integer from 8 to 15 without leading zeros (RFC 7692 §7.1.2.1).
    if not (re.fullmatch(r"[1-9][0-9]?", value) and 8 <= int(value) <= 15):
        raise _Declined(f"invalid window size {value!r}")
    return int(value)


def _accept(params: list[tuple[str, str | None]]) -> tuple[str, DeflateParams]:
    """Our answer to one permessage-deflate offer; _Declined when it must be declined."""
    seen: dict[str, str | None] = {}
    for name, value in params:
        if name in seen:
            raise _Declined(f"parameter {name} given twice")
        seen[name] = value
    server_bits = None
    for name, value in seen.items():
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                raise _Declined(f"{name} takes no value")
        elif name == "server_max_window_bits":
            server_bits = _window_bits(value, required=True)
        elif name == "client_max_window_bits":
            _window_bits(value, required=False)   # any size: we inflate with the largest window
        else:
            raise _Declined(f"unknown parameter {name}")
    answer = f"{EXTENSION_NAME}; server_no_context_takeover; client_no_context_takeover"
    if server_bits is None:
        return answer, _PARAMS[MAX_WINDOW_BITS]
    if server_bits < MIN_WINDOW_BITS:
        raise _Declined(f"a {server_bits}-bit window cannot be produced")
    return f"{answer}; server_max_window_bits={server_bits}", _PARAMS[server_bits]


def negotiate(header_values: Iterable[str]) -> tuple[str, DeflateParams] | None:
    """Accept the first acceptable permessage-deflate offer of a handshake.

    `header_values` are the request's Sec-WebSocket-Extensions lines. Returns the value of
    the response's Sec-WebSocket-Extensions header and the agreed parameters, or None when
    nothing can be accepted: no offer, only offers we must decline (RFC 7692 §5: unknown or
    repeated parameters, invalid values, a window we cannot produce), or a header that does
    not parse. Declining is never an error: the connection then runs uncompressed.
    """
    try:
        offers = parse_offers(header_values)
    except _Declined:
        return None
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            return _accept(params)
        except _Declined:
            continue
    return None


# -- inflating -----------------------------------------------------------------------------

class MessageInflater:
    """Inflates one compressed client message, frame by frame, up to `limit` bytes.

    Made for one message and dropped after it (client_no_context_takeover). Raises
    ProtocolError 1009 as soon as the output would exceed `limit` (having produced at most
    `limit + 1` bytes), and 1007 for data that is not a valid deflate stream.
    """

    __slots__ = ("_inflater", "limit", "remaining")

    def __init__(self, limit: int):
        self._inflater = zlib.decompressobj(-MAX_WINDOW_BITS)
        self.limit = limit
        self.remaining = limit

    def inflate(self, data: bytes, final: bool) -> bytes:
        """Return the bytes `data` (one frame's payload) inflates to; `final` on the last frame."""
        out = self._run(data) if data else b""
        if final:
            tail = self._run(_FLUSH_TAIL)
            if tail:
                out += tail
            # A stream the peer ended with BFINAL leaves our appended flush bytes unused;
            # anything else after the end of the stream is garbage.
            unused = self._inflater.unused_data
            if unused and not _FLUSH_TAIL.endswith(unused):
                raise ProtocolError(CloseCode.INCONSISTENT_DATA,
                                    "data follows the end of the compressed message")
        return out

    def _run(self, data: bytes) -> bytes:
        limit = self.remaining
        try:
            out = self._inflater.decompress(data, limit + 1)
        except zlib.error:
            raise ProtocolError(CloseCode.INCONSISTENT_DATA,
                                "the compressed message is not valid deflate data") from None
        if len(out) > limit:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG,
                                f"compressed message inflates to more than the limit of "
                                f"{self.limit} bytes")
        self.remaining = limit - len(out)
        return out


# -- compressing ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class CompressionPolicy:
    """When and how outgoing messages are compressed: one object per process.

    Messages shorter than `threshold` bytes go uncompressed (deflate saves little on them
    and costs a zlib stream each); `level` is zlib's 1 (fastest) to 9 (smallest).
    """

    threshold: int = 512
    level: int = 1

    def compress(self, payload: bytes, window_bits: int) -> bytes:
        """The payload as raw deflate data ending with a sync flush, its last 4 bytes cut."""
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, -window_bits)
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4]


class OutgoingMessage:
    """One message for any number of connections, framed at most once per variant.

    `frame(deflate)` returns the complete frame to write as is: uncompressed for a
    connection without permessage-deflate (`deflate` None) or when the payload is below the
    policy's threshold or does not shrink, compressed (RSV1 set) otherwise. Each variant
    (plain, and compressed per window size) is built on first use and kept, so a batch
    sent to a thousand subscribers is compressed once. Not thread-safe, and need not be:
    two threads racing would only build the same bytes twice.
    """

    __slots__ = ("payload", "opcode", "policy", "_plain", "_compressed")

    def __init__(self, payload: bytes, policy: CompressionPolicy | None,
                 opcode: Opcode = Opcode.TEXT):
        self.payload = payload
        self.opcode = opcode
        self.policy = policy            # None: never compressed
        self._plain: bytes | None = None
        self._compressed: dict[int, bytes] | None = None

    def frame(self, deflate: DeflateParams | None = None) -> bytes:
        policy = self.policy
        if deflate is None or policy is None or len(self.payload) < policy.threshold:
            return self.plain_frame()
        compressed = self._compressed
        if compressed is None:
            compressed = self._compressed = {}
        frame = compressed.get(deflate.window_bits)
        if frame is None:
            data = policy.compress(self.payload, deflate.window_bits)
            if len(data) < len(self.payload):
                frame = encode_header(0xC0 | self.opcode, len(data)) + data   # FIN + RSV1
            else:
                frame = self.plain_frame()
            compressed[deflate.window_bits] = frame
        return frame

    def plain_frame(self) -> bytes:
        frame = self._plain
        if frame is None:
            frame = self._plain = encode_header(0x80 | self.opcode, len(self.payload)) + self.payload
        return frame


def is_compressed_frame(frame: bytes) -> bool:
    """True when `frame` (one returned by `OutgoingMessage.frame`) carries compressed data."""
    return bool(frame[0] & 0x40)


class OutgoingMessages:
    """The OutgoingMessage of each recent payload, so that connections sending the same
    batch share its frames.

    ImDispatch encodes each distinct batch once and puts the same bytes in every
    subscriber's mailbox; each writer looks its batch up here and gets the one
    OutgoingMessage for it, so the batch is framed and compressed once per process. The
    lookup hashes the payload once (bytes cache their hash) and compares by identity first.
    Bounded by `MAX_ENTRIES` and `MAX_BYTES` of payload (each entry also keeps its frames,
    at most about twice that); the oldest entries go first, and a batch looked up after its
    entry went is simply framed again.
    """

    MAX_ENTRIES = 512
    MAX_BYTES = 8 << 20

    __slots__ = ("policy", "_messages", "_bytes")

    def __init__(self, policy: CompressionPolicy | None):
        self.policy = policy
        self._messages: dict[bytes, OutgoingMessage] = {}
        self._bytes = 0

    def get(self, payload: bytes) -> OutgoingMessage:
        """The text message for `payload` (UTF-8 bytes), made on first sight."""
        messages = self._messages
        message = messages.get(payload)
        if message is None:
            message = messages[payload] = OutgoingMessage(payload, self.policy)
            self._bytes += len(payload)
            while len(messages) > self.MAX_ENTRIES or (self._bytes > self.MAX_BYTES
                                                        and len(messages) > 1):
                oldest = next(iter(messages))
                del messages[oldest]
                self._bytes -= len(oldest)
        return message

    def __len__(self) -> int:
        return len(self._messages)
