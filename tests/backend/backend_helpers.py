"""Test-side helpers shared by the backend tests: polls that fail at their deadline, a clock the test moves.

Each test builds what it needs (fixtures); these helpers hold no state between tests. Tests reach the
backend through public interfaces only (`backend.app.service_of(app)`, `Projects.in_memory()`, ...).
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1,
               detail: Callable[[], str] | None = None) -> T:
    """Poll `predicate` until it returns a truthy value and return that value; at the deadline fail the
    test with "`what` did not happen within `timeout` s", the last value seen and `detail()` (e.g. logs).

    For state that nothing signals (a file another process writes, a background thread's status);
    wait on an event where the code offers one (queue.wait_idle, scorer.flush, threading.Event)."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail else ""
            pytest.fail(f"{what} did not happen within {timeout:g} s (last value: {value!r}){extra}")
        time.sleep(interval)  # a poll interval, not a synchronisation: the predicate decides


class Clock:
    """A frozen clock the test moves: `now` starts at `start` and changes only by `advance` (or assignment)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ShiftedClock:
    """The real clock (time.time) plus the jumps the test made with `advance`: never earlier than real
    time, so whatever the code timestamps with the real clock still looks old enough to it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
