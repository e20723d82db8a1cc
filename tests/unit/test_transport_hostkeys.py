"""known_hosts reading and trusting, on files (no network): which lines vouch for which host."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from deployer.hostkeys import (
    HostKeyCheck,
    fingerprint,
    host_entry,
    load_known_hosts,
    recorded_keys,
    trust_key,
)
from deployer.transporterrors import HostKeyChanged, HostKeyUnknown


@pytest.fixture(scope="module")
def keys() -> tuple[asyncssh.SSHKey, asyncssh.SSHKey]:
    """Two distinct host keys."""
    return asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")


def public(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


def hashed(name: str, key: asyncssh.SSHKey) -> str:
    """A HashKnownHosts-style line for name."""
    import base64
    import hashlib
    import hmac

    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()} {public(key)}"


@pytest.mark.parametrize(("line", "lookup", "found"), [
    ("10.0.0.5 {a}", ("10.0.0.5", 22), True),
    ("[10.0.0.5]:2222 {a}", ("10.0.0.5", 2222), True),
    ("[10.0.0.5]:2222 {a}", ("10.0.0.5", 22), False),
    ("10.0.0.5 {a}", ("10.0.0.5", 2222), True),
    ("node1,10.0.0.5 {a}", ("node1", 22), True),
    ("node* {a}", ("node7", 22), True),
    ("{hashed}", ("node9", 22), True),
    ("# 10.0.0.5 {a}", ("10.0.0.5", 22), False),
    ("@revoked 10.0.0.5 {a}", ("10.0.0.5", 22), False),
    ("other {a}", ("10.0.0.5", 22), False),
], ids=[
    "plain address", "address with port", "port entry does not match port 22",
    "portless entry matches any port (as asyncssh does)", "comma list", "wildcard", "hashed host name",
    "comment", "revoked line is not a trusted key", "another host",
])
def test_recorded_keys(tmp_path: Path, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey], line: str,
                       lookup: tuple[str, int], found: bool) -> None:
    a, _ = keys
    path = tmp_path / "known_hosts"
    path.write_text("# header\n" + line.format(a=public(a), hashed=hashed("node9", a)) + "\n")
    name, port = lookup
    addr = name if name[0].isdigit() else ""
    result = recorded_keys(path, name, addr, port)
    assert bool(result) is found
    if found:
        assert result[0].line == 2 and result[0].fingerprint == fingerprint(a)


def test_missing_known_hosts_records_nothing(tmp_path: Path) -> None:
    assert recorded_keys(tmp_path / "nope", "h", "", 22) == []


@pytest.mark.parametrize(("address", "port", "entry"), [("h", 22, "h"), ("h", 2222, "[h]:2222"), ("::1", 22, "::1")])
def test_host_entry(address: str, port: int, entry: str) -> None:
    assert host_entry(address, port) == entry


def test_trust_appends_once_and_keeps_other_lines(tmp_path: Path, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]) -> None:
    a, b = keys
    path = tmp_path / "known_hosts"
    path.write_text(f"elsewhere {public(b)}")  # no trailing newline
    assert trust_key("n1", path, "10.0.0.5", 2222, a) == fingerprint(a)
    assert trust_key("n1", path, "10.0.0.5", 2222, a) == fingerprint(a)
    assert path.read_text().splitlines() == [f"elsewhere {public(b)}", f"[10.0.0.5]:2222 {public(a)}"]


def test_trust_refuses_a_different_recorded_key(tmp_path: Path, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]) -> None:
    a, b = keys
    path = tmp_path / "known_hosts"
    path.write_text(f"# x\n10.0.0.5 {public(b)}\n")
    with pytest.raises(HostKeyChanged) as caught:
        trust_key("n1", path, "10.0.0.5", 22, a)
    assert caught.value.lines == (2,) and fingerprint(b) in str(caught.value)
    assert path.read_text() == f"# x\n10.0.0.5 {public(b)}\n"


def test_check_tells_unknown_from_changed(tmp_path: Path, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]) -> None:
    a, b = keys
    path = tmp_path / "known_hosts"
    check = HostKeyCheck("n1", path)
    assert check.validate_host_public_key("10.0.0.5", "10.0.0.5", 22, a) is False
    unknown = check.untrusted("10.0.0.5", 22)
    assert isinstance(unknown, HostKeyUnknown) and unknown.fingerprint == fingerprint(a)
    path.write_text(f"10.0.0.5 {public(b)}\n")
    changed = check.untrusted("10.0.0.5", 22)
    assert isinstance(changed, HostKeyChanged) and changed.lines == (1,)


def test_accept_new_records_unknown_but_never_changed(tmp_path: Path, keys: tuple[asyncssh.SSHKey, asyncssh.SSHKey]) -> None:
    a, b = keys
    path = tmp_path / "known_hosts"
    check = HostKeyCheck("n1", path, accept_new=True)
    assert check.validate_host_public_key("10.0.0.5", "10.0.0.5", 22, a) is True
    assert check.validate_host_public_key("10.0.0.5", "10.0.0.5", 22, b) is False
    assert path.read_text() == f"10.0.0.5 {public(a)}\n"


def test_known_hosts_are_parsed_once_per_version_of_the_file(tmp_path: Path, keys) -> None:
    """Every connection loads known_hosts: parsing it again for each of N hosts was O(N^2)."""
    first, second = keys
    path = tmp_path / "known_hosts"
    path.write_text(f"10.0.0.1 {public(first)}\n")
    parsed = load_known_hosts(path)
    assert load_known_hosts(path) is parsed  # unchanged file: the same parsed object
    assert parsed.match("10.0.0.1", "", None)[0]
    with path.open("a") as handle:  # accept-new appends a line: seen at once
        handle.write(f"10.0.0.2 {public(second)}\n")
    again = load_known_hosts(path)
    assert again is not parsed and again.match("10.0.0.2", "", None)[0]
    path.unlink()
    assert not load_known_hosts(path).match("10.0.0.1", "", None)[0]  # a missing file trusts nothing
