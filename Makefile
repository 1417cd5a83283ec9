# Set-up and entry points. Every target installs what is missing first (idempotent), so
# `make run` and `make test` work on a fresh Debian machine that has only the Swift toolchain.

SWIFT     ?= swift
PYTHON    ?= python3
# Building and serving: libseccomp, libcap, libcrypt (users files' hashes), libssl-dev (the keyholder's libcrypto), zlib (gzip of the page's assets),
# tmux for the terminal tests; Node.js for the page's unit tests. xterm.js 5 comes from Debian 13's libjs-xterm (XTERM_DIR below).
APT_DEPS  := libseccomp-dev libcap-dev libcrypt-dev libssl-dev pkg-config zlib1g-dev tmux nodejs
# The browser tests: Debian's Chromium, driven by Playwright from PyPI in a virtualenv (with
# websockets for the TLS client test, trzsz's trz/tsz for the shell in the transfer tests, asciinema to read recordings);
# nginx and openssl for the TLS reverse-proxy test; lrzsz's rz/sz for the ZMODEM transfer tests; fonts with emoji and CJK glyphs.
BROWSER_APT_DEPS := chromium nginx-light openssl lrzsz fonts-noto-color-emoji fonts-noto-cjk
# The deploy tests: systemd-analyze, libseccomp's Python bindings (the unit's filter without
# systemd as PID 1), readelf, unshare and setpriv; ip and ss (iproute2) for the fleet test's network namespaces and
# which process holds a client; HAProxy (and nginx above) for the fleet test.
DEPLOY_APT_DEPS := systemd python3-seccomp binutils util-linux iproute2 haproxy
# ttyd from ../shared/peers, for `cloister-bench compare`: its run-time libraries.
BENCH_APT_DEPS := libuv1 libjson-c5 libwebsockets-evlib-uv
VENV      := .build/browser-venv
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

FUZZ_TARGETS := FuzzLinkMessages FuzzCircuitFrames FuzzWorker FuzzControlRequest FuzzPolicy FuzzCredentialFile FuzzClientHello
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := .build-fuzz

.PHONY: deps xterm browser-deps build release test browser-test chaos fuzz fuzz-replay run bench install install-files uninstall clean

# Installs the Debian packages named in $(1) that are missing.
define apt_install
	@missing=""; \
	for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
endef

deps: xterm
	$(call apt_install,$(APT_DEPS))

