//go:build linux

package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
)

// The test binary doubles as the client process of the drain test: with
// drainClientsEnv set it opens the sockets instead of running tests, so
// that the gateway's 5,000 sockets and the clients' 5,000 live in two
// processes, each within its file limit.
const drainClientsEnv = "PHXGATE_DRAIN_CLIENTS"

func TestMain(m *testing.M) {
	if addr := os.Getenv(drainClientsEnv); addr != "" {
		os.Exit(runDrainClients(addr))
	}
	os.Exit(m.Run())
}

const (
	scaleSockets  = 5000
	scaleTopics   = 12  // room:0..7 (route room:*), game:0..3 (route game:*)
	scaleHotRoom  = 600 // the first sockets all join room:0, the top topic
	scaleBatch    = 500 // drain_batch
	scaleInterval = 200 * time.Millisecond
	scaleDrain    = 20 * time.Second // drain_timeout
)

// scaleTopic is the topic socket i joins.
func scaleTopic(i int) string {
	if i < scaleHotRoom {
		return "room:0"
	}
	if k := i % scaleTopics; k < 8 {
		return "room:" + strconv.Itoa(k)
	}
	return "game:" + strconv.Itoa(i%scaleTopics-8)
}

// runDrainClients is the client process: it opens scaleSockets V2 sockets
// to addr, joins each to its topic, prints "joined", then records every
// close (code and time) and prints them as "close <i> <code> <unixnano>"
// lines and "done" once all are closed (or a minute has passed).
func runDrainClients(addr string) int {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	type closed struct {
		code int
		at   int64
	}
	results := make([]closed, scaleSockets)
	joined := make(chan error, scaleSockets)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range scaleSockets {
		sem <- struct{}{}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			nc, br, _, err := ws.Dialer{}.Dial(ctx, "ws://"+addr+"/socket/websocket?vsn=2.0.0")
			cancel()
			<-sem
			if err != nil {
				joined <- fmt.Errorf("socket %d: dial: %w", i, err)
				return
			}
			defer nc.Close()
			var r io.Reader = nc
			if br != nil {
				r = io.MultiReader(br, nc)
			}
			topic := scaleTopic(i)
			if err := ws.WriteFrame(nc, ws.MaskFrame(ws.NewTextFrame([]byte(`["1","1","`+topic+`","phx_join",{}]`)))); err != nil {
				joined <- fmt.Errorf("socket %d: join: %w", i, err)
				return
			}
			reply, err := ws.ReadFrame(r)
			if err != nil || !strings.Contains(string(reply.Payload), `"status":"ok"`) {
				joined <- fmt.Errorf("socket %d: join reply %s: %v", i, reply.Payload, err)
				return
			}
			joined <- nil
			// Frames are read by hand: wsutil refuses 1012, which RFC
			// 6455's first registry did not list.
			for {
				f, err := ws.ReadFrame(r)
				if err != nil {
					results[i] = closed{at: time.Now().UnixNano()}
					fmt.Fprintln(os.Stderr, "socket", i, err)
					return
				}
				if f.Header.OpCode != ws.OpClose {
					continue
				}
				results[i] = closed{at: time.Now().UnixNano()}
				if len(f.Payload) >= 2 {
					results[i].code = int(binary.BigEndian.Uint16(f.Payload))
				}
				_ = ws.WriteFrame(nc, ws.MaskFrame(ws.NewCloseFrame(f.Payload[:min(2, len(f.Payload))])))
				_, _ = io.Copy(io.Discard, r)
				return
			}
		})
	}
	for range scaleSockets {
		if err := <-joined; err != nil {
			fmt.Fprintln(out, "failed", err)
			return 1
		}
	}
	fmt.Fprintln(out, "joined")
	out.Flush()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		fmt.Fprintln(out, "failed: sockets still open after a minute")
		return 1
	}
	for i, r := range results {
		fmt.Fprintf(out, "close %d %d %d\n", i, r.code, r.at)
	}
	fmt.Fprintln(out, "done")
	return 0
}

// leaveGame is a GameBackend that seats every join and counts Leaves by
// channel (conn, join_ref, topic) and reason.
type leaveGame struct {
	backendv1.UnimplementedGameBackendServer
	mu     sync.Mutex
	joins  int
	leaves map[string][]backendv1.LeaveReason
}

func (g *leaveGame) Join(context.Context, *backendv1.JoinRequest) (*backendv1.JoinResponse, error) {
	g.mu.Lock()
	g.joins++
	g.mu.Unlock()
	return &backendv1.JoinResponse{Reply: &backendv1.Reply{Status: "ok"}}, nil
}

func (g *leaveGame) Leave(_ context.Context, r *backendv1.LeaveRequest) (*backendv1.LeaveResponse, error) {
	c := r.GetCall()
	k := fmt.Sprintf("%d/%s/%s", c.GetConnId(), c.GetJoinRef(), c.GetTopic())
	g.mu.Lock()
	g.leaves[k] = append(g.leaves[k], r.GetReason())
	g.mu.Unlock()
	return &backendv1.LeaveResponse{}, nil
}

