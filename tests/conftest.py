"""Shared pytest plugins: the real sshd fleet, the in-process asyncssh server, the fake NVML library."""

pytest_plugins = [
    "tests.fleet.plugin",
    "tests.sshserver.plugin",
    "tests.fakenvml.plugin",
]
