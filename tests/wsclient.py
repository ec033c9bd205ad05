"""A raw-socket websocket client for tests that must send what a good client never would.

It speaks just enough RFC 6455 to shake hands, send arbitrary (even broken)
frames and read the server's frames. Every read is bounded by a timeout.
"""

from __future__ import annotations

import base64
import os
import socket

from rtbus.websocket.frames import Frame, FrameParser, Opcode, decode_close, encode_header


class RawWebsocket:
    def __init__(self, port: int, *, path: str = "/websocket", headers: dict | None = None,
                 timeout: float = 5.0, rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.parser = FrameParser(max_frame_size=1 << 26, require_mask=False)
        self.pending: list[Frame] = []
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 f"Origin: http://127.0.0.1:{port}"]
        for name, value in (headers or {}).items():
            lines = [line for line in lines if not line.lower().startswith(name.lower() + ":")]
            if value is not None:
                lines.append(f"{name}: {value}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.status, self.response_headers, leftover = self._read_response()
        self.body = b""
        if self.status != 101:
            self.body = leftover        # an HTTP error body, not frames
        elif leftover:
            self.pending.extend(self.parser.feed(leftover))

    def _read_response(self):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, rest

    def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True,
                   rsv1: bool = False) -> None:
        frame = Frame(fin, Opcode(opcode) if opcode in Opcode._value2member_map_ else opcode, payload,
                      rsv1=rsv1)
        self.sock.sendall(frame.serialize(mask=os.urandom(4) if mask else None))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str | bytes) -> None:
        self.send_frame(Opcode.TEXT, text.encode() if isinstance(text, str) else text)

    def read_frame(self) -> Frame | None:
        """The next frame from the server, or None when the connection ended."""
        while not self.pending:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                return None
            if not chunk:
                return None
            self.pending.extend(self.parser.feed(chunk))
        return self.pending.pop(0)

    def barrier(self, timeout: float = 5.0) -> None:
        """Ping twice, one after the other's pong: the server handled every message sent
        before (see busclient.barrier). Frames read meanwhile stay queued for read_frame."""
        self.sock.settimeout(timeout)
        seen: list[Frame] = []
        for _ in range(2):
            token = os.urandom(8).hex().encode()
            self.send_frame(Opcode.PING, token)
            while True:
                frame = self.read_frame()
                assert frame is not None, f"the connection ended (or {timeout} s passed) before our pong"
                if frame.opcode == Opcode.PONG and frame.payload == token:
                    break
                seen.append(frame)
        self.pending[:0] = seen

    def read_close(self) -> tuple[int, str] | None:
        """Skip data frames until a close frame; return its (code, reason), None on EOF."""
        while True:
            frame = self.read_frame()
            if frame is None:
                return None
            if frame.opcode == Opcode.CLOSE:
                code, reason = decode_close(frame.payload)
                return int(code), reason

    def header_only(self, opcode: int, length: int) -> None:
        """Send a masked frame header announcing `length` bytes, and no payload."""
        self.sock.sendall(encode_header(0x80 | opcode, length, mask_bit=0x80) + os.urandom(4))

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server dropped the TCP connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()
