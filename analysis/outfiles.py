"""Every table and figure file ``analysis`` writes goes through here: written atomically
(``srcore.atomic.atomic_write``: a temporary file in the same folder, then a rename), so a full
disk, a quota or a kill mid-write leaves the earlier file (or none), never an empty or truncated
one; a failed write names its file."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from srcore.atomic import atomic_write


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_file(path: Path, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """``atomic_write``, its ``OSError`` naming ``path`` (a write's own error names no file). The
    file gets the permissions a plain ``open`` would give it (the temporary file is private)."""
    path = Path(path)
    permissions = 0o666 & ~_umask()

    def write_readable(f: IO) -> None:
        write(f)
        os.fchmod(f.fileno(), permissions)
    try:
        atomic_write(path, write_readable, mode=mode)
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e), os.fspath(path)) from e
    return path


def write_text(path: Path, text: str) -> Path:
    """``text`` as UTF-8 (tables hold ±, Δ and daggers whatever the locale)."""
    data = text.encode("utf-8")
    return write_file(path, lambda f: f.write(data))


def write_csv(path: Path, frame, **to_csv) -> Path:
    """A pandas frame as CSV (``frame.to_csv(**to_csv)``)."""
    return write_text(path, frame.to_csv(**to_csv))


def save_figure_file(fig, path: Path, **savefig) -> Path:
    """A matplotlib figure, its format from the suffix."""
    path = Path(path)
    return write_file(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or None, **savefig))
