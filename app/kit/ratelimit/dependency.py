"""The limiters as FastAPI applies them: a dependency per limiter, 429s, and the headers.

Responses of a limited route carry ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (delta seconds until the window frees a slot); a 429 also carries
``Retry-After`` with the same number.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Literal, Protocol
from uuid import UUID

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.errors import RateLimitError
from app.kit.ratelimit.client_ip import ip_subject, request_client_ip
from app.kit.ratelimit.limiter import LimiterName, RateLimiter
from app.kit.ratelimit.script import Decision

# Whom each limiter counts.
Per = Literal["user", "org", "ip"]
DEFAULT_PER: Mapping[str, Per] = {
    "api": "user",
    "search": "user",
    "chat": "user",
    "upload": "org",
    "share": "org",
    "anonymous": "ip",
    "media": "ip",  # a shared recording's media: a player sends many range requests
    "signup": "ip",
    "share_page": "ip",  # GET /s/{id}, apart from its media
    "password_reset": "ip",
    # Every login request, right or wrong: each costs an argon2 check, and successful logins
    # give back what the failure limiters took.
    "login": "ip",
    # The login limiters count failed logins only, so they are applied by the login route
    # itself (app/auth/login_throttle.py), not as a dependency; login_failures_ip_email and
    # login_failures_email count per (IP, email) and per email, which no ``Per`` names.
    "login_failures_ip": "ip",
}

STATE_KEY = "ratelimit"  # request.state attribute holding the decision to report in headers
SERVICES_KEY = "ratelimit"  # Services.extras key of the process's RateLimiter


class Caller(Protocol):
    """What the limiter needs of ``request.state.principal`` (kit never imports a domain)."""

    @property
    def user_id(self) -> UUID | None: ...

    @property
    def org_id(self) -> UUID | None: ...

    @property
    def key_id(self) -> UUID | None: ...


def caller_subject(caller: Caller, per: Literal["user", "org"]) -> str:
    if per == "org" and caller.org_id is not None:
        return f"org:{caller.org_id}"
    if caller.user_id is not None:
        return f"user:{caller.user_id}"
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    raise RuntimeError("rate limit: the caller has neither a user, an org nor a key")


def request_limiter(request: Request) -> RateLimiter | None:
    services = getattr(request.app.state, "services", None)
    limiter = services.extras.get(SERVICES_KEY) if services is not None else None
    return limiter if isinstance(limiter, RateLimiter) and limiter.enabled else None


def remember(request: Request, decision: Decision) -> None:
    """Keep the tightest decision of this request for the response headers."""
    current: Decision | None = getattr(request.state, STATE_KEY, None)
    if current is not None and not current.allowed:
        return  # a refusal is what the client must see
    tighter = current is None or (decision.remaining, -decision.reset_ms) < (
        current.remaining,
        -current.reset_ms,
    )
    if not decision.allowed or tighter:
        setattr(request.state, STATE_KEY, decision)


async def enforce(request: Request, limiter: str, subject: str) -> Decision | None:
    """Count this request; raise ``RateLimitError`` (429) when it is over the limit.

    None when rate limiting is off. Fail-open decisions pass and set no headers: the numbers
    are unknown, and made-up ones would mislead a client that paces itself by them.
    """
    limiters = request_limiter(request)
    if limiters is None:
        return None
    decision = await limiters.hit(limiter, subject)
    if decision.fail_open:
        return decision
    remember(request, decision)
    if not decision.allowed:
        rate = limiters.rates[limiter]
        raise RateLimitError(
            f"Too many requests: the '{limiter}' limit is {rate}. "
            f"Try again in {decision.retry_after} s.",
            retry_after=decision.retry_after,
            headers=decision.headers(),
        )
    return decision


async def refund(request: Request, decision: Decision | None) -> None:
    """Take back what ``decision`` counted (see ``RateLimiter.refund``); the response headers
    then show the slot as free again."""
    limiters = request_limiter(request)
    if limiters is None or decision is None or not await limiters.refund(decision):
        return
    current: Decision | None = getattr(request.state, STATE_KEY, None)
    if current is decision:
        remaining = min(decision.limit, decision.remaining + 1)
        setattr(request.state, STATE_KEY, replace(decision, remaining=remaining))


async def enforce_caller(
    request: Request, limiter: str, caller: Caller, per: Literal["user", "org"] = "user"
) -> Decision | None:
    return await enforce(request, limiter, caller_subject(caller, per))


async def enforce_ip(request: Request, limiter: str = "anonymous") -> Decision | None:
    return await enforce(request, limiter, ip_subject(request_client_ip(request)))


def rate_limit(
    limiter: LimiterName, *, per: Per | None = None
) -> Callable[[Request], Awaitable[Decision | None]]:
    """A dependency counting the request against ``limiter``.

    Per user or org, it reads the caller from ``request.state.principal``, which
    ``authenticate`` sets: declare it after the route's principal parameter, e.g.
    ``async def search(body: SearchIn, principal: Searcher, _: SearchLimit)`` with
    ``SearchLimit = Annotated[Decision | None, Depends(rate_limit("search"))]``.
    Per IP (``anonymous``, ``signup``, ...), it needs nothing else.
    """
    if per is None and limiter not in DEFAULT_PER:
        raise ValueError(f"The {limiter!r} limiter is not for rate_limit(): it counts no Per.")
    scope = per or DEFAULT_PER[limiter]

    async def dependency(request: Request) -> Decision | None:
        if scope == "ip":
            return await enforce_ip(request, limiter)
        caller: Caller | None = getattr(request.state, "principal", None)
        if caller is None:
            raise RuntimeError(
                f"rate_limit({limiter!r}) ran before authentication: declare it after the "
                "route's principal dependency"
            )
        return await enforce_caller(request, limiter, caller, scope)

    dependency.__name__ = f"rate_limit_{limiter}"
    return dependency


class RateLimitHeadersMiddleware:
    """Adds X-RateLimit-* to the response of any request a limiter decided.

    The decision is on ``request.state``, not on an injected ``Response``: FastAPI drops the
    headers of an injected ``Response`` when the route returns its own (a 204, a stream) or
    raises. Pure ASGI so it neither buffers server-sent events nor breaks context variables.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # request.state is scope["state"]. Servers should give each request a copy of the
        # lifespan state, but not all do (asgi-lifespan hands every request the same dict), and
        # a decision must never leak into another request's headers: so copy it here, and
        # hold this request's dict whatever inner layers do to the scope.
        state: dict[str, Any] = dict(scope.get("state") or {})
        state.pop(STATE_KEY, None)
        scope["state"] = state

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision = state.get(STATE_KEY)
                if isinstance(decision, Decision):
                    headers = MutableHeaders(scope=message)
                    for name, value in decision.headers().items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_wrapper)
