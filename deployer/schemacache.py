"""Which job documents passed the job schema before, so that a push of unchanged job files does not
import and run jsonschema again (its import alone is ~80 ms of CPU, on every command that loads jobs).

The key is the sha256 of the schema's text and of the document's data as canonical JSON: a changed
job, a changed schema (another flex version) or a document that does not serialize is validated
again. Only successes are remembered, so every problem is always reported by jsonschema itself. The
file is $FLEX_CACHE_DIR/valid-jobs, else $XDG_CACHE_HOME/flex/valid-jobs, else
~/.cache/flex/valid-jobs: one digest per line, the last KEEP kept, replaced atomically. A cache that
cannot be read or written is no cache: validation runs as if it were empty.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

KEEP = 512


def cache_file() -> Path:
    """Where the digests of valid documents live."""
    explicit = os.environ.get("FLEX_CACHE_DIR")
    if explicit:
        return Path(explicit) / "valid-jobs"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flex" / "valid-jobs"


def key(schema_text: str, data: Any) -> str | None:
    """The cache key of data under the schema; None when data has no canonical JSON form."""
    try:
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):  # dates, sets, NaN...: not cached, always validated
        return None
    digest = hashlib.sha256(schema_text.encode())
    digest.update(b"\0" + canonical.encode())
    return digest.hexdigest()


def seen_valid(digest: str) -> bool:
    """Whether a document with this key passed the schema before."""
    try:
        return digest in cache_file().read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return False


def remember_valid(digest: str) -> None:
    """Record that a document with this key passed the schema (best effort)."""
    path = cache_file()
    try:
        known = path.read_text(encoding="ascii").split() if path.exists() else []
    except (OSError, UnicodeDecodeError):
        known = []
    if digest in known:
        return
    lines = (known + [digest])[-KEEP:]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("\n".join(lines) + "\n", encoding="ascii")
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass  # never written
