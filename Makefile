# The two commands the README opens with: `make demo` and `make test`.
CARGO ?= cargo

.PHONY: demo test bootstrap lint

bootstrap:
	./scripts/bootstrap.sh

# Every check CI runs: formatting, lints as errors, then every test in the workspace.
test: bootstrap
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) test --workspace --locked

demo:
	./scripts/demo.sh
