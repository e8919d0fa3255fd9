"""Pure-ASGI middleware: request context and metrics, security headers, body size limit.

Pure ASGI rather than BaseHTTPMiddleware: it neither buffers streaming responses (chat uses
server-sent events) nor breaks context variables.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable

import structlog
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.context import request_id_var
from app.kit.errors import PROBLEM_JSON, PayloadTooLargeError
from app.kit.logging import bind_request_scope, unbind_request_scope
from app.kit.metrics import http_request_metrics

log = structlog.stdlib.get_logger("record.access")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")


def route_template(scope: Scope) -> str:
    """The matched route's path template (low-cardinality), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Request id in and out, context for logs, the HTTP metrics and the access log line."""

    def __init__(self, app: ASGIApp, *, skip_access_log: Iterable[str] = ()) -> None:
        self.app = app
        self.skip_access_log = frozenset(skip_access_log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope_token = bind_request_scope(scope)  # lines name the route once it is matched
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            requests, duration = http_request_metrics(method, route, str(status))
            requests.inc()
            duration.observe(elapsed)
            if scope["path"] not in self.skip_access_log:
                log.info(
                    "request",
                    method=method,
                    route=route,
                    # A share link's id is its credential: logged as the route, never itself.
                    path=route if scope["path"].startswith("/s/") else scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.clear_contextvars()
            unbind_request_scope(scope_token)
            request_id_var.reset(token)


class SecurityHeadersMiddleware:
    """The same defensive headers on every response, errors and public pages included."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers: list[tuple[str, str]] = [
            ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "strict-origin-when-cross-origin"),
            # Recording in the browser needs the camera and microphone, for this origin only.
            (
                "Permissions-Policy",
                "camera=(self), microphone=(self), display-capture=(self), geolocation=(), "
                "payment=(), usb=(), bluetooth=(), serial=(), hid=(), midi=(), "
                "accelerometer=(), gyroscope=(), magnetometer=(), interest-cohort=()",
            ),
            # A strict policy that still lets a web UI run ffmpeg.wasm ('wasm-unsafe-eval'
            # allows WebAssembly compilation only, not eval of scripts) and record media into
            # blob: URLs. No inline scripts; inline styles are allowed for the docs page only
            # by its own route, not here.
            (
                "Content-Security-Policy",
                "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                "style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                "connect-src 'self'; worker-src 'self' blob:; font-src 'self'; "
                "object-src 'none'; base-uri 'none'; form-action 'self'; "
                "frame-ancestors 'none'; upgrade-insecure-requests",
            ),
            # 0, as today's guidance says: the legacy XSS auditor is gone from current browsers
            # and, where it survives, its filtering could itself be abused to leak data. CSP is
            # the protection.
            ("X-XSS-Protection", "0"),
            ("Cross-Origin-Opener-Policy", "same-origin"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
        ]
        if hsts:
            self.headers.append(
                ("Strict-Transport-Security", "max-age=63072000; includeSubDomains; preload")
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers:
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_wrapper)


class BodySizeLimitMiddleware:
    """Refuse request bodies over a limit, by Content-Length and by counting what arrives.

    The streaming upload route has its own (much larger) cap, enforced while streaming to
    storage: ``exempt`` names it exactly, as (method, path) — a prefix would also exempt the
    JSON routes beside it, whose bodies are read whole before authentication.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, exempt: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise PayloadTooLargeError(
                f"Request body over {self.max_bytes} bytes; send less, or upload files to "
                "/api/recordings."
            )
        seen = 0
        too_large = False
        started = False

        async def receive_wrapper() -> Message:
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise PayloadTooLargeError(f"Request body over {self.max_bytes} bytes.")
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            # FastAPI turns any error while reading the body into "400 There was an error
            # parsing the body"; that answer is replaced by the 413 below.
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except PayloadTooLargeError:
            if started or not too_large:
                raise
        if too_large and not started:
            error = PayloadTooLargeError(f"Request body over {self.max_bytes} bytes.")
            response = JSONResponse(
                error.problem(instance=scope["path"], request_id=request_id_var.get()),
                status_code=error.status_code,
                media_type=PROBLEM_JSON,
            )
            await response(scope, receive, send)
