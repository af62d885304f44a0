# Cortex: the README names these targets. Everything builds in the release
# profile (tests and benches too), so wasmtime is compiled once per machine.
# Set CARGO_TARGET_DIR to share one build between checkouts (CI does).

CARGO  ?= cargo
ROOT   ?= coordination
TARGET := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
CORTEX := $(TARGET)/release/cortex

.PHONY: all setup build run test bench lint fmt clean

all: build

# The one toolchain piece cargo cannot fetch by itself.
setup:
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup" >&2; exit 1; }
	@if command -v rustup >/dev/null; then \
	  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2; \
	fi

build: setup
	$(CARGO) build --release --workspace --all-targets

# The main job on the built-in filesystem default (./coordination).
run: build
	$(CORTEX) init --root $(ROOT)
	$(CORTEX) emit --root $(ROOT) worker.completed worker-001 '{"worker_id": "worker-001", "status": "completed", "tokens_used": 1500}' task-123 medium
	$(CORTEX) emit --root $(ROOT) task.failed task-processor '{"task_id": "task-456", "error": "timeout"}' task-456 high
	$(CORTEX) status --root $(ROOT)

test: build
	$(CARGO) test --release --workspace

bench: build
	$(CARGO) run --release -p cortex-tests --bin cortex-bench

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
