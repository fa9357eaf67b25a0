# syntax=docker/dockerfile:1
# Multi-stage build: locked dependencies in their own layer, then the code; slim base; non-root.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /venv
COPY requirements.lock pyproject.toml ./
# Install only the runtime dependencies named in pyproject.toml (with the postgres extra, so that the
# image runs on PostgreSQL too), at their locked versions. This layer changes only with those files.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" \
      > runtime-requirements.txt \
 && /venv/bin/pip install -c requirements.lock -r runtime-requirements.txt
COPY README.md LICENSE manifest.yml ./
COPY bot ./bot
COPY handlers ./handlers
COPY storage ./storage
RUN /venv/bin/pip install --no-deps .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 relay
COPY --from=build /venv /venv
USER 10001
WORKDIR /home/relay
RUN mkdir -p /home/relay/data
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATABASE_URL=sqlite:////home/relay/data/agent-relay.db \
    PORT=3000
VOLUME ["/home/relay/data"]
EXPOSE 3000
# Liveness: /livez on METRICS_PORT when set (Socket Mode has no other port), else on PORT (HTTP mode).
# Python's urllib, since the slim image has no curl; a 503 or no answer makes the check fail.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('METRICS_PORT') or os.environ.get('PORT') or '3000'; urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=4)"]
# Secrets come only at run time: docker run --env-file .env ...
CMD ["agent-relay", "run"]
