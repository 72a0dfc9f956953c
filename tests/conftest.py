from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every I/O test runs on both anyio backends."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """``capture_logs()`` leaves structlog configured; put it back for the next test."""
    was_configured = structlog.is_configured()
    config = structlog.get_config()
    yield
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()
