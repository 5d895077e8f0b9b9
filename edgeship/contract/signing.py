"""Ed25519 signing of manifests. Torch-free: the server and the agent verify with it.

Key files are PEM: the private key PKCS#8 (written 0600), the public key SubjectPublicKeyInfo.
A key id is the first 16 hex digits of sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from edgeship.contract.errors import SigningError
from edgeship.contract.manifest import canonical_json, unsigned

ENV_SIGNING_KEY = "EDGESHIP_SIGNING_KEY"
ALG = "ed25519"


def generate_keypair(directory: Path | str, name: str = "publisher") -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, mode 0600) and ``NAME.pub`` into ``directory``.

    Raises:
        SigningError: a key of that name already exists (keys are never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if private_path.exists() or public_path.exists():
        raise SigningError(f"key {private_path} already exists; not overwriting it")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def resolve_key_path(flag: str | Path | None) -> Path:
    """The signing key from ``--signing-key`` or ``$EDGESHIP_SIGNING_KEY``.

    Raises:
        SigningError: neither is set, or the file does not exist.
    """
    value = flag or os.environ.get(ENV_SIGNING_KEY)
    if not value:
        raise SigningError(
            f"no signing key: pass --signing-key or set {ENV_SIGNING_KEY} "
            "(create one with `edgeship keys generate`)"
        )
    path = Path(value)
    if not path.is_file():
        raise SigningError(f"signing key {str(path)!r} does not exist")
    return path


def load_private_key(path: Path | str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as err:
        raise SigningError(f"signing key {str(path)!r} cannot be read: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"signing key {str(path)!r} is not an Ed25519 key")
    return key


def load_public_key(data: bytes | str | Path):
    """Load a public key from PEM bytes/text or a ``.pub`` path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(data, Path):
        data = data.read_bytes()
    if isinstance(data, str):
        data = data.encode()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise SigningError(f"public key cannot be read: {err}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError("public key is not an Ed25519 key")
    return key


def key_id(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(data: dict[str, Any], private_key) -> dict[str, Any]:
    """Return a copy of the manifest dict with its ``signature`` set."""
    body = unsigned(data)
    value = private_key.sign(canonical_json(body))
    return {
        **body,
        "signature": {
            "alg": ALG,
            "key_id": key_id(private_key.public_key()),
            "value": base64.b64encode(value).decode("ascii"),
        },
    }


def verify_manifest(data: dict[str, Any], trusted: dict[str, Any]) -> str:
    """Check the manifest's signature against trusted public keys (``key_id -> key``).

    Returns:
        The key id that signed it.

    Raises:
        SigningError: unsigned, unknown key id, wrong algorithm or a signature that does not
            match the canonical bytes.
    """
    from cryptography.exceptions import InvalidSignature

    signature = data.get("signature")
    if not isinstance(signature, dict):
        raise SigningError("manifest is not signed")
    if signature.get("alg") != ALG:
        raise SigningError(f"manifest signature algorithm {signature.get('alg')!r} is not {ALG}")
    kid, value = signature.get("key_id"), signature.get("value", "")
    if not isinstance(kid, str) or not isinstance(value, str):  # else a TypeError, not a refusal
        raise SigningError("manifest signature's key_id and value must be strings")
    key = trusted.get(kid)
    if key is None:
        raise SigningError(f"manifest signed by unknown key {kid!r}")
    try:
        key.verify(base64.b64decode(value, validate=True),
                   canonical_json(unsigned(data)))
    except (InvalidSignature, ValueError):
        raise SigningError(f"manifest signature by key {kid} does not verify") from None
    return kid
