# tsss: transparent shared-memory socket swapping.
#   make          build target/release/libtsss.so and the test apps
#   make test     everything `make` builds, then lints, unit and integration tests
#   make bench    plain vs tsss benchmark: table, CSV and plots in bench-results/
# Both install what they need first (scripts/deps.sh, apt-get as root).

CARGO ?= cargo
LIB   := target/release/libtsss.so
OUT   ?= bench-results

all: $(LIB) apps

$(LIB): FORCE
	$(CARGO) build --release

apps:
	$(MAKE) -C test-apps

deps:
	./scripts/deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --release -- -D warnings

test: deps all lint
	$(CARGO) test --release --workspace
	CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" $(CARGO) test --release --test loom

bench: deps all
	python3 scripts/bench.py --out $(OUT) --lib $(LIB) --bin test-apps/bin

clean:
	$(CARGO) clean
	$(MAKE) -C test-apps clean

FORCE:
.PHONY: all apps deps lint test bench clean FORCE
