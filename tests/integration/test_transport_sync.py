"""File sync by sha256, over SSH (in-process server) and locally: F20 and the secret rules.

The node's filesystem is this machine's, so the tests read the targets directly.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from deployer.models import Host
from deployer.transport import FileSpec, Pool, Secret, SyncError
from tests.integration.transportkit import can_mount_tmpfs, fast_settings, local_host
from tests.sshserver.plugin import ServerFactory
from tests.sshserver.server import SshTestServer

SECRET = b"hunter2-\xf0\x9f\x94\x91-top-secret-token"


@pytest.fixture(params=["ssh", "local"])
async def node(request: pytest.FixtureRequest, tmp_path: Path,
               ssh_server_factory: ServerFactory) -> AsyncIterator[tuple[Pool, Host, SshTestServer | None]]:
    """A pool, a host and (for ssh) its server; the host's files live under tmp_path/root."""
    server = await ssh_server_factory() if request.param == "ssh" else None
    host = server.as_host("node") if server else local_host("node")
    async with Pool([host], fast_settings(tmp_path)) as pool:
        yield pool, host, server


def bundle(root: Path, tmp_path: Path) -> list[FileSpec]:
    """A literal file, an executable local file and a secret, in two directories."""
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho tool\n")
    script.chmod(0o755)
    return [
        FileSpec.from_bytes(b"hello\n", str(root / "conf" / "app.conf")),
        FileSpec.from_path(script, str(root / "bin" / "tool.sh")),
        FileSpec.from_secret(Secret(SECRET), str(root / "secrets" / "token")),
    ]


def temp_leftovers(root: Path) -> list[Path]:
    """Temp files a push left behind."""
    return sorted(root.rglob("*.flextmp"))


async def test_first_push_sends_everything_second_sends_nothing(node: tuple[Pool, Host, SshTestServer | None],
                                                                tmp_path: Path) -> None:
    pool, host, _ = node
    root = tmp_path / "root"
    files = bundle(root, tmp_path)
    first = await pool.sync(host, files)
    assert sorted(first.changed) == sorted(f.remote_path for f in files) and first.unchanged == ()
    assert first.bytes_sent == sum(len(f.read()) for f in files)
    second = await pool.sync(host, files)
    assert second.changed == () and second.bytes_sent == 0 and len(second.unchanged) == 3
    assert (root / "conf" / "app.conf").read_bytes() == b"hello\n"
    assert (root / "secrets" / "token").read_bytes() == SECRET


async def test_a_fresh_push_skips_the_checksum_command_and_writes_everything(
        node: tuple[Pool, Host, SshTestServer | None], tmp_path: Path) -> None:
    """fresh=True (a new allocation directory): one command, every file sent, even over an identical
    target (always correct: at worst the same bytes are written again)."""
    pool, host, _ = node
    root = tmp_path / "root"
    files = bundle(root, tmp_path)
    await pool.sync(host, files)
    commands: list[list[str]] = []
    conn = pool.connection(host)
    run = conn.run

    async def counted(argv: list[str], **kwargs: object) -> object:
        commands.append(list(argv))
        return await run(argv, **kwargs)  # type: ignore[arg-type]

    conn.run = counted  # type: ignore[method-assign]
    again = await pool.sync(host, files, fresh=True)
    assert len(commands) == 1 and sorted(again.changed) == sorted(f.remote_path for f in files), commands
    assert (root / "secrets" / "token").read_bytes() == SECRET and temp_leftovers(root) == []
    assert (await pool.sync(host, files)).changed == ()


async def test_modes_are_kept_and_secrets_are_0600(node: tuple[Pool, Host, SshTestServer | None], tmp_path: Path) -> None:
    pool, host, _ = node
    root = tmp_path / "root"
    await pool.sync(host, bundle(root, tmp_path))
    modes = {p.name: p.stat().st_mode & 0o7777 for p in root.rglob("*") if p.is_file()}
    assert modes == {"app.conf": 0o644, "tool.sh": 0o755, "token": 0o600}


async def test_only_the_changed_file_travels(node: tuple[Pool, Host, SshTestServer | None], tmp_path: Path) -> None:
    pool, host, _ = node
    root = tmp_path / "root"
    files = bundle(root, tmp_path)
    await pool.sync(host, files)
    files[0] = FileSpec.from_bytes(b"hello again\n", files[0].remote_path)
    result = await pool.sync(host, files)
    assert result.changed == (files[0].remote_path,) and result.bytes_sent == len(b"hello again\n")
    assert (root / "conf" / "app.conf").read_bytes() == b"hello again\n"


async def test_a_mode_change_alone_is_a_change(node: tuple[Pool, Host, SshTestServer | None], tmp_path: Path) -> None:
    pool, host, _ = node
    target = tmp_path / "root" / "f"
    await pool.sync(host, [(b"x", str(target), 0o644)])
    result = await pool.sync(host, [(b"x", str(target), 0o640)])
    assert result.changed == (str(target),) and target.stat().st_mode & 0o777 == 0o640


