"""The device's identity: id and credential from registration (or the last rotation), kept in a
0600 file replaced atomically; and the marker a revoked or rejected device keeps so that it does
not enroll itself again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from edge_agent.download import fsync_directory

log = logging.getLogger("edgeship.agent")


class Identity:
    """``identity.json`` in the state directory; absent until the device registers.

    A corrupt file is moved aside (the device registers again) rather than stopping the agent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.device_id: str | None = None
        self.credential: str | None = None
        try:
            data = json.loads(path.read_text())
            self.device_id, self.credential = str(data["device_id"]), str(data["credential"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as err:
            aside = path.with_name(f"{path.name}.corrupt")
            log.warning("identity file %s is unreadable (%s); moved to %s, registering again",
                        path, err, aside)
            os.replace(path, aside)

    def save(self, device_id: str, credential: str) -> None:
        """Write atomically and durably (the file, then the directory entry), readable by this
        user only; only then does this object hold the new values.

        A rotated credential is used only after this returned: a crash before leaves the old
        file, whose credential the server still accepts (docs/protocol.md §2.3).
        """
        temp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"device_id": device_id, "credential": credential}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        fsync_directory(self.path.parent)
        self.device_id, self.credential = device_id, credential

    def forget(self) -> None:
        """Drop a credential the server no longer accepts (the next check-in registers again)."""
        self.device_id = self.credential = None
        self.path.unlink(missing_ok=True)


class Revocation:
    """``revoked.json`` in the state directory: written when the server answers that an operator
    revoked (``device_revoked``) or rejected (``device_rejected``) this device, with the sha256
    of the enrollment token configured at that moment.

    While it exists the agent does not register again with that same token (nor without one):
    a revoked device stays out until an operator gives it a *new* enrollment token (or deletes
    this file). It is removed once a registration with a new token succeeded. The token itself
    is not written here, only its hash.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, device_id: str | None, enroll_token: str | None, detail: str) -> None:
        """Write the marker atomically (0600); keeps an existing one (the first revocation counts)."""
        if self.path.exists():
            return
        temp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"device_id": device_id, "revoked_at": datetime.now(timezone.utc).isoformat(),
                       "enroll_token_sha256": _token_hash(enroll_token), "detail": detail}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)

    def blocks(self, enroll_token: str | None) -> bool:
        """Whether registering with ``enroll_token`` is barred: a marker exists and the token is
        none, or the one configured when the device was revoked. An unreadable marker bars any
        token (an operator removes it)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as err:
            log.error("revocation marker %s is unreadable (%s); not registering until it is removed",
                      self.path, err)
            return True
        if not enroll_token:
            return True
        return not isinstance(data, dict) or data.get("enroll_token_sha256") == _token_hash(enroll_token)

    def device_id(self) -> str | None:
        """The id of the revoked device, for log lines."""
        try:
            return json.loads(self.path.read_text()).get("device_id")
        except (OSError, ValueError, AttributeError):
            return None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _token_hash(token: str | None) -> str | None:
    return hashlib.sha256(token.encode("utf-8")).hexdigest() if token else None
