"""Input validation every domain shares, as functions and as pydantic field types.

Where to find the rest: password strength in ``security.passwords``, HTML in ``security.text``,
URLs the server fetches in ``security.urls``, file names, paths, media types and sizes in
``security.files``. Path parameters typed ``UUID`` are validated by FastAPI itself and
answered 400 problem+json by ``kit.problems``.

The pydantic types raise ``ValueError`` (which pydantic turns into a 400 with a field
location); the functions raise :class:`~app.kit.errors.ValidationError` for service code.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, EmailStr, Field

from app.kit.errors import AppError, ValidationError
from app.kit.security.files import safe_filename
from app.kit.security.urls import validate_public_url

# RFC 5321 caps a path at 256 octets including the angle brackets; 320 is the usual ceiling.
MAX_EMAIL_LENGTH = 320


def parse_uuid(value: str, *, field: str = "id") -> UUID:
    """A UUID from text a client sent outside a typed parameter (a header, a JSON string)."""
    try:
        return UUID(str(value).strip())
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValidationError(f"{field} must be a UUID.") from exc


def normalize_email(value: str) -> str:
    """The address as we store it: syntax checked (no DNS look-up), domain lower-cased.

    The local part keeps its case (RFC 5321 says it may matter); comparisons that must ignore
    it use ``lower()`` at the query.
    """
    if len(value) > MAX_EMAIL_LENGTH:
        raise ValidationError(f"The email address is longer than {MAX_EMAIL_LENGTH} characters.")
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(f"The email address is not valid: {exc}") from exc
    return str(result.normalized)


def _public_url(value: str) -> str:
    # Syntax and literal addresses only: a validator must not block on DNS. Resolve again with
    # validate_public_url_async right before fetching.
    try:
        return validate_public_url(value, resolve=False).url
    except AppError as exc:
        raise ValueError(exc.detail) from exc


def _filename(value: str) -> str:
    return safe_filename(value)


# Field types for request schemas.
Email = Annotated[EmailStr, Field(max_length=MAX_EMAIL_LENGTH)]
PublicUrl = Annotated[str, Field(max_length=2048), AfterValidator(_public_url)]
SafeFilename = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_filename)]
