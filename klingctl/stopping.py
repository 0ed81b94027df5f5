"""Stopping a long-running command on SIGTERM or SIGINT, whichever thread the kernel hands the signal to.

CPython runs Python signal handlers on the main thread only, between bytecodes. When the kernel
delivers the signal to another thread (the demo has dozens), a main thread blocked in an untimed
wait is never woken to run the handler: every wait here has a timeout, so the handler runs within
WAKE_SECONDS wherever the signal landed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
WAKE_SECONDS = 0.2


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: raised where the main thread is, so cleanups run as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signum)


@contextmanager
def stop_raises() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise StopRequested in the main thread; restored after."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_stop(ready: Callable[[], None] | None = None) -> int:
    """Block until SIGTERM or SIGINT arrives; returns its number (the previous handlers are restored).

    `ready` runs once the handlers are in place (e.g. to print "listening"), so a supervisor that
    signals as soon as it reads that line is never too early.
    """
    received: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        if ready is not None:
            ready()
        while not stop.wait(WAKE_SECONDS):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0]


__all__ = ["STOP_SIGNALS", "WAKE_SECONDS", "StopRequested", "stop_raises", "wait_for_stop"]
