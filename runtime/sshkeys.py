"""Reading OpenSSH public key lines and the server's host key."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

# Key types accepted from team members; DSA and unknown types are refused as too weak or odd.
ACCEPTED_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


class KeyFormatError(ValueError):
    pass


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint exactly as `ssh-keygen -lf` prints it."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def openssh(self) -> str:
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"


def parse_public_key(line: str) -> PublicKey:
    """Parse one `authorized_keys`-style line: `<type> <base64> [comment]`."""
    text = line.strip()
    if not text:
        raise KeyFormatError("empty input: expected an OpenSSH public key line like 'ssh-ed25519 AAAA... you@host'")
    if "PRIVATE KEY" in text:
        raise KeyFormatError("this is a private key: give the public half (the .pub file) and keep this one secret")
    if "\n" in text:
        raise KeyFormatError("expected exactly one public key line, got several lines")
    parts = text.split(None, 2)
    if parts[0] not in ACCEPTED_TYPES:
        raise KeyFormatError(
            f"unsupported key type {parts[0][:40]!r}: expected one of {', '.join(ACCEPTED_TYPES)}"
        )
    if len(parts) < 2:
        raise KeyFormatError("the key line has a type but no key data")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        asyncssh.import_public_key(text)  # checks the blob and that it matches the type
    except (ValueError, asyncssh.KeyImportError) as err:
        raise KeyFormatError(f"not a valid {parts[0]} public key: {err}") from None
    return PublicKey(parts[0], blob, parts[2].strip() if len(parts) > 2 else "")


def fingerprint_of(key: asyncssh.SSHKey) -> str:
    return PublicKey(key.algorithm.decode(), key.public_data, "").fingerprint


def generate_key_pair(comment: str) -> tuple[str, str]:
    """A new ed25519 key: (private key in OpenSSH format, public key line)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_private_key().decode(), key.export_public_key().decode().strip()


def public_key_of(private_key: str, comment: str) -> str:
    key = asyncssh.import_private_key(private_key)
    return f"{key.export_public_key().decode().split()[0]} {key.export_public_key().decode().split()[1]} {comment}"


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The server's identity: made once, 0600, so clients' known_hosts stays valid across restarts."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    os.replace(tmp, path)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    return key
