package backends

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const testSecretEnv = "PHXGATE_TEST_WEBHOOK_SECRET"

var testSecret = []byte("test-secret-0123456789abcdefghijklmnop") // ≥ 32 bytes

// hookRequest is one request a hookGame received.
type hookRequest struct {
	method, path string
	header       http.Header
	body         []byte
}

// hookGame is a game's webhook receiver built on VerifyWebhook: a request
// that fails verification (when secret is set) is answered 401 and only
// counted as rejected; any other is counted as an attempt, recorded and
// answered by answer (200 {} when nil).
type hookGame struct {
	secret []byte
	answer func(w http.ResponseWriter, r *http.Request, body []byte)

	attempts, rejected atomic.Int64
	mu                 sync.Mutex
	reqs               []hookRequest
	verifyErrs         []error
}

func (g *hookGame) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if g.secret != nil {
		if err := VerifyWebhook(g.secret, r, body, 0); err != nil {
			g.rejected.Add(1)
			g.mu.Lock()
			g.verifyErrs = append(g.verifyErrs, err)
			g.mu.Unlock()
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	g.attempts.Add(1)
	g.mu.Lock()
	g.reqs = append(g.reqs, hookRequest{method: r.Method, path: r.URL.Path, header: r.Header.Clone(), body: body})
	g.mu.Unlock()
	if g.answer == nil {
		_, _ = io.WriteString(w, `{}`)
		return
	}
	g.answer(w, r, body)
}

func (g *hookGame) requests() []hookRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]hookRequest(nil), g.reqs...)
}

func (g *hookGame) failures() []error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]error(nil), g.verifyErrs...)
}

// serveHook serves h on a free port of 127.0.0.1 and returns the game's
// webhook base URL (…/game) and a stop function (also run at cleanup)
// that returns once its handlers are done.
func serveHook(tb testing.TB, h http.Handler) (string, func()) {
	tb.Helper()
	srv := httptest.NewServer(h)
	stop := sync.OnceFunc(srv.Close)
	tb.Cleanup(stop)
	return srv.URL + "/game", stop
}

// signedSpec is base with the test secret's env option and opts.
func signedSpec(tb testing.TB, base, opts string) string {
	tb.Helper()
	tb.Setenv(testSecretEnv, string(testSecret))
	spec := base + "?secret_env=" + testSecretEnv
	if opts != "" {
		spec += "&" + opts
	}
	return spec
}

// newHook builds a webhook engine from spec, lets tweak adjust the parsed
// config, and closes the engine at cleanup.
func newHook(tb testing.TB, spec string, tweak func(*WebhookConfig)) *Webhook {
	tb.Helper()
	cfg, err := ParseWebhookSpec(spec)
	if err != nil {
		tb.Fatalf("ParseWebhookSpec(%q): %v", spec, err)
	}
	if tweak != nil {
		tweak(&cfg)
	}
	w, err := NewWebhook(cfg)
	if err != nil {
		tb.Fatalf("NewWebhook: %v", err)
	}
	tb.Cleanup(func() { _ = w.Close() })
	return w
}

func answerJSON(status int, body string) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// jsonEqual fails tb unless got and want are the same JSON value.
func jsonEqual(tb testing.TB, got []byte, want string) {
	tb.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		tb.Fatalf("body %s: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		tb.Fatalf("want %s: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		tb.Fatalf("body\n got %s\nwant %s", got, want)
	}
}

func TestWebhookJoinRoundTrip(t *testing.T) {
	g := &hookGame{secret: testSecret, answer: answerJSON(http.StatusOK, `{
		"reply": {"status": "ok", "response": {"data": {"hand":[1,2]}, "binary": false}},
		"broadcasts": [
			{"event": "joined", "payload": {"data": {"who":"player-9"}}},
			{"topic": "lobby", "event": "raw", "payload": {"data": "AAH/", "binary": true}},
			{"topic": "lobby", "event": "bare"}
		],
		"pushes": [{"event": "state", "payload": {"data": "CQg=", "binary": true}}],
		"presence_meta": {"status":"seated"},
		"stop": "none",
		"snapshot_position": "5-20",
		"a_field_from_the_future": [1]
	}`)}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, ""), nil)

	c := fullCall()
	c.Rejoin = true
	got, err := e.Join(context.Background(), c)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	want := &Reply{
		Status:   "ok",
		Response: Payload{Data: []byte(`{"hand":[1,2]}`)},
		Broadcasts: []Message{
			{Event: "joined", Payload: Payload{Data: []byte(`{"who":"player-9"}`)}},
			{Topic: "lobby", Event: "raw", Payload: Payload{Data: []byte{0, 1, 255}, Binary: true}},
			{Topic: "lobby", Event: "bare"},
		},
		Pushes:           []Message{{Event: "state", Payload: Payload{Data: []byte{9, 8}, Binary: true}}},
		PresenceMeta:     []byte(`{"status":"seated"}`),
		SnapshotPosition: "5-20",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("reply\n got %+v\nwant %+v", got, want)
	}

	reqs := g.requests()
	if len(reqs) != 1 || g.rejected.Load() != 0 {
		t.Fatalf("%d requests, %d rejected (%v); want 1 accepted", len(reqs), g.rejected.Load(), g.failures())
	}
	r := reqs[0]
	if r.method != http.MethodPost || r.path != "/game/join" {
		t.Fatalf("%s %s, want POST /game/join", r.method, r.path)
	}
	for name, want := range map[string]string{
		"Content-Type":    "application/json",
		"Idempotency-Key": "i1:42:1:1",
	} {
		if got := r.header.Get(name); got != want {
			t.Fatalf("header %s = %q, want %q", name, got, want)
		}
	}
	// The wire format, byte for byte: proto's field names, conn_id as a
	// string, claims, params and the JSON payload embedded as JSON.
	const wantBody = `{"call":{"node_id":"node-a","conn_id":"1099511627783","player_id":"player-9",` +
		`"claims":{"sub":"player-9","role":"gm"},"params":{"vsn":"2.0.0"},"topic":"room:1","event":"phx_join",` +
		`"join_ref":"3","ref":"4","payload":{"data":{"seat":2},"binary":false},"idempotency_key":"i1:42:1:1"},` +
		`"resume_position":"5-17","recoverable":true,"rejoin":true}`
	if string(r.body) != wantBody {
		t.Fatalf("body\n got %s\nwant %s", r.body, wantBody)
	}
}

