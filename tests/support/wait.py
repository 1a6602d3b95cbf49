"""Polling instead of fixed sleeps: wait until public state shows that something happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail after `timeout` s.

    `what` names the awaited state in the failure message ("timed out ... waiting for <what>").
    """
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
