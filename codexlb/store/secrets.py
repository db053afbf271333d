"""Tokens at rest: AES-256-GCM (`cryptography`), with the key in a file of its own.

Each secret is sealed with its row's id as associated data, so a ciphertext
copied onto another row does not open. A known value sealed at creation tells
a wrong key apart from a damaged database before any token is read.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets as random_bytes
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE_NAME = "secret.key"
_VERSION = b"\x01"
_NONCE = 12


class SecretKeyError(Exception):
    """The key is missing, unreadable, malformed, or not the one the database was sealed with."""


def load_or_create_key(path: Path, create: bool) -> bytes:
    """Read the base64 key file; create it (0600) when allowed and absent."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            raise SecretKeyError(
                f"secret key file {path} does not exist, but the database does: restore the key "
                f"(or point CODEXLB_SECRET_KEY_FILE at it); without it the stored tokens cannot be read"
            ) from None
        key = AESGCM.generate_key(bit_length=256)
        # O_EXCL: two processes starting at once must not each write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_key(path, False)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(key).decode() + "\n")
        return key
    except OSError as exc:
        raise SecretKeyError(f"cannot read secret key file {path}: {exc.strerror}") from None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SecretKeyError(f"secret key file {path} is not base64") from None
    if len(key) != 32:
        raise SecretKeyError(f"secret key file {path} does not hold a 256-bit key")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, context: str) -> bytes:
        nonce = random_bytes.token_bytes(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def open(self, blob: bytes, context: str) -> str:
        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _VERSION:
            raise SecretKeyError("sealed value is damaged or of an unknown version")
        try:
            return self._aead.decrypt(blob[1:1 + _NONCE], blob[1 + _NONCE:], context.encode()).decode()
        except InvalidTag:
            raise SecretKeyError("sealed value does not open with this key") from None