func TestWebhookJoinEmptyFields(t *testing.T) {
	g := &hookGame{secret: testSecret, answer: answerJSON(http.StatusOK, `{"presence_meta":null}`)}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, ""), nil)
	got, err := e.Join(context.Background(), &Call{Topic: "room:1", Event: "phx_join", Payload: Payload{Data: []byte(`null`)}})
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	if !reflect.DeepEqual(got, &Reply{}) {
		t.Fatalf("reply %+v, want empty", got)
	}
	// No claims: null; no params: {}; a JSON null payload stays null.
	jsonEqual(t, g.requests()[0].body, `{"call":{"node_id":"","conn_id":"0","player_id":"","claims":null,"params":{},`+
		`"topic":"room:1","event":"phx_join","join_ref":"","ref":"","payload":{"data":null,"binary":false},"idempotency_key":""},`+
		`"resume_position":"","recoverable":false,"rejoin":false}`)
	if _, ok := g.requests()[0].header[IdempotencyKeyHeader]; ok {
		t.Fatal("an empty idempotency key was sent as a header")
	}
}

func TestWebhookHandleInRoundTrip(t *testing.T) {
	tests := []struct {
		name, resp string
		want       *Reply
	}{
		{"binary reply, stop normal",
			`{"reply":{"status":"error","response":{"data":"AQID","binary":true}},"stop":"normal"}`,
			&Reply{Status: "error", Response: Payload{Data: []byte{1, 2, 3}, Binary: true}, Stop: StopNormal}},
		{"stop error", `{"stop":"error"}`, &Reply{Stop: StopCrash}},
		{"unknown stop keeps the channel", `{"reply":{"status":"ok"},"stop":"explode"}`, &Reply{Status: "ok"}},
		{"empty object is no reply", `{}`, &Reply{}},
		{"null response data", `{"reply":{"status":"ok","response":{"data":null}}}`,
			&Reply{Status: "ok", Response: Payload{Data: []byte(`null`)}}},
		{"empty binary data", `{"reply":{"status":"ok","response":{"data":"","binary":true}}}`,
			&Reply{Status: "ok", Response: Payload{Binary: true}}},
		{"whitespace and unknown fields", " \n{ \"reply\" : {\"status\":\"ok\", \"x\": 1}, \"extra\": [1] }\n", &Reply{Status: "ok"}},
		{"join fields ignored", `{"presence_meta":{"a":1},"snapshot_position":"9"}`, &Reply{}},
		{"broadcasts and pushes",
			`{"reply":{"status":"ok"},
			  "broadcasts":[{"topic":"room:2","event":"moved","payload":{"data":{"x":1}}}],
			  "pushes":[{"topic":"ignored","event":"you","payload":{"data":"moved"}}]}`,
			&Reply{
				Status:     "ok",
				Broadcasts: []Message{{Topic: "room:2", Event: "moved", Payload: Payload{Data: []byte(`{"x":1}`)}}},
				Pushes:     []Message{{Event: "you", Payload: Payload{Data: []byte(`"moved"`)}}},
			}},
	}
	var resp atomic.Pointer[string]
	g := &hookGame{secret: testSecret, answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		_, _ = io.WriteString(w, *resp.Load())
	}}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, ""), nil)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp.Store(&tc.resp)
			c := fullCall()
			c.Event, c.Ref, c.IdempotencyKey = "move", fmt.Sprint(10+i), fmt.Sprintf("k%d", i)
			c.ResumePosition, c.Recoverable = "", false
			c.Payload = Payload{Data: []byte{0, 0xfe, byte(i)}, Binary: true}
			got, err := e.HandleIn(context.Background(), c)
			if err != nil {
				t.Fatalf("HandleIn: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("reply\n got %+v\nwant %+v", got, tc.want)
			}
			reqs := g.requests()
			last := reqs[len(reqs)-1]
			if last.path != "/game/handle_in" || last.header.Get(IdempotencyKeyHeader) != c.IdempotencyKey {
				t.Fatalf("request to %s with key %q", last.path, last.header.Get(IdempotencyKeyHeader))
			}
			jsonEqual(t, last.body, fmt.Sprintf(`{"call":{"node_id":"node-a","conn_id":"1099511627783","player_id":"player-9",`+
				`"claims":{"sub":"player-9","role":"gm"},"params":{"vsn":"2.0.0"},"topic":"room:1","event":"move",`+
				`"join_ref":"3","ref":"%d","payload":{"data":%q,"binary":true},"idempotency_key":"k%d"}}`,
				10+i, base64.StdEncoding.EncodeToString(c.Payload.Data), i))
		})
	}
	if n := g.rejected.Load(); n != 0 {
		t.Fatalf("the receiver rejected %d requests: %v", n, g.failures())
	}
}

func TestWebhookLeaveReasons(t *testing.T) {
	tests := []struct {
		reason LeaveReason
		want   string
	}{
		{LeaveLeft, "left"},
		{LeaveDisconnected, "disconnected"},
		{LeaveKicked, "kicked"},
		{LeaveTimedOut, "timeout"},
		{LeaveDrained, "drained"},
		{LeaveExpired, "expired"},
		{LeaveCrashed, "crashed"},
		{LeaveDuplicate, "duplicate_join"},
		{LeaveReason("something_new"), "unspecified"},
	}
	// Any 2xx will do for a leave, whatever its body.
	answers := []func(http.ResponseWriter, *http.Request, []byte){
		answerJSON(http.StatusNoContent, ""),
		answerJSON(http.StatusOK, "ok, bye"),
		answerJSON(http.StatusAccepted, `{"ignored":true}`),
		answerJSON(http.StatusOK, strings.Repeat("x", 8<<10)), // over max_message: ignored all the same
	}
	var n atomic.Int64
	g := &hookGame{secret: testSecret, answer: func(w http.ResponseWriter, r *http.Request, b []byte) {
		answers[int(n.Add(1))%len(answers)](w, r, b)
	}}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, "max_message=1024"), nil)
	for _, tc := range tests {
		t.Run(string(tc.reason), func(t *testing.T) {
			c := fullCall()
			c.Event, c.ResumePosition, c.Recoverable = "phx_leave", "", false
			if err := e.Leave(context.Background(), c, tc.reason); err != nil {
				t.Fatalf("Leave: %v", err)
			}
			reqs := g.requests()
			last := reqs[len(reqs)-1]
			if last.path != "/game/leave" {
				t.Fatalf("path %s", last.path)
			}
			var body struct {
				Call   map[string]any `json:"call"`
				Reason string         `json:"reason"`
			}
			if err := json.Unmarshal(last.body, &body); err != nil {
				t.Fatal(err)
			}
			if body.Reason != tc.want || body.Call["event"] != "phx_leave" || body.Call["idempotency_key"] != c.IdempotencyKey {
				t.Fatalf("body %s, want reason %q", last.body, tc.want)
			}
		})
	}
	if s := e.Stats(); s.OK != uint64(len(tests)) {
		t.Fatalf("stats %+v", s)
	}
}

