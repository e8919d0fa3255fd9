"""The exact sliding window: one Lua script per decision, its arguments and its answer.

Each (limiter, subject) pair owns one sorted set of the requests it admitted, scored by the
time they were admitted. The script drops what has slid out of the window, counts what is left,
admits the request if the count is under the limit, and answers (allowed, remaining, reset) —
all atomically, so concurrent requests from many API pods never overshoot the limit. Refused
requests are not recorded: a client that keeps hammering still gets a slot back as soon as the
window slides past its oldest admitted request.

Time comes from the server (``TIME`` inside the script), not from the API pods: their clocks
skew, and one pod running 200 ms ahead would otherwise trim the others' requests early. Redis 7+
and Valkey replicate a script by its effects, so calling ``TIME`` before writing is allowed.

Keys are ``rl:{<limiter>:<subject>}``: the whole name is the cluster hash tag and a decision
touches exactly one key, so the script runs unchanged on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

# KEYS[1]: the subject's window. ARGV[1]: limit, ARGV[2]: window in ms, ARGV[3]: a member name
# unique to this decision (a per-process random prefix and a counter: two requests admitted in
# the same microsecond must stay two members, or the second would overwrite the first).
# Scores are microseconds since the epoch: about 1.8e15, exact in a double (< 2^53).
#
# The answer is packed into ONE integer (the cheapest reply to parse): refused ->
# -(reset_ms + 1); admitted -> remaining * 2^32 + reset_ms. Both parts are clamped so the sum
# stays below 2^53, where a Lua number (a double) is still an exact integer. See
# ``unpack_reply``.
SLIDING_WINDOW_LUA = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local limit = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_us - window_us)
local count = redis.call('ZCARD', KEYS[1])
local allowed = count < limit
if allowed then
  redis.call('ZADD', KEYS[1], now_us, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  count = count + 1
end
local reset_us = window_us
if count > 1 or not allowed then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then
    reset_us = tonumber(oldest[2]) + window_us - now_us
  end
end
local reset_ms = math.min(math.max(math.ceil(reset_us / 1000), 0), 4294967295)
if not allowed then
  return -reset_ms - 1
end
return math.min(math.max(limit - count, 0), 2097151) * 4294967296 + reset_ms
"""
MAX_REMAINING = 2**21 - 1  # what the packed reply can carry; only limits above it are clamped


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` requests per ``seconds``."""

    limit: int
    seconds: float

    @property
    def window_ms(self) -> int:
        return max(1, round(self.seconds * 1000))

    def __str__(self) -> str:
        return f"{self.limit}/{self.seconds:g}s"


def parse_rate(text: str) -> Rate:
    """``"<count>/<seconds>"`` as in the settings, e.g. ``"100/60"``. Bad values fail start-up."""
    count, sep, seconds = text.strip().partition("/")
    try:
        limit, window = int(count), float(seconds)
    except ValueError:
        limit, window = -1, 0.0
    # A window is at most 49 days: the packed reply carries reset_ms in 32 bits.
    if not sep or limit < 0 or not 0 < window <= 2**32 / 1000:
        raise ValueError(f"A rate limit is '<count>/<seconds>', like '100/60'; got {text!r}.")
    return Rate(limit, window)


def window_key(limiter: str, subject: str, prefix: str = "") -> str:
    # The braces make the whole name the Redis Cluster hash tag: one key, one slot.
    return f"{prefix}rl:{{{limiter}:{subject}}}"


def email_subject(email: str) -> str:
    # Hashed: Redis keys show up in MONITOR, SCAN and memory reports; addresses should not.
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return f"email:{digest}"


@dataclass(frozen=True, slots=True)
class Decision:
    limiter: str
    allowed: bool
    limit: int
    remaining: int
    reset_ms: int  # until the window frees a slot (for a refusal: until a retry can pass)
    fail_open: bool = False
    # Where an admitted request was recorded, so that ``RateLimiter.refund`` can take it back;
    # empty for refusals and fail-open decisions (nothing was recorded).
    subject: str = field(default="", repr=False, compare=False)
    member: bytes = field(default=b"", repr=False, compare=False)

    @property
    def reset_seconds(self) -> int:
        return max(0, math.ceil(self.reset_ms / 1000))

    @property
    def retry_after(self) -> int:
        return max(1, self.reset_seconds)

    def headers(self) -> dict[str, str]:
        """Reset is *delta seconds* (as in the IETF httpapi RateLimit header draft), not an
        epoch time: the seconds until the oldest admitted request slides out."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


def unpack_reply(reply: int) -> tuple[bool, int, int]:
    """(allowed, remaining, reset_ms) from the script's packed integer."""
    if reply < 0:
        return False, 0, -reply - 1
    return True, reply >> 32, reply & 0xFFFFFFFF


def decision_from_reply(
    limiter: str, rate: Rate, reply: int, subject: str, member: bytes
) -> Decision:
    allowed, remaining, reset_ms = unpack_reply(reply)
    if not allowed:
        subject, member = "", b""  # a refusal records nothing to take back
    return Decision(limiter, allowed, rate.limit, remaining, reset_ms, False, subject, member)
