"""Structured logging with structlog: JSON lines in production, a readable console otherwise.

Everything goes through one pipeline: our own loggers, the standard library's (uvicorn,
gunicorn, alembic, procrastinate) via ``ProcessorFormatter``. Request context (request_id,
org_id, user_id, route) is bound in context variables by the request middleware and merged
into every line. A redaction processor runs last before rendering so no secret reaches a log.
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from typing import Any

import structlog

# Key names whose values are secrets. "tokens" (a count of LLM tokens) is not one.
SECRET_KEYS = re.compile(
    r"pass(word|wd)?|secret|token(?!s\b|s_|_count)|authorization|api[-_]?key|cookie|"
    r"credential|^key$|private|signature|dsn$",
    re.IGNORECASE,
)
_SECRET_NAMES = (
    r"(?:password|passwd|pwd|secret|token|access_token|refresh_token|api_?key|key|signature)"
)
SECRET_VALUES = (
    (re.compile(r"\brk_[A-Za-z0-9_\-]{8,}"), "rk_[REDACTED]"),
    (re.compile(r"\brs_[A-Za-z0-9_\-]{8,}"), "rs_[REDACTED]"),
    # Tokens of mailed links (invitation, verification, reset), wherever a path or text has one.
    (re.compile(r"\b(r[ipv]_)[A-Za-z0-9_\-]{8,}"), r"\1[REDACTED]"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-~+/]+=*"), "Bearer [REDACTED]"),
    (re.compile(r"(?i)\bbasic\s+[A-Za-z0-9+/]{6,}=*"), "Basic [REDACTED]"),
    # A JWT anywhere (OIDC tokens): three base64url parts, the first a JSON header.
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), "[REDACTED_JWT]"),
    (re.compile(r"(?i)(://[^:/@\s]*:)[^@\s]+@"), r"\1[REDACTED]@"),
    # Secrets in query strings (uvicorn's access line carries the raw query) and in text
    # such as "password=..." or '"password": "..."' that reached a message.
    (re.compile(rf"(?i)([?&;]{_SECRET_NAMES}=)[^&\s#]*"), r"\1[REDACTED]"),
    (
        re.compile(rf"""(?i)(["']?\b{_SECRET_NAMES}["']?\s*[:=]\s*)(["']?)[^"'&\s,}}]+\2"""),
        r"\1\2[REDACTED]\2",
    ),
    # A share link's id (/s/<id>) is the link's only credential: wherever a path or URL reaches
    # a line (the 500 handler's path, an exception's text, a URL in a message), the id is
    # dropped. Route templates (/s/{share_id}) are left as they are.
    (re.compile(r"(/s/)(?!\{)[^/?#\s\"'<>]+"), r"\1[REDACTED]"),
    (re.compile(r"(/api/share/)(?!\{)[^/?#\s\"'<>]+"), r"\1[REDACTED]"),
    # An email address, wherever one reached a line (a path, a raw query with its @ as %40, an
    # exception's text, a job's arguments): the logs name people by id. Not a URL's user@host,
    # and not a release such as record@0.1.0 (its "domain" has no letters-only top level).
    (
        re.compile(
            r"(?<![\w.+%-])(?<!://)[\w.+%-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
            r"\.[A-Za-z]{2,}\b"
        ),
        "[REDACTED_EMAIL]",
    ),
)
REDACTED = "[REDACTED]"

# The ASGI scope of the request being served. The router fills in the matched route after the
# middleware has started, so the template is read when a line is written, not when bound.
_request_scope: ContextVar[Mapping[str, Any] | None] = ContextVar("request_scope", default=None)


def bind_request_scope(scope: Mapping[str, Any]) -> Token[Mapping[str, Any] | None]:
    return _request_scope.set(scope)


def unbind_request_scope(token: Token[Mapping[str, Any] | None]) -> None:
    _request_scope.reset(token)


def add_route(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every line written while serving a request names its route template."""
    scope = _request_scope.get()
    if scope is not None and "route" not in event_dict:
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            event_dict["route"] = path
    return event_dict


# Every pattern of SECRET_VALUES needs one of these in the text it matches (an underscore of a
# token prefix, a ":" or "=" of a URL, query or "name: value", an "@", a share path, a scheme
# word, a JWT's header): text with none of them, as most of an access line is, skips the
# dozen substitutions. A superset check: it may let text through to them, never past them.
_MAYBE_SECRET = re.compile(r"[_:=@]|%40|/s/|/api/share/|bearer|basic|eyj", re.IGNORECASE)


def _redact_text(text: str) -> str:
    if not _MAYBE_SECRET.search(text):
        return text
    for pattern, replacement in SECRET_VALUES:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and SECRET_KEYS.search(k) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else is rendered by its str() or repr() (a URL object, an exception): redact
    # that text, and keep the object itself when there was nothing to redact.
    try:
        text = str(value)
    except Exception:  # a broken __str__ must not break logging
        return value
    redacted = _redact_text(text)
    return value if redacted == text else redacted


def redact(value: Any) -> Any:
    """``value`` with the secrets the log lines lose removed, by the same rules: what leaves
    the process another way (an error report, app/kit/sentry.py) hides what the logs hide."""
    return _redact_value(value)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Remove secrets by key name (password, token, authorization, ...) and by shape (keys,
    bearer tokens, share ids in paths), in every value of every line: the message, the
    exception's text, nested mappings and lists, and the text of any other object."""
    for key in list(event_dict):
        if SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def add_trace_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """trace_id/span_id of the current span, when tracing is on (see kit.tracing).

    Looked up in sys.modules so that logging never imports OpenTelemetry itself.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is not None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
            event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def _drop_color_message(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # uvicorn passes an ANSI-coloured copy of its message as an `extra`.
    event_dict.pop("color_message", None)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        add_route,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(*, level: str = "INFO", json: bool = False) -> None:
    """Install the pipeline for structlog and the standard library (idempotent)."""
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    logging.config.dictConfig(logging_config(level=level, json=json))


def logging_config(*, level: str = "INFO", json: bool = False) -> dict[str, Any]:
    """The standard library's half as a dictConfig: gunicorn's master takes it as
    ``logconfig_dict`` so its own lines come out in the same format as the workers'."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": _shared_processors(),
        "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text *before* redaction, in the console format too: a secret in
            # an exception message must not reach a developer's terminal or CI logs either.
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structlog": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            # Servers log through the root handler in our format, once.
            **{
                name: {"handlers": [], "propagate": True}
                for name in (
                    "uvicorn",
                    "uvicorn.error",
                    "uvicorn.access",
                    "gunicorn.error",
                    "gunicorn.access",
                )
            },
            # RequestContextMiddleware writes the access line, with request_id, route and
            # duration; uvicorn's own would be a second, poorer line per request.
            "uvicorn.access": {"handlers": [], "propagate": True, "level": "WARNING"},
            # Alembic announces every plugin at INFO; its migrations log at WARNING+.
            "alembic.runtime.plugins": {"level": "WARNING"},
            # One line per outgoing request is noise; failures surface where they matter.
            "httpx": {"level": "WARNING"},
        },
    }


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A context-bound child logger: ``get_logger(__name__, job_id=...)``."""
    return structlog.stdlib.get_logger(name).bind(**context)
