# pgha — see README.md. Two commands matter to a new user: `make demo` and
# `make test`.
SHELL     := /bin/bash
.SHELLFLAGS := -o pipefail -c
GO        ?= go
BIN       := bin/pgha
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
# Packages whose tests are pure logic or in-process concurrency: run with -race.
UNIT_PKGS := ./internal/... ./cluster/... ./raftfsm/... ./membership/... ./agent/... ./api/... ./config/... ./proxy/... ./cmd/...

.PHONY: all build test unit integration demo bench bench-failover bench-bootstrap bench-proxy bench-clone bench-idle bench-report bench-patroni lint fuzz deps clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/pgha

# deps checks (and on a fresh machine installs) what the tests need.
deps:
	@scripts/check-deps.sh

test: deps build
	$(GO) vet ./...
	$(GO) test -race -count=1 $(UNIT_PKGS)
	$(GO) test -race -count=1 -timeout 10m ./pgnode/...
	PGHA_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 30m -v ./integration/... 2>&1 | scripts/test-summary.sh
	$(MAKE) fuzz FUZZTIME=3s
	PGHA_BIN=$(CURDIR)/$(BIN) CHAOS_DURATION=2m $(GO) test -tags chaos -count=1 -timeout 15m -v -run '^TestChaos' ./integration/ 2>&1 | scripts/test-summary.sh

unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)

integration: build
	PGHA_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 30m -v ./integration/...

# Random faults under a client workload, then checks for split brain, lost
# acknowledged commits, recovery time and convergence (integration/chaos_test.go).
# CHAOS_DURATION (default 10m), CHAOS_SEED (replays a run), CHAOS_SYNC=0
# (asynchronous), CHAOS_NETNS=0 (loopback only). Writes
# bench/results/<date>-<host>-chaos.json.
.PHONY: chaos
chaos: deps build
	PGHA_BIN=$(CURDIR)/$(BIN) CHAOS_REPORT=$${CHAOS_REPORT:-1} $(GO) test -tags chaos -count=1 -timeout 60m -v -run '^TestChaos' ./integration/ 2>&1 | scripts/test-summary.sh

demo: deps build
	./$(BIN) demo

# bench runs every pgha benchmark, then writes bench/RESULTS.md, the plots
# in bench/plots/ and bench/results/<date>-<host>.json. Patroni's side
# (root, installs Debian packages): make bench-patroni, then make bench-report.
bench: bench-bootstrap bench-failover bench-clone bench-idle bench-proxy
	$(MAKE) bench-report

bench-report:
	$(GO) run ./bench/report

# ROUNDS=N DURATION=S (default 3 rounds of 15 s per target and workload).
bench-proxy: deps build
	scripts/bench-proxy.sh

bench-bootstrap: deps build
	PGHA_BIN=$(CURDIR)/$(BIN) scripts/bench-bootstrap.sh

# RUNS=N sets the number of runs per scenario (default 10).
bench-failover: deps build
	RUNS=$${RUNS:-10} PGHA_BIN=$(CURDIR)/$(BIN) $(GO) test -tags bench -count=1 -timeout 90m -v -run '^TestBenchFailover$$' ./integration/

# CLONE_SCALE=N: pgbench scale of the primary's data (default 70, ~1 GiB).
bench-clone: deps build
	PGHA_BIN=$(CURDIR)/$(BIN) $(GO) test -tags bench -count=1 -timeout 30m -v -run '^TestBenchClone$$' ./integration/

# IDLE_SECONDS=N: the measuring window (default 60). As root, Patroni's
# idle cost is measured right after in the same run (Debian's patroni with
# its built-in Raft, both settings; PATRONI=0 skips it), so RESULTS.md
# compares figures taken side by side.
bench-idle: deps build
	PGHA_BIN=$(CURDIR)/$(BIN) $(GO) test -tags bench -count=1 -timeout 15m -v -run '^TestBenchIdle$$' ./integration/
	@if [ "$${PATRONI:-1}" = 1 ] && [ "$$(id -u)" = 0 ]; then \
		RUNS=0 SW_RUNS=0 BOOT_RUNS=1 IDLE_SECONDS=$${IDLE_SECONDS:-60} SETTINGS="default tuned" scripts/bench-patroni.sh || \
			echo "bench-idle: Patroni's side failed (above); pgha's figures are written"; \
	else echo "bench-idle: Patroni's side skipped (needs root, or PATRONI=0 was given)"; fi

# Patroni + built-in Raft + HAProxy, the same measurements (RUNS, SW_RUNS,
# BOOT_RUNS, IDLE_SECONDS, SETTINGS="default tuned").
# A failed run (e.g. Patroni not installable) is recorded, and the report
# says so.
bench-patroni: deps
	scripts/bench-patroni.sh || { $(MAKE) bench-report; exit 1; }
	$(MAKE) bench-report

# The agent is Linux-only; the proxy package keeps its goroutine copy
# for other systems, so lint also builds it for one.
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	GOOS=darwin $(GO) build ./proxy/

# Every decoder of outside input has a fuzz target; checked-in corpora
# (testdata/fuzz) run with the normal tests. FUZZTIME per target (30s);
# make test runs each for a few seconds.
FUZZ_TARGETS := raftfsm:FuzzApplyCommand config:FuzzLoad membership:FuzzDecodeMeta api:FuzzRequest proxy:FuzzFirstBytes pgnode:FuzzParseLSN
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} in ./$${t%%:*} for $${FUZZTIME:-30s}"; \
		$(GO) test ./$${t%%:*} -run='^$$' -fuzz="^$${t#*:}$$" -fuzztime=$${FUZZTIME:-30s}; \
	done

clean:
	rm -rf bin
