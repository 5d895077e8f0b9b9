"""The device's identity: id and credential from registration, kept in a 0600 file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

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
        """Write atomically, readable by this user only."""
        temp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"device_id": device_id, "credential": credential}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        self.device_id, self.credential = device_id, credential

    def forget(self) -> None:
        """Drop a credential the server no longer accepts (the next check-in registers again)."""
        self.device_id = self.credential = None
        self.path.unlink(missing_ok=True)