async def test_many_small_files_take_two_commands(ssh_server: SshTestServer, tmp_path: Path) -> None:
    files = [(f"file {i}\n".encode(), str(tmp_path / "root" / f"f{i:03}"), 0o644) for i in range(200)]
    async with Pool([ssh_server.as_host("n1")], fast_settings(tmp_path)) as pool:
        result = await pool.sync("n1", files)
    assert len(result.changed) == 200
    assert len(ssh_server.stats.exec_requests) == 2  # one checksum query, one batched write


async def test_secret_never_appears_in_argv_logs_or_errors(node: tuple[Pool, Host, SshTestServer | None],
                                                           tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool, host, server = node
    caplog.set_level(logging.DEBUG)
    blocker = tmp_path / "root" / "blocker"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where a directory should be")
    target = str(blocker / "token")
    with pytest.raises(SyncError) as caught:
        await pool.sync(host, [FileSpec.from_secret(SECRET, target)])
    await pool.sync(host, [FileSpec.from_secret(SECRET, str(tmp_path / "root" / "ok" / "token"))])
    text = SECRET.decode()
    assert text not in caplog.text and "hunter2" not in caplog.text
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)
    assert "hunter2" not in repr(FileSpec.from_secret(SECRET, target))
    if server is not None:
        assert not any("hunter2" in command for command in server.stats.exec_requests)


async def test_relative_or_duplicate_targets_are_refused(node: tuple[Pool, Host, SshTestServer | None]) -> None:
    pool, host, _ = node
    for files in ([(b"x", "relative/path", 0o644)], [(b"x", "/tmp/a", 0o644), (b"y", "/tmp/a", 0o644)]):
        with pytest.raises(ValueError):
            await pool.sync(host, files)


# --- F20: full disk, interrupted push ---------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only)."""
    if not can_mount_tmpfs():
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_disk_keeps_the_old_file_and_names_host_and_path(
        node: tuple[Pool, Host, SshTestServer | None], tiny_disk: Path) -> None:
    pool, host, _ = node
    target = tiny_disk / "app" / "model.bin"
    await pool.sync(host, [(b"old version\n", str(target), 0o644)])
    with pytest.raises(SyncError, match=r"ENOSPC") as caught:
        await pool.sync(host, [(b"n" * 400_000, str(target), 0o644)])
    message = str(caught.value)
    assert host.name in message and str(target) in message and "free space" in message
    assert caught.value.path == str(target)
    assert target.read_bytes() == b"old version\n" and temp_leftovers(tiny_disk) == []


async def test_file_size_limit_fails_cleanly(ssh_server_factory: ServerFactory, tmp_path: Path) -> None:
    """F20 without root: the node's commands run under RLIMIT_FSIZE, so the write fails (EFBIG)."""
    server = await ssh_server_factory(file_size_limit=100_000)
    target = tmp_path / "root" / "big.bin"
    async with Pool([server.as_host("n1")], fast_settings(tmp_path)) as pool:
        await pool.sync("n1", [(b"old\n", str(target), 0o644)])
        with pytest.raises(SyncError, match="EFBIG") as caught:
            await pool.sync("n1", [(b"a" * 10, str(tmp_path / "root" / "small"), 0o644),
                                   (b"b" * 300_000, str(target), 0o644)])
    assert "no file of this push was replaced" in str(caught.value)
    assert target.read_bytes() == b"old\n" and not (tmp_path / "root" / "small").exists()
    assert temp_leftovers(tmp_path / "root") == []


async def test_push_cut_mid_transfer_leaves_the_old_file_and_retry_is_idempotent(
        ssh_server: SshTestServer, tmp_path: Path) -> None:
    target = tmp_path / "root" / "model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old model\n")
    new = bytes(range(256)) * 16384  # 4 MiB
    ssh_server.cut_after(1 << 20)  # the connection is reset after 1 MiB from the client
    async with Pool([ssh_server.as_host("n1")], fast_settings(tmp_path)) as pool:
        with pytest.raises(SyncError, match="interrupted") as caught:
            await pool.sync("n1", [(new, str(target), 0o644)])
        assert str(target) in str(caught.value)
        assert target.read_bytes() == b"old model\n"
        await _until(lambda: temp_leftovers(tmp_path / "root") == [])
        ssh_server.cut_after(None)
        again = await pool.sync("n1", [(new, str(target), 0o644)])
    assert again.changed == (str(target),) and target.read_bytes() == new


async def test_local_push_cancelled_mid_transfer_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "root" / "model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old model\n")
    async with Pool([local_host("l")], fast_settings(tmp_path)) as pool:
        push = asyncio.ensure_future(pool.sync("l", [(b"z" * (64 << 20), str(target), 0o644)]))
        await _until(lambda: temp_leftovers(target.parent) != [], within=20)
        push.cancel()
        with pytest.raises(asyncio.CancelledError):
            await push
    assert target.read_bytes() == b"old model\n"
    await _until(lambda: temp_leftovers(target.parent) == [])


async def _until(condition: object, within: float = 3.0) -> None:
    """Wait until condition() is true."""
    assert callable(condition)
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    assert condition(), "condition not met in time"
