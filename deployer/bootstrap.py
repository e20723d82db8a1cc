"""The probe stream's command, which installs the node runtime itself when the node lacks it.

A fresh node used to cost three SSH channels and three interpreters before its first document: the
stream's command failed (no runtime), the sync helper wrote the runtime, the stream started again.
Now the stream's command is a POSIX sh line that execs the runtime when its entry point exists (the
entry point is renamed into place last, so its presence means the whole runtime: see
nodeclient.runtime_missing) and otherwise execs BOOT, a one-line python program that:

1. prints MISSING on stdout and waits for the controller's answer on stdin;
2. reads an 8-digit length and that much Python source, the INSTALLER, and runs it; the installer
   reads an 8-digit length and that much zlib data, the runtime's files in the sync helper's format
   (filesync.payload: path, mode, size, sha256, then the contents), and writes them all or nothing
   with the sync helper's own code (nodewrite.write_batch: temp files, fsync, renames, the entry
   point last; no sha256 per file: zlib's adler32 checks the whole batch);
3. runs the verb in the same interpreter (the runtime directory first on sys.path, then
   nodecli.main()), so the stream that installed the runtime goes on as the stream.

One channel, one interpreter and one round trip (MISSING -> installer) instead of three channels,
three interpreters and three round trips, and ~4x fewer bytes (the runtime's ~700 KiB with its
bytecode is ~190 KiB compressed). The installer travels on stdin, never in argv: `ps` on the node
shows the one-line BOOT, not 10 KiB of code. A write that fails (full disk, no permission) prints
FAILED and the nodewrite failure document on one line and exits 3; nothing of the runtime is left half-written.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence

from deployer.connection import FileSpec
from deployer.filesync import WRITE_SCRIPT, payload, prepare

MISSING = "flex-runtime-missing"  # BOOT's first line: send the installer
FAILED = "flex-runtime-failed "  # the installer's line when the runtime could not be written, then JSON

# $1 python, $2 BOOT, then the runtime's argv (entry point first); exec either way, so the probe
# stream's parent stays sshd's session process (the stream ends when that parent goes)
SH_LINE = 'p=$1 b=$2; shift 2; test -f "$1" && exec "$p" -E -S "$@"; exec "$p" -E -S -c "$b" "$@"'

# f(n): exactly n bytes of stdin (exit 3 at EOF); the installer gets f in its globals
BOOT = (f'import os,sys;f=lambda n,b=b"":f(n,b+(os.read(0,n-len(b))or sys.exit(3)))if len(b)<n else b;'
        f'print("{MISSING}",flush=True);exec(f(int(f(8))),{{"__name__":"flexinstall","f":f}})')

# Appended to nodewrite.py's source (its main() does not run: __name__ is not "__main__").
INSTALL_TAIL = f'''

def _install_then_run():
    size, data = int(f(8)), bytearray()
    while len(data) < size:
        chunk = os.read(0, min(size - len(data), 1 << 20))
        if not chunk:
            sys.exit(3)
        data += chunk
    import io
    import zlib
    try:
        write_batch(io.BytesIO(zlib.decompress(bytes(data))), verify=False)  # zlib checks it all
    except (WriteFailed, ValueError, zlib.error) as exc:
        import json
        sys.stdout.write("{FAILED}" + json.dumps(getattr(exc, "doc", None) or str(exc)) + "\\n")
        sys.stdout.flush()
        sys.exit(3)
    entry = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(entry)
    import nodecli
    sys.exit(nodecli.main())


_install_then_run()
'''

INSTALLER = (WRITE_SCRIPT + INSTALL_TAIL).encode()


def stream_argv(python: str, words: Sequence[str]) -> list[str]:
    """The command that runs `python -E -S ENTRY ARGS...` (words: the entry point's path, then its
    arguments), or BOOT with the same arguments when the entry point does not exist."""
    return ["sh", "-c", SH_LINE, "sh", python, BOOT, *words]


def installer_input(files: Sequence[FileSpec]) -> bytes:
    """What BOOT reads after MISSING: the installer, then the runtime's files, compressed."""
    data = zlib.compress(payload(prepare(files)), 6)
    return b"%08d" % len(INSTALLER) + INSTALLER + b"%08d" % len(data) + data


def failure(line: str) -> object:
    """The nodewrite failure document of a FAILED line (None when it is not JSON)."""
    try:
        return json.loads(line[len(FAILED):])
    except ValueError:
        return None
