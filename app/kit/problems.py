"""Turn errors into RFC 9457 problem+json responses, in one place.

Operational errors (``AppError``, validation, unknown routes) are logged at info/warning and
answered with what the caller can fix. Programmer errors are caught by
``UnhandledErrorMiddleware`` (inside the request-context and security-header middleware, so a
500 still carries X-Request-ID and the headers), logged with their stack, counted, and answered
without any detail.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.context import current_request_id
from app.kit.errors import PROBLEM_JSON, AppError, internal_problem
from app.kit.metrics import HTTP_UNHANDLED
from app.kit.middleware import route_template

log = structlog.stdlib.get_logger("record.errors")


def problem_response(error: AppError, *, instance: str | None) -> JSONResponse:
    return JSONResponse(
        error.problem(instance=instance, request_id=current_request_id()),
        status_code=error.status_code,
        headers=error.headers,
        media_type=PROBLEM_JSON,
    )


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    level = "warning" if exc.status_code in (429, 502, 503) else "info"
    getattr(log, level)("request refused", status=exc.status_code, code=exc.code, detail=exc.detail)
    return problem_response(exc, instance=request.url.path)


def _clean_validation_errors(errors: Any) -> list[dict[str, Any]]:
    # Never echo the input back: it may be a password or a token.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in errors
    ]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    from app.kit.errors import ValidationError

    error = ValidationError(
        "The request is not valid; see 'errors' for each field.",
        errors=_clean_validation_errors(exc.errors()),
    )
    return await _app_error(request, error)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error = AppError(str(exc.detail), headers=dict(exc.headers or {}))
    error.status_code = exc.status_code  # type: ignore[misc]
    error.code = {404: "not_found", 405: "method_not_allowed"}.get(  # type: ignore[misc]
        exc.status_code, "http_error"
    )
    return problem_response(error, instance=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class UnhandledErrorMiddleware:
    def __init__(self, app: ASGIApp, *, expose_errors: bool = False) -> None:
        self.app = app
        self.expose_errors = expose_errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except AppError as exc:
            # Raised outside a route (a middleware): render it the same way.
            if started:
                raise
            await problem_response(exc, instance=scope["path"])(scope, receive, send)
        except Exception as exc:
            route = route_template(scope)
            HTTP_UNHANDLED.labels(route).inc()
            log.exception("unhandled error", route=route, path=scope["path"])
            if started:
                raise
            body = internal_problem(instance=scope["path"], request_id=current_request_id())
            if self.expose_errors:
                body["debug"] = f"{type(exc).__name__}: {exc}"
            response = JSONResponse(body, status_code=500, media_type=PROBLEM_JSON)
            await response(scope, receive, send)
