"""Turn errors into RFC 9457 problem+json responses, in one place.

Operational errors (``AppError``, validation, unknown routes) are logged at info/warning and
answered with what the caller can fix. Programmer errors are caught by
``UnhandledErrorMiddleware`` (inside the request-context and security-header middleware, so a
500 still carries X-Request-ID and the headers), logged with their stack, counted, and answered
without any detail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.context import current_request_id
from app.kit.errors import PROBLEM_JSON, AppError, ServiceUnavailableError, internal_problem
from app.kit.metrics import HTTP_UNHANDLED
from app.kit.middleware import route_template
from app.kit.sentry import report_exception

log = structlog.stdlib.get_logger("record.errors")


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description="Where: ['body', 'email'], ['path', 'org_id'].")
    msg: str
    type: str


class ProblemDetails(BaseModel):
    """An RFC 9457 problem, as every error response of this API carries it."""

    # Development adds a `debug` member to 500s; RFC 9457 allows extension members.
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    code: str = Field(description="A stable machine-readable name for `type`.")
    instance: str | None = None
    request_id: str | None = Field(
        default=None, description="Quote it when reporting a problem; also in X-Request-ID."
    )
    errors: list[FieldProblem] | None = Field(
        default=None, description="Per-field problems of a 400; the input is never echoed."
    )


# What any API operation may answer besides its own responses: auth, validation, limits and
# the server's own failures. Health probes answer only their own bodies or a 500.
_API_PROBLEMS: dict[int, str] = {
    400: "The request is not valid (see `errors`).",
    401: "Authentication is missing or not accepted.",
    403: "The caller's role does not allow this.",
    404: "Not found, or not in the caller's org.",
    405: "The method is not allowed on this path.",
    409: "Conflicts with the current state.",
    413: "The request body is too large.",
    415: "The media type is not accepted.",
    429: "Rate limited; see Retry-After.",
    500: "A server error; the body says nothing of its cause.",
    503: "A dependency is unavailable; try again.",
}
_PROBE_PROBLEMS: dict[int, str] = {500: _API_PROBLEMS[500]}
# Refusals worth more than an info line: a limit hit, a dependency away, and the server's disk
# full (507), for an operator to act on now.
_LOG_LEVELS: dict[int, str] = {429: "warning", 502: "warning", 503: "warning", 507: "error"}


def problem_response(error: AppError, *, instance: str | None) -> JSONResponse:
    return JSONResponse(
        error.problem(instance=instance, request_id=current_request_id()),
        status_code=error.status_code,
        headers=error.headers,
        media_type=PROBLEM_JSON,
    )


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    level = _LOG_LEVELS.get(exc.status_code, "info")
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


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The database being away is operational (a restart, a failover), not a bug: say so.
    log.warning("database unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
    return problem_response(
        ServiceUnavailableError(
            "The database is not reachable right now; retry in a few seconds.",
            headers={"Retry-After": "5"},
        ),
        instance=request.url.path,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.openapi = _openapi_with_problems(app)  # type: ignore[method-assign]


def _openapi_with_problems(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """Declare the problem responses in the OpenAPI document, as the handlers send them.

    FastAPI documents a 422 with its own body for every operation that takes input; this API
    answers 400 problem+json instead, so clients and schemathesis read what really comes back.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        model_schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components["ProblemDetails"] = model_schema
        ref = {"$ref": "#/components/schemas/ProblemDetails"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                probe = "health" in operation.get("tags", [])
                for status, description in (_PROBE_PROBLEMS if probe else _API_PROBLEMS).items():
                    responses.setdefault(
                        str(status),
                        {
                            "description": description,
                            "content": {PROBLEM_JSON: {"schema": ref}},
                        },
                    )
        # FastAPI's 422 body models, unless something else still refers to them.
        for unused in ("HTTPValidationError", "ValidationError"):
            if f'"#/components/schemas/{unused}"' not in json.dumps(schema["paths"]):
                components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    return openapi


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
            report_exception(exc)  # to Sentry, when SENTRY_DSN is set
            if started:
                raise
            body = internal_problem(instance=scope["path"], request_id=current_request_id())
            if self.expose_errors:
                body["debug"] = f"{type(exc).__name__}: {exc}"
            response = JSONResponse(body, status_code=500, media_type=PROBLEM_JSON)
            await response(scope, receive, send)
