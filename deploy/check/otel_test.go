package check

import (
	"cmp"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/phxgate/phxgate/backends/telemetry"
	"sigs.k8s.io/yaml"
)

// otlpPorts are the OTLP receivers' standard ports, by protocol.
var otlpPorts = map[string]string{telemetry.ProtocolGRPC: "4317", telemetry.ProtocolHTTP: "4318"}

// TestComposeTracing checks the compose stack's OpenTelemetry wiring: every
// phxgate node and the dice game have tracing on (by the same rule the
// binaries use), a protocol the exporters accept, and an endpoint naming a
// service of the stack on a port that service exposes and that is the
// standard port of that protocol; the service is a Jaeger with its OTLP
// receivers on and its UI published.
func TestComposeTracing(t *testing.T) {
	var compose composeFile
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "compose.yaml")), &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	exporters := 0
	for name, s := range compose.Services {
		if !strings.HasPrefix(name, "phxgate-") && name != "dice" {
			continue
		}
		exporters++
		getenv := func(k string) string { return s.Environment[k] }
		if !telemetry.Enabled(false, getenv) {
			t.Errorf("service %s: tracing is off (no %s)", name, telemetry.EnvEndpoint)
			continue
		}
		proto, err := telemetry.Protocol(getenv)
		if err != nil {
			t.Errorf("service %s: %v", name, err)
			continue
		}
		raw := cmp.Or(s.Environment[telemetry.EnvTracesEndpoint], s.Environment[telemetry.EnvEndpoint])
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "http" || u.Hostname() == "" || u.Port() == "" {
			t.Errorf("service %s: endpoint %q: want http://service:port", name, raw)
			continue
		}
		if s.Environment[telemetry.EnvTracesEndpoint] == "" && u.Path != "" && u.Path != "/" {
			t.Errorf("service %s: endpoint %q has a path: the exporter appends /v1/traces to the base endpoint itself", name, raw)
		}
		viewer, ok := compose.Services[u.Hostname()]
		if !ok {
			t.Errorf("service %s: endpoint %q names no service of compose.yaml", name, raw)
			continue
		}
		if !slices.Contains(viewer.Expose, u.Port()) {
			t.Errorf("service %s: endpoint %q: service %s exposes %v, not %s", name, raw, u.Hostname(), viewer.Expose, u.Port())
		}
		if want := otlpPorts[proto]; u.Port() != want {
			t.Errorf("service %s: endpoint %q on port %s with protocol %s: the OTLP %s port is %s", name, raw, u.Port(), proto, proto, want)
		}
	}
	if exporters != 4 {
		t.Errorf("compose.yaml: %d services export traces, want 3 phxgate nodes and dice", exporters)
	}
	j, ok := compose.Services["jaeger"]
	if !ok {
		t.Fatal("compose.yaml: no service jaeger")
	}
	if !strings.HasPrefix(j.Image, "jaegertracing/all-in-one:") || strings.HasSuffix(j.Image, ":latest") {
		t.Errorf("jaeger image %q: want jaegertracing/all-in-one at a pinned tag", j.Image)
	}
	if j.Environment["COLLECTOR_OTLP_ENABLED"] != "true" {
		t.Error("jaeger: COLLECTOR_OTLP_ENABLED is not \"true\"")
	}
	for _, p := range otlpPorts {
		if !slices.Contains(j.Expose, p) {
			t.Errorf("jaeger exposes %v, not OTLP port %s", j.Expose, p)
		}
	}
}
