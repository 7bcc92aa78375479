"""Fixtures of the kernel lab, and the hook that attaches guest kernel logs to failures.

Outside CI a host that cannot run the lab skips these tests with one reason line; with
``CI=true`` the same condition fails them, so CI can never pass by not running them.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .errors import LabUnavailable
from .scenarios import KernelClient, KernelExport, exported_kernel_storage, kernel_client
from .session import Lab, vm_mark, vms_to_report

_DMESG_REPORT_LINES = 200
_UNAVAILABLE = "kernel lab unavailable"
_MARK = pytest.StashKey[int]()
_LAB_FIXTURE_LINE = next(
    number for number, line in enumerate(Path(__file__).read_text().splitlines(), 1) if line.startswith("def lab(")
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker here too, so the lab works under any project configuration."""
    config.addinivalue_line("markers", "lab: boots the real Linux kernel in QEMU")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory boots a kernel: mark them so ``-m "not lab"`` works."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The session's lab: host checked, kernel fetched and initramfs built (cached)."""
    try:
        return Lab.create()
    except LabUnavailable as reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{_UNAVAILABLE} in CI: {reason}", pytrace=False)
        pytest.skip(f"{_UNAVAILABLE}: {reason}")


@pytest.fixture
def kernel_export(lab: Lab) -> Iterator[KernelExport]:
    """A guest exporting QEMU usb-storage (46f4:0001) via usbip-host + usbipd.

    ``kernel_export.host_port`` on 127.0.0.1 reaches it; ``kernel_export.busid`` names it.
    """
    with exported_kernel_storage(lab) as export:
        yield export


@pytest.fixture
def guest_client(lab: Lab) -> Iterator[KernelClient]:
    """A guest ready to import from a server on the host's 127.0.0.1 (10.0.2.2 to it)."""
    with kernel_client(lab) as client:
        yield client


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember which VMs existed before the test, to report only the ones it used."""
    item.stash[_MARK] = vm_mark()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the kernel log of every guest the failing test used as a report section.

    Also give every "lab unavailable" skip the same location, so ``-ra`` folds them
    into one line instead of one per test.
    """
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and _UNAVAILABLE in report.longrepr[2]:
        report.longrepr = (__file__, _LAB_FIXTURE_LINE, report.longrepr[2])
    if report.failed and _MARK in item.stash:
        for machine in vms_to_report(item.stash[_MARK]):
            lines = machine.dmesg_since_ready().rstrip("\n").splitlines()[-_DMESG_REPORT_LINES:]
            if lines:
                name = f"guest dmesg of {machine.paths.scratch.name} since boot (last {len(lines)} lines)"
                report.sections.append((name, "\n".join(lines)))
    return report