// buildPhxgate builds the binary under test into a temporary directory.
func buildPhxgate(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "phxgate")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// lockedBuffer collects a process's stderr for the failure message.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 1<<20 {
		l.b.WriteString(s + "\n")
	}
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDrainAtScale: a built phxgate holds 5,000 sockets opened by another
// process, joined across 12 topics on two routes to a gRPC game. /stats
// and /metrics count exactly what was opened. SIGTERM then closes every
// socket with 1012, about drain_batch per drain_interval, within
// drain_timeout, the game gets exactly one Leave per joined channel with
// reason DRAINED, and the process exits 0 within the window.
func TestDrainAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("5,000 sockets")
	}
	bin := buildPhxgate(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	game := &leaveGame{leaves: map[string][]backendv1.LeaveReason{}}
	gs := grpc.NewServer()
	backendv1.RegisterGameBackendServer(gs, game)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	backend := "grpc://" + ln.Addr().String() + "?timeout=5s&max_inflight=512&max_queue=20000"
	cfgFile := filepath.Join(t.TempDir(), "phxgate.yaml")
	cfg := fmt.Sprintf(`listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
api_listen: ""
node_id: scale
idle_timeout: 0s
drain_timeout: %s
drain_batch: %d
drain_interval: %s
log_level: info
limits:
  ip_max_conns: 20000
  player_max_conns: 20000
  max_conns: 20000
  ip_max_handshakes: 1000
  ip_handshakes_per_second: 100000
  ip_handshake_burst: 20000
  joins_per_second: 100000
  join_burst: 20000
routes:
  - topic: "room:*"
    backend: %q
  - topic: "game:*"
    backend: %q
`, scaleDrain, scaleBatch, scaleInterval, backend, backend)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	gw := exec.Command(bin, "--config", cfgFile)
	stderr, err := gw.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var gwLog lockedBuffer
	addrs := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			gwLog.add(line)
			var l struct {
				Msg    string `json:"msg"`
				Listen string `json:"listen"`
				Admin  string `json:"admin"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "phxgate listening" {
				addrs <- [2]string{l.Listen, l.Admin}
			}
		}
		exited <- gw.Wait()
	}()
	t.Cleanup(func() {
		if gw.ProcessState == nil {
			_ = gw.Process.Kill()
			<-exited
		}
	})
	var listen, admin string
	select {
	case a := <-addrs:
		listen, admin = a[0], a[1]
	case err := <-exited:
		t.Fatalf("phxgate exited at start: %v\n%s", err, gwLog.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("phxgate did not start\n%s", gwLog.String())
	}

	clients := exec.Command(os.Args[0], "-test.run=^$")
	clients.Env = append(os.Environ(), drainClientsEnv+"="+listen)
	cout, err := clients.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	clients.Stderr = os.Stderr
	if err := clients.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, scaleSockets+16)
	go func() {
		sc := bufio.NewScanner(cout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	t.Cleanup(func() {
		if clients.ProcessState == nil {
			_ = clients.Process.Kill()
			_ = clients.Wait()
		}
	})
	next := func(d time.Duration) string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the client process ended early\n%s", gwLog.String())
			}
			return l
		case <-time.After(d):
			t.Fatalf("no word from the client process in %v", d)
			return ""
		}
	}
	if l := next(45 * time.Second); l != "joined" {
		t.Fatalf("client process: %s", l)
	}

	checkScaleStats(t, admin)
	checkScaleMetrics(t, admin)

	sigterm := time.Now()
	if err := gw.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var times []int64
	for {
		l := next(scaleDrain + 10*time.Second)
		if l == "done" {
			break
		}
		var i, code int
		var at int64
		if _, err := fmt.Sscanf(l, "close %d %d %d", &i, &code, &at); err != nil {
			t.Fatalf("client process: %s", l)
		}
		if code != 1012 {
			t.Fatalf("socket %d closed with %d, want 1012", i, code)
		}
		times = append(times, at)
	}
	if len(times) != scaleSockets {
		t.Fatalf("%d closes, want %d", len(times), scaleSockets)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("phxgate exit: %v, want 0\n%s", err, gwLog.String())
		}
	case <-time.After(scaleDrain + 5*time.Second):
		t.Fatalf("phxgate still running %v after SIGTERM\n%s", time.Since(sigterm), gwLog.String())
	}
	if took := time.Since(sigterm); took > scaleDrain+2*time.Second {
		t.Errorf("phxgate exited %v after SIGTERM, want within drain_timeout (%v)", took, scaleDrain)
	}

	// Pacing: drain_batch per drain_interval for the whole node, the
	// pollers taking turns (so the closes need not fall in groups with
	// gaps between them). Count the most within any one interval; twice
	// drain_batch leaves room for the client's timing, and is far from
	// all at once.
	slices.Sort(times)
	most := 0
	for i, j := 0, 0; j < len(times); j++ {
		for time.Duration(times[j]-times[i]) >= scaleInterval {
			i++
		}
		most = max(most, j-i+1)
	}
	first, last := time.Unix(0, times[0]), time.Unix(0, times[len(times)-1])
	t.Logf("%d closes over %v, at most %d within one drain_interval; first %v after SIGTERM", len(times), last.Sub(first), most, first.Sub(sigterm))
	if most > 2*scaleBatch {
		t.Errorf("%d closes within one drain_interval (%v), want about drain_batch %d", most, scaleInterval, scaleBatch)
	}
	if last.Sub(sigterm) > scaleDrain {
		t.Errorf("last close %v after SIGTERM, want within drain_timeout %v", last.Sub(sigterm), scaleDrain)
	}

	game.mu.Lock()
	defer game.mu.Unlock()
	if game.joins != scaleSockets || len(game.leaves) != scaleSockets {
		t.Fatalf("game saw %d joins and Leaves for %d channels, want %d each", game.joins, len(game.leaves), scaleSockets)
	}
	for k, rs := range game.leaves {
		if len(rs) != 1 || rs[0] != backendv1.LeaveReason_LEAVE_REASON_DRAINED {
			t.Fatalf("channel %s: Leaves %v, want exactly one DRAINED", k, rs)
		}
	}
}

// scaleWant is what /stats should count for the sockets opened.
func scaleWant() (perTopic map[string]int, perRoute map[string][2]int) {
	perTopic = map[string]int{}
	for i := range scaleSockets {
		perTopic[scaleTopic(i)]++
	}
	perRoute = map[string][2]int{}
	for topic, n := range perTopic {
		pattern := strings.SplitN(topic, ":", 2)[0] + ":*"
		r := perRoute[pattern]
		perRoute[pattern] = [2]int{r[0] + n, r[1] + 1}
	}
	return perTopic, perRoute
}

func checkScaleStats(t *testing.T, admin string) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Connections int `json:"connections"`
		Protocol    struct {
			Channels  int `json:"channels"`
			Topics    int `json:"topics"`
			TopTopics []struct {
				Topic       string `json:"topic"`
				Subscribers int    `json:"subscribers"`
			} `json:"top_topics"`
			Routes []struct {
				Pattern  string `json:"pattern"`
				Channels int    `json:"channels"`
				Topics   int    `json:"topics"`
			} `json:"routes"`
		} `json:"protocol"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("/stats: %v", err)
	}
	perTopic, perRoute := scaleWant()
	if st.Connections != scaleSockets || st.Protocol.Channels != scaleSockets || st.Protocol.Topics != len(perTopic) {
		t.Errorf("/stats connections %d, channels %d, topics %d; want %d, %d, %d",
			st.Connections, st.Protocol.Channels, st.Protocol.Topics, scaleSockets, scaleSockets, len(perTopic))
	}
	type ts struct {
		topic string
		n     int
	}
	var want []ts
	for topic, n := range perTopic {
		want = append(want, ts{topic, n})
	}
	slices.SortFunc(want, func(a, b ts) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.topic, b.topic)) })
	want = want[:10]
	if len(st.Protocol.TopTopics) != len(want) {
		t.Fatalf("/stats top_topics has %d, want %d", len(st.Protocol.TopTopics), len(want))
	}
	for i, w := range want {
		if g := st.Protocol.TopTopics[i]; g.Topic != w.topic || g.Subscribers != w.n {
			t.Errorf("/stats top_topics[%d] = %s %d, want %s %d", i, g.Topic, g.Subscribers, w.topic, w.n)
		}
	}
	if len(st.Protocol.Routes) != len(perRoute) {
		t.Fatalf("/stats routes %+v, want %v", st.Protocol.Routes, perRoute)
	}
	for _, r := range st.Protocol.Routes {
		if w := perRoute[r.Pattern]; r.Channels != w[0] || r.Topics != w[1] {
			t.Errorf("/stats route %s: %d channels %d topics, want %d and %d", r.Pattern, r.Channels, r.Topics, w[0], w[1])
		}
	}
}

func checkScaleMetrics(t *testing.T, admin string) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	value := func(name, label, lv string) float64 {
		mf := mfs[name]
		if mf == nil {
			t.Fatalf("/metrics has no %s", name)
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == lv {
					return m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
		t.Fatalf("/metrics has no %s{%s=%q}", name, label, lv)
		return 0
	}
	for _, c := range []struct {
		name, label, lv string
		want            float64
	}{
		{"phxgate_gateway_connections", "", "", scaleSockets},
		{"phxgate_channels_joined", "", "", scaleSockets},
		{"phxgate_channels_joins_total", "result", "ok", scaleSockets},
		{"phxgate_gateway_handshakes_total", "result", "ok", scaleSockets},
		{"phxgate_gateway_drain_closed_total", "", "", 0},
	} {
		if got := value(c.name, c.label, c.lv); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.lv, got, c.want)
		}
	}
}
