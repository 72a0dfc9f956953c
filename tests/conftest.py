from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest
import structlog
from _firewall import Firewall, no_iptables

# In CI (.ci/run sets this) a skipped test is a failure: every test must run there.
IN_CI = bool(os.environ.get("RESILIENT_WS_CI"))
# Long chaos and stall runs: on demand only (RESILIENT_WS_LONG=1); CI runs their short forms.
LONG = bool(os.environ.get("RESILIENT_WS_LONG"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every I/O test runs on both anyio backends."""
    return str(request.param)


@pytest.fixture
def firewall() -> Firewall:
    """iptables DROP rules on loopback ports (tests/_firewall.py); skips where there are
    none (a failure in CI, see below)."""
    reason = no_iptables()
    if reason is not None:
        pytest.skip(reason)
    return Firewall()


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the long forms unless RESILIENT_WS_LONG=1; time trio tests out
    with a thread."""
    _time_out_trio_tests_with_a_thread(items)
    if LONG:
        return
    long_items = [item for item in items if item.get_closest_marker("slow")]
    if long_items:
        config.hook.pytest_deselected(items=long_items)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"


def _time_out_trio_tests_with_a_thread(items: list[pytest.Item]) -> None:
    """pytest-timeout's default method (SIGALRM) never ends a hung trio test: anyio runs
    trio in a thread of its own while the main thread waits on a queue (a test that waits
    forever outlived a 5 s timeout for 60 s, until killed). Its thread method does end it:
    it dumps every thread's stack and ends the run, a failure instead of a CI run that
    hangs. asyncio tests keep the signal method, which fails the hung test alone."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("anyio_backend") != "trio":
            continue
        marker = item.get_closest_marker("timeout")
        args = marker.args[:1] if marker is not None else ()
        kwargs = {} if marker is None else dict(marker.kwargs)
        kwargs["method"] = "thread"
        item.add_marker(pytest.mark.timeout(*args, **kwargs), append=False)
