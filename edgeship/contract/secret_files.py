"""Tokens read from files, so they need not be on a command line (visible to every user in
``ps``): ``--token-file``, ``--enroll-token-file`` and the agent's ``enroll_token_file``.

One rule for every command: the secret is the file's first non-empty line, stripped; a file that
its group or other users may read is used but warned about, since anyone who can read it holds
the token.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from edgeship.contract.errors import EdgeshipError


class SecretFileError(EdgeshipError):
    """The token file cannot be read or holds no token."""


def read_secret_file(path: Path | str, warn: Callable[[str], None]) -> str:
    """The token in ``path``; ``warn`` is called with one line when others may read the file.

    Raises:
        SecretFileError: the file is missing, unreadable, or empty.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SecretFileError(f"cannot read token file {path}: {err}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"token file {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
             f"chmod 600 {path}")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise SecretFileError(f"token file {path} is empty")
