"""The error base every edgeship component raises, and the one-line rule for messages.

Every error carries a one-line message that names the problem; the ``edgeship`` command line
prints it and exits with ``exit_code``. Components subclass :class:`EdgeshipError` (the
converter's ``ConverterError``, the server client's ``ClientError``, ...).
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EdgeshipError(Exception):
    """Base class: an operation that cannot go on. ``str(err)`` is a one-line reason."""

    exit_code = 2


class SigningError(EdgeshipError):
    """No usable signing key, or a signature that does not verify."""


def first_line(exc: BaseException, limit: int = 300, innermost: bool = False) -> str:
    """The first non-empty line of an exception's message, without ANSI codes, cut at ``limit``.

    Toolchains raise multi-line messages (graphs, tracebacks); errors here are one line. With
    ``innermost`` the message comes from the deepest ``__cause__`` (exporters wrap the error
    that names the op in several layers).
    """
    while innermost and exc.__cause__ is not None:
        exc = exc.__cause__
    text = _ANSI.sub("", str(exc))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
