# The two commands the README opens with: `make demo` and `make test`.
# Both build with `--release` into the same target directory (CARGO_TARGET_DIR when set), so the
# demo, clippy and the tests share one compile of RocksDB and alloy.
CARGO ?= cargo
BUILD_FLAGS := --release --locked
# Where cargo puts the `tollgate` binary the TypeScript tests run against.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))

.PHONY: demo test bootstrap bench-simd

bootstrap:
	./scripts/bootstrap.sh

# Every check CI runs: formatting, no module circles inside a crate, lints as errors, every test
# in the workspace, then the TypeScript packages' tests against the `tollgate` binary cargo test
# built (their npm packages are installed by bootstrap). The tests are built first and timed
# apart from their run: a cold machine spends most of `make test` compiling, and the suite's own
# time is what must stay under 15 minutes.
test: bootstrap
	$(CARGO) fmt --all -- --check
	python3 scripts/module_cycles.py
	$(CARGO) clippy --workspace --all-targets $(BUILD_FLAGS) -- -D warnings
	$(CARGO) test --workspace $(BUILD_FLAGS) --no-run
	@started=$$(date +%s) && \
	$(CARGO) test --workspace $(BUILD_FLAGS) && \
	cd clients/typescript && npm run build && TOLLGATE_BIN=$(TARGET_DIR)/release/tollgate npm test && \
	echo "make test: the tests themselves ran in $$(( $$(date +%s) - started )) s"

demo:
	./scripts/demo.sh

# The ed25519-simd contender of `tollgate bench verify`, for CPUs with AVX-512 IFMA only: its own
# crate and compile flags (AVX-512 for the whole binary), never part of `tollgate`. The binary is
# contenders/ed25519-simd/target/release/tollgate-bench-simd, whatever CARGO_TARGET_DIR says.
bench-simd:
	cd contenders/ed25519-simd && CARGO_TARGET_DIR=target $(CARGO) build --release --locked
