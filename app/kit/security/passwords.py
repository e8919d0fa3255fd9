"""Password strength (shared by signup and any password change) and hashing (argon2id)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.kit.errors import ValidationError

# argon2-cffi's defaults are RFC 9106's second recommended option (argon2id, 64 MiB, t=3).
_hasher = PasswordHasher()
# Verifying against this keeps a login for an unknown email as slow as for a known one.
_DUMMY_HASH = _hasher.hash("not-a-real-password-only-for-timing")


def password_problems(
    password: str, *, email: str | None = None, min_length: int = 12
) -> list[str]:
    """Reasons this password is refused; empty when it is acceptable."""
    problems: list[str] = []
    if len(password) < min_length:
        problems.append(f"must be at least {min_length} characters long")
    if len(password) > 256:
        problems.append("must be at most 256 characters long")
    lowered = password.lower()
    if email:
        local = email.split("@", 1)[0].lower()
        if lowered.find(email.lower()) >= 0 or (len(local) >= 3 and local in lowered):
            problems.append("must not contain your email address")
    if not problems:
        from zxcvbn import zxcvbn

        # zxcvbn knows the common-password lists, keyboard walks, repeats and dates; score 3
        # means "safely unguessable: moderate protection from offline slow-hash scenario".
        result = zxcvbn(password[:100], user_inputs=[email] if email else [])
        if result["score"] < 3:
            hint = result["feedback"].get("warning") or "it is too easy to guess"
            problems.append(f"is too common or predictable ({hint.rstrip('.')})")
    return problems


def check_password_strength(password: str, *, email: str | None, min_length: int = 12) -> None:
    problems = password_problems(password, email=email, min_length=min_length)
    if problems:
        raise ValidationError(
            "Choose a stronger password: it " + "; it ".join(problems) + ".",
            errors=[
                {"loc": ["body", "password"], "msg": p, "type": "weak_password"} for p in problems
            ],
        )


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
