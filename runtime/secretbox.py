"""Secrets at rest: GitHub tokens, the GitHub App's private key and its webhook and client
secrets are kept in the store encrypted (Fernet: AES-128-CBC with an HMAC-SHA256), with a key
that lives in the data dir, 0600, beside the store and never in it. A copy of the database alone
(a backup, a stray file) gives none of them away.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_NAME = "secrets.key"
PREFIX = "enc:v1:"  # marks an encrypted value, so a plain one is never mistaken for it


class SecretError(Exception):
    """A stored secret cannot be read with this data dir's key."""


class SecretBox:
    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()

    def _key(self, create: bool) -> Fernet:
        """The data dir's key; made (0600, atomically) only when something is sealed, so a store
        restored without it fails clearly instead of sealing new secrets with another key."""
        with self._lock:
            if self._fernet is None:
                if not self.key_path.exists():
                    if not create:
                        raise SecretError(f"{self.key_path} is missing, so the secrets in the store cannot be "
                                          "read; restore it with the data dir")
                    tmp = self.key_path.with_name(f".{self.key_path.name}.{os.getpid()}.tmp")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(Fernet.generate_key())
                    try:
                        os.link(tmp, self.key_path)  # never replaces: another process's key wins
                    except FileExistsError:
                        pass
                    finally:
                        tmp.unlink()
                self._fernet = Fernet(self.key_path.read_bytes().strip())
            return self._fernet

    def seal(self, secret: str) -> str:
        """`secret` encrypted for the store ("" stays "": nothing to hide)."""
        if not secret:
            return ""
        return PREFIX + self._key(create=True).encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored:
            return ""
        if not stored.startswith(PREFIX):
            raise SecretError("a secret in the store is not encrypted; the store was changed by hand")
        try:
            return self._key(create=False).decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise SecretError(f"a secret in the store cannot be decrypted with {self.key_path}; "
                              "was the data dir restored without its secrets.key?") from None
