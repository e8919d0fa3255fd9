"""Opaque bearer tokens: random, shown once, stored as a SHA-256 digest.

They carry 256 bits of entropy, so a fast hash is the right choice here (a slow password hash
would only cost every request time); passwords, which people choose, use argon2id instead.
"""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "rk_"
SESSION_PREFIX = "rs_"
# Tokens of mailed links: an invitation, an email verification, a password reset.
INVITATION_PREFIX = "ri_"
VERIFY_PREFIX = "rv_"
RESET_PREFIX = "rp_"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def display_prefix(token: str) -> str:
    """What we keep to help people recognise a key: its first characters, never enough to use."""
    return token[:10]
