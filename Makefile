# Set-up and entry points. Every target installs what is missing first (idempotent), so
# `make run` and `make test` work on a fresh Debian machine that has only the Swift toolchain.

SWIFT     ?= swift
APT_DEPS  := libseccomp-dev libcap-dev pkg-config
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps build release test run bench clean

deps:
	@missing=""; \
	for p in $(APT_DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

test: deps
	$(SWIFT) build --build-tests
	timeout 900 $(SWIFT) test --skip-build --disable-swift-testing

# Until the server exists, `make run` runs the circuits benchmark.
run: release
	./.build/release/cloister-bench circuits

bench: release
	./.build/release/cloister-bench circuits

clean:
	rm -rf .build
