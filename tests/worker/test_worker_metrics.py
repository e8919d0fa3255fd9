"""The worker's own /metrics endpoint, which the cluster's PodMonitor scrapes."""

from __future__ import annotations

import httpx

from app.kit.metrics import JOBS
from tests.conftest import free_port
from worker.main import serve_metrics


def test_worker_serves_metrics(settings):
    port = free_port()
    JOBS.labels("process_recording", "succeeded").inc()
    server = serve_metrics(settings.model_copy(update={"worker_metrics_port": port}))
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 200
    assert 'record_jobs_total{status="succeeded",type="process_recording"}' in response.text


def test_worker_metrics_can_be_off(settings):
    assert serve_metrics(settings.model_copy(update={"worker_metrics_port": 0})) is None
