"""Prometheus metrics as /metrics exposes them, multiprocess aggregation, and tracing."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.app.security.helpers import running_app

RECORDING_ID = "3f2b1c9e-8d7a-4e6f-9a1b-2c3d4e5f6a7b"
ROOT = Path(__file__).resolve().parents[2]


def _samples(text: str, name: str) -> list[dict[str, str]]:
    return [
        {**sample.labels, "_value": str(sample.value)}
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def test_http_metrics_use_route_templates_never_raw_ids(client, org_a) -> None:
    for _ in range(2):
        await client.get(f"/api/recordings/{RECORDING_ID}", headers=org_a.auth())
    await client.get(f"/api/orgs/{org_a.org_id}/members", headers=org_a.auth())
    await client.get("/api/recordings/not-a-uuid", headers=org_a.auth())
    await client.get(f"/random/{RECORDING_ID}")
    text = (await client.get("/metrics")).text
    assert RECORDING_ID not in text
    assert org_a.org_id not in text
    assert "not-a-uuid" not in text
    requests = _samples(text, "record_http_requests_total")
    routes = {(s["method"], s["route"], s["status"]) for s in requests}
    assert ("GET", "/api/recordings/{recording_id}", "404") in routes
    assert ("GET", "/api/recordings/{recording_id}", "400") in routes
    assert ("GET", "/api/orgs/{org_id}/members", "200") in routes
    assert ("GET", "unmatched", "404") in routes
    durations = _samples(text, "record_http_request_duration_seconds_count")
    assert any(s["route"] == "/api/recordings/{recording_id}" for s in durations)


async def test_db_query_metrics_by_operation_and_table(client, org_a) -> None:
    await client.get("/api/recordings", headers=org_a.auth())
    text = (await client.get("/metrics")).text
    queries = _samples(text, "record_db_query_duration_seconds_count")
    labels = {(s["operation"], s["table"]) for s in queries}
    assert ("select", "recordings") in labels
    assert ("insert", "orgs") in labels or ("insert", "users") in labels
    assert all(
        s["operation"] in {"select", "insert", "update", "delete", "copy", "other"} for s in queries
    )


def test_query_labels_are_a_closed_set() -> None:
    from app.kit.metrics import query_labels

    assert query_labels("SELECT * FROM recordings WHERE id = %s") == ("select", "recordings")
    assert query_labels("with x as (select 1) update shares set a=1") == ("update", "shares")
    assert query_labels("INSERT INTO secret_table_of_user_123 VALUES (1)") == ("insert", "other")
    assert query_labels("VACUUM") == ("other", "other")


MULTIPROC_CHILD = textwrap.dedent(
    """
    import sys
    from app.kit.metrics import HTTP_REQUESTS, JOB_QUEUE_AGE
    HTTP_REQUESTS.labels("GET", "/api/recordings/{recording_id}", "200").inc(int(sys.argv[1]))
    JOB_QUEUE_AGE.labels("default").set(float(sys.argv[1]))
    """
)
MULTIPROC_READER = textwrap.dedent(
    """
    import os, sys
    from app.kit.metrics import render_latest
    body, content_type = render_latest(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    sys.stdout.write(body.decode())
    """
)


def test_multiprocess_values_are_aggregated(tmp_path: Path) -> None:
    # prometheus-client picks its storage when imported: each "worker" is its own process.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for count in ("3", "4"):
        subprocess.run(
            [sys.executable, "-c", MULTIPROC_CHILD, count], env=env, check=True, cwd=ROOT
        )
    assert len(list(tmp_path.glob("counter_*.db"))) == 2
    out = subprocess.run(
        [sys.executable, "-c", MULTIPROC_READER],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    requests = _samples(out, "record_http_requests_total")
    assert [float(s["_value"]) for s in requests] == [7.0]
    ages = _samples(out, "record_job_queue_oldest_age_seconds")
    assert [float(s["_value"]) for s in ages] == [4.0]  # max over the workers


# --- tracing -----------------------------------------------------------------------------------


def test_tracing_off_imports_nothing() -> None:
    code = textwrap.dedent(
        """
        import sys
        from app.main import create_app
        from app.settings import Settings
        app = create_app(Settings(otel_exporter_otlp_endpoint=None))
        assert getattr(app.state, "tracer_provider", None) is None
        # FastAPI itself imports the OpenTelemetry API; the SDK's tracing, the exporter and the
        # instrumentation are ours to load, and only when tracing is on.
        heavy = (
            "opentelemetry.sdk.trace",
            "opentelemetry.exporter",
            "opentelemetry.instrumentation",
        )
        loaded = sorted(m for m in sys.modules if m.startswith(heavy))
        assert not loaded, loaded
        from opentelemetry import trace
        assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, int]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        self.received.append((self.path, self.headers.get("Content-Type", ""), length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_tracing_on_exports_spans_to_the_endpoint(settings) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        async with running_app(settings, otel_exporter_otlp_endpoint=endpoint) as http_client:
            response = await http_client.get("/api/me")
            assert response.status_code == 401
            await http_client.get("/livez")  # excluded: probes make no spans
            provider = http_client.application.state.tracer_provider
            assert type(provider).__name__ == "TracerProvider"
            assert provider.resource.attributes["service.name"] == "record-api"
            assert provider.force_flush(timeout_millis=5000)
            provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    assert _Collector.received, "no spans reached the collector"
    path, content_type, length = _Collector.received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert length > 0