// signedHeader returns the headers of a request signed with secret at ts.
func signedHeader(secret []byte, ts int64, body []byte, key string) http.Header {
	h := http.Header{}
	t := strconv.FormatInt(ts, 10)
	h.Set(WebhookTimestampHeader, t)
	h.Set(WebhookSignatureHeader, signWebhook(secret, t, body))
	if key != "" {
		h.Set(IdempotencyKeyHeader, key)
	}
	return h
}

func TestVerifyWebhook(t *testing.T) {
	body := []byte(`{"call":{"topic":"room:1","idempotency_key":"k1"}}`)
	now := time.Now().Unix()
	other := []byte("another-secret-0123456789abcdefghijkl")
	tests := []struct {
		name    string
		secret  []byte
		header  func() http.Header
		body    []byte
		maxSkew time.Duration
		want    error
	}{
		{name: "good", header: func() http.Header { return signedHeader(testSecret, now, body, "k1") }},
		{name: "good without key header", header: func() http.Header { return signedHeader(testSecret, now, body, "") }},
		{name: "one of several signatures", header: func() http.Header {
			h := signedHeader(testSecret, now, body, "k1")
			h.Set(WebhookSignatureHeader, "v0=abc, v1=deadbeef, "+h.Get(WebhookSignatureHeader))
			return h
		}},
		{name: "within a custom skew", maxSkew: time.Hour, header: func() http.Header { return signedHeader(testSecret, now-1800, body, "k1") }},
		{name: "another secret", want: ErrWebhookSignature, header: func() http.Header { return signedHeader(other, now, body, "k1") }},
		{name: "tampered body", want: ErrWebhookSignature, body: []byte(`{"call":{"topic":"room:2","idempotency_key":"k1"}}`),
			header: func() http.Header { return signedHeader(testSecret, now, body, "k1") }},
		{name: "tampered timestamp", want: ErrWebhookSignature, header: func() http.Header {
			h := signedHeader(testSecret, now-3600, body, "k1")
			h.Set(WebhookTimestampHeader, strconv.FormatInt(now, 10))
			return h
		}},
		{name: "stale", want: ErrWebhookTimestamp, header: func() http.Header { return signedHeader(testSecret, now-600, body, "k1") }},
		{name: "from the future", want: ErrWebhookTimestamp, header: func() http.Header { return signedHeader(testSecret, now+600, body, "k1") }},
		{name: "past a custom skew", want: ErrWebhookTimestamp, maxSkew: time.Minute,
			header: func() http.Header { return signedHeader(testSecret, now-120, body, "k1") }},
		{name: "timestamp not a number", want: ErrWebhookTimestamp, header: func() http.Header {
			h := http.Header{}
			h.Set(WebhookTimestampHeader, "yesterday")
			h.Set(WebhookSignatureHeader, signWebhook(testSecret, "yesterday", body))
			return h
		}},
		{name: "no timestamp", want: ErrWebhookUnsigned, header: func() http.Header {
			h := signedHeader(testSecret, now, body, "k1")
			h.Del(WebhookTimestampHeader)
			return h
		}},
		{name: "no signature", want: ErrWebhookUnsigned, header: func() http.Header {
			h := signedHeader(testSecret, now, body, "k1")
			h.Del(WebhookSignatureHeader)
			return h
		}},
		{name: "no v1 signature", want: ErrWebhookUnsigned, header: func() http.Header {
			h := signedHeader(testSecret, now, body, "k1")
			h.Set(WebhookSignatureHeader, "v2="+strings.TrimPrefix(h.Get(WebhookSignatureHeader), "v1="))
			return h
		}},
		{name: "signature not hex", want: ErrWebhookSignature, header: func() http.Header {
			h := signedHeader(testSecret, now, body, "k1")
			h.Set(WebhookSignatureHeader, "v1=zz")
			return h
		}},
		{name: "key header not the body's", want: ErrWebhookKeyMismatch, header: func() http.Header { return signedHeader(testSecret, now, body, "k2") }},
		{name: "two key headers", want: ErrWebhookKeyMismatch, header: func() http.Header {
			h := signedHeader(testSecret, now, body, "k1")
			h.Add(IdempotencyKeyHeader, "k1")
			return h
		}},
		{name: "receiver secret too short", secret: []byte("short"), want: ErrWebhookSignature,
			header: func() http.Header { return signedHeader([]byte("short"), now, body, "k1") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			secret, b := tc.secret, tc.body
			if secret == nil {
				secret = testSecret
			}
			if b == nil {
				b = body
			}
			r := httptest.NewRequest(http.MethodPost, "/game/handle_in", strings.NewReader(string(b)))
			r.Header = tc.header()
			err := VerifyWebhook(secret, r, b, tc.maxSkew)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused a good request: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestWebhookReceiverRejects runs the engine against receivers built on
// VerifyWebhook that must refuse what they get.
func TestWebhookReceiverRejects(t *testing.T) {
	t.Run("another secret", func(t *testing.T) {
		g := &hookGame{secret: []byte("the-game-has-another-secret-0123456789")}
		base, _ := serveHook(t, g)
		e := newHook(t, signedSpec(t, base, "retries=0"), nil)
		_, err := e.HandleIn(context.Background(), call("e", `{}`))
		wantErr(t, err, ErrBackend)
		if g.rejected.Load() != 1 || g.attempts.Load() != 0 || !errors.Is(g.failures()[0], ErrWebhookSignature) {
			t.Fatalf("receiver: %d rejected %v, %d accepted", g.rejected.Load(), g.failures(), g.attempts.Load())
		}
	})
	t.Run("tampered in flight", func(t *testing.T) {
		g := &hookGame{secret: testSecret}
		tamper := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			b = []byte(strings.Replace(string(b), `"amount":5`, `"amount":500`, 1))
			r.Body = io.NopCloser(strings.NewReader(string(b)))
			g.ServeHTTP(w, r)
		})
		base, _ := serveHook(t, tamper)
		e := newHook(t, signedSpec(t, base, "retries=0"), nil)
		_, err := e.HandleIn(context.Background(), call("bet", `{"amount":5}`))
		wantErr(t, err, ErrBackend)
		if g.rejected.Load() != 1 || g.attempts.Load() != 0 || !errors.Is(g.failures()[0], ErrWebhookSignature) {
			t.Fatalf("receiver: %d rejected %v, %d accepted", g.rejected.Load(), g.failures(), g.attempts.Load())
		}
	})
	t.Run("replayed later", func(t *testing.T) {
		g := &hookGame{secret: testSecret}
		base, _ := serveHook(t, g)
		e := newHook(t, signedSpec(t, base, ""), nil)
		if _, err := e.HandleIn(context.Background(), call("bet", `{"amount":5}`)); err != nil {
			t.Fatal(err)
		}
		r := g.requests()[0]
		if err := verifyWebhook(testSecret, r.header, r.body, 0, time.Now()); err != nil {
			t.Fatalf("the recorded request does not verify now: %v", err)
		}
		err := verifyWebhook(testSecret, r.header, r.body, 0, time.Now().Add(DefaultWebhookMaxSkew+time.Minute))
		if !errors.Is(err, ErrWebhookTimestamp) {
			t.Fatalf("replay past the skew: got %v, want ErrWebhookTimestamp", err)
		}
	})
	t.Run("unsigned engine", func(t *testing.T) {
		g := &hookGame{secret: testSecret}
		base, _ := serveHook(t, g)
		e := newHook(t, base+"?unsigned=true&retries=0", nil)
		_, err := e.HandleIn(context.Background(), call("e", `{}`))
		wantErr(t, err, ErrBackend)
		if g.rejected.Load() != 1 || !errors.Is(g.failures()[0], ErrWebhookUnsigned) {
			t.Fatalf("receiver: %d rejected %v", g.rejected.Load(), g.failures())
		}
		// A receiver that does not verify gets the call, with no signature.
		open := &hookGame{}
		base, _ = serveHook(t, open)
		e = newHook(t, base+"?unsigned=true", nil)
		if _, err := e.HandleIn(context.Background(), call("e", `{}`)); err != nil {
			t.Fatal(err)
		}
		h := open.requests()[0].header
		if h.Get(WebhookSignatureHeader) != "" || h.Get(WebhookTimestampHeader) == "" {
			t.Fatalf("unsigned request headers %v", h)
		}
	})
}

func TestWebhookKeyNotSafeForAHeader(t *testing.T) {
	g := &hookGame{secret: testSecret}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, ""), nil)
	for _, key := range []string{"player:p1:bet\n2", "player:p1:pari-é", " padded "} {
		c := call("bet", `{}`)
		c.IdempotencyKey = key
		if _, err := e.HandleIn(context.Background(), c); err != nil {
			t.Fatalf("key %q: %v", key, err)
		}
		reqs := g.requests()
		last := reqs[len(reqs)-1]
		if _, ok := last.header[IdempotencyKeyHeader]; ok {
			t.Fatalf("key %q sent as a header", key)
		}
		var body struct {
			Call struct {
				IdempotencyKey string `json:"idempotency_key"`
			} `json:"call"`
		}
		if err := json.Unmarshal(last.body, &body); err != nil || body.Call.IdempotencyKey != key {
			t.Fatalf("body %s (%v): key %q not carried", last.body, err, key)
		}
	}
}

