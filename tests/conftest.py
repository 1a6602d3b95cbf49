"""Fixtures shared by every test module; the helpers behind them live in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from split_infer.keys import Keys
from support.redisdb import connect, isolated_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix in the shared Redis for this test; its keys are deleted afterwards."""
    with isolated_prefix(connect()) as p:
        yield p


@pytest.fixture
def r(prefix: str) -> redis.Redis:
    """The shared Redis at 127.0.0.1:6379; this test's keys live under `prefix`."""
    return connect()


@pytest.fixture
def keys(prefix: str) -> Keys:
    """This test's Redis keys: every one under `prefix`."""
    return Keys(prefix)
