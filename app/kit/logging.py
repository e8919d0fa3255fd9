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
from typing import Any

import structlog

SECRET_KEYS = re.compile(
    r"pass(word)?|secret|token|authorization|api[-_]?key|cookie|credential|^key$|private",
    re.IGNORECASE,
)
SECRET_VALUES = (
    (re.compile(r"\brk_[A-Za-z0-9_\-]{8,}"), "rk_[REDACTED]"),
    (re.compile(r"\brs_[A-Za-z0-9_\-]{8,}"), "rs_[REDACTED]"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-~+/]+=*"), "Bearer [REDACTED]"),
    (re.compile(r"(?i)(://[^:/@\s]*:)[^@\s]+@"), r"\1[REDACTED]@"),
)
REDACTED = "[REDACTED]"


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        for pattern, replacement in SECRET_VALUES:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and SECRET_KEYS.search(k) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Remove secrets by key name (password, token, authorization, ...) and by shape."""
    for key in list(event_dict):
        if SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(*, level: str = "INFO", json: bool = False) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
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
    formatter = {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": _shared_processors(),
        "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json else _passthrough,
            redact_secrets,
            renderer,
        ],
    }
    logging.config.dictConfig(
        {
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
                # Alembic announces every plugin at INFO; its migrations log at WARNING+.
                "alembic.runtime.plugins": {"level": "WARNING"},
            },
        }
    )


def _passthrough(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event_dict


def get_logger(name: str | None = None, **context: Any) -> Any:
    """A context-bound child logger: ``get_logger(__name__, job_id=...)``."""
    return structlog.stdlib.get_logger(name).bind(**context)
