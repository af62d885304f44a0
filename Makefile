# Cortex: the README names these targets. Everything builds in the release
# profile (tests and benches too), so wasmtime is compiled once per machine.
# Set CARGO_TARGET_DIR to share one build between checkouts (CI does).

CARGO  ?= cargo
ROOT   ?= coordination
TARGET := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
CORTEX := $(TARGET)/release/cortex

WASM_DIR     := $(TARGET)/wasm
HANDLERS_OUT := $(TARGET)/release/handlers

# Python and JavaScript handlers: their toolchains are installed into the
# target directory (a venv and an npm prefix, pinned), never globally.
TOOLS           := $(TARGET)/tools
PYTHON          ?= python3
COMPONENTIZE_PY := $(TOOLS)/py/bin/componentize-py
COMPONENTIZE_JS := $(TOOLS)/js/node_modules/.bin/componentize-js
PY_HANDLERS     := $(patsubst handlers-wasm/py/%/app.py,$(HANDLERS_OUT)/%.wasm,$(wildcard handlers-wasm/py/*/app.py))
JS_HANDLERS     := $(patsubst handlers-wasm/js/%/handler.js,$(HANDLERS_OUT)/%.wasm,$(wildcard handlers-wasm/js/*/handler.js))
WIT             := $(wildcard wit/*.wit wit/deps/*/*.wit)

.PHONY: all setup build handlers rust-handlers run test bench fuzz lint fmt clean browser redis

all: build

# The one toolchain piece cargo cannot fetch by itself.
setup:
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup" >&2; exit 1; }
	@if command -v rustup >/dev/null; then \
	  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2; \
	fi

build: setup
	$(CARGO) build --release --workspace --all-targets

# The handler components (and test fixtures), built for wasm32-wasip2 and
# copied beside the cortex binary, where `cortex init` finds them.
handlers: rust-handlers $(PY_HANDLERS) $(JS_HANDLERS)

rust-handlers: setup
	@test -d "$$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" || { \
	  echo "error: the wasm32-wasip2 target is not installed: run 'rustup target add wasm32-wasip2'" >&2; exit 1; }
	cd handlers-wasm && CARGO_TARGET_DIR=$(WASM_DIR) $(CARGO) build --release --target wasm32-wasip2 --workspace
	mkdir -p $(HANDLERS_OUT)
	for f in $(WASM_DIR)/wasm32-wasip2/release/*.wasm; do \
	  cp "$$f" "$(HANDLERS_OUT)/$$(basename "$$f" .wasm | tr _ -).wasm"; done

$(TOOLS)/py/.installed: handlers-wasm/py/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.10+ is needed to build the Python handlers" >&2; exit 1; }
	$(PYTHON) -m venv $(TOOLS)/py
	$(TOOLS)/py/bin/pip install --disable-pip-version-check --quiet -r $<
	touch $@

$(TOOLS)/js/.installed: handlers-wasm/js/package.json handlers-wasm/js/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: Node.js 20+ is needed to build the JavaScript handlers" >&2; exit 1; }
	mkdir -p $(TOOLS)/js
	cp $^ $(TOOLS)/js/
	cd $(TOOLS)/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Written to a temp name and renamed, so a running `cortex serve` that
# watches the file only ever sees whole components.
.SECONDEXPANSION:
$(PY_HANDLERS): $(HANDLERS_OUT)/%.wasm: $$(wildcard handlers-wasm/py/%/*.py) $(WIT) $(TOOLS)/py/.installed
	mkdir -p $(HANDLERS_OUT)
	cd handlers-wasm/py/$* && $(COMPONENTIZE_PY) -d $(CURDIR)/wit -w handler componentize -p . app -o $@.tmp
	mv $@.tmp $@

$(JS_HANDLERS): $(HANDLERS_OUT)/%.wasm: $$(wildcard handlers-wasm/js/%/*.js) $(WIT) $(TOOLS)/js/.installed
	mkdir -p $(HANDLERS_OUT)
	$(COMPONENTIZE_JS) handlers-wasm/js/$*/handler.js --wit wit --world-name handler -d http fetch-event -o $@.tmp
	mv $@.tmp $@

# The main job on the built-in filesystem default (./coordination).
run: build handlers
	$(CORTEX) init --root $(ROOT)
	$(CORTEX) emit --root $(ROOT) worker.completed worker-001 '{"worker_id": "worker-001", "task_id": "task-123", "status": "completed", "tokens_used": 1500, "duration_ms": 45230}' task-123 medium
	$(CORTEX) emit --root $(ROOT) task.failed task-processor '{"task_id": "task-456", "error": "timeout"}' task-456 high
	$(CORTEX) status --root $(ROOT)
	@echo "serving $(ROOT): metrics on http://127.0.0.1:9464/metrics; Ctrl-C stops"
	$(CORTEX) serve --root $(ROOT)

# The dashboard's browser test drives Debian's Chromium through chromedriver
# (tests/e2e/dashboard/browser.rs). Installed here when missing and we are
# root; otherwise this stops, saying what to install.
BROWSER_BINS := /usr/bin/chromium /usr/bin/chromedriver
browser:
	@missing=""; for b in $(BROWSER_BINS); do test -x "$$b" || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (missing:$$missing)"; \
	    apt-get install -y chromium chromium-driver || { apt-get update && apt-get install -y chromium chromium-driver; }; \
	  else \
	    echo "error: the dashboard's browser test needs$$missing: run 'sudo apt-get install -y chromium chromium-driver' (Debian/Ubuntu), then make test again" >&2; exit 1; \
	  fi; \
	fi

