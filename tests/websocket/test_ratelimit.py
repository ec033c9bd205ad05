"""Rate limit: at most `burst` frames in any sliding window of burst * delay seconds."""

import pytest

from rtbus.websocket.ratelimit import RateLimiter


def test_ten_in_the_window_are_fine_the_eleventh_is_refused():
    limiter = RateLimiter(burst=10, delay=0.2)
    assert all(limiter.allow(100.0 + i * 0.01) for i in range(10))
    assert not limiter.allow(100.5)
    assert not limiter.allow(101.99)


def test_window_slides():
    limiter = RateLimiter(burst=10, delay=0.2)
    assert all(limiter.allow(0.0) for _ in range(10))
    assert not limiter.allow(1.999)
    # At 2.0 the frames of 0.0 leave the 2 s window one by one, each making room for one.
    assert all(limiter.allow(2.0) for _ in range(10))
    assert not limiter.allow(2.0)      # ten arrivals at 2.0 now fill the window


def test_paced_frames_stay_allowed():
    # One frame every 1.25 x delay never fills the window, however long it lasts.
    limiter = RateLimiter(burst=10, delay=0.2)
    assert all(limiter.allow(i * 0.25) for i in range(200))


def test_ten_then_one_more_at_paced_interval():
    limiter = RateLimiter(burst=10, delay=0.2)
    times = [i * 0.25 for i in range(10)]
    assert all(limiter.allow(t) for t in times)
    assert limiter.allow(times[-1] + 0.25)     # 2.5 s after the first: outside the window


def test_burst_after_quiet_period():
    limiter = RateLimiter(burst=10, delay=0.2)
    assert all(limiter.allow(0.0) for _ in range(10))
    assert all(limiter.allow(5.0) for _ in range(10))
    assert not limiter.allow(5.1)


def test_refused_frames_are_not_recorded():
    limiter = RateLimiter(burst=2, delay=1.0)
    assert limiter.allow(0.0) and limiter.allow(1.0)
    assert not limiter.allow(1.5)
    assert limiter.allow(2.0)          # window measured from the frame at 0.0, not 1.5


def test_settings():
    limiter = RateLimiter(burst=3, delay=0.5)
    assert limiter.window == 1.5
    with pytest.raises(ValueError):
        RateLimiter(burst=0)
    with pytest.raises(ValueError):
        RateLimiter(delay=-1)
