"""Micro-benchmark of the WebSocket codec: unmasking, then parsing masked client frames
through FrameParser, for 1 KiB, 64 KiB and 1 MiB payloads. Prints the best MB/s (10**6 bytes) of
several batches.

    .venv/bin/python perf/ws_codec.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import os
import time

from rtbus.websocket.frames import Frame, FrameParser, Opcode, apply_mask

SIZES = (("1 KiB", 1024), ("64 KiB", 64 * 1024), ("1 MiB", 1024 * 1024))
MASK = b"\x9a\x3c\x51\xe7"


def rate(run, size: int, seconds: float) -> float:
    """Call `run()` (which handles `size` bytes) in batches of about 4 MB for `seconds`;
    return the best batch's MB/s. As with timeit, the best batch is the one least
    disturbed by other processes, which matters on a small shared machine."""
    run()   # warm-up
    calls = max(1, 2**22 // size)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        best = max(best, calls * size / (time.perf_counter() - start) / 1e6)
    return best


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--seconds", type=float, default=0.5, help="time spent per case")
    seconds = options.parse_args().seconds
    print(f"{'payload':>8}  {'unmask MB/s':>12}  {'parse MB/s':>12}")
    for label, size in SIZES:
        payload = os.urandom(size)
        wire = Frame(True, Opcode.BINARY, payload).serialize(MASK)
        parser = FrameParser(max_frame_size=size, require_mask=True)
        unmask = rate(lambda: apply_mask(payload, MASK), size, seconds)
        parse = rate(lambda: parser.feed(wire), size, seconds)
        print(f"{label:>8}  {unmask:12.0f}  {parse:12.0f}")


if __name__ == "__main__":
    main()
