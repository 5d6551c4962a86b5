"""Shared fixtures: every test ends with no actor left running."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pykka
import pytest
import structlog


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    """Stop every actor a test left behind (pykka's registry is global)."""
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    """Keep library logs below warning out of the test output (a host's choice)."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=False,
    )


@pytest.fixture
def debug_logs() -> Iterator[None]:
    """Let every level through for this test (``capture_logs`` then sees info and debug
    lines); back to warning afterwards."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        yield
    finally:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
