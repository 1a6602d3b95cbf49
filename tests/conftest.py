import sys
from pathlib import Path

import pytest

# Test helper modules (core_support, media, ...) import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def r():
    """The shared Redis at 127.0.0.1:6379, this test's keys under a fresh prefix (removed after)."""
    from cloud_support import drop_prefix, fresh_prefix, shared_redis

    client = shared_redis()
    prefix = fresh_prefix()
    yield client
    drop_prefix(client, prefix)
