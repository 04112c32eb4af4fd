# tsss: transparent shared-memory socket swapping.
#   make          build target/release/libtsss.so and the test apps
#   make test     everything `make` builds, then lints, unit and integration tests
#                 and the ring under miri (`make miri`)
#   make bench    plain vs tsss benchmark: table, CSV and plots in bench-results/
# Both install what they need first (scripts/deps.sh, apt-get as root).

CARGO ?= cargo
LIB   := target/release/libtsss.so
OUT   ?= bench-results
# `make miri`: the nightly toolchain with miri (scripts/deps.sh installs it);
# proptest cases per property under miri (~1000x slower than native).
NIGHTLY             ?= +nightly
MIRI_PROPTEST_CASES ?= 8

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
	$(MAKE) miri

# The ring's unit tests and tests/fuzz_ring.rs under miri, over heap
# memory (the rest of tsss-core builds under miri too, but its tests make
# syscalls miri does not model).
MIRI_ENV = CARGO_TARGET_DIR=target/miri PROPTEST_CASES=$(MIRI_PROPTEST_CASES) \
	MIRIFLAGS="-Zmiri-isolation-error=hide -Zmiri-env-forward=PROPTEST_CASES"
miri:
	$(MIRI_ENV) $(CARGO) $(NIGHTLY) miri test --locked -p tsss-core --lib -- shm::ring shm::copy
	$(MIRI_ENV) $(CARGO) $(NIGHTLY) miri test --locked -p tsss-core --test fuzz_ring

bench: deps all
	python3 scripts/bench.py --out $(OUT) --lib $(LIB) --bin test-apps/bin

clean:
	$(CARGO) clean
	$(MAKE) -C test-apps clean

FORCE:
.PHONY: all apps deps lint test miri bench clean FORCE
