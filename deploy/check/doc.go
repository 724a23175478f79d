// Package check holds the tests of the deployment files in deploy/: the
// Kubernetes manifests decoded strictly into their API types and checked
// against the ConfigMap's phxgate config, the Prometheus config and rules
// run by a real Prometheus against a real phxgate node, every query of the
// Grafana dashboard and of the HPA's adapter rule answered, and the static
// binary that `make build` and deploy/Dockerfile produce.
//
// It is a module of its own so that the Kubernetes API types stay out of
// phxgate's go.mod; `make test` runs it (`cd deploy/check && go test ./...`).
// The tests need promtool and prometheus (`make prom-deps`) and
// redis-server (`make redis-deps`) and fail, naming the target, without them.
package check
