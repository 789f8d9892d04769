"""The fleet's Ed25519 key pair: the aggregator signs priors, agents verify them.

``fleet.key`` (PKCS#8 PEM, unencrypted, mode 0600) stays on the aggregator;
``fleet.pub`` (SubjectPublicKeyInfo PEM) goes to every agent as ``[fleet] trust_key``.
Every failure to read one is a :class:`~edge_agent.errors.UsageError` naming the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edge_agent.errors import UsageError
from edge_agent.fleet._deps import need

PRIVATE_NAME, PUBLIC_NAME = "fleet.key", "fleet.pub"


def _serialization():
    return need("cryptography.hazmat.primitives.serialization")


def _ed25519():
    return need("cryptography.hazmat.primitives.asymmetric.ed25519")


def keygen(directory, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new pair ``fleet.key`` (0600) and ``fleet.pub`` into ``directory``.

    Refuses to replace an existing key unless ``overwrite``: agents trusting the
    old public key would refuse every prior signed with the new one.
    """
    ser, ed = _serialization(), _ed25519()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise UsageError(f"{directory} already holds a fleet key ({PRIVATE_NAME} or {PUBLIC_NAME}); "
                         "agents trust the old one: move it away first")
    key = ed.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                    ser.NoEncryption())
    public_pem = key.public_key().public_bytes(ser.Encoding.PEM,
                                               ser.PublicFormat.SubjectPublicKeyInfo)
    if overwrite:
        private_path.unlink(missing_ok=True)
    # created 0600 from the start: never a moment with the key readable by others
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    os.chmod(private_path, 0o600)  # whatever the umask did
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _read(path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the fleet {what} key {path}: {exc.strerror or exc}") from None


def load_private_key(path):
    """The Ed25519 private key in PEM file ``path``."""
    ser, ed = _serialization(), _ed25519()
    data = _read(path, "private")
    try:
        key = ser.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key (make one with `edge-agent fleet keygen`)")
    return key


def load_public_key(path):
    """The Ed25519 public key in PEM file ``path`` (``[fleet] trust_key``)."""
    ser, ed = _serialization(), _ed25519()
    data = _read(path, "public")
    try:
        key = ser.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, ed.Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key "
                         "(use the fleet.pub of `edge-agent fleet keygen`)")
    return key


def key_id(public_key) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key."""
    ser = _serialization()
    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
