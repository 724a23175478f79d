// Package otlptest is an in-process OTLP trace receiver for tests: the
// collector's TraceService over gRPC and POST /v1/traces (protobuf, gzip or
// not) over HTTP, both on free loopback ports, recording every span with
// its service name. It is safe for concurrent use.
package otlptest

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// maxBody bounds one HTTP export request.
const maxBody = 16 << 20

// Span is one received span, flattened.
type Span struct {
	Service  string
	Name     string
	Kind     string
	TraceID  string // hex
	SpanID   string // hex
	ParentID string // hex; "" for a root
	Attrs    map[string]string
	Links    []Link
}

// Link is one span link of a Span.
type Link struct {
	TraceID string // hex
	SpanID  string // hex
}

// Receiver records the spans exported to it.
type Receiver struct {
	coltracepb.UnimplementedTraceServiceServer
	// GRPCAddr is host:port of the gRPC TraceService; HTTPURL the base
	// URL of the HTTP endpoint (POST HTTPURL+"/v1/traces").
	GRPCAddr, HTTPURL string

	mu      sync.Mutex
	spans   []Span
	changed chan struct{} // closed and replaced on every export
}

// Start serves a receiver until tb's cleanup.
func Start(tb testing.TB) *Receiver {
	tb.Helper()
	r := &Receiver{changed: make(chan struct{})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, r)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	hs := httptest.NewServer(http.HandlerFunc(r.serveHTTP))
	tb.Cleanup(func() {
		hs.Close()
		gs.Stop()
		<-done
	})
	r.GRPCAddr, r.HTTPURL = lis.Addr().String(), hs.URL
	return r
}

// Export implements the collector's TraceService.
func (r *Receiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		http.NotFound(w, req)
		return
	}
	var body io.Reader = http.MaxBytesReader(w, req.Body, maxBody)
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = io.LimitReader(zr, maxBody)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var msg coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &msg); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.add(&msg)
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *Receiver) add(req *coltracepb.ExportTraceServiceRequest) {
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				got = append(got, Span{
					Service:  service,
					Name:     sp.GetName(),
					Kind:     sp.GetKind().String(),
					TraceID:  hex.EncodeToString(sp.GetTraceId()),
					SpanID:   hex.EncodeToString(sp.GetSpanId()),
					ParentID: hex.EncodeToString(sp.GetParentSpanId()),
					Attrs:    attrs(sp.GetAttributes()),
					Links:    links(sp.GetLinks()),
				})
			}
		}
	}
	r.mu.Lock()
	r.spans = append(r.spans, got...)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// attrs flattens attributes to strings (as their protobuf text).
func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		v := kv.GetValue()
		switch x := v.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.GetKey()] = x.StringValue
		default:
			m[kv.GetKey()] = v.String()
		}
	}
	return m
}

// Spans returns a copy of the spans received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// WaitFor waits until match holds for the spans received, or until ctx
// ends; it returns the spans it last saw and whether match held.
func (r *Receiver) WaitFor(ctx context.Context, match func([]Span) bool) ([]Span, bool) {
	for {
		r.mu.Lock()
		spans, changed := append([]Span(nil), r.spans...), r.changed
		r.mu.Unlock()
		if match(spans) {
			return spans, true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return spans, false
		}
	}
}

func links(ls []*tracepb.Span_Link) []Link {
	var out []Link
	for _, l := range ls {
		out = append(out, Link{TraceID: hex.EncodeToString(l.GetTraceId()), SpanID: hex.EncodeToString(l.GetSpanId())})
	}
	return out
}
