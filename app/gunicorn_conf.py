"""gunicorn's configuration: ``gunicorn -c python:app.gunicorn_conf 'app.main:create_app()'``.

Values come from the one Settings object (BIND, WEB_CONCURRENCY, GUNICORN_GRACEFUL_TIMEOUT,
LOG_LEVEL, TRUSTED_PROXIES, PROMETHEUS_MULTIPROC_DIR); command-line flags still win over them.
Logging is ours in the master too (``logconfig_dict``), so gunicorn's, uvicorn's and the app's
lines share a format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.kit.logging import configure_logging, logging_config
from app.kit.process import die_with_parent
from app.settings import get_settings

_settings = get_settings()

bind = [_settings.bind]
workers = _settings.web_concurrency
# uvicorn.workers is deprecated since uvicorn 0.30; the worker lives in its own package now.
worker_class = "uvicorn_worker.UvicornWorker"
# Kubernetes sends SIGTERM after the pod's preStop sleep; in-flight requests (a chat stream can
# run ~30 s) get this long before workers are killed, on SIGTERM and on a rolling restart
# (SIGHUP) alike. GUNICORN_GRACEFUL_TIMEOUT, which the manifest sets and sizes the pod's grace
# period from (infra/api.py): the pod must not be killed before gunicorn is done.
graceful_timeout = _settings.gunicorn_graceful_timeout
timeout = 60
# GUNICORN_KEEPALIVE: past the load balancer's idle timeout where there is one (infra/api.py).
keepalive = _settings.gunicorn_keepalive
# Only these peers may set X-Forwarded-For/-Proto; the default trusts loopback only.
forwarded_allow_ips = ",".join(_settings.trusted_proxies) or "127.0.0.1,::1"
# RequestContextMiddleware writes the access line (with request_id and route).
accesslog = None
loglevel = _settings.log_level.lower()
logconfig_dict = logging_config(level=_settings.log_level, json=_settings.is_production)
# The control socket is per user by default: two servers on one machine would collide.
control_socket_disable = True


def on_starting(server: Any) -> None:
    configure_logging(level=_settings.log_level, json=_settings.is_production)
    multiproc_dir = _settings.prometheus_multiproc_dir
    if multiproc_dir:
        # Samples of a previous run's dead workers would be summed into this one's. Files of
        # live processes stay: locally the job worker writes into the same directory.
        path = Path(multiproc_dir)
        path.mkdir(parents=True, exist_ok=True)
        for sample_file in path.glob("*.db"):
            if not _alive(sample_file.stem.rsplit("_", 1)[-1]):
                sample_file.unlink(missing_ok=True)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def post_fork(server: Any, worker: Any) -> None:
    # A worker must not outlive its master: uvicorn's worker does not watch its parent, and an
    # orphan keeps serving on the shared socket with no one to restart or stop it.
    die_with_parent()
    if os.getppid() != server.pid:  # the master died before prctl took effect
        os._exit(0)
    # The worker class points uvicorn's loggers at gunicorn's handlers and stops them
    # propagating; put them back on our pipeline.
    configure_logging(level=_settings.log_level, json=_settings.is_production)


def child_exit(server: Any, worker: Any) -> None:
    if _settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        # Drops the dead worker's live gauges; its counters stay summed, as they should.
        multiprocess.mark_process_dead(worker.pid, _settings.prometheus_multiproc_dir)  # type: ignore[no-untyped-call]
