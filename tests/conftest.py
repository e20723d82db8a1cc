"""Shared pytest plugins: the real sshd fleet, the in-process asyncssh server, the fake NVML library."""

import os
import tempfile

# the schema cache (deployer/schemacache.py) of this test run, not the user's ~/.cache/flex
os.environ.setdefault("FLEX_CACHE_DIR", tempfile.mkdtemp(prefix="flex-test-cache-"))

pytest_plugins = [
    "tests.fleet.plugin",
    "tests.sshserver.plugin",
    "tests.fakenvml.plugin",
]
