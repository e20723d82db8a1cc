"""pytest fixtures for the in-process SSH server: keys, a known_hosts file, and a server factory.

    async def test_x(ssh_server):                       # a well-behaved server
        host = ssh_server.as_host("n1")                  # Host with key_file + flex_known_hosts
    async def test_y(ssh_server_factory):
        server = await ssh_server_factory(max_sessions=10, presented_key="other")

Every server listens on 127.0.0.1 port 0 and lives in the test's event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.sshserver.server import ServerOptions, SshTestServer

ServerFactory = Callable[..., Awaitable[SshTestServer]]


@dataclass(frozen=True)
class SshKeys:
    """Keys shared by the session: the server's main and other host key, an authorized and a stranger client key."""

    host_key: asyncssh.SSHKey
    other_host_key: asyncssh.SSHKey
    client_key_file: Path
    stranger_key_file: Path
    client_public: bytes


def _write_private(key: asyncssh.SSHKey, path: Path) -> Path:
    key.write_private_key(str(path))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    """Fresh ed25519 keys for the whole test session."""
    root = tmp_path_factory.mktemp("sshkeys")
    client = asyncssh.generate_private_key("ssh-ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    return SshKeys(
        host_key=asyncssh.generate_private_key("ssh-ed25519"),
        other_host_key=asyncssh.generate_private_key("ssh-ed25519"),
        client_key_file=_write_private(client, root / "id_client"),
        stranger_key_file=_write_private(stranger, root / "id_stranger"),
        client_public=client.export_public_key(),
    )


def record_host_key(path: Path, port: int, key: asyncssh.SSHKey) -> Path:
    """Write a known_hosts file trusting key for [127.0.0.1]:port."""
    line = key.export_public_key().decode().strip()
    path.write_text(f"[127.0.0.1]:{port} {line}\n")
    return path


@pytest.fixture
async def ssh_server_factory(ssh_keys: SshKeys, tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start servers on demand: `await factory(presented_key="other", **ServerOptions fields)`."""
    servers: list[SshTestServer] = []

    async def start(presented_key: str = "main", **options: Any) -> SshTestServer:
        key = ssh_keys.other_host_key if presented_key == "other" else ssh_keys.host_key
        server = await SshTestServer(key, [ssh_keys.client_public], ServerOptions(**options)).start()
        servers.append(server)
        server.known_hosts = record_host_key(tmp_path / f"known_hosts-{server.port}", server.port, ssh_keys.host_key)
        server.client_key_file = ssh_keys.client_key_file
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def ssh_server(ssh_server_factory: ServerFactory) -> SshTestServer:
    """One well-behaved server."""
    return await ssh_server_factory()