func TestWebhookRetries503WithTheSameBodyAndKey(t *testing.T) {
	g := &hookGame{secret: testSecret}
	g.answer = func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		if g.attempts.Load() < 3 {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, `{"reply":{"status":"ok"}}`)
	}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, "retries=2&backoff=1ms"), nil)

	c := call("bet", `{"amount":5}`)
	c.IdempotencyKey = "i1:42:1:7"
	r, err := e.HandleIn(context.Background(), c)
	if err != nil {
		t.Fatalf("HandleIn: %v", err)
	}
	if r.Status != "ok" {
		t.Fatalf("status %q, want ok", r.Status)
	}
	reqs := g.requests()
	if len(reqs) != 3 || g.rejected.Load() != 0 {
		t.Fatalf("server saw %d attempts and rejected %d, want 3 accepted", len(reqs), g.rejected.Load())
	}
	for i, req := range reqs {
		if string(req.body) != string(reqs[0].body) {
			t.Fatalf("attempt %d body\n%s\ndiffers from the first\n%s", i, req.body, reqs[0].body)
		}
		if k := req.header.Get(IdempotencyKeyHeader); k != c.IdempotencyKey {
			t.Fatalf("attempt %d key %q, want %q", i, k, c.IdempotencyKey)
		}
	}
	if s := e.Stats(); s.Attempts != 3 || s.Retries != 2 || s.OK != 1 {
		t.Fatalf("stats %+v, want 3 attempts, 2 retries, 1 ok", s)
	}
}