# xterm.js 5 and its addons, as Debian 13 packages them (libjs-xterm, architecture all). A
# host whose apt offers that version installs it (/usr/share/javascript/xterm); otherwise
# (Debian 12, whose libjs-xterm is 3.8) apt fetches the package from the same Debian archive
# as the host's own sources, suite trixie, checking the archive's signature with the keyring
# the host already trusts, into $(XTERM_FETCH) without touching the host's apt configuration;
# its files are unpacked to $(XTERM_DIR). `cloister serve` looks there, then in the installed
# copy, then in the host's package (--xterm-dir).
XTERM_DIR   := .build/xterm
XTERM_FETCH := .build/xterm-fetch
XTERM_SUITE := trixie
xterm:
	@if [ -f $(XTERM_DIR)/xterm.js ] || [ -f /usr/share/javascript/xterm/addons/webgl/xterm-addon-webgl.js ]; then exit 0; fi; \
	if apt-cache policy libjs-xterm 2>/dev/null | grep -q 'Candidate: 5\.'; then \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libjs-xterm; exit $$?; \
	fi; \
	set -e; archive=$$(sed -n 's/^URIs: *\([^ ]*debian\)$$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1); \
	archive=$${archive:-http://deb.debian.org/debian}; \
	rm -rf $(XTERM_FETCH); mkdir -p $(XTERM_FETCH)/lists/partial $(XTERM_FETCH)/cache/archives/partial; \
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $$archive $(XTERM_SUITE) main" > $(XTERM_FETCH)/sources.list; \
	apt="-o Dir::Etc::sourcelist=$(CURDIR)/$(XTERM_FETCH)/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$(CURDIR)/$(XTERM_FETCH)/lists \
		-o Dir::Cache=$(CURDIR)/$(XTERM_FETCH)/cache -o Debug::NoLocking=1 -o APT::Sandbox::User=root"; \
	echo "fetching libjs-xterm from $$archive $(XTERM_SUITE) (signature checked by apt)"; \
	apt-get $$apt -q update > $(XTERM_FETCH)/update.log 2>&1 || { cat $(XTERM_FETCH)/update.log; exit 1; }; \
	(cd $(XTERM_FETCH) && apt-get $$apt -q download libjs-xterm); \
	rm -rf $(XTERM_FETCH)/root; dpkg-deb -x $(XTERM_FETCH)/libjs-xterm_*_all.deb $(XTERM_FETCH)/root; \
	rm -rf $(XTERM_DIR); cp -r $(XTERM_FETCH)/root/usr/share/javascript/xterm $(XTERM_DIR); \
	cp $(XTERM_FETCH)/root/usr/share/doc/libjs-xterm/copyright $(XTERM_DIR)/copyright; \
	echo "xterm.js $$(dpkg-deb -f $(XTERM_FETCH)/libjs-xterm_*_all.deb Version) in $(XTERM_DIR)"

browser-deps: deps
	$(call apt_install,$(BROWSER_APT_DEPS) $(DEPLOY_APT_DEPS))
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -c 'import playwright, websockets, trzsz.svr, asciinema' 2>/dev/null || $(VENV)/bin/pip install --quiet playwright websockets trzsz-svr asciinema

build: deps
	$(SWIFT) build

# The one build that is installed, tested (CLOISTER_EXECUTABLE below), benchmarked and that
# `policy learn` runs: the Swift runtime linked in, so it runs without the toolchain.
RELEASE_FLAGS := -c release --static-swift-stdlib
RELEASE_BIN   := .build/release/cloister

# The two programs only: the fuzz targets read modules' internals (@testable), which a
# release build does not export; the debug build of `make test` builds and runs them.
release: deps
	$(SWIFT) build $(RELEASE_FLAGS) --product cloister
	$(SWIFT) build $(RELEASE_FLAGS) --product cloister-bench

# The tests spawn the release build (the one installed); the in-process ones run from the
# debug build of the test bundle.
test: browser-deps
	$(SWIFT) build $(RELEASE_FLAGS) --product cloister
	$(SWIFT) build --build-tests
	@$(MAKE) --no-print-directory fuzz-replay
	node --test Tests/Page/
	CLOISTER_EXECUTABLE=$(CURDIR)/$(RELEASE_BIN) timeout 900 $(SWIFT) test --skip-build --disable-swift-testing
	CLOISTER_EXECUTABLE=$(CURDIR)/$(RELEASE_BIN) timeout 300 $(VENV)/bin/python -m unittest discover --start-directory Tests/Browser --verbose

# Every fuzz target, as the ordinary debug build has it (FuzzReplay), run on each seed of its
# corpus: a target that no longer builds fails `swift build` above, one that crashes on a
# seed fails here, naming it.
fuzz-replay:
	@for t in $(FUZZ_TARGETS); do \
		[ -x .build/debug/$$t ] || { echo "fuzz-replay: .build/debug/$$t is not built (swift build --build-tests builds it)"; exit 1; }; \
		SWIFT_BACKTRACE=enable=no timeout 120 .build/debug/$$t Fuzz/Corpus/$$t || { echo "fuzz-replay: $$t failed on its corpus (Fuzz/Corpus/$$t)"; exit 1; }; \
	done

# Only the browser tests (the page in headless Chromium against the real server).
browser-test: browser-deps
	$(SWIFT) build $(RELEASE_FLAGS) --product cloister
	CLOISTER_EXECUTABLE=$(CURDIR)/$(RELEASE_BIN) timeout 300 $(VENV)/bin/python -m unittest discover --start-directory Tests/Browser --verbose

# 50 sessions resuming through a minute of workers killed every 2 s (a short run is in make test).
chaos: deps
	$(SWIFT) build $(RELEASE_FLAGS) --product cloister
	$(SWIFT) build --build-tests
	CLOISTER_EXECUTABLE=$(CURDIR)/$(RELEASE_BIN) CLOISTER_CHAOS_SESSIONS=50 CLOISTER_CHAOS_SECONDS=60 timeout 600 $(SWIFT) test --skip-build --disable-swift-testing --filter ChaosTests

# Each libFuzzer target for FUZZ_SECONDS (default 60), from the seeds in Fuzz/Corpus (copied,
# so a run adds nothing to the repository); fails on any crash, leak or hang (10 s per input).
# Inputs that fail are left in $(FUZZ_BUILD)/findings/TARGET/. Swift's own backtracer is off
# there: it reads the stack in a way AddressSanitizer reports, hiding the real failure.
fuzz: deps
	@mkdir -p $(FUZZ_BUILD); for t in $(FUZZ_TARGETS); do \
		echo "== building $$t"; \
		$(SWIFT) build --scratch-path $(FUZZ_BUILD) --sanitize=fuzzer --sanitize=address \
			-Xswiftc -sanitize=fuzzer,address -Xswiftc -DLIBFUZZER --product $$t > $(FUZZ_BUILD)/$$t.build.log 2>&1 \
			|| { grep -v 'ld.gold: warning: Cannot export local symbol' $(FUZZ_BUILD)/$$t.build.log | tail -40; \
			     echo "fuzz: $$t does not build (log in $(FUZZ_BUILD)/$$t.build.log)"; exit 1; }; \
	done
	@rm -rf $(FUZZ_BUILD)/corpus $(FUZZ_BUILD)/findings; mkdir -p $(FUZZ_BUILD)/corpus $(FUZZ_BUILD)/findings; failed=""; \
	for t in $(FUZZ_TARGETS); do \
		cp -r Fuzz/Corpus/$$t $(FUZZ_BUILD)/corpus/$$t; mkdir -p $(FUZZ_BUILD)/findings/$$t; \
		echo "== $$t: $(FUZZ_SECONDS) s"; \
		SWIFT_BACKTRACE=enable=no $(FUZZ_BUILD)/debug/$$t $(FUZZ_BUILD)/corpus/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 \
			-print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/findings/$$t/ > $(FUZZ_BUILD)/$$t.log 2>&1 || failed="$$failed $$t"; \
		grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' $(FUZZ_BUILD)/$$t.log | tr '\n' ' '; echo; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed (logs in $(FUZZ_BUILD)/, inputs in $(FUZZ_BUILD)/findings/)"; exit 1; fi

# Serves the login shell on 127.0.0.1:7681 and prints a one-time credential; Ctrl-C drains
# and stops. Extra options: make run ARGS="--listen 127.0.0.1:8080 --workers 4".
run: release
	./$(RELEASE_BIN) serve $(ARGS)

bench: release
	$(call apt_install,$(BENCH_APT_DEPS))
	./.build/release/cloister-bench circuits
	./.build/release/cloister-bench e2e
	./.build/release/cloister-bench compare

# make install [PREFIX=/usr/local] [DESTDIR=]: builds the release binary, then installs it
# with the profiles, the page, the systemd units (their paths rewritten for PREFIX) and the
# docs. The units are not enabled: see deploy/README.md. install-files installs what is built.
PREFIX  ?= /usr/local
BINDIR  := $(PREFIX)/bin
DATADIR := $(PREFIX)/share/cloister
DOCDIR  := $(PREFIX)/share/doc/cloister
UNITDIR ?= $(PREFIX)/lib/systemd/system
UNITS   := cloister.service cloister.socket cloister-nursery.service cloister-nursery.socket \
           cloister-metrics.service cloister-metrics.timer
WEB     := $(notdir $(wildcard web/*.html web/*.css web/*.js))
# xterm.js 5 and the addons the page loads, with the package's copyright file (its licence).
XTERM_FILES := xterm.js xterm.css addons/fit/xterm-addon-fit.js addons/webgl/xterm-addon-webgl.js addons/canvas/xterm-addon-canvas.js \
           addons/unicode11/xterm-addon-unicode11.js addons/webLinks/xterm-addon-web-links.js addons/search/xterm-addon-search.js \
           addons/image/xterm-addon-image.js
XTERM_FROM = $(if $(wildcard $(XTERM_DIR)/xterm.js),$(XTERM_DIR),/usr/share/javascript/xterm)
DOCS    := README.md ARCHITECTURE.md PERFORMANCE.md

install: release install-files

install-files:
	@[ -x $(RELEASE_BIN) ] || { echo "install: $(RELEASE_BIN) is not built: run make install (or make release first)"; exit 1; }
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/policies $(DESTDIR)$(DATADIR)/web $(DESTDIR)$(DATADIR)/xterm \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)/deploy
	install -m 0755 -s $(RELEASE_BIN) $(DESTDIR)$(BINDIR)/cloister
	@# Every declared role's profile: the binary lists them (RoleDeclaration.sandboxed).
	profiles=$$($(RELEASE_BIN) policy roles --format files) && [ -n "$$profiles" ] || { echo "install: $(RELEASE_BIN) lists no role profiles"; exit 1; }; \
		for f in $$profiles; do install -m 0644 policies/$$f $(DESTDIR)$(DATADIR)/policies/ || exit 1; done
	install -m 0644 $(addprefix web/,$(WEB)) $(DESTDIR)$(DATADIR)/web/
	@[ -f $(XTERM_FROM)/addons/webgl/xterm-addon-webgl.js ] || { echo "install: no xterm.js 5 in $(XTERM_FROM) (make xterm fetches it)"; exit 1; }
	for f in $(XTERM_FILES); do install -D -m 0644 $(XTERM_FROM)/$$f $(DESTDIR)$(DATADIR)/xterm/$$f || exit 1; done
	install -m 0644 $$([ -f $(XTERM_FROM)/copyright ] && echo $(XTERM_FROM)/copyright || echo /usr/share/doc/libjs-xterm/copyright) $(DESTDIR)$(DATADIR)/xterm/copyright
	for u in $(UNITS); do sed 's|/usr/local|$(PREFIX)|g' deploy/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; done
	install -m 0644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	install -m 0644 deploy/README.md deploy/nginx-cloister.conf deploy/haproxy-fleet.cfg deploy/nginx-fleet.conf $(DESTDIR)$(DOCDIR)/deploy/

uninstall:
	@# The installed binary says which profiles it installed (the build here, if it is gone).
	bin=$(DESTDIR)$(BINDIR)/cloister; [ -x $$bin ] || bin=$(RELEASE_BIN); \
		profiles=$$($$bin policy roles --format files) || { echo "uninstall: neither $(DESTDIR)$(BINDIR)/cloister nor $(RELEASE_BIN) lists the profiles"; exit 1; }; \
		for f in $$profiles; do rm -f $(DESTDIR)$(DATADIR)/policies/$$f; done
	rm -f $(DESTDIR)$(BINDIR)/cloister
	rm -f $(addprefix $(DESTDIR)$(DATADIR)/web/,$(WEB))
	rm -f $(addprefix $(DESTDIR)$(DATADIR)/xterm/,$(XTERM_FILES) copyright)
	-rmdir $(addprefix $(DESTDIR)$(DATADIR)/xterm/addons/,fit webgl canvas unicode11 webLinks search image) \
		$(DESTDIR)$(DATADIR)/xterm/addons $(DESTDIR)$(DATADIR)/xterm 2>/dev/null
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS))
	rm -f $(addprefix $(DESTDIR)$(DOCDIR)/,$(DOCS)) $(addprefix $(DESTDIR)$(DOCDIR)/deploy/,README.md nginx-cloister.conf haproxy-fleet.cfg nginx-fleet.conf)
	-rmdir $(DESTDIR)$(DATADIR)/policies $(DESTDIR)$(DATADIR)/web $(DESTDIR)$(DATADIR) $(DESTDIR)$(DOCDIR)/deploy $(DESTDIR)$(DOCDIR) 2>/dev/null

clean:
	rm -rf .build
