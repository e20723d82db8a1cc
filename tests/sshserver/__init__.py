"""An in-process asyncssh server for transport tests: real commands, configurable misbehaviour."""

from tests.sshserver.server import ServerOptions, ServerStats, SshTestServer

__all__ = ["ServerOptions", "ServerStats", "SshTestServer"]