func TestWebhookErrorMapping(t *testing.T) {
	hijackClose := func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	}
	big := `{"reply":{"status":"ok","response":{"data":"` + strings.Repeat("A", 2048) + `","binary":true}}}`
	tests := []struct {
		name     string
		join     bool
		answer   func(http.ResponseWriter, *http.Request, []byte)
		kind     error
		attempts int64
	}{
		{name: "502", answer: answerJSON(http.StatusBadGateway, ""), kind: ErrUnavailable, attempts: 2},
		{name: "503", answer: answerJSON(http.StatusServiceUnavailable, "down"), kind: ErrUnavailable, attempts: 2},
		{name: "504", answer: answerJSON(http.StatusGatewayTimeout, ""), kind: ErrUnavailable, attempts: 2},
		{name: "connection dropped", answer: hijackClose, kind: ErrUnavailable, attempts: 2},
		{name: "500 is not retried", answer: answerJSON(http.StatusInternalServerError, `{"error":"boom"}`), kind: ErrBackend, attempts: 1},
		{name: "400", answer: answerJSON(http.StatusBadRequest, ""), kind: ErrBackend, attempts: 1},
		{name: "404", answer: answerJSON(http.StatusNotFound, ""), kind: ErrBackend, attempts: 1},
		{name: "429", answer: answerJSON(http.StatusTooManyRequests, ""), kind: ErrOverloaded, attempts: 1},
		{name: "redirect not followed", answer: func(w http.ResponseWriter, r *http.Request, _ []byte) {
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
		}, kind: ErrBackend, attempts: 1},
		{name: "not JSON", answer: answerJSON(http.StatusOK, "ok"), kind: ErrBackend, attempts: 1},
		{name: "empty body", answer: answerJSON(http.StatusOK, ""), kind: ErrBackend, attempts: 1},
		{name: "JSON array", answer: answerJSON(http.StatusOK, `[{}]`), kind: ErrBackend, attempts: 1},
		{name: "JSON null", answer: answerJSON(http.StatusOK, `null`), kind: ErrBackend, attempts: 1},
		{name: "truncated", answer: answerJSON(http.StatusOK, `{"reply":`), kind: ErrBackend, attempts: 1},
		{name: "trailing garbage", answer: answerJSON(http.StatusOK, `{} x`), kind: ErrBackend, attempts: 1},
		{name: "stop not a string", answer: answerJSON(http.StatusOK, `{"stop":1}`), kind: ErrBackend, attempts: 1},
		{name: "reply not an object", answer: answerJSON(http.StatusOK, `{"reply":"ok"}`), kind: ErrBackend, attempts: 1},
		{name: "binary data not base64", answer: answerJSON(http.StatusOK, `{"reply":{"response":{"data":"***","binary":true}}}`),
			kind: ErrBackend, attempts: 1},
		{name: "binary data not a string", answer: answerJSON(http.StatusOK, `{"pushes":[{"event":"e","payload":{"data":{},"binary":true}}]}`),
			kind: ErrBackend, attempts: 1},
		{name: "broadcast without event", answer: answerJSON(http.StatusOK, `{"broadcasts":[{"topic":"t"}]}`), kind: ErrBackend, attempts: 1},
		{name: "push without event", answer: answerJSON(http.StatusOK, `{"pushes":[{"payload":{"data":1}}]}`), kind: ErrBackend, attempts: 1},
		{name: "presence_meta not an object", join: true, answer: answerJSON(http.StatusOK, `{"presence_meta":[1]}`), kind: ErrBackend, attempts: 1},
		{name: "response over max_message", answer: answerJSON(http.StatusOK, big), kind: ErrBackend, attempts: 1},
		{name: "response over max_message, no length", answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			_, _ = io.WriteString(w, big[:100])
			w.(http.Flusher).Flush() // chunked: no Content-Length to go by
			_, _ = io.WriteString(w, big[100:])
		}, kind: ErrBackend, attempts: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &hookGame{secret: testSecret, answer: tc.answer}
			base, _ := serveHook(t, g)
			e := newHook(t, signedSpec(t, base, "retries=1&backoff=1ms&max_message=1024"), nil)
			op, do := opHandleIn, e.HandleIn
			if tc.join {
				op, do = opJoin, e.Join
			}
			r, err := do(context.Background(), call("e", `{}`))
			if r != nil {
				t.Fatalf("got reply %+v with error %v", r, err)
			}
			wantErr(t, err, tc.kind)
			if ce, ok := errors.AsType[*CallError](err); !ok || ce.Op != op {
				t.Fatalf("got %#v, want a *CallError for %s", err, op)
			}
			if n := g.attempts.Load(); n != tc.attempts {
				t.Fatalf("server saw %d attempts, want %d", n, tc.attempts)
			}
			for _, req := range g.requests() {
				if req.path != "/game/"+op {
					t.Fatalf("request to %s", req.path)
				}
			}
			if s := e.Stats(); s.Attempts != uint64(tc.attempts) {
				t.Fatalf("stats %+v, want %d attempts", s, tc.attempts)
			}
		})
	}
}

func TestWebhookRequestRefusedBeforeSending(t *testing.T) {
	g := &hookGame{secret: testSecret}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, "max_message=1024"), nil)
	claims := call("e", `{}`)
	claims.Claims = []byte(`{"sub":`)
	tests := []struct {
		name string
		call *Call
		why  error
	}{
		{"over max_message", call("e", `{"pad":"`+strings.Repeat("x", 1024)+`"}`), errTooBig},
		{"payload not JSON", call("e", `{"a":`), nil},
		{"claims not JSON", claims, nil},
		{"nil call", nil, errNilCall},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.HandleIn(context.Background(), tc.call)
			wantErr(t, err, ErrBackend)
			if tc.why != nil {
				wantErr(t, err, tc.why)
			}
		})
	}
	if g.attempts.Load()+g.rejected.Load() != 0 || e.Stats().Attempts != 0 {
		t.Fatal("a refused request was sent")
	}
	if s := e.Stats(); s.Errors != uint64(len(tests)) {
		t.Fatalf("stats %+v, want %d errors", s, len(tests))
	}
}

func TestWebhookConnectionRefused(t *testing.T) {
	base, stop := serveHook(t, &hookGame{})
	stop()
	e := newHook(t, signedSpec(t, base, "retries=2&backoff=1ms"), nil)
	_, err := e.Join(context.Background(), call("phx_join", `{}`))
	wantErr(t, err, ErrUnavailable)
	if ReplyReason(err) != ReasonUnavailable {
		t.Fatalf("ReplyReason = %q", ReplyReason(err))
	}
	if s := e.Stats(); s.Attempts != 3 || s.Retries != 2 || s.Unavailable != 1 {
		t.Fatalf("stats %+v, want 3 attempts, 2 retries, 1 unavailable", s)
	}
}

func TestWebhookDeadline(t *testing.T) {
	release := make(chan struct{})
	g := &hookGame{secret: testSecret, answer: func(w http.ResponseWriter, r *http.Request, _ []byte) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
		http.Error(w, "too late", http.StatusServiceUnavailable)
	}}
	base, _ := serveHook(t, g)
	t.Cleanup(func() { close(release) }) // before the server stops
	// Generous for a loaded CI, far below the time a lost deadline would
	// take (the call would block until the test ends).
	const bound = 2 * time.Second

	t.Run("engine timeout", func(t *testing.T) {
		e := newHook(t, signedSpec(t, base, "timeout=100ms"), nil)
		start := time.Now()
		_, err := e.HandleIn(context.Background(), call("slow", `{}`))
		wantErr(t, err, ErrTimeout, context.DeadlineExceeded)
		if d := time.Since(start); d > bound {
			t.Fatalf("took %v, want about 100ms", d)
		}
		if ReplyReason(err) != ReasonTimeout {
			t.Fatalf("ReplyReason = %q", ReplyReason(err))
		}
		if s := e.Stats(); s.Timeouts != 1 || s.Attempts != 1 {
			t.Fatalf("stats %+v, want 1 timeout and no retry", s)
		}
	})
	t.Run("caller deadline", func(t *testing.T) {
		e := newHook(t, signedSpec(t, base, "timeout=1m"), nil)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := e.HandleIn(ctx, call("slow", `{}`))
		wantErr(t, err, ErrTimeout)
		if d := time.Since(start); d > bound {
			t.Fatalf("took %v, want about 100ms", d)
		}
	})
	t.Run("caller already done", func(t *testing.T) {
		e := newHook(t, signedSpec(t, base, ""), nil)
		before := g.attempts.Load()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := e.HandleIn(ctx, call("slow", `{}`))
		wantErr(t, err, ErrBackend, context.Canceled)
		if g.attempts.Load() != before {
			t.Fatal("a call whose caller had given up reached the server")
		}
	})
}

