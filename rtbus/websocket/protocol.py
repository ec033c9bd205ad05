"""The server side of a WebSocket connection as a state machine, without I/O.

The I/O layer hands received bytes to `ServerProtocol.receive_data`, acts on the events
it returns, and writes whatever `data_to_send` gives back. Answers the protocol itself
requires (pong to a ping, echo of a close, close after a violation) are queued here, so
the I/O layer never builds a frame.
"""

from __future__ import annotations

import codecs
import dataclasses
import enum

from rtbus.errors import InvalidState
from rtbus.websocket.budget import ReceiveBudget
from rtbus.websocket.deflate import (INFLATER_COST, DeflateParams, MessageInflater,
                                     OutgoingMessage, compressed_size_limit)
from rtbus.websocket.frames import (
    CONTROL_OPCODES,
    CloseCode,
    FrameParser,
    Frame,
    Opcode,
    ProtocolError,
    decode_close,
    encode_close,
    encode_header,
)

DEFAULT_MAX_MESSAGE_SIZE = 2**20


class State(enum.IntEnum):
    """OPEN: both ways open. CLOSING: our close is sent, the peer's not yet received.
    CLOSED: the closing handshake is over (or failed); close the transport once the
    outgoing data is flushed."""

    OPEN = 0
    CLOSING = 1
    CLOSED = 2


@dataclasses.dataclass(slots=True)
class TextMessage:
    """A complete text message, decoded."""

    text: str


@dataclasses.dataclass(slots=True)
class BinaryMessage:
    """A complete binary message."""

    data: bytes


@dataclasses.dataclass(slots=True)
class PingReceived:
    """The peer pinged; the pong with the same payload is already queued (unless our
    close was sent, after which nothing more is sent)."""

    payload: bytes


@dataclasses.dataclass(slots=True)
class PongReceived:
    """The peer answered a ping (or sent an unsolicited pong, which is allowed)."""

    payload: bytes


@dataclasses.dataclass(slots=True)
class CloseReceived:
    """The peer sent a valid close frame. If we had not sent ours, its echo (same code and
    reason) is queued. The state is now CLOSED."""

    code: int
    reason: str


@dataclasses.dataclass(slots=True)
class ProtocolViolation:
    """The peer broke the protocol; a close with `code` is queued unless ours was already
    sent. The state is now CLOSED and further input is ignored.

    A malformed close frame (1-byte payload, invalid code, reason not UTF-8) is reported
    this way too, with close_received set.
    """

    code: CloseCode
    reason: str


Event = (TextMessage | BinaryMessage | PingReceived | PongReceived | CloseReceived
         | ProtocolViolation)


