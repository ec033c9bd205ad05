"""RFC 6455 frames: opcodes, close codes, the frame dataclass, an incremental parser and
the close-frame payload codec.

Sans-I/O: every function here takes and returns bytes. The parser enforces the rules a
server applies to client frames (masking, reserved bits, control-frame limits, a size
limit checked from the header alone) and raises `ProtocolError` carrying the close code
the connection must be closed with.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable

from rtbus.errors import ProtocolError
from rtbus.websocket.codes import CloseCode

__all__ = ["CloseCode", "ProtocolError"]  # imported from here by the codec's users

MAX_CONTROL_PAYLOAD = 125
# A close payload is a 2-byte code followed by the reason; both fit in a control frame.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})


# Codes 3000-4999 belong to libraries and applications; IANA-registered codes outside
# that range are valid on the wire only if they are among the ones named above.
_APPLICATION_CODES = range(3000, 5000)
_WIRE_CODES = frozenset(CloseCode) - {CloseCode.ABNORMAL_CLOSURE}


def is_valid_close_code(code: int) -> bool:
    """True when `code` may appear in a close frame on the wire."""
    return code in _WIRE_CODES or code in _APPLICATION_CODES


_OPCODES = {int(op): op for op in Opcode}
# _XOR_TABLES[k] maps every byte b to b ^ k.
_XOR_TABLES = tuple(bytes(b ^ k for b in range(256)) for k in range(256))
_TRANSLATE_THRESHOLD = 2048   # bytes; measured crossover of the two unmasking methods
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """Return `data` XORed with the 4-byte `mask` repeated (masking and unmasking alike)."""
    length = len(data)
    if length < _TRANSLATE_THRESHOLD:
        if not length:
            return b""
        # XOR as two big integers: CPython converts and XORs them in C.
        words, extra = divmod(length, 4)
        key = mask * words + mask[:extra]
        xored = int.from_bytes(data, "little") ^ int.from_bytes(key, "little")
        return xored.to_bytes(length, "little")
    # Every 4th byte is XORed with the same key byte, and XOR with a constant byte is a
    # byte translation: four strided translate() calls, all in C, twice as fast as the
    # bigint route once payloads reach a few KiB.
    out = bytearray(data)
    for offset in range(4):
        out[offset::4] = out[offset::4].translate(_XOR_TABLES[mask[offset]])
    return bytes(out)


def encode_header(first_byte: int, length: int, mask_bit: int = 0) -> bytes:
    """Return a frame header: `first_byte` (FIN, RSV, opcode), then the shortest length form.

    `mask_bit` is 0x80 when a masking key follows (the caller appends it).
    """
    if length < 126:
        return bytes((first_byte, mask_bit | length))
    if length < 0x10000:
        return _HEADER_16.pack(first_byte, mask_bit | 126, length)
    return _HEADER_64.pack(first_byte, mask_bit | 127, length)


@dataclasses.dataclass(slots=True)   # not frozen: a frozen __init__ costs 1 µs per frame
class Frame:
    """One frame as it travels on the wire, payload already unmasked."""

    fin: bool
    opcode: Opcode
    payload: bytes = b""
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False

    def serialize(self, mask: bytes | None = None) -> bytes:
        """Return the frame's bytes, masked with the 4-byte `mask` when one is given.

        Servers send unmasked frames; masking is for test and benchmark clients. Nothing
        is validated, so tests can build malformed frames (unknown opcodes, RSV bits,
        oversized control frames) on purpose.
        """
        first = ((0x80 if self.fin else 0) | (0x40 if self.rsv1 else 0)
                 | (0x20 if self.rsv2 else 0) | (0x10 if self.rsv3 else 0) | int(self.opcode))
        if mask is None:
            return encode_header(first, len(self.payload)) + self.payload
        if len(mask) != 4:
            raise ValueError(f"a masking key is 4 bytes, not {len(mask)}")
        return encode_header(first, len(self.payload), 0x80) + mask + apply_mask(self.payload, mask)

    @classmethod
    def parse(cls, data: bytes, *, require_mask: bool = False,
              max_frame_size: int = 2**63 - 1) -> Frame:
        """Parse exactly one complete frame from `data`.

        Raises ProtocolError for a frame that breaks the rules (see FrameParser) and
        ValueError when `data` holds less or more than one frame.
        """
        parser = FrameParser(max_frame_size, require_mask=require_mask)
        parser.append(data)
        frame = parser.next_frame()
        if frame is None or parser.buffered:
            raise ValueError("data does not hold exactly one complete frame")
        return frame


# (opcode, fin, rsv1, payload length) -> None, or raises ProtocolError.
HeaderCheck = Callable[[Opcode, bool, bool, int], None]


class FrameParser:
    """Turn a byte stream into frames, incrementally.

    `max_frame_size` bounds a frame's payload; the check runs on the declared length as
    soon as the header is complete, so an oversized payload is never buffered.
    `require_mask` (server side) refuses unmasked frames. `allow_rsv1` (permessage-deflate
    was negotiated) lets the first frame of a data message carry RSV1, "compressed"; it
    stays an error on control frames and continuations (RFC 7692 §6.1), and RSV2/RSV3
    always are. `check_header`, when given, is called with (opcode, fin, rsv1, length) for
    every header that passed these checks, before its payload is buffered; it may raise
    ProtocolError (the connection uses it to check fragment order and the running message
    size).

    Errors are raised as ProtocolError with the close code to use. After an error the
    parser's state is undefined: the connection is over.
    """

    __slots__ = ("max_frame_size", "require_mask", "check_header", "allow_rsv1", "_buffer",
                 "_header")

    def __init__(self, max_frame_size: int, require_mask: bool = True,
                 check_header: HeaderCheck | None = None, allow_rsv1: bool = False):
        self.max_frame_size = max_frame_size
        self.require_mask = require_mask
        self.check_header = check_header
        self.allow_rsv1 = allow_rsv1
        self._buffer = bytearray()
        # (fin, opcode, length, mask, rsv1) of the frame whose payload is awaited, if any.
        self._header: tuple[bool, Opcode, int, bytes | None, bool] | None = None

    @property
    def buffered(self) -> int:
        """Number of received bytes not yet returned as part of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Buffer `data` and return every frame it completes.

        Raises ProtocolError at the first bad frame; frames completed before it in the
        same call are then lost, so a caller that must act on them uses `append` and
        `next_frame` instead.
        """
        self.append(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def append(self, data: bytes) -> None:
        """Buffer `data` without parsing it."""
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None until more data is appended."""
        header = self._header
        if header is None:
            header = self._header = self._read_header()
            if header is None:
                return None
        fin, opcode, length, mask, rsv1 = header
        buffer = self._buffer
        if len(buffer) < length:
            return None
        if mask is None:
            payload = bytes(buffer[:length])
        else:
            # The view must be released before the bytearray is resized below.
            with memoryview(buffer) as view, view[:length] as part:
                payload = apply_mask(part, mask)
        del buffer[:length]   # CPython drops a bytearray's head without moving the tail
        self._header = None
        return Frame(fin, opcode, payload, rsv1)

    def clear(self) -> None:
        """Forget every buffered byte (the connection is over; release the memory now)."""
        self._buffer = bytearray()
        self._header = None

    def _read_header(self) -> tuple[bool, Opcode, int, bytes | None, bool] | None:
        """Validate and consume the header at the head of the buffer, or return None
        while it is incomplete. Every check that needs only the bytes seen so far runs
        at once, so a bad frame is refused before the rest of its header arrives."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        fin = bool(first & 0x80)
        masked = bool(second & 0x80)
        length = second & 0x7F
        if self.require_mask and not masked:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "frames from the client must be masked")
        rsv1 = bool(first & 0x40)
        if first & 0x30 or (rsv1 and not self.allow_rsv1):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                "reserved bits must be zero: no extension using them was "
                                "negotiated")
        opcode = _OPCODES.get(first & 0x0F)
        if opcode is None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {first & 0x0F:#x}")
        if rsv1 and (opcode in CONTROL_OPCODES or opcode is Opcode.CONTINUATION):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                f"RSV1 (compressed) is set on a {opcode.name} frame: only the "
                                "first frame of a data message may carry it")
        if opcode in CONTROL_OPCODES:
            if not fin:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    "control frames must not be fragmented")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    f"a control frame carries at most {MAX_CONTROL_PAYLOAD} bytes")
        size = 2
        if length == 126:
            size = 4
            if len(buffer) < size:
                return None
            (length,) = _U16.unpack_from(buffer, 2)
        elif length == 127:
            size = 10
            if len(buffer) < size:
                return None
            (length,) = _U64.unpack_from(buffer, 2)
            if length >> 63:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    "the most significant bit of a 64-bit payload length must be 0")
        if length > self.max_frame_size:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG,
                                f"frame of {length} bytes exceeds the limit of "
                                f"{self.max_frame_size}")
        if self.check_header is not None:
            # Pure check, so it is harmless when an incomplete mask makes us come back.
            self.check_header(opcode, fin, rsv1, length)
        mask = None
        if masked:
            if len(buffer) < size + 4:
                return None
            mask = bytes(buffer[size:size + 4])
            size += 4
        del buffer[:size]
        return fin, opcode, length, mask, rsv1


def encode_close(code: int, reason: str = "") -> bytes:
    """Return a close frame payload: `code` as 2 bytes then `reason` in UTF-8.

    A reason longer than 123 bytes is cut on a character boundary so the payload fits
    in a control frame. Raises ValueError for a code that may not go on the wire.
    """
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent on the wire")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CLOSE_REASON:
        encoded = encoded[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(code) + encoded


def decode_close(payload: bytes) -> tuple[int, str]:
    """Return (code, reason) from a received close frame payload.

    An empty payload means the peer gave no code: it reads as CloseCode.CLEAN, as in
    Odoo. The code is a CloseCode member when it has a name, a plain int otherwise
    (application codes 3000-4999). Raises ProtocolError 1002 for a 1-byte payload or a
    code not allowed on the wire, and 1007 for a reason that is not UTF-8.
    """
    if not payload:
        return CloseCode.CLEAN, ""
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "malformed close frame: 1-byte payload")
    (code,) = _U16.unpack_from(payload)
    if not is_valid_close_code(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INCONSISTENT_DATA,
                            "close reason is not valid UTF-8") from None
    return (CloseCode(code) if code in _WIRE_CODES else code), reason
