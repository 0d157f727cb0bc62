# The aggregator image: the installed package (aggregator-server, the aggregator CLI) and
# the bench's sources in /app (not installed), as the tests run them.
# PYTHON_IMAGE is the public python:3.11-slim; CI builds the same file on a local stand-in
# (docker/standins/) because it cannot pull from Docker Hub.
ARG PYTHON_IMAGE=python:3.11-slim

# Build stage: the package and its runtime dependencies into a virtual environment, every
# version and hash from uv.lock (uv itself pinned with hashes in scripts/uv-requirements.txt).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never UV_SYSTEM_CERTS=1 UV_NO_CACHE=1 UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/aggregator
WORKDIR /src
COPY scripts/uv-requirements.txt /tmp/uv-requirements.txt
RUN python -m venv /opt/uv \
    && /opt/uv/bin/pip install -qq --no-deps --require-hashes -r /tmp/uv-requirements.txt
# Dependencies first, in a layer of their own: a change to the sources reuses it.
COPY pyproject.toml uv.lock README.md ./
RUN /opt/uv/bin/uv sync --locked --no-dev --no-install-project --python python3
COPY protos protos
COPY server server
COPY storage storage
COPY client client
RUN /opt/uv/bin/uv sync --locked --no-dev --no-editable --python python3

# Test stage, never part of the image below: the build stage's environment plus the dev
# group (pytest and the other tools), the tests and the docs they check, run from /src.
# The Compose `test` profile runs them against the stack's PostgreSQL (docker-compose.yml
# says which).
FROM build AS test
RUN /opt/uv/bin/uv sync --locked --no-editable --python python3 && rm -rf build *.egg-info
COPY bench bench
COPY tests tests
COPY docs docs
ENV PATH=/opt/aggregator/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# Runtime stage: the environment only (no sources, no build tools), run as a non-root user.
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent aggregator
COPY --from=build /opt/aggregator /opt/aggregator
# Inside a container every interface is the way in; the server's own default is 127.0.0.1.
ENV PATH=/opt/aggregator/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    AGGREGATOR_HOST=0.0.0.0
WORKDIR /app
# `python -m bench` (the Compose bench profile) runs from here; it is not installed.
COPY bench bench
USER aggregator

EXPOSE 50051 8000 9464
# grpc.health.v1 through the client CLI: SERVING means the database answers too.
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=5 \
    CMD ["aggregator", "--target", "127.0.0.1:50051", "health"]
CMD ["aggregator-server", "--log-format", "json", "--metrics-port", "9464"]