class ServerProtocol:
    """One server-side WebSocket connection after a successful handshake.

    Messages above `max_message_size` bytes (the sum of their fragments) are refused with
    1009 as soon as a frame header announces the excess, before its payload is read.

    `deflate` is what permessage-deflate negotiation agreed, or None. With it, compressed
    client messages are inflated, each from an empty window, and their inflated size is
    held to `max_message_size` (their compressed size to about as much); `send_message`
    sends compressed frames. `budget`, when given, is the process-wide ReceiveBudget that
    the bytes held between two `receive_data` calls (an incomplete frame, the fragments of
    a message, an inflater) are charged to; when it is exhausted the connection fails
    with 1013 and gives back what it held. Call `discard_input` when the transport ends
    without a closing handshake, so that the budget gets those bytes back.

    After our close is sent (state CLOSING), messages still in flight from the peer are
    reported until its close arrives; whether to act on them is the caller's choice.
    `frames_received` counts every complete frame, control frames included, for the
    rate limit.
    """

    __slots__ = ("max_message_size", "deflate", "_budget", "_reserved", "state", "close_sent",
                 "close_received", "close_code", "close_reason", "frames_received", "_failed",
                 "_outgoing", "_compressed_limit", "_parser", "_message_opcode", "_message_size",
                 "_wire_size", "_inflater", "_fragments", "_text_parts", "_decoder")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, *,
                 deflate: DeflateParams | None = None, budget: ReceiveBudget | None = None):
        self.max_message_size = max_message_size
        self.deflate = deflate
        self._budget = budget
        self._reserved = 0                    # bytes charged to the budget now
        self.state = State.OPEN
        self.close_sent = False
        self.close_received = False
        self.close_code: int | None = None    # what the peer sent, once close_received
        self.close_reason: str | None = None
        self.frames_received = 0              # every frame, control frames included
        self._failed = False
        self._outgoing: list[bytes] = []
        # A single frame can never exceed a message, hence the same limit for both.
        self._compressed_limit = (compressed_size_limit(max_message_size) if deflate is not None
                                  else max_message_size)
        self._parser = FrameParser(self._compressed_limit, require_mask=True,
                                   check_header=self._check_header,
                                   allow_rsv1=deflate is not None)
        # The fragmented message being assembled, if any.
        self._message_opcode: Opcode | None = None
        self._message_size = 0                # its bytes so far, inflated
        self._wire_size = 0                   # the same, as received
        self._inflater: MessageInflater | None = None   # while a compressed one is received
        self._fragments: list[bytes] = []
        self._text_parts: list[str] = []
        self._decoder: codecs.IncrementalDecoder | None = None

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Consume bytes from the transport; return the events they complete, in order.

        Frames before a violation in the same data are reported, then the
        ProtocolViolation. Once a close was received or a violation found, the rest of
        the input is discarded: nothing the peer sends after that can matter.
        """
        if self.close_received or self._failed:
            return []
        parser = self._parser
        parser.append(data)
        events: list[Event] = []
        try:
            while not self.close_received:
                frame = parser.next_frame()
                if frame is None:
                    break
                self.frames_received += 1
                event = self._handle_frame(frame)
                if event is not None:
                    events.append(event)
        except ProtocolError as exc:
            events.append(self._fail(exc.code, exc.reason))
        if self.close_received or self._failed:
            self.discard_input()
        elif self._budget is not None:
            self._charge_budget(events)
        return events

    def discard_input(self) -> None:
        """Drop every byte held for messages not yet complete, and give them back to the
        budget. The protocol reads nothing more afterwards; calling it again does nothing."""
        self._parser.clear()
        self._fragments = []
        self._text_parts = []
        self._decoder = None
        self._inflater = None
        if self._reserved:
            self._budget.release(self._reserved)
            self._reserved = 0

    def _charge_budget(self, events: list[Event]) -> None:
        held = self._parser.buffered + self._message_size
        if self._inflater is not None:
            held += INFLATER_COST
        more = held - self._reserved
        if more > 0 and not self._budget.reserve(more):
            events.append(self._fail(
                CloseCode.TRY_LATER,
                f"server busy: partially received messages would pass the "
                f"{self._budget.limit} bytes this process allows"))
            self.discard_input()
            return
        if more < 0:
            self._budget.release(-more)
        self._reserved = held

    def _check_header(self, opcode: Opcode, fin: bool, rsv1: bool, length: int) -> None:
        # Called by the parser before a payload is buffered, with the state left by every
        # earlier frame: order errors and oversized messages are caught from the header.
        if opcode in CONTROL_OPCODES:
            return
        if opcode is Opcode.CONTINUATION:
            if self._message_opcode is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                    "unexpected continuation frame: no message is in progress")
            size, compressed = self._wire_size + length, self._inflater is not None
        elif self._message_opcode is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR,
                                f"expected a continuation frame, got {opcode.name}: "
                                "the previous message is not finished")
        else:
            size, compressed = length, rsv1
        # The inflated size of a compressed message is checked while inflating.
        limit = self._compressed_limit if compressed else self.max_message_size
        if size > limit:
            raise ProtocolError(CloseCode.MESSAGE_TOO_BIG,
                                f"message reaches {size} bytes, over the limit of {limit}")

    def _handle_frame(self, frame: Frame) -> Event | None:
        opcode = frame.opcode
        if opcode is Opcode.PING:
            if not self.close_sent:
                self._queue_frame(0x80 | Opcode.PONG, frame.payload)
            return PingReceived(frame.payload)
        if opcode is Opcode.PONG:
            return PongReceived(frame.payload)
        if opcode is Opcode.CLOSE:
            return self._handle_close(frame.payload)
        if frame.fin and opcode is not Opcode.CONTINUATION:
            payload = frame.payload
            if frame.rsv1:
                payload = MessageInflater(self.max_message_size).inflate(payload, final=True)
            return self._single_frame_message(opcode, payload)
        return self._fragment(opcode, frame.fin, frame.rsv1, frame.payload)

    def _single_frame_message(self, opcode: Opcode, payload: bytes) -> Event:
        # The common case, kept free of the fragment bookkeeping.
        if opcode is Opcode.BINARY:
            return BinaryMessage(payload)
        try:
            return TextMessage(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INCONSISTENT_DATA,
                                "text message is not valid UTF-8") from None

    def _fragment(self, opcode: Opcode, fin: bool, rsv1: bool, payload: bytes) -> Event | None:
        if opcode is not Opcode.CONTINUATION:
            self._message_opcode = opcode
            self._message_size = self._wire_size = 0
            if rsv1:
                self._inflater = MessageInflater(self.max_message_size)
            if opcode is Opcode.TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._wire_size += len(payload)
        if self._inflater is not None:
            payload = self._inflater.inflate(payload, final=fin)
        self._message_size += len(payload)
        if self._message_opcode is Opcode.TEXT:
            # Decoding each fragment as it comes finds invalid UTF-8 early, while a
            # character split across two fragments waits inside the decoder.
            try:
                self._text_parts.append(self._decoder.decode(payload, final=fin))
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INCONSISTENT_DATA,
                                    "text message is not valid UTF-8") from None
        else:
            self._fragments.append(payload)
        if not fin:
            return None
        if self._message_opcode is Opcode.TEXT:
            event: Event = TextMessage("".join(self._text_parts))
        else:
            event = BinaryMessage(b"".join(self._fragments))
        self._message_opcode = None
        self._message_size = self._wire_size = 0
        self._inflater = None
        self._fragments = []
        self._text_parts = []
        self._decoder = None
        return event

    def _handle_close(self, payload: bytes) -> CloseReceived:
        self.close_received = True
        code, reason = decode_close(payload)   # a malformed close becomes a violation
        self.close_code, self.close_reason = code, reason
        if not self.close_sent:
            self._queue_close(code, reason)
        self.state = State.CLOSED
        return CloseReceived(code, reason)

    def _fail(self, code: CloseCode, reason: str) -> ProtocolViolation:
        self._failed = True
        if not self.close_sent:
            self._queue_close(code, reason)
        self.state = State.CLOSED
        return ProtocolViolation(code, reason)

    # -- output --------------------------------------------------------------------------

    def send_text(self, payload: bytes | str) -> None:
        """Queue a TEXT frame. Bytes are sent as given: they must already be UTF-8.

        The payload is not copied here; it is joined with its header once, in
        data_to_send. Raises InvalidState after our close frame.
        """
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        self._check_can_send("a text frame")
        self._queue_frame(0x80 | Opcode.TEXT, payload)

    def send_message(self, message: OutgoingMessage) -> bytes:
        """Queue `message` as its ready-made frame for this connection, compressed when
        permessage-deflate was negotiated and the message's policy says so; return that
        frame (shared with every other connection sending the same variant: do not modify).
        Raises InvalidState after our close frame."""
        self._check_can_send("a message")
        frame = message.frame(self.deflate)
        self._outgoing.append(frame)
        return frame

    def send_binary(self, payload: bytes) -> None:
        """Queue a BINARY frame. Raises InvalidState after our close frame."""
        self._check_can_send("a binary frame")
        self._queue_frame(0x80 | Opcode.BINARY, payload)

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a PING (at most 125 bytes). Raises InvalidState after our close frame."""
        if len(payload) > 125:
            raise ValueError(f"a ping payload is at most 125 bytes, not {len(payload)}")
        self._check_can_send("a ping")
        self._queue_frame(0x80 | Opcode.PING, payload)

    def send_close(self, code: int, reason: str = "") -> None:
        """Queue our close frame; a no-op if one was already sent (for instance the echo
        of the peer's close). A reason longer than 123 bytes is cut on a character
        boundary. Raises ValueError for a code not allowed on the wire (1006 included:
        dropping the connection without a close frame is the I/O layer's job)."""
        if self.close_sent:
            return
        self._queue_close(code, reason)
        self.state = State.CLOSED if self.close_received else State.CLOSING

    def data_to_send(self) -> bytes:
        """Return and forget every byte queued for the transport (b"" when none)."""
        outgoing = self._outgoing
        if not outgoing:
            return b""
        self._outgoing = []
        return outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)

    def should_close_transport(self) -> bool:
        """True once nothing more will be exchanged: close sent and received, or a
        violation answered. Flush data_to_send first, then close the socket."""
        return self.state is State.CLOSED

    def _check_can_send(self, what: str) -> None:
        if self.close_sent:
            raise InvalidState(f"cannot send {what}: the close frame was already sent")

    def _queue_close(self, code: int, reason: str) -> None:
        self._queue_frame(0x80 | Opcode.CLOSE, encode_close(code, reason))
        self.close_sent = True

    def _queue_frame(self, first_byte: int, payload: bytes) -> None:
        self._outgoing.append(encode_header(first_byte, len(payload)))
        if payload:
            self._outgoing.append(payload)
