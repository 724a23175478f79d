# phxgate — the two commands a newcomer runs: `make run` and `make test`.
# Both do their own set-up on a fresh Debian machine with Go installed.

GO      ?= go
CONFIG  ?= deploy/phxgate.yaml
JS_DIR  := clients/js
# Extra flags for `go test`, e.g. make test GOTESTFLAGS='-run Conformance -v'.
GOTESTFLAGS ?=

.PHONY: run run-config build test deps node-deps redis-deps chromium-deps prom-deps deploy-check lint bench loadtest bench-broadcast bench-redis bench-scenario clean proto

## run: start phxgate --dev: the dice demo at http://localhost:4000/ (installs
## the page's phoenix.js first). Not for production.
run: node-deps
	$(GO) run ./cmd/phxgate --dev

## run-config: start phxgate on the embedded broker with the example config.
run-config:
	$(GO) run ./cmd/phxgate --config $(CONFIG)

## build: compile static binaries into ./bin (the build line of deploy/Dockerfile).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/phxgate ./cmd/phxgate
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/dice ./backends/examples/dice
	$(GO) build -o bin/phxgate-bench ./clients/bench

## test: install what the tests need, then lint and run every test with -race.
test: deps lint
	$(GO) test -race -count=1 -timeout 30m $(GOTESTFLAGS) ./...
	$(MAKE) deploy-check

## deploy-check: the deploy/ files against real tools (its own module, deploy/check):
## k8s manifests decoded strictly, promtool, a live Prometheus scraping a node
## for every dashboard query, and the static binary of `make build`.
deploy-check:
	cd deploy/check && $(GO) test -count=1 -timeout 10m $(GOTESTFLAGS) ./...

## deps: system packages and the pinned Node packages the tests use.
deps: node-deps redis-deps chromium-deps prom-deps

node-deps:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		echo "installing nodejs and npm with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@if [ ! -d $(JS_DIR)/node_modules ] || [ $(JS_DIR)/package-lock.json -nt $(JS_DIR)/node_modules/.package-lock.json ]; then \
		cd $(JS_DIR) && npm ci --no-audit --no-fund; fi
	@if [ ! -d $(JS_DIR)/thirdparty/node_modules ] || [ $(JS_DIR)/thirdparty/package-lock.json -nt $(JS_DIR)/thirdparty/node_modules/.package-lock.json ]; then \
		cd $(JS_DIR)/thirdparty && npm ci --no-audit --no-fund; fi

# redis-deps: the redis-server and redis-cli that pubsub/redistest runs.
redis-deps:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || { \
		echo "installing redis-server with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# chromium-deps: the browser the demo page's test (clients/js/devdemo_test.go)
# drives with playwright-core.
chromium-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# prom-deps: promtool and prometheus (Debian 12: 2.42) for deploy/check.
prom-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
		echo "installing prometheus with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }

## lint: gofmt, go vet and a tidy go.mod must be clean.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	cd deploy/check && $(GO) vet ./...
	@cd deploy/check && $(GO) mod tidy -diff || { echo "deploy/check/go.mod is not tidy: cd deploy/check && go mod tidy"; exit 1; }

## loadtest: 15,000 idle joined connections from a separate process; prints
## the gateway's RSS slope per connection and its goroutine count.
loadtest:
	clients/bench/loadtest.sh

## bench-broadcast: one publisher to SUBS subscribers (default 15,000) on the
## gateway, then on a floor server; prints both and the ratios gateway/floor.
bench-broadcast:
	clients/bench/broadcast.sh

## bench-redis: 3 gateway nodes on one Redis, 15,000 clients in 100 rooms,
## 1,000 events/s in all; prints latency, missing/duplicate deliveries and
## the CPU of the gateways, redis-server and the bench.
bench-redis:
	clients/bench/redis.sh

## bench-scenario: SCENARIO=churn|actions|resume against a gateway of its
## own (clients/bench/scenarios.yaml); writes result.json, summary.md and
## PNG latency plots to OUT (default bench-out/SCENARIO).
bench-scenario:
	clients/bench/scenarios.sh

## bench: micro-benchmarks with allocation counts.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./gateway/... ./channels/... ./pubsub/...

## proto: regenerate the committed Go code of backends/proto with Debian's
## protoc (installed when missing) and the pinned Go plugins (into ./bin).
proto:
	@command -v protoc >/dev/null 2>&1 || { \
		echo "installing protobuf-compiler with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler; }
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	protoc -I backends/proto \
		--plugin=protoc-gen-go=$(CURDIR)/bin/protoc-gen-go \
		--plugin=protoc-gen-go-grpc=$(CURDIR)/bin/protoc-gen-go-grpc \
		--go_out=backends/proto --go_opt=paths=source_relative \
		--go-grpc_out=backends/proto --go-grpc_opt=paths=source_relative \
		phxgate/backend/v1/backend.proto

clean:
	rm -rf bin