// TestWebhookBreaker drives the breaker against a game that answers 503,
// counting at the server what reaches it.
func TestWebhookBreaker(t *testing.T) {
	var healthy, block atomic.Bool
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	g := &hookGame{secret: testSecret, answer: func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		if block.Load() {
			arrived <- struct{}{}
			<-release
		}
		if !healthy.Load() {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, `{"reply":{"status":"ok"}}`)
	}}
	base, _ := serveHook(t, g)
	clock := newFakeClock()
	e := newHook(t, signedSpec(t, base, "retries=0&breaker_failures=3&breaker_cooldown=1m"), func(c *WebhookConfig) { c.now = clock.Now })
	do := func() error {
		_, err := e.HandleIn(context.Background(), call("e", `{}`))
		return err
	}
	state := func(want BreakerState) {
		t.Helper()
		if s := e.Stats().Breaker; s != want {
			t.Fatalf("breaker %v, want %v", s, want)
		}
	}

	for i := 0; i < 3; i++ {
		err := do()
		wantErr(t, err, ErrUnavailable)
		if errors.Is(err, ErrCircuitOpen) {
			t.Fatalf("call %d failed fast before the threshold", i)
		}
	}
	state(BreakerOpen)
	for i := 0; i < 5; i++ {
		wantErr(t, do(), ErrUnavailable, ErrCircuitOpen)
	}
	clock.Advance(59 * time.Second)
	wantErr(t, do(), ErrUnavailable, ErrCircuitOpen)
	if n := g.attempts.Load(); n != 3 {
		t.Fatalf("server saw %d attempts, want 3: the open breaker let calls through", n)
	}

	// The cool-down over, one probe goes; it fails and the breaker opens
	// again for a whole cool-down.
	clock.Advance(2 * time.Second)
	err := do()
	wantErr(t, err, ErrUnavailable)
	if errors.Is(err, ErrCircuitOpen) {
		t.Fatal("the probe was not sent")
	}
	state(BreakerOpen)
	wantErr(t, do(), ErrCircuitOpen)
	if n := g.attempts.Load(); n != 4 {
		t.Fatalf("server saw %d attempts, want 4", n)
	}

	// Next probe: the game is back. While the probe is out, other calls
	// still fail fast; its success closes the breaker.
	clock.Advance(time.Minute)
	healthy.Store(true)
	block.Store(true)
	probe := make(chan error, 1)
	go func() { probe <- do() }()
	<-arrived
	state(BreakerHalfOpen)
	wantErr(t, do(), ErrUnavailable, ErrCircuitOpen)
	block.Store(false)
	close(release)
	if err := <-probe; err != nil {
		t.Fatalf("probe: %v", err)
	}
	state(BreakerClosed)
	if err := do(); err != nil {
		t.Fatalf("after the breaker closed: %v", err)
	}
	s := e.Stats()
	if s.BreakerOpens != 2 || s.BreakerRejected != 8 || g.attempts.Load() != 6 {
		t.Fatalf("stats %+v, server attempts %d; want 2 openings, 8 fast failures, 6 attempts", s, g.attempts.Load())
	}
}

// TestWebhookBreakerCountsOnlyUnreachable: answers, even errors, keep
// the breaker closed; timeouts and refused connections open it.
func TestWebhookBreakerCountsOnlyUnreachable(t *testing.T) {
	g := &hookGame{secret: testSecret, answer: answerJSON(http.StatusInternalServerError, "")}
	base, stop := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, "retries=0&breaker_failures=2"), nil)
	for i := 0; i < 5; i++ {
		wantErr(t, func() error { _, err := e.HandleIn(context.Background(), call("e", `{}`)); return err }(), ErrBackend)
	}
	if s := e.Stats(); s.Breaker != BreakerClosed {
		t.Fatalf("500s opened the breaker: %+v", s)
	}
	stop()
	for i := 0; i < 2; i++ {
		_, err := e.HandleIn(context.Background(), call("e", `{}`))
		wantErr(t, err, ErrUnavailable)
	}
	if s := e.Stats(); s.Breaker != BreakerOpen {
		t.Fatalf("refused connections left the breaker %v", s.Breaker)
	}
}

func TestWebhookBulkhead(t *testing.T) {
	arrived := make(chan struct{}, 8)
	release := make(chan struct{})
	g := &hookGame{secret: testSecret, answer: func(w http.ResponseWriter, r *http.Request, _ []byte) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, `{"reply":{"status":"ok"}}`)
	}}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, "max_inflight=2&max_queue=1&timeout=30s"), nil)
	do := func(ctx context.Context) error {
		_, err := e.HandleIn(ctx, call("e", `{}`))
		return err
	}

	results := make(chan error, 3)
	for i := 0; i < 2; i++ {
		go func() { results <- do(context.Background()) }()
	}
	<-arrived
	<-arrived
	go func() { results <- do(context.Background()) }()
	eventually(t, 10*time.Second, func() error {
		if s := e.Stats(); s.Queued != 1 || s.InFlight != 2 {
			return fmt.Errorf("stats %+v, want 2 in flight and 1 queued", s)
		}
		return nil
	})

	start := time.Now()
	err := do(context.Background())
	wantErr(t, err, ErrOverloaded)
	if ReplyReason(err) != ReasonOverloaded {
		t.Fatalf("ReplyReason = %q, want %q", ReplyReason(err), ReasonOverloaded)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a refused call took %v", d)
	}
	if n := g.attempts.Load(); n != 2 {
		t.Fatalf("server saw %d calls, want 2", n)
	}

	close(release)
	for i := 0; i < 3; i++ {
		if err := <-results; err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	s := e.Stats()
	if s.OK != 3 || s.Overloaded != 1 || s.BulkheadRejected != 1 || s.InFlight != 0 || s.Queued != 0 {
		t.Fatalf("stats %+v", s)
	}
	if s.Breaker != BreakerClosed {
		t.Fatalf("refusals moved the breaker to %v", s.Breaker)
	}
}

