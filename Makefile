# Set-up and entry points. Every target installs what is missing first (idempotent), so
# `make run` and `make test` work on a fresh Debian machine that has only the Swift toolchain.

SWIFT     ?= swift
APT_DEPS  := libseccomp-dev libcap-dev pkg-config tmux
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps build release test chaos run bench clean

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

# 50 sessions resuming through a minute of workers killed every 2 s (a short run is in make test).
chaos: deps
	$(SWIFT) build --build-tests
	CLOISTER_CHAOS_SESSIONS=50 CLOISTER_CHAOS_SECONDS=60 timeout 600 $(SWIFT) test --skip-build --disable-swift-testing --filter ChaosTests

# Serves the login shell on 127.0.0.1:7681 and prints a one-time credential; Ctrl-C drains
# and stops. Extra options: make run ARGS="--listen 127.0.0.1:8080 --workers 4".
run: release
	./.build/release/cloister serve $(ARGS)

bench: release
	./.build/release/cloister-bench circuits
	./.build/release/cloister-bench e2e

clean:
	rm -rf .build
