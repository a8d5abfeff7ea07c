"""API keys: generated once, shown once, stored as sha256(pepper + key), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "mapo_"
LOOKUP_PREFIX_CHARS = 12


def generate_api_key() -> str:
    """A new random key: `mapo_` + 43 url-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str, pepper: str) -> str:
    """Hex sha256 of pepper + key; the pepper keeps a leaked table from being checked offline."""
    return hashlib.sha256((pepper + key).encode()).hexdigest()


def lookup_prefix(key: str) -> str:
    """The public start of a key, stored in clear to find candidate rows and to show in listings."""
    return key[:LOOKUP_PREFIX_CHARS]


def hashes_match(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode(), b.encode())
