# First version; the operations issue adds the health-checked, hardened image.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY server server
COPY storage storage
COPY client client
COPY bench bench
RUN pip install --no-cache-dir . && useradd --system --uid 10001 aggregator
USER aggregator
EXPOSE 50051
CMD ["python", "-m", "server"]
