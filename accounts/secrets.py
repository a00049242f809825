"""Random identifiers and API key secrets (no Django models here).

An API key reads ``mm_live_<prefix>_<secret><checksum>``:
- ``prefix``: 8 base62 characters, stored in the clear to find the key's row;
- ``secret``: 43 base62 characters (more than 256 bits), never stored;
- ``checksum``: 6 base62 characters of CRC32 over the rest, so a mistyped or truncated key is
  rejected without touching the database, and secret scanners can tell real keys apart.
Only an HMAC-SHA256 digest of the whole key (under ``API_KEY_HMAC_KEY``) is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_PREFIX = "mm_live_"
_PREFIX_LEN = 8
_SECRET_LEN = 43  # 62**43 > 2**256
_CHECKSUM_LEN = 6
_KEY_RE = re.compile(
    rf"^{KEY_PREFIX}(?P<prefix>[0-9A-Za-z]{{{_PREFIX_LEN}}})_"
    rf"(?P<secret>[0-9A-Za-z]{{{_SECRET_LEN}}})(?P<checksum>[0-9A-Za-z]{{{_CHECKSUM_LEN}}})$"
)


def random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def public_id(kind: str) -> str:
    """A random, non-sequential public identifier such as ``key_3kT9x0aQ2LmZ``."""
    return f"{kind}_{random_base62(12)}"


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LEN)


def new_api_key() -> tuple[str, str]:
    """Return ``(full_key, lookup_prefix)``."""
    prefix = random_base62(_PREFIX_LEN)
    body = f"{KEY_PREFIX}{prefix}_{random_base62(_SECRET_LEN)}"
    return body + _checksum(body), prefix


def parse_api_key(key: str) -> str | None:
    """Return the lookup prefix of a well-formed key, or None."""
    match = _KEY_RE.match(key)
    if match is None or not hmac.compare_digest(_checksum(key[:-_CHECKSUM_LEN]), match["checksum"]):
        return None
    return match["prefix"]


def digest(secret: str, hmac_key: str) -> str:
    return hmac.digest(hmac_key.encode(), secret.encode(), "sha256").hex()


def new_token() -> str:
    """A URL-safe single-use token (invitations)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
