"""The one settings object. Read from the environment once (``get_settings``), then injected.

Nothing else in the code base reads ``os.environ``: a setting that is not here does not exist.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class SignupMode(StrEnum):
    open = "open"
    invite_only = "invite-only"
    disabled = "disabled"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    environment: Environment = Environment.production  # development only when set so
    log_level: str = "INFO"
    # When unset, `record up` runs the embedded servers and fills these in for its children.
    database_url: str = "postgresql://postgres@localhost:5432/record"
    # The app connects with DATABASE_URL and switches to the role `record_app` on every
    # connection: it owns no table, so row-level security applies to all it reads or writes.
    database_pool_min: int = Field(default=2, ge=1)
    database_pool_max: int = Field(default=10, ge=1)
    # The longest a request waits for a pooled connection before it is answered 503 with
    # Retry-After: with the database stopped (a restart, a failover) a request would otherwise
    # wait for its return, up to the pool's 30 s default, holding its client all along.
    database_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    database_statement_timeout_ms: int = Field(default=15_000, ge=100)
    slow_query_ms: int = Field(default=1_000, ge=1)
    redis_url: str = "redis://localhost:6379/0"
    # Put before every key the app writes (rate limits, caches, uploads): a preview stack shares
    # its base's Valkey as a user allowed only keys under "pr-<n>:". No braces: they would
    # change a key's cluster hash tag.
    redis_key_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_.:-]*$", max_length=64)

    # Set under gunicorn: every worker writes samples here and /metrics aggregates them.
    prometheus_multiproc_dir: str | None = None

    # Where the local stack keeps its data and secrets.
    state_dir: Path = Path(".record")
    local_api_port: int = Field(default=8000, ge=1, le=65535)
    local_valkey_port: int = Field(default=6390, ge=1, le=65535)
    local_models_port: int = Field(default=8100, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8000"

    # Accounts.
    signup_mode: SignupMode = SignupMode.open
    session_ttl_hours: int = Field(default=24 * 14, ge=1, le=24 * 365)
    password_min_length: int = Field(default=12, ge=8, le=128)
    # Mailed links: an invitation, an email verification and a password reset, each single use.
    invitation_ttl_hours: int = Field(default=7 * 24, ge=1, le=24 * 90)
    email_verification_ttl_hours: int = Field(default=48, ge=1, le=24 * 30)
    password_reset_ttl_minutes: int = Field(default=60, ge=5, le=24 * 60)

    # Outgoing mail, always sent from a job (never inside a request). "file" writes each message
    # as an .eml file under STATE_DIR/mail (the local stack); "smtp" sends it through SMTP_HOST
    # (in production Amazon SES's SMTP endpoint, STARTTLS on 587).
    mail_backend: Literal["file", "smtp"] = "file"
    mail_from: str = "Record <no-reply@record.localhost>"
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    # OIDC bearer tokens (optional): a JWT signed by a key in this JWKS, from this issuer, for
    # this audience, naming the org and the caller's role in these claims.
    oidc_jwks_url: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_org_claim: str = "record_org"
    oidc_role_claim: str = "record_role"
    oidc_jwks_cache_seconds: int = Field(default=300, ge=0)

    # HTTP.
    cors_origins: Annotated[list[str], NoDecode] = []
    trusted_proxies: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(default=1 * 1024 * 1024, ge=1024)
    # The API's documentation page (/docs) and the OpenAPI document it reads (/openapi.json).
    # Unset: served in development and test, not in production (it maps the whole API out).
    api_docs_enabled: bool | None = None

    # Object storage for recordings: files under STATE_DIR/objects, or an S3 bucket.
    storage_backend: Literal["file", "s3"] = "file"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    aws_region: str | None = None
    # Encryption requested on every write: "aws:kms" (with S3_KMS_KEY_ID, or the account's key),
    # "AES256", or "" to leave it to the bucket's default (S3-compatible servers without KMS).
    s3_sse: Literal["aws:kms", "AES256", ""] = "aws:kms"
    s3_kms_key_id: str | None = None
    upload_max_bytes: int = Field(default=2 * 1024**3, ge=1024)

    # Background jobs (procrastinate, on the same PostgreSQL).
    worker_concurrency: int = Field(default=2, ge=1, le=64)
    # Pipeline writes (thousands of chunks into the HNSW index) take longer than a request may.
    worker_statement_timeout_ms: int = Field(default=600_000, ge=1000)
    # The worker serves its own /metrics here for the cluster's Prometheus (0: don't serve; the
    # local stack shares the API's multiprocess metrics directory instead).
    worker_metrics_port: int = Field(default=9100, ge=0, le=65535)
    job_max_attempts: int = Field(default=5, ge=1, le=50)
    job_retry_base_seconds: float = Field(default=2.0, ge=0)  # doubles every attempt
    # A model server (or OpenAI) that cannot be reached, times out or answers 5xx is an outage,
    # not the recording's fault: its jobs keep retrying, the waits doubling from
    # JOB_RETRY_BASE_SECONDS up to the cap, for this long after the job first started, and only
    # then fail (a redeploy of the model server or an OpenAI incident lasts minutes).
    model_outage_retry_seconds: float = Field(default=1800.0, ge=0)
    model_outage_retry_max_wait_seconds: float = Field(default=60.0, ge=1)
    # A job whose worker sent no heartbeat for this long is considered stalled and retried.
    job_stalled_seconds: int = Field(default=120, ge=10)
    # all-MiniLM-L6-v2 reads at most 256 word pieces and silently drops the rest, so chunks
    # stay under that by default; with OpenAI embeddings (8191 tokens) 300+ is fine.
    chunk_max_tokens: int = Field(default=200, ge=20, le=8000)
    chunk_overlap_tokens: int = Field(default=40, ge=0, le=2000)
    embedding_cache_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1)

    # Rate limits, "<count>/<seconds>" (exact sliding windows in Redis). Fail open: when Redis
    # cannot answer within the timeout, requests pass and a breaker skips Redis for a while.
    ratelimit_enabled: bool = True
    ratelimit_api: str = "100/60"  # per user (or key)
    ratelimit_search: str = "20/60"  # per user
    ratelimit_chat: str = "10/60"  # per user
    ratelimit_upload: str = "5/3600"  # per org
    ratelimit_share: str = "50/86400"  # per org
    ratelimit_anonymous: str = "10/60"  # per client IP
    # Per client IP, on a share link's media: a player fetches it in many range requests.
    ratelimit_media: str = "120/60"
    # Per client IP, each public entry point its own budget: one cannot spend another's.
    ratelimit_signup: str = "10/60"
    ratelimit_login: str = "30/60"  # every login request, per client IP
    ratelimit_share_page: str = "60/60"  # GET /s/{id}, its media apart
    ratelimit_password_reset: str = "5/900"
    # Logins count FAILED attempts only, so that nobody can lock someone else out: per (client
    # IP, email) and per client IP they refuse (429); per email, from anywhere, they never
    # refuse but delay each further check, progressively, by at most the delay's cap.
    ratelimit_login_failures_ip_email: str = "5/900"
    ratelimit_login_failures_ip: str = "20/900"
    ratelimit_login_failures_email: str = "20/900"
    ratelimit_login_delay_max_seconds: float = Field(default=2.0, ge=0, le=10)
    ratelimit_timeout_ms: int = Field(default=50, ge=1, le=1000)
    ratelimit_breaker_seconds: float = Field(default=5.0, ge=0)

    # Models, by the names the OpenAI-protocol server knows. The local model server answers to
    # these and to OpenAI's (text-embedding-3-small, whisper-1).
    embedding_model: str = "all-minilm-l6-v2"
    embedding_dimensions: int = 384
    embedding_batch_size: int = Field(default=128, ge=1, le=2048)
    # Re-embedding (`record reindex`, worker/reindex.py): chunks per job, and chunks embedded
    # per second by each worker process at most (0: as fast as the model answers), so that a
    # re-embed leaves the model server (or OpenAI's rate limit) to new uploads and searches.
    reembed_job_chunks: int = Field(default=2000, ge=1)
    reembed_chunks_per_second: float = Field(default=100.0, ge=0)
    transcription_model: str = "whisper-1"
    chat_model: str = "record-extractive-1"
    openai_timeout_seconds: float = Field(default=60.0, gt=0)
    # Apart from the read timeout above: a model server that is down is known in seconds.
    openai_connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    # A streamed chat answer's longest silence (first token included), tried once: a hung
    # model server ends the stream with an error event instead of holding it for minutes.
    # Raise it for models that think long before their first token.
    chat_read_timeout_seconds: float = Field(default=8.0, gt=0, le=600)
    transcription_timeout_seconds: float = Field(default=1800.0, gt=0)
    # Recordings are transcribed in pieces of at most this long (worker/audio.py): OpenAI takes
    # uploads up to 25 MB, 819 s of the 16 kHz 16-bit mono WAV the worker sends.
    transcription_piece_seconds: float = Field(default=600.0, ge=10, le=780)
    # Pieces of one recording transcribed at once: 1 for the local model server (its CPU is the
    # limit), more against OpenAI, where a long meeting's pieces can run side by side.
    transcription_concurrency: int = Field(default=1, ge=1, le=16)
    openai_max_retries: int = Field(default=2, ge=0, le=10)

    # Search (app/search). A scope of at most this many chunks is searched exactly (recall 1.0,
    # about 0.3 ms per thousand chunks); larger ones may use the HNSW index.
    search_exact_max_chunks: int = Field(default=20_000, ge=0)
    # Answers are cached per org for this long (0: not cached); new recordings show at once.
    search_cache_ttl_seconds: int = Field(default=180, ge=0, le=86_400)
    # GET .../transcript answers, cached per recording (0: not cached); a new transcript
    # retires the old answer at once.
    transcript_cache_ttl_seconds: int = Field(default=600, ge=0, le=86_400)

    # AI: any OpenAI-protocol server. `record up` points this at the local model server.
    openai_base_url: str | None = None
    openai_api_key: SecretStr = SecretStr("local")

    # Serving (app/gunicorn_conf.py) and tracing: OpenTelemetry is on only when this is set.
    bind: str = "127.0.0.1:8000"
    web_concurrency: int = Field(default=2, ge=1, le=64)
    # How long gunicorn's workers may finish in-flight requests after SIGTERM (a chat stream
    # runs up to ~30 s) before they are killed. The Kubernetes manifest sets it and sizes the
    # pod's grace period from it (infra/api.py): one number for both.
    gunicorn_graceful_timeout: int = Field(default=30, ge=1, le=600)
    # How long a worker keeps an idle keep-alive connection open. Behind a load balancer it must
    # outlast the balancer's idle timeout, or the balancer sends a request on a connection the
    # worker is closing and answers 502 (the manifest sets it from the ALB's, infra/api.py).
    gunicorn_keepalive: int = Field(default=5, ge=1, le=3600)
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = "record-api"

    # Error tracking (app/kit/sentry.py): on only when SENTRY_DSN is set. Errors only; traces
    # stay on OpenTelemetry. SENTRY_ENVIRONMENT names the stack (every stack runs with
    # ENVIRONMENT=production); unset, it is ENVIRONMENT. RECORD_RELEASE is baked into the image
    # (the Dockerfile's build argument, the commit it was built from); unset, record@<version>.
    sentry_dsn: SecretStr | None = None
    sentry_environment: str | None = None
    record_release: str | None = None

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> Settings:
        # Otherwise every job would fail at chunking, after transcribing: refuse at start-up.
        if self.chunk_overlap_tokens >= self.chunk_max_tokens:
            raise ValueError(
                f"CHUNK_OVERLAP_TOKENS ({self.chunk_overlap_tokens}) must be smaller than "
                f"CHUNK_MAX_TOKENS ({self.chunk_max_tokens})."
            )
        return self

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.production

    @property
    def serves_api_docs(self) -> bool:
        """Whether /docs and /openapi.json are served: API_DOCS_ENABLED, else not in production."""
        if self.api_docs_enabled is not None:
            return self.api_docs_enabled
        return not self.is_production


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
