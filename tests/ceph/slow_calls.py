"""A librbd call made half a second slower, for tests that cancel or stop in the middle
of one: the delay runs on the store's worker thread, before librbd's own call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class SlowCall:
    """``started`` is set as the call begins (the moment to cancel or stop), ``ended``
    once librbd's call has returned or raised (never close the image before it)."""

    def __init__(self, delay: float = 0.5) -> None:
        self.delay = delay
        self.started = threading.Event()
        self.ended = threading.Event()

    def run(self, call: Callable[[], T]) -> T:
        self.started.set()
        time.sleep(self.delay)
        try:
            return call()
        finally:
            self.ended.set()
