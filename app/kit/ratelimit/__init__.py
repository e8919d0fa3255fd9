"""Rate limits: exact sliding windows in Redis, one round trip per decision, failing open.

- ``script``: the Lua script of one decision, rates, keys and the decision it answers;
- ``breaker``: the circuit breaker that skips a Redis that stopped answering;
- ``limiter``: ``RateLimiter``, the script run through redis-py's pool within a timeout;
- ``client_ip``: the IP subject of a request (IPv6 by /64);
- ``dependency``: the FastAPI dependency, the 429 and the X-RateLimit-* headers.
"""

from app.kit.ratelimit.breaker import CircuitBreaker
from app.kit.ratelimit.client_ip import Address, ip_subject, parse_address, request_client_ip
from app.kit.ratelimit.dependency import (
    DEFAULT_PER,
    SERVICES_KEY,
    STATE_KEY,
    Caller,
    Per,
    RateLimitHeadersMiddleware,
    caller_subject,
    enforce,
    enforce_caller,
    enforce_ip,
    rate_limit,
    refund,
    remember,
    request_limiter,
)
from app.kit.ratelimit.limiter import (
    LIMITER_NAMES,
    MAX_CONNECTIONS,
    LimiterName,
    RateLimiter,
    create_limiter_redis,
    rates_from_settings,
)
from app.kit.ratelimit.script import (
    MAX_REMAINING,
    SLIDING_WINDOW_LUA,
    Decision,
    Rate,
    email_subject,
    parse_rate,
    unpack_reply,
    window_key,
)

__all__ = [
    "DEFAULT_PER",
    "LIMITER_NAMES",
    "MAX_CONNECTIONS",
    "MAX_REMAINING",
    "SERVICES_KEY",
    "SLIDING_WINDOW_LUA",
    "STATE_KEY",
    "Address",
    "Caller",
    "CircuitBreaker",
    "Decision",
    "LimiterName",
    "Per",
    "Rate",
    "RateLimitHeadersMiddleware",
    "RateLimiter",
    "caller_subject",
    "create_limiter_redis",
    "email_subject",
    "enforce",
    "enforce_caller",
    "enforce_ip",
    "ip_subject",
    "parse_address",
    "parse_rate",
    "rate_limit",
    "rates_from_settings",
    "refund",
    "remember",
    "request_client_ip",
    "request_limiter",
    "unpack_reply",
    "window_key",
]