# The Redis backend's tests and benchmarks use the server on
# 127.0.0.1:6379 (each under its own key prefix, never FLUSHDB). Started
# here when nothing answers there: redis-server without persistence,
# installed first when missing and we are root; otherwise this stops,
# saying what to install. The probe is bash's /dev/tcp: redis-cli may be
# absent where a server runs.
REDIS_PORT := 6379
REDIS_PING := bash -c 'exec 3<>/dev/tcp/127.0.0.1/$(REDIS_PORT) && printf "PING\r\n" >&3 && timeout 2 head -c 7 <&3 | grep -q PONG' 2>/dev/null
redis:
	@$(REDIS_PING) && exit 0; \
	if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing redis-server (nothing answers on 127.0.0.1:$(REDIS_PORT))"; \
	    apt-get install -y redis-server || { apt-get update && apt-get install -y redis-server; } || exit 1; \
	  else \
	    echo "error: the Redis backend's tests need a Redis on 127.0.0.1:$(REDIS_PORT): run 'sudo apt-get install -y redis-server' (Debian/Ubuntu) or start one there, then make test again" >&2; exit 1; \
	  fi; \
	fi; \
	echo "starting redis-server on 127.0.0.1:$(REDIS_PORT) (no persistence)"; \
	redis-server --daemonize yes --bind 127.0.0.1 --port $(REDIS_PORT) --save '' --appendonly no || exit 1; \
	for i in $$(seq 20); do $(REDIS_PING) && exit 0; sleep 0.25; done; \
	echo "error: nothing answers PING on 127.0.0.1:$(REDIS_PORT) after starting redis-server (a server there that wants a password, or one that failed to start?)" >&2; exit 1

test: build handlers analysis-test browser redis
	cd handlers-wasm && CARGO_TARGET_DIR=$(TARGET)/wasm-native $(CARGO) test --release --workspace
	for d in handlers-wasm/py/on-*/; do (cd "$$d" && $(TOOLS)/py/bin/python -m unittest --quiet) || exit 1; done
	cd handlers-wasm/js && node --test
	$(CARGO) test --release --workspace

# The bench binary `make build` already built: `cargo run -p` would resolve
# other features than the --workspace build and compile wasmtime again.
bench: build handlers
	$(TARGET)/release/cortex-bench

# Property-based fuzzing of the envelope parser/validator and the config
# loader, bounded by case count (make test runs the same properties with 256).
# --workspace, not -p cortex: -p resolves other features and would compile
# wasmtime a second time; this runs the lib test binary `make test` built.
FUZZ_CASES ?= 20000
fuzz: build
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --workspace --lib properties

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

# The analysis side (analysis/, reports/): a pinned Python toolchain in
# $(TARGET)/tools/analysis (marimo, polars, altair, vl-convert, pytest),
# never installed globally. ROOT as for `make run`; DAYS, FROM, TO, OUT below.
ANALYSIS      := $(TOOLS)/analysis
ANALYSIS_PY   := $(ANALYSIS)/bin/python
DAYS          ?= 7
FROM          ?=
TO            ?=
OUT           ?= $(ROOT)/reports
NOTEBOOK_PORT ?= 2718

.PHONY: demo notebooks reports analysis-test

$(ANALYSIS)/.installed: analysis/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.11+ is needed for the notebooks and reports" >&2; exit 1; }
	$(PYTHON) -m venv $(ANALYSIS)
	$(ANALYSIS)/bin/pip install --disable-pip-version-check --quiet -r $<
	touch $@

# A simulated week (DAYS days) emitted and dispatched into ROOT through the
# real pipeline, with the Python cost handler enabled.
demo: build handlers $(ANALYSIS)/.installed
	$(ANALYSIS_PY) analysis/demo.py --root $(ROOT) --cortex $(CORTEX) --handlers $(HANDLERS_OUT) --days $(DAYS)

# The three notebooks as read-only apps on loopback only
# (http://127.0.0.1:$(NOTEBOOK_PORT)); marimo's frontend ships in its package.
notebooks: $(ANALYSIS)/.installed
	@echo "notebooks of $(ROOT) on http://127.0.0.1:$(NOTEBOOK_PORT) (loopback only); Ctrl-C stops"
	cd analysis && CORTEX_ROOT=$(abspath $(ROOT)) $(ANALYSIS)/bin/marimo run --host 127.0.0.1 --port $(NOTEBOOK_PORT) --headless \
	  routing-optimization.py security-dashboard.py worker-performance.py

# Self-contained HTML for FROM..TO (dates, TO included; default the last DAYS days) in OUT.
reports: $(ANALYSIS)/.installed
	$(ANALYSIS_PY) reports/render.py --root $(ROOT) $(if $(FROM),--from $(FROM)) $(if $(TO),--to $(TO)) --days $(DAYS) --out $(OUT)

# Unit tests of analysis/cortexdata, then a small demo root (two days) with
# every notebook run headless and every report rendered and checked against
# the archive. The compiled-component cache is kept between runs.
analysis-test: build handlers $(ANALYSIS)/.installed
	CORTEX=$(CORTEX) CORTEX_HANDLERS=$(HANDLERS_OUT) CORTEX_CACHE=$(TARGET)/analysis-cache \
	  $(ANALYSIS_PY) -m pytest -q -p no:cacheprovider analysis/tests
