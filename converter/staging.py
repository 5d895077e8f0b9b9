"""Write a release directory all at once: build in a temporary sibling, rename at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from converter.errors import OutputError


def check_writable(out: Path, force: bool) -> None:
    """Fail before any long work if ``out`` cannot become the release directory.

    Raises:
        OutputError: ``out`` exists (and ``force`` is off) or is a file, or its parent cannot
            be created or written.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {str(out)!r} exists and is not a directory")
    if out.exists() and not force:
        raise OutputError(f"output {str(out)!r} already exists (pass --force to replace it)")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"output {str(out)!r}: cannot create {str(parent)!r}: {err.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output {str(out)!r}: directory {str(parent)!r} is not writable")


@contextlib.contextmanager
def staged_directory(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it becomes ``out``.

    On any exception the temporary directory is removed and ``out`` is left as it was. With
    ``force`` an existing ``out`` is replaced only after the new one is complete.
    """
    out = Path(out).resolve()
    check_writable(out, force)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        where = f"output {str(out)!r}: cannot write in {str(out.parent)!r}"
        raise OutputError(f"{where}: {err.strerror}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
