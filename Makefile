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
UNIT_PKGS := ./raftfsm/... ./membership/... ./agent/... ./api/... ./config/... ./proxy/... ./cmd/...

.PHONY: all build test unit integration demo bench bench-failover bench-bootstrap bench-proxy lint fuzz deps clean

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

unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)

integration: build
	PGHA_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 30m -v ./integration/...

demo: deps build
	./$(BIN) demo

bench: bench-bootstrap bench-failover bench-proxy

# ROUNDS=N DURATION=S (default 3 rounds of 15 s per target and workload).
bench-proxy: deps build
	scripts/bench-proxy.sh

bench-bootstrap: deps build
	scripts/bench-bootstrap.sh

# RUNS=N sets the number of runs per scenario (default 5).
bench-failover: deps build
	PGHA_BIN=$(CURDIR)/$(BIN) $(GO) test -tags bench -count=1 -timeout 60m -v -run TestBenchFailover ./integration/

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

fuzz:
	$(GO) test ./raftfsm -run=^$$ -fuzz=FuzzApplyCommand -fuzztime=$${FUZZTIME:-30s}
	$(GO) test ./config -run=^$$ -fuzz=FuzzLoad -fuzztime=$${FUZZTIME:-30s}
	$(GO) test ./pgnode -run=^$$ -fuzz=FuzzParseLSN -fuzztime=$${FUZZTIME:-30s}

clean:
	rm -rf bin
