"""A real test fleet: N OpenSSH sshd hosts in network namespaces on one Linux machine (root).

``Fleet.up(n)`` gives hosts with their own address, host key, hostname, pid namespace (sshd is
PID 1), /tmp and flex root, a known_hosts file, a client key and an Ansible-style inventory.
See :mod:`tests.fleet.netns` for the layout and :mod:`tests.fleet.plugin` for the pytest fixtures.
"""

from __future__ import annotations

from .netns import DEFAULT_FLEX_ROOT, Fleet, Host, cleanup_stale, live_fleets
from .system import BASE_DIR, FleetError, FleetUnavailable, preflight

__all__ = [
    "BASE_DIR",
    "DEFAULT_FLEX_ROOT",
    "Fleet",
    "FleetError",
    "FleetUnavailable",
    "Host",
    "cleanup_stale",
    "live_fleets",
    "preflight",
]
