# tsss: transparent shared-memory socket swapping.
#   make          build target/release/libtsss.so and the test apps
#   make test     everything `make` builds, then lints, unit and integration tests
#                 and the ring under miri (`make miri`)
#   make bench    plain vs tsss benchmark: table, CSV and plots in bench-results/
# Both install what they need first (scripts/deps.sh, apt-get as root).
#   make install  the library, `tsss`, its man pages and shell completions
#                 (PREFIX=/usr/local, DESTDIR=); run `make` first
#   make uninstall
#   make deb      target/tsss_<version>_<arch>.deb (dpkg-deb)

CARGO ?= cargo
LIB   := target/release/libtsss.so
BIN   := target/release/tsss
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

# ---------------------------------------------------------------- install
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  := $(PREFIX)/bin
# A private directory: `tsss run` finds the library at ../lib/tsss/ from
# its own binary, and nothing else links against it.
LIBDIR  := $(PREFIX)/lib/tsss
MANDIR  := $(PREFIX)/share/man
BASHDIR := $(PREFIX)/share/bash-completion/completions
ZSHDIR  := $(PREFIX)/share/zsh/vendor-completions
FISHDIR := $(PREFIX)/share/fish/vendor_completions.d
GEN     := target/gen
MANPAGES := man1/tsss.1 man1/tsss-run.1 man1/tsss-stat.1 man1/tsss-doctor.1 man7/tsss.7
INSTALLED := $(BINDIR)/tsss $(LIBDIR)/libtsss.so $(BASHDIR)/tsss $(ZSHDIR)/_tsss \
	$(FISHDIR)/tsss.fish $(addsuffix .gz,$(addprefix $(MANDIR)/,$(MANPAGES)))

# Man pages and completions come from the CLI definition (clap_mangen,
# clap_complete), through the built binary.
gen:
	@test -x $(BIN) -a -f $(LIB) || { echo "make install: run \`make' first ($(BIN), $(LIB))" >&2; exit 1; }
	rm -rf $(GEN) && mkdir -p $(GEN)/man/man1 $(GEN)/man/man7 $(GEN)/pages
	$(BIN) man $(GEN)/pages
	for p in $(MANPAGES); do gzip -9n -c $(GEN)/pages/$$(basename $$p) > $(GEN)/man/$$p.gz; done
	$(BIN) completions bash > $(GEN)/tsss.bash
	$(BIN) completions zsh > $(GEN)/_tsss
	$(BIN) completions fish > $(GEN)/tsss.fish

install: gen
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(BASHDIR) $(DESTDIR)$(ZSHDIR) $(DESTDIR)$(FISHDIR)
	install -s -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/tsss
	install -s -m 0644 $(LIB) $(DESTDIR)$(LIBDIR)/libtsss.so
	for p in $(MANPAGES); do install -m 0644 $(GEN)/man/$$p.gz $(DESTDIR)$(MANDIR)/$$p.gz; done
	install -m 0644 $(GEN)/tsss.bash $(DESTDIR)$(BASHDIR)/tsss
	install -m 0644 $(GEN)/_tsss $(DESTDIR)$(ZSHDIR)/_tsss
	install -m 0644 $(GEN)/tsss.fish $(DESTDIR)$(FISHDIR)/tsss.fish

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	-rmdir $(DESTDIR)$(LIBDIR) 2>/dev/null

# ---------------------------------------------------------------- package
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' cli/Cargo.toml | head -n1)
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB      := target/tsss_$(VERSION)_$(DEB_ARCH).deb
DEBROOT  := target/deb-root

deb: all
	rm -rf $(DEBROOT) $(DEB)
	$(MAKE) install DESTDIR=$(CURDIR)/$(DEBROOT) PREFIX=/usr
	mkdir -p $(DEBROOT)/DEBIAN $(DEBROOT)/usr/share/doc/tsss
	install -m 0644 README.md $(DEBROOT)/usr/share/doc/tsss/README.md
	{ echo "Package: tsss"; \
	  echo "Version: $(VERSION)"; \
	  echo "Architecture: $(DEB_ARCH)"; \
	  echo "Maintainer: tsss developers <tsss@localhost>"; \
	  echo "Depends: libc6 (>= 2.34)"; \
	  echo "Section: net"; \
	  echo "Priority: optional"; \
	  echo "Installed-Size: $$(du -sk $(DEBROOT)/usr | cut -f1)"; \
	  echo "Description: transparent shared-memory socket swapping"; \
	  echo " An LD_PRELOAD library that moves the bytes of local Unix-domain stream"; \
	  echo " connections through shared memory when both ends run it, and the tsss"; \
	  echo " command: tsss run, tsss stat (live connections), tsss doctor."; \
	} > $(DEBROOT)/DEBIAN/control
	dpkg-deb --root-owner-group --build $(DEBROOT) $(DEB)

bench: deps all
	python3 scripts/bench.py --out $(OUT) --lib $(LIB) --bin test-apps/bin

clean:
	$(CARGO) clean
	$(MAKE) -C test-apps clean

FORCE:
.PHONY: all apps deps lint test miri bench clean gen install uninstall deb FORCE
