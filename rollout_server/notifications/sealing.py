"""Webhook signing secrets are stored sealed (AES-GCM) with a key kept outside the database, so a
dump of the database alone does not hand them out.

The key is ``WEBHOOK_SECRETS_KEY`` (urlsafe base64 of 32 bytes; give every replica the same one)
or, when that is not set, ``DATA_DIR/webhook-secrets.key``, created 0600 on first use.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "webhook-secrets.key"
_PREFIX = "v1:"
_CONTEXT = b"edgeship webhook secret"


class SecretUnavailable(RuntimeError):
    """A sealed secret cannot be opened (another key: set the same WEBHOOK_SECRETS_KEY everywhere)."""


def decode_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode() + b"=" * (-len(text.strip()) % 4))
    except ValueError:
        raise ValueError("WEBHOOK_SECRETS_KEY must be urlsafe base64") from None
    if len(key) != 32:
        raise ValueError(f"WEBHOOK_SECRETS_KEY must hold 32 bytes, not {len(key)}")
    return key


def load_key(configured: str | None, data_dir: str | Path) -> bytes:
    """The configured key, else the data directory's key file (created once, atomically: several
    workers starting together all end up with the first one's key)."""
    if configured:
        return decode_key(configured)
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        temporary = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails if another process made it first: theirs is kept
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return decode_key(path.read_text())


def seal(key: bytes, secret: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(key).encrypt(nonce, secret.encode("utf-8"), _CONTEXT)
    return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(key: bytes, sealed: str) -> str:
    if not sealed.startswith(_PREFIX):
        raise SecretUnavailable("the stored secret is not in a known form")
    raw = base64.urlsafe_b64decode(sealed[len(_PREFIX):].encode())
    try:
        return AESGCM(key).decrypt(raw[:12], raw[12:], _CONTEXT).decode("utf-8")
    except InvalidTag:
        raise SecretUnavailable("the stored secret was sealed with another key (WEBHOOK_SECRETS_KEY "
                                "differs between replicas, or the key file was replaced)") from None
