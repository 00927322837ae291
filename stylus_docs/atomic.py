"""Atomic file publication: write to a temporary name in the same directory, fsync, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
partial file, even if the writer is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def shared_file_mode() -> int:
    """Permission bits an ordinary ``open()`` would give a new file (0o666 less the umask).

    ``mkstemp`` creates files 0o600; published snapshots and release shards must stay readable by the
    other users and services that read them, so the temporary file is widened before it is renamed.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), shared_file_mode())
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def writable_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """Create ``path`` (and parents) if needed and check it can be written; return it.

    Called before any long work, so a typo in ``--out`` / ``--cache`` is one line up front rather than a
    traceback after an hour of downloads or denoising.

    Raises:
        FatalError: naming the flag and the OS reason.
    """
    from stylus_docs.errors import FatalError

    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise FatalError(f"{flag} {target}: not a writable directory ({exc.strerror or exc})") from None
    return target
