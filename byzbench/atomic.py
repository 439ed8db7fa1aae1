"""Files written whole or not at all: each is written to a temporary file beside it, then
renamed over it (``os.replace`` is atomic on POSIX and Windows), so a full disk, a
read-only directory or a crash never leaves a truncated file where a reader looks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class AtomicWriteError(OSError):
    """A file could not be written; nothing was left at its path. ``reason`` is the
    operating system's (e.g. "No space left on device")."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to produce the file's content at a temporary path, then move it
    to ``path``. Raises :class:`AtomicWriteError` with a one-line reason (the temporary
    file removed, ``path`` untouched) on any ``OSError``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise AtomicWriteError(path, str(exc.strerror or exc)) from None
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


__all__ = ["AtomicWriteError", "write_atomic", "write_text_atomic"]
