"""Fixtures for tests against real peers: a private Orthanc as the PACS."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.conftest import require_tool
from tests.integration.orthanc import OrthancServer, orthanc_available

FAILED_KEY = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember on the test item whether any phase failed, so fixtures can show their logs."""
    report = yield
    if report.failed:
        item.stash[FAILED_KEY] = True
    return report


@pytest.fixture
def orthanc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancServer]:
    """A running Orthanc (AET "ORTHANC") on free loopback ports; its log is shown on failure.

    Peers it must know (C-MOVE/C-STORE destinations) are added with `add_modality`.
    """
    if not orthanc_available():
        require_tool("Orthanc")  # fails the test with how to install it
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    with server:
        yield server
    if request.node.stash.get(FAILED_KEY, False):
        request.node.add_report_section(
            "teardown", "orthanc log", f"{server.log_path}\n{server.log_tail()}"
        )
