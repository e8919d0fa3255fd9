"""Errors that carry their HTTP meaning, rendered as RFC 9457 problem+json in one place.

``AppError`` and its subclasses are *operational* errors: expected, caused by the caller or by
something outside, answered with a 4xx/502 and logged at info/warning. Anything else that
escapes a route is a *programmer* error: answered 500 with no detail, logged with its stack.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

import anyio

PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    @property
    def title(self) -> str:
        return HTTPStatus(self.status_code).phrase

    def problem(self, *, instance: str | None, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://record.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        if request_id:
            body["request_id"] = request_id
        if self.errors:
            body["errors"] = self.errors
        return body


class ValidationError(AppError):
    status_code = 400
    code = "validation_error"


class AuthenticationError(AppError):
    status_code = 401
    code = "authentication_required"

    def __init__(self, detail: str = "Authentication required.", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class WrongPasswordError(AuthenticationError):
    """The current password, re-entered by someone signed in, is wrong. 403, not 401: the
    session is fine, and a client that reads 401 as "signed out" would drop it. Login limits
    count it as a failed password (it is an AuthenticationError)."""

    status_code = 403
    code = "wrong_password"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {})
        super().__init__(detail, **kwargs)


class AuthorizationError(AppError):
    status_code = 403
    code = "forbidden"


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"


class ConflictError(AppError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(AppError):
    status_code = 415
    code = "unsupported_media_type"


class RateLimitError(AppError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: int, **kwargs: Any) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Retry-After"] = str(max(1, retry_after))
        super().__init__(detail, headers=headers, **kwargs)
        self.retry_after = retry_after


class ExternalServiceError(AppError):
    status_code = 502
    code = "external_service_error"

    def __init__(
        self, service: str, detail: str | None = None, *, retryable: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(detail or f"{service} did not answer as expected; try again.", **kwargs)
        self.service = service
        # False when the service refused what was sent (too large, malformed): the same request
        # again would be refused again.
        self.retryable = retryable


class ServiceUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"


class InsufficientStorageError(AppError):
    """The server's own storage is full (ENOSPC, EDQUOT): nothing the caller sent is wrong,
    and the same request succeeds once an operator has made room."""

    status_code = 507
    code = "insufficient_storage"

    def __init__(
        self,
        detail: str = (
            "The server is out of storage space, so the upload was not kept. Try again later, "
            "or tell the server's operator if it persists."
        ),
        **kwargs: Any,
    ) -> None:
        super().__init__(detail, **kwargs)


def internal_problem(*, instance: str | None, request_id: str | None) -> dict[str, Any]:
    """The body of a 500: says nothing of the cause, only how to report it."""
    body: dict[str, Any] = {
        "type": "https://record.dev/problems/internal_error",
        "title": HTTPStatus.INTERNAL_SERVER_ERROR.phrase,
        "status": 500,
        "detail": "Something went wrong on our side. Quote the request_id when reporting it.",
        "code": "internal_error",
    }
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    return body


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a task group's failure stands for: its first exception that is not a
    cancellation (the siblings it cancelled), looking inside nested groups. Callers re-raise it,
    so a 413 stays a 413 and a permanent failure stays permanent, not a group of them."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]