func TestWebhookCloseCutsCallsShort(t *testing.T) {
	arrived := make(chan struct{}, 1)
	g := &hookGame{secret: testSecret, answer: func(w http.ResponseWriter, r *http.Request, _ []byte) {
		arrived <- struct{}{}
		<-r.Context().Done()
	}}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, "timeout=1m"), nil)
	res := make(chan error, 1)
	go func() {
		_, err := e.HandleIn(context.Background(), call("e", `{}`))
		res <- err
	}()
	<-arrived
	start := time.Now()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, <-res, ErrUnavailable, ErrClosed)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the call in flight took %v to end after Close", d)
	}
	if s := e.Stats(); s.Breaker != BreakerClosed || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestWebhookCloseReturnsGoroutines(t *testing.T) {
	g := &hookGame{secret: testSecret}
	url, _ := serveHook(t, g)
	t.Setenv(testSecretEnv, string(testSecret))
	// Counted with the server up: once Close has closed the engine's
	// connections, the server's goroutines serving them end too.
	base := runtime.NumGoroutine()
	cfg, err := ParseWebhookSpec(url + "?secret_env=" + testSecretEnv)
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewWebhook(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Go(func() {
			if _, err := e.HandleIn(context.Background(), call("e", `{}`)); err != nil {
				t.Errorf("HandleIn: %v", err)
			}
		})
	}
	wg.Wait()
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = e.HandleIn(context.Background(), call("e", `{}`))
	wantErr(t, err, ErrUnavailable, ErrClosed)
	eventually(t, 10*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > base {
			return fmt.Errorf("%d goroutines, %d before", n, base)
		}
		return nil
	})
}

func TestWebhookHTTPS(t *testing.T) {
	g := &hookGame{secret: testSecret}
	srv := httptest.NewUnstartedServer(g)
	// The untrusting engine's handshake failure is expected here.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())

	trusted := newHook(t, signedSpec(t, srv.URL, ""), func(c *WebhookConfig) { c.rootCAs = pool })
	if _, err := trusted.Join(context.Background(), call("phx_join", `{}`)); err != nil {
		t.Fatalf("Join over TLS: %v", err)
	}
	// The system's roots do not know the test certificate.
	system := newHook(t, signedSpec(t, srv.URL, "retries=0"), nil)
	_, err := system.Join(context.Background(), call("phx_join", `{}`))
	wantErr(t, err, ErrUnavailable)
	if n := g.attempts.Load(); n != 1 {
		t.Fatalf("server saw %d calls, want only the trusted one", n)
	}
}

func TestWebhookCollector(t *testing.T) {
	g := &hookGame{secret: testSecret}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, ""), nil)
	if _, err := e.Join(context.Background(), call("phx_join", `{}`)); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(e.Collector(prometheus.Labels{"backend": "a"})); err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(newHook(t, signedSpec(t, base, ""), nil).Collector(prometheus.Labels{"backend": "b"})); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, mf := range mfs {
		found[mf.GetName()] = true
		if mf.GetName() != "phxgate_backend_webhook_calls_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["backend"] == "a" && labels["result"] == "ok" && m.GetCounter().GetValue() != 1 {
				t.Fatalf("backend a ok calls = %v, want 1", m.GetCounter().GetValue())
			}
		}
	}
	for _, name := range []string{"calls_total", "attempts_total", "retries_total", "breaker_state", "breaker_opens_total",
		"breaker_rejected_total", "bulkhead_rejected_total", "inflight_calls", "queued_calls"} {
		if !found["phxgate_backend_webhook_"+name] {
			t.Fatalf("metric phxgate_backend_webhook_%s missing", name)
		}
	}
}

