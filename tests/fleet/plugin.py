"""pytest fixtures for the real sshd fleet (listed in tests/conftest.py's ``pytest_plugins``).

- ``fleet``: 10 hosts, shared by the tests of one module (about half a second to bring up). A test
  that damages a host (kill, stop, partition, new host key) makes the next test that asks for
  ``fleet`` get a freshly built one, but files written on the hosts stay for the module's later
  tests: use ``make_fleet`` for a clean slate.
- ``stock_fleet``: 3 hosts whose sshd keeps OpenSSH's MaxStartups/MaxSessions (FAULTS.md F15/F16),
  shared per module the same way.
- ``make_fleet(n=3, **kwargs)``: a factory for private fleets (``Fleet.up`` keyword arguments),
  torn down at the end of the test; the place for fault tests and special options
  (``host_env=``, ``flex_root_size="1m"``, ``stock_limits=True``...).
- ``fleet_available``: skips with the reason (and how to run them) when this machine cannot run a
  fleet: not root, no network namespaces (a container without CAP_SYS_ADMIN), no sshd.

Tests using any of these are marked ``fleet`` automatically (``-m "not fleet"`` deselects them).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .netns import Fleet
from .system import FleetError, FleetUnavailable, preflight

DEFAULT_FLEET_SIZE = 10
STOCK_FLEET_SIZE = 3
FLEET_FIXTURES = frozenset({"fleet", "stock_fleet", "make_fleet", "fleet_available"})


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``fleet`` marker (also declared in pyproject.toml)."""
    config.addinivalue_line(
        "markers", "fleet: needs the real sshd fleet (root, network namespaces)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a fleet fixture with ``fleet``."""
    for item in items:
        if FLEET_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fleet)


def _sigterm_runs_teardown() -> None:
    """Turn SIGTERM (a CI cancel) into KeyboardInterrupt so fixtures and atexit tear fleets down."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _up(n: int, **kwargs: Any) -> Fleet:
    try:
        return Fleet.up(n, **kwargs)
    except FleetUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def fleet_available() -> None:
    """Skip (with the reason and how to run them) unless this machine can run a fleet."""
    reason = preflight()
    if reason is not None:
        pytest.skip(reason)
    _sigterm_runs_teardown()


class FleetCache:
    """Fleets shared by the tests of one module, keyed by their options; rebuilt when damaged."""

    def __init__(self) -> None:
        self._fleets: dict[tuple[Any, ...], Fleet] = {}

    def get(self, n: int, **kwargs: Any) -> Fleet:
        """A healthy fleet of ``n`` hosts with ``kwargs``: the cached one, or a new one."""
        key = (n, tuple(sorted(kwargs.items())))
        fleet = self._fleets.pop(key, None)
        if fleet is not None and fleet.damage():
            fleet.down()
            fleet = None
        if fleet is None:
            fleet = _up(n, **kwargs)
        self._fleets[key] = fleet
        return fleet

    def close(self) -> None:
        """Tear every cached fleet down; FleetError naming what could not be removed."""
        errors = []
        for fleet in self._fleets.values():
            try:
                fleet.down()
            except FleetError as exc:
                errors.append(str(exc))
        self._fleets.clear()
        if errors:
            raise FleetError("\n".join(errors))


@pytest.fixture(scope="module")
def fleet_cache(fleet_available: None) -> Iterator[FleetCache]:
    """The module's shared fleets (see ``fleet`` and ``stock_fleet``)."""
    cache = FleetCache()
    try:
        yield cache
    finally:
        cache.close()


@pytest.fixture
def fleet(fleet_cache: FleetCache) -> Fleet:
    """10 real sshd hosts h01..h10, shared within the module (rebuilt if a test damaged them)."""
    return fleet_cache.get(DEFAULT_FLEET_SIZE)


@pytest.fixture
def stock_fleet(fleet_cache: FleetCache) -> Fleet:
    """3 hosts with OpenSSH's stock MaxStartups 10:30:100 and MaxSessions 10."""
    return fleet_cache.get(STOCK_FLEET_SIZE, stock_limits=True)


@pytest.fixture
def make_fleet(fleet_available: None) -> Iterator[Callable[..., Fleet]]:
    """Factory: ``make_fleet(n=3, **Fleet.up kwargs)``; every fleet it made is torn down after."""
    made: list[Fleet] = []

    def make(n: int = 3, **kwargs: Any) -> Fleet:
        fleet = _up(n, **kwargs)
        made.append(fleet)
        return fleet

    try:
        yield make
    finally:
        errors = []
        for fleet in reversed(made):
            try:
                fleet.down()
            except FleetError as exc:
                errors.append(str(exc))
        if errors:
            raise FleetError("\n".join(errors))
