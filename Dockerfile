# syntax=docker/dockerfile:1
# Multi-stage build: locked dependencies in their own layer, then the code; slim base; non-root.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /venv
COPY requirements.lock pyproject.toml ./
# Install only the runtime dependencies named in pyproject.toml, at their locked versions.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
      > runtime-requirements.txt \
 && /venv/bin/pip install -c requirements.lock -r runtime-requirements.txt
COPY README.md manifest.yml ./
COPY bot ./bot
COPY handlers ./handlers
COPY storage ./storage
RUN /venv/bin/pip install --no-deps .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 relay
COPY --from=build /venv /venv
USER relay
WORKDIR /home/relay
RUN mkdir -p /home/relay/data
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATABASE_URL=sqlite:////home/relay/data/agent-relay.db \
    PORT=3000
VOLUME ["/home/relay/data"]
EXPOSE 3000
# Secrets come only at run time: docker run --env-file .env ...
CMD ["agent-relay", "run"]
