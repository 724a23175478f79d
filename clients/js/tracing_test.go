package js_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends/telemetry/otlptest"
)

// Client-chosen ids of the traced bet's parent (tracing/trace.test.mjs).
const (
	clientTraceID = "0af7651916cd43dd8448eb211c80319c"
	clientSpanID  = "b7ad6b7169203331"
)

// spanWait bounds the wait for the exported spans (batches go out every
// 100 ms here).
const spanWait = 20 * time.Second

// TestTracingPhoenixJSDice: phoenix.js joins a dice table through phxgate
// and bets; phxgate exports over OTLP/gRPC and the game over
// OTLP/HTTP to one in-process receiver. Each bet is one trace in which the
// game's "bet" span is the child of phxgate's push span; the bet sent with
// the client's traceparent continues the client's trace on a node with
// otel.trust_client_context, and on a node without it is a new trace
// linked to the client's span; no attribute carries the payload or the
// token.
func TestTracingPhoenixJSDice(t *testing.T) {
	if testing.Short() {
		t.Skip("the phoenix.js tracing test is skipped in -short mode")
	}
	jsDir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(filepath.Dir(jsDir))
	node := requireNode(t, jsDir)
	bin := gatewayBinary(t, root)
	rcv := otlptest.Start(t)

	// Children inherit the environment: the game's first, then phxgate's.
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.HTTPURL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	secret := rand.Text() + rand.Text()
	api, game := freePort(t), freePort(t)
	startDice(t, root, game, api)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+rcv.GRPCAddr)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	// This node trusts its clients' trace context (the opt-in).
	url, _ := startGateway(t, bin, func(listen, admin string) string {
		return fmt.Sprintf(diceGatewayConfig, listen, admin, api, secret, game) + "otel:\n  trust_client_context: true\n"
	})
	traceparent := "PHXGATE_TRACEPARENT=00-" + clientTraceID + "-" + clientSpanID + "-01"
	runNode(t, node, jsDir, "tracing/", "PHXGATE_URL="+url, "PHXGATE_AUTH_SECRET="+secret, traceparent)
	// A second node on the same game, with the default: a client's
	// traceparent only becomes a link of a new server-side trace. Its own
	// service name tells its spans apart.
	t.Setenv("OTEL_SERVICE_NAME", untrustedService)
	url2, _ := startGateway(t, bin, func(listen, admin string) string {
		return fmt.Sprintf(diceGatewayConfig, listen, admin, freePort(t), secret, game)
	})
	runNode(t, node, jsDir, "tracing/", "PHXGATE_URL="+url2, "PHXGATE_AUTH_SECRET="+secret, traceparent)

	// Both bets' game spans, each under a phxgate push span.
	ctx, cancel := context.WithTimeout(context.Background(), spanWait)
	defer cancel()
	spans, ok := rcv.WaitFor(ctx, func(ss []otlptest.Span) bool {
		traced, plain := betChains(ss, "phxgate")
		linked, plain2 := betChains(ss, untrustedService)
		return traced != nil && plain != nil && linked != nil && plain2 != nil && hasSpan(ss, "phxgate", "join") && hasSpan(ss, "phxgate", "connect")
	})
	if !ok {
		t.Fatalf("no complete traces within %v; spans:\n%s", spanWait, dump(spans))
	}
	if traced, _ := betChains(spans, untrustedService); traced[0].TraceID == clientTraceID {
		t.Errorf("without trust_client_context the push span continues the client's trace %s", clientTraceID)
	}
	traced, plain := betChains(spans, "phxgate")
	t.Logf("client-parented bet: trace %s push %s → bet %s", traced[0].TraceID, traced[0].SpanID, traced[1].SpanID)
	t.Logf("plain bet: trace %s push %s → bet %s", plain[0].TraceID, plain[0].SpanID, plain[1].SpanID)
	for _, chain := range [][]otlptest.Span{traced, plain} {
		push := chain[0]
		if push.Attrs["phx.event"] != "bet" || !strings.HasPrefix(push.Attrs["phx.topic"], "table:") {
			t.Errorf("push span attributes %v: want phx.event=bet and phx.topic=table:…", push.Attrs)
		}
	}
	if plain[0].ParentID != "" {
		t.Errorf("the plain bet's push span has parent %s, want a root", plain[0].ParentID)
	}
	// Nothing from the payload or the token in any attribute.
	for _, s := range spans {
		for k, v := range s.Attrs {
			for _, bad := range []string{"amount", "pick", "traceparent", "eyJ", secret} {
				if strings.Contains(k, bad) || strings.Contains(v, bad) {
					t.Errorf("%s span %q attribute %s=%q carries %q", s.Service, s.Name, k, v, bad)
				}
			}
		}
	}
}

// untrustedService is the service name of the node without
// otel.trust_client_context.
const untrustedService = "phxgate-untrusted"

// betChains finds, among spans, a push span of service and the dice "bet"
// span under it (same trace, parent = the push): traced is the one for
// the bet that sent the client's traceparent — whose push continues the
// client's trace (with otel.trust_client_context) or is a root linked to
// the client's span (without) — plain one whose push is an unlinked root.
func betChains(spans []otlptest.Span, service string) (traced, plain []otlptest.Span) {
	for _, push := range spans {
		if push.Service != service || push.Name != "push" {
			continue
		}
		for _, bet := range spans {
			if bet.Service != "dice" || bet.Name != "bet" || bet.ParentID != push.SpanID || bet.TraceID != push.TraceID {
				continue
			}
			linked := len(push.Links) == 1 && push.Links[0].TraceID == clientTraceID && push.Links[0].SpanID == clientSpanID
			switch {
			case push.TraceID == clientTraceID && push.ParentID == clientSpanID && len(push.Links) == 0:
				traced = []otlptest.Span{push, bet}
			case push.ParentID == "" && linked && push.TraceID != clientTraceID:
				traced = []otlptest.Span{push, bet}
			case push.ParentID == "" && len(push.Links) == 0:
				plain = []otlptest.Span{push, bet}
			}
		}
	}
	return traced, plain
}

func hasSpan(spans []otlptest.Span, service, name string) bool {
	for _, s := range spans {
		if s.Service == service && s.Name == name {
			return true
		}
	}
	return false
}

func dump(spans []otlptest.Span) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %s %s trace=%s span=%s parent=%s %v\n", s.Service, s.Name, s.TraceID, s.SpanID, s.ParentID, s.Attrs)
	}
	return b.String()
}
