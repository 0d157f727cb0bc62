# The aggregator image: the server, the client CLI and the bench, as the tests run them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY server server
COPY storage storage
COPY client client
COPY bench bench
RUN pip install . && useradd --system --uid 10001 --no-create-home aggregator
USER aggregator

EXPOSE 50051 9464
# grpc.health.v1 through the client CLI: SERVING means the database answers too.
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=5 \
    CMD ["python", "-m", "client", "--target", "127.0.0.1:50051", "health"]
CMD ["python", "-m", "server", "--log-format", "json", "--metrics-port", "9464"]