func TestWebhookSpec(t *testing.T) {
	t.Setenv(testSecretEnv, string(testSecret))
	t.Run("defaults", func(t *testing.T) {
		got, err := ParseWebhookSpec("https://game.internal/hooks/?secret_env=" + testSecretEnv)
		if err != nil {
			t.Fatal(err)
		}
		want := NewWebhookConfig("https://game.internal/hooks")
		want.Secret = testSecret
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})
	t.Run("every option", func(t *testing.T) {
		got, err := ParseWebhookSpec("HTTP://[::1]:8080?secret_env=" + testSecretEnv + "&timeout=1500ms&max_inflight=8&max_queue=0" +
			"&retries=0&backoff=5ms&breaker_failures=2&breaker_cooldown=250ms&max_message=65536")
		if err != nil {
			t.Fatal(err)
		}
		want := WebhookConfig{URL: "http://[::1]:8080", Secret: testSecret, CallLimits: CallLimits{Timeout: 1500 * time.Millisecond, MaxInflight: 8,
			MaxQueue: 0, Retries: 0, Backoff: 5 * time.Millisecond, BreakerFailures: 2, BreakerCooldown: 250 * time.Millisecond,
			MaxMessage: 65536}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})
	t.Run("unsigned", func(t *testing.T) {
		got, err := ParseWebhookSpec("http://127.0.0.1:9000/game?unsigned=true")
		if err != nil {
			t.Fatal(err)
		}
		if !got.Unsigned || got.Secret != nil || got.URL != "http://127.0.0.1:9000/game" {
			t.Fatalf("got %+v", got)
		}
	})
	t.Run("the secret never shows", func(t *testing.T) {
		cfg, err := ParseWebhookSpec("https://g/x?secret_env=" + testSecretEnv)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
			if s := fmt.Sprintf(f, cfg); strings.Contains(s, string(testSecret)) {
				t.Fatalf("%s of the config shows the secret: %s", f, s)
			}
		}
		t.Setenv("PHXGATE_TEST_SHORT_SECRET", "hunter2-is-short")
		_, err = ParseWebhookSpec("https://g/x?secret_env=PHXGATE_TEST_SHORT_SECRET")
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("error %v", err)
		}
	})
	t.Setenv("PHXGATE_TEST_SHORT_SECRET", "0123456789abcdef0123456789abcde") // 31 bytes
	t.Setenv("PHXGATE_TEST_EMPTY_SECRET", "")
	secret := "secret_env=" + testSecretEnv
	bad := []struct {
		name, spec string
		mention    []string
	}{
		{"no secret", "https://g/x", []string{`"secret_env"`, "unsigned=true"}},
		{"unsigned false", "https://g/x?unsigned=false", []string{`"secret_env"`}},
		{"secret env unset", "https://g/x?secret_env=PHXGATE_TEST_NOT_SET", []string{`"secret_env"`, "PHXGATE_TEST_NOT_SET", "not set"}},
		{"secret env empty", "https://g/x?secret_env=PHXGATE_TEST_EMPTY_SECRET", []string{`"secret_env"`, "at least 32"}},
		{"secret too short", "https://g/x?secret_env=PHXGATE_TEST_SHORT_SECRET", []string{`"secret_env"`, "31 bytes", "at least 32"}},
		{"secret env not a name", "https://g/x?secret_env=1-X", []string{`"secret_env"`}},
		{"secret and unsigned", "https://g/x?unsigned=true&" + secret, []string{`"unsigned"`}},
		{"unsigned not a bool", "https://g/x?unsigned=yes", []string{`"unsigned"`}},
		{"unknown option", "https://g/x?tiemout=3s&" + secret, []string{`"tiemout"`}},
		{"grpc-only option", "https://g/x?keepalive=30s&" + secret, []string{`"keepalive"`}},
		{"option twice", "https://g/x?retries=1&retries=2&" + secret, []string{`"retries"`}},
		{"timeout not a duration", "https://g/x?timeout=3&" + secret, []string{`"timeout"`}},
		{"timeout zero", "https://g/x?timeout=0s&" + secret, []string{`"timeout"`}},
		{"timeout huge", "https://g/x?timeout=1h&" + secret, []string{`"timeout"`}},
		{"max_inflight zero", "https://g/x?max_inflight=0&" + secret, []string{`"max_inflight"`}},
		{"max_queue negative", "https://g/x?max_queue=-1&" + secret, []string{`"max_queue"`}},
		{"retries too many", "https://g/x?retries=11&" + secret, []string{`"retries"`}},
		{"backoff empty", "https://g/x?backoff=&" + secret, []string{`"backoff"`}},
		{"breaker_failures zero", "https://g/x?breaker_failures=0&" + secret, []string{`"breaker_failures"`}},
		{"breaker_cooldown zero", "https://g/x?breaker_cooldown=0s&" + secret, []string{`"breaker_cooldown"`}},
		{"max_message too small", "https://g/x?max_message=10&" + secret, []string{`"max_message"`}},
		{"credentials", "https://u:p@g/x?" + secret, []string{"credentials"}},
		{"fragment", "https://g/x?" + secret + "#frag", []string{"fragment"}},
		{"no host", "https:///x?" + secret, []string{"host"}},
		{"bad port", "http://g:99999/x?" + secret, []string{"port"}},
		{"port not a number", "http://g:http/x?" + secret, []string{"port"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(tc.spec)
			if !errors.Is(err, ErrBadSpec) {
				t.Fatalf("New(%q) = %v, %v; want ErrBadSpec", tc.spec, b, err)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Fatalf("error %q does not mention %s", err, m)
				}
			}
		})
	}
}

func TestNewWebhookIsCloser(t *testing.T) {
	for _, spec := range []string{"http://127.0.0.1:1/game?unsigned=true", "https://game.internal?unsigned=true"} {
		b, err := New(spec)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := b.(*Webhook); !ok {
			t.Fatalf("New(%q) = %T", spec, b)
		}
		c, ok := b.(io.Closer)
		if !ok {
			t.Fatalf("%T is not an io.Closer", b)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func FuzzWebhookReply(f *testing.F) {
	for _, s := range []string{
		`{}`, `null`, `[]`, `{"reply":{"status":"ok","response":{"data":{"a":1}}}}`,
		`{"reply":{"response":{"data":"AAH/","binary":true}},"stop":"normal"}`,
		`{"broadcasts":[{"topic":"t","event":"e","payload":{"data":[1]}}],"pushes":[{"event":"p"}]}`,
		`{"broadcasts":[{"topic":"t"}]}`, `{"presence_meta":{"s":1},"snapshot_position":"1-2"}`,
		`{"presence_meta":"x"}`, `{"reply":{"response":{"data":"***","binary":true}}}`,
	} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, join bool) {
		r, err := decodeWebhookReply(body, join)
		if err != nil {
			return
		}
		for _, m := range append(append([]Message(nil), r.Broadcasts...), r.Pushes...) {
			if m.Event == "" {
				t.Fatalf("a message without an event got through: %+v", m)
			}
		}
		for _, p := range append([]Payload{r.Response}, func() (ps []Payload) {
			for _, m := range r.Broadcasts {
				ps = append(ps, m.Payload)
			}
			return ps
		}()...) {
			if !p.Binary && len(p.Data) > 0 && !json.Valid(p.Data) {
				t.Fatalf("a JSON payload that is not JSON got through: %q", p.Data)
			}
		}
		if len(r.PresenceMeta) > 0 && r.PresenceMeta[0] != '{' {
			t.Fatalf("presence_meta %q", r.PresenceMeta)
		}
	})
}

// A failed answer's body may echo the payload or carry player data: the
// error (which the "backend call failed" line logs) names the status and
// the body's length, never its content.
func TestWebhookErrorOmitsTheBody(t *testing.T) {
	const secret = `{"error":"player-9 token eyJhbGciOi leaked"}`
	g := &hookGame{secret: testSecret, answer: answerJSON(http.StatusInternalServerError, secret)}
	base, _ := serveHook(t, g)
	e := newHook(t, signedSpec(t, base, "retries=1&backoff=1ms"), nil)
	_, err := e.HandleIn(context.Background(), call("e", `{}`))
	wantErr(t, err, ErrBackend)
	msg := err.Error()
	if strings.Contains(msg, "player-9") || strings.Contains(msg, "eyJ") || strings.Contains(msg, "leaked") {
		t.Errorf("error %q quotes the answer's body", msg)
	}
	if want := fmt.Sprintf("HTTP 500 (%d-byte body)", len(secret)); !strings.Contains(msg, want) {
		t.Errorf("error %q, want it to name %q", msg, want)
	}
}
