"""Optional OpenTelemetry tracing: on when OTEL_EXPORTER_OTLP_ENDPOINT is set, absent otherwise.

The OpenTelemetry SDK, exporter and instrumentation are imported only here and only when
tracing is on, so a server without them (or without a collector) neither pays their import
time nor needs them installed.
Spans go to ``<endpoint>/v1/traces`` over OTLP/HTTP (protobuf), batched off the request path.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI

from app.settings import Settings

log = structlog.stdlib.get_logger("record.tracing")

# Probes and scrapes would be most of the spans and tell nothing.
EXCLUDED_URLS = "/livez,/readyz,/metrics"


def configure_tracing(app: FastAPI, settings: Settings) -> Any | None:
    """Instrument ``app`` and return its TracerProvider, or None when tracing is off."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("tracing requested but OpenTelemetry is not installed", error=str(exc))
        return None

    resource = Resource.create(
        {
            "service.name": settings.otel_service_name,
            "service.version": app.version,
            "deployment.environment": settings.environment.value,
        }
    )
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces", timeout=5)
    # Batched: a slow or absent collector never delays a response. The provider flushes and
    # shuts the processor down at interpreter exit.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    # Not made the global provider: FastAPI 0.165's native telemetry switches itself on when a
    # global provider exists and would trace every request a second time.
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    app.state.tracer_provider = provider
    log.info("tracing on", endpoint=endpoint, service=settings.otel_service_name)
    return provider
