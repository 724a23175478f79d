// Package js_test runs the phoenix.js conformance suite (clients/js/test)
// against a freshly built phxgate binary.
//
// The Go side only orchestrates: build ./cmd/phxgate, write a config with
// free loopback ports, start the binary, wait for /readyz, then run
// `node --test` with PHXGATE_URL and fail if node fails. The assertions are in
// the .mjs files, next to the recorded frames they are about.
//
// Node and the pinned npm packages are prerequisites, not something this test
// fetches: `make test` (or `npm ci` in clients/js) installs them from
// package-lock.json. Running npm from go test would need registry access in
// the middle of a test run, which CI sandboxes often do not have.
package js_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"github.com/phxgate/phxgate/clients/testport"
	"github.com/phxgate/phxgate/pubsub/redistest"
)

const (
	// buildTimeout bounds `go build ./cmd/phxgate` (a -race build is slow).
	buildTimeout = 5 * time.Minute
	// readyTimeout bounds the wait for the admin /readyz to answer 200.
	readyTimeout = 30 * time.Second
	// suiteTimeout bounds the whole node run; every node test has its own,
	// much shorter timeout, so this only catches a wedged runner.
	suiteTimeout = 10 * time.Minute
	// stopGrace is how long the gateway gets to drain after SIGTERM before it
	// is killed.
	stopGrace = 10 * time.Second
)

// gatewayConfig is the configuration the .mjs tests are written against.
const gatewayConfig = `# written by clients/js/conformance_test.go
listen: "%s"
admin_listen: "%s"
api_listen: ""
idle_timeout: 60s
auth:
  required: false
routes:
  - topic: "room:*"
    backend: echo
    history: 100
  - topic: "bench:*"
    backend: bench
`

// longPollConfig is added to gatewayConfig for the long-poll phase; the
// window matches PHXGATE_LONGPOLL_WINDOW_MS.
const longPollConfig = `longpoll:
  enabled: true
  window: 1s
`

// authGatewayConfig is the auth phase's configuration (auth/*.test.mjs):
// tokens required, HS256 with a per-run secret (passed to node as
// PHXGATE_AUTH_SECRET), a small `chat` class so a burst of six pushes
// crosses it, two sockets per player, 20 joins at once per player, and a
// short abuse window (a 2 s refusal streak closes with 1008). The limits
// are per player and every test signs for its own.
const authGatewayConfig = `# written by clients/js/conformance_test.go (auth phase)
listen: "%s"
admin_listen: "%s"
api_listen: ""
idle_timeout: 60s
auth:
  required: true
  hs256_secret: "%s"
  leeway: 1s
limits:
  player_max_conns: 2
  joins_per_second: 5
  join_burst: 20
  abuse_window: 2s
  abuse_quiet: 1s
  classes:
    chat: {per_second: 2, burst: 3}
routes:
  - topic: "room:*"
    backend: echo
    history: 100
    rate_limits:
      default_class: default
      events: {chat: chat}
  - topic: "bench:*"
    backend: bench
`

func TestConformancePhoenixJS(t *testing.T) {
	if testing.Short() {
		t.Skip("the phoenix.js conformance suite is skipped in -short mode")
	}
	jsDir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(filepath.Dir(jsDir))
	node := requireNode(t, jsDir)

	// Each phase is a subtest with a gateway of its own, so one phase runs
	// alone with e.g. -run 'Conformance/auth'.
	if url := os.Getenv("PHXGATE_URL"); url != "" {
		t.Logf("PHXGATE_URL is set: running against %s instead of a fresh build", url)
		t.Run("main", func(t *testing.T) { runNode(t, node, jsDir, "test/", "PHXGATE_URL="+url) })
		t.Log("PHXGATE_URL is set: skipping the drain and auth phases, which need gateways configured by this test")
		return
	}
	bin := gatewayBinary(t, root)
	t.Run("main", func(t *testing.T) {
		url, _ := startGateway(t, bin, plainConfig)
		runNode(t, node, jsDir, "test/", "PHXGATE_URL="+url)
	})
	// The long-poll phase: the core scenarios over phoenix.js's LongPoll
	// transport, with a short window so that the expiry scenario is quick.
	t.Run("longpoll", func(t *testing.T) {
		url, _ := startGateway(t, bin, func(listen, admin string) string {
			return fmt.Sprintf(gatewayConfig, listen, admin) + longPollConfig
		})
		runNode(t, node, jsDir, "longpoll/", "PHXGATE_URL="+url, "PHXGATE_LONGPOLL_WINDOW_MS=1000")
	})
	// The core scenarios of test/ again, over phoenix.js's LongPoll
	// (PHXGATE_TRANSPORT=longpoll): V2 only, and the tests that cannot
	// apply to long-poll are reported as skipped with their reason.
	t.Run("longpoll-scenarios", func(t *testing.T) {
		url, _ := startGateway(t, bin, func(listen, admin string) string {
			return fmt.Sprintf(gatewayConfig, listen, admin) + longPollConfig
		})
		runNode(t, node, jsDir, "test/", "PHXGATE_URL="+url, "PHXGATE_LONGPOLL_WINDOW_MS=1000", "PHXGATE_TRANSPORT=longpoll")
	})
	// The long-poll cluster phase: two nodes on one Redis behind a proxy
	// without affinity; phoenix.js over LongPoll loses its session at each
	// move and resumes by position.
	t.Run("longpoll-cluster", func(t *testing.T) {
		rs := redistest.Start(t, redistest.Options{})
		var urls, hosts []string
		for i := range 2 {
			url, _ := startGateway(t, bin, func(listen, admin string) string {
				return fmt.Sprintf(clusterGatewayConfig, listen, admin, i, rs.URL()) + longPollConfig
			})
			urls = append(urls, url)
			hosts = append(hosts, strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/socket"))
		}
		proxy, hits := roundRobinProxy(t, hosts, 3)
		runNode(t, node, jsDir, "longpoll-cluster/", "PHXGATE_URL=ws://"+proxy+"/socket", "PHXGATE_URLS="+strings.Join(urls, ","))
		for i, n := range hits() {
			if n == 0 {
				t.Errorf("the proxy sent no poll to node %d", i)
			}
		}
	})
	// The long-poll features phase: presence, auth, limits and
	// longPollFallbackMs over phoenix.js's LongPoll
	// (longpoll_features_test.go).
	t.Run("longpoll-features", func(t *testing.T) { runLongPollFeatures(t, bin, node, jsDir) })
	// The drain phase stops its gateway.
	t.Run("drain", func(t *testing.T) {
		url, pid := startGateway(t, bin, plainConfig)
		runNode(t, node, jsDir, "drain/", "PHXGATE_URL="+url, fmt.Sprintf("PHXGATE_PID=%d", pid))
	})
	// The auth phase needs auth.required and rate limit classes, which the
	// main suite's gateway must not have.
	t.Run("auth", func(t *testing.T) {
		secret := rand.Text() + rand.Text() // 52 base32 characters, over HS256's 32-byte minimum
		url, _ := startGateway(t, bin, func(listen, admin string) string {
			return fmt.Sprintf(authGatewayConfig, listen, admin, secret)
		})
		runNode(t, node, jsDir, "auth/", "PHXGATE_URL="+url, "PHXGATE_AUTH_SECRET="+secret)
	})
	// The cluster phase: three gateways on one real redis-server.
	t.Run("cluster", func(t *testing.T) {
		rs := redistest.Start(t, redistest.Options{})
		var urls []string
		for i := range 3 {
			url, _ := startGateway(t, bin, func(listen, admin string) string {
				return fmt.Sprintf(clusterGatewayConfig, listen, admin, i, rs.URL())
			})
			urls = append(urls, url)
		}
		runNode(t, node, jsDir, "cluster/", "PHXGATE_URL="+urls[0], "PHXGATE_URLS="+strings.Join(urls, ","))
	})
	// The presence phase: phoenix.js Presence, tokens for player ids, and
	// a control endpoint that calls the Gateway API.
	t.Run("presence", func(t *testing.T) {
		secret := rand.Text() + rand.Text()
		api := freePort(t)
		url, _ := startGateway(t, bin, func(listen, admin string) string {
			return fmt.Sprintf(presenceGatewayConfig, listen, admin, api, secret)
		})
		control := startControl(t, api)
		runNode(t, node, jsDir, "presence/", "PHXGATE_URL="+url, "PHXGATE_AUTH_SECRET="+secret, "PHXGATE_CONTROL="+control)
	})
	// The presence-bigroom phase: a room whose presence_state is many
	// times the write queue, joined in pieces (bigroom_test.go).
	t.Run("presence-bigroom", func(t *testing.T) { runBigRoom(t, bin, node, jsDir) })
	// The presence-cluster phase: three nodes on one Redis; the node
	// tests kill -9 one node and drain another, then both are restarted
	// under the same ids for presence-restart/.
	t.Run("presence-cluster", func(t *testing.T) {
		secret := rand.Text() + rand.Text()
		rs := redistest.Start(t, redistest.Options{})
		topic := "room:presence-" + strings.ToLower(rand.Text()[:8])
		listens := make([]string, 3)
		var urls, pids []string
		start := func(i int) string {
			url, pid := startGateway(t, bin, func(listen, admin string) string {
				if listens[i] == "" {
					listens[i] = listen
				}
				return fmt.Sprintf(presenceClusterConfig, listens[i], admin, i, rs.URL(), secret)
			})
			pids = append(pids, fmt.Sprint(pid))
			return url
		}
		for i := range 3 {
			urls = append(urls, start(i))
		}
		env := []string{"PHXGATE_URL=" + urls[0], "PHXGATE_URLS=" + strings.Join(urls, ","),
			"PHXGATE_AUTH_SECRET=" + secret, "PHXGATE_TOPIC=" + topic}
		runNode(t, node, jsDir, "presence-cluster/", append(env, "PHXGATE_PIDS="+strings.Join(pids, ","))...)
		if t.Failed() {
			return
		}
		start(1)
		start(2)
		runNode(t, node, jsDir, "presence-restart/", env...)
	})
	// The dice phase: the example game over real gRPC (issue 7).
	t.Run("dice", func(t *testing.T) {
		secret := rand.Text() + rand.Text()
		api, game := freePort(t), freePort(t)
		startDice(t, root, game, api)
		url, _ := startGateway(t, bin, func(listen, admin string) string {
			return fmt.Sprintf(diceGatewayConfig, listen, admin, api, secret, game)
		})
		runNode(t, node, jsDir, "dice/", "PHXGATE_URL="+url, "PHXGATE_AUTH_SECRET="+secret)
	})
}

// clusterGatewayConfig is one of the cluster phase's three nodes
// (cluster/*.test.mjs): the Redis engine, small histories and max_replay to
// reach the resume boundaries quickly, and per-address limits raised since
// every client of the phase comes from 127.0.0.1 without a token.
const clusterGatewayConfig = `# written by clients/js/conformance_test.go (cluster phase)
listen: "%s"
admin_listen: "%s"
api_listen: ""
node_id: "node-%d"
redis_url: "%s"
max_replay: 20
limits:
  joins_per_second: 1000
  join_burst: 1000
  classes:
    default: {per_second: 1000, burst: 1000}
routes:
  - topic: "room:*"
    backend: echo
    history: 100
  - topic: "small:*"
    backend: echo
    history: 5
`

// presenceGatewayConfig is the presence phase's gateway: tokens give the
// player ids, room:* tracks presence, grace:* too with a 1 s leave_grace,
// the Gateway API is served (no secret: loopback, this run only), and the
// per-address limits let the herd test's 2,000 sockets in.
const presenceGatewayConfig = `# written by clients/js/conformance_test.go (presence phase)
listen: "%s"
admin_listen: "%s"
api_listen: "%s"
auth:
  required: true
  hs256_secret: "%s"
# herd.test.mjs opens 2,000 sockets from 127.0.0.1 within a second.
limits:
  joins_per_second: 1000
  join_burst: 1000
  ip_max_conns: 5000
  ip_handshakes_per_second: 10000
  ip_handshake_burst: 5000
  ip_max_handshakes: 1000
routes:
  - topic: "room:*"
    backend: echo
    presence: true
  - topic: "grace:*"
    backend: echo
    presence: true
    leave_grace: 1s
`

// presenceClusterConfig is one node of the presence-cluster phase: a
// fixed node id (a restart keeps it), Redis, tokens, room:* with presence.
const presenceClusterConfig = `# written by clients/js/conformance_test.go (presence-cluster phase)
listen: "%s"
admin_listen: "%s"
api_listen: ""
node_id: "presence-node-%d"
redis_url: "%s"
drain_timeout: 4s
auth:
  required: true
  hs256_secret: "%s"
limits:
  joins_per_second: 1000
  join_burst: 1000
routes:
  - topic: "room:*"
    backend: echo
    presence: true
`

// startControl serves the presence phase's control endpoint: POST
// /update-presence {"topic","player","meta"} calls Gateway.UpdatePresence
// on the gateway's API at api. It returns the endpoint's base URL.
func startControl(t *testing.T, api string) string {
	t.Helper()
	cc, err := grpc.NewClient(api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	gw := backendv1.NewGatewayClient(cc)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /update-presence", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Topic  string          `json:"topic"`
			Player string          `json:"player"`
			Meta   json.RawMessage `json:"meta"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, err := gw.UpdatePresence(r.Context(), &backendv1.UpdatePresenceRequest{Topic: req.Topic, PlayerId: req.Player, Meta: req.Meta})
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// diceGatewayConfig routes table:* to the example dice game over gRPC and
// serves the Gateway API the game broadcasts its rounds through.
const diceGatewayConfig = `# written by clients/js/conformance_test.go (dice phase)
listen: "%s"
admin_listen: "%s"
api_listen: "%s"
auth:
  required: true
  hs256_secret: "%s"
routes:
  - topic: "table:*"
    backend: "grpc://%s"
`

// startDice builds and starts the example dice game on game, broadcasting
// through the Gateway API at api, with a 1 s betting window.
func startDice(t *testing.T, root, game, api string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dice")
	bctx, bcancel := context.WithTimeout(context.Background(), buildTimeout)
	defer bcancel()
	build := exec.CommandContext(bctx, "go", "build", "-o", bin, "./backends/examples/dice")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./backends/examples/dice: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-listen", game, "-api", api, "-window", "1s")
	out := logWriter(t, "dice: ")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopGrace):
			_ = cmd.Process.Kill()
			<-exited
		}
		out.Close()
	})
}

func plainConfig(listen, admin string) string {
	return fmt.Sprintf(gatewayConfig, listen, admin)
}

// runNode runs `node --test` on dir with env added, streaming its output.
func runNode(t *testing.T, node, jsDir, dir string, env ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
	defer cancel()
	args := []string{"--test", "--test-force-exit", "--test-reporter=spec"}
	if p := os.Getenv("PHXGATE_JS_TEST_PATTERN"); p != "" {
		args = append(args, "--test-name-pattern="+p)
	}
	args = append(args, dir)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = jsDir
	cmd.Env = append(append(os.Environ(), env...), "NO_COLOR=1")
	out := logWriter(t, "node: ")
	cmd.Stdout = out
	cmd.Stderr = out
	err := cmd.Run()
	out.Close()
	if err != nil {
		t.Fatalf("phoenix.js conformance suite (%s) failed (%v); see the node output above. Re-run one test with PHXGATE_JS_TEST_PATTERN='<name regexp>'", dir, err)
	}
}

// requireNode returns the node binary, failing with set-up instructions when
// node or the pinned packages are missing.
func requireNode(t *testing.T, jsDir string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed; run `make test`, which installs nodejs and npm and runs `npm ci` in clients/js")
	}
	for _, pkg := range []string{"phoenix", "phoenix-1-6", "ws"} {
		if _, err := os.Stat(filepath.Join(jsDir, "node_modules", pkg, "package.json")); err != nil {
			t.Fatalf("clients/js/node_modules/%s is missing; run `make test` (or `cd clients/js && npm ci`)", pkg)
		}
	}
	return node
}

// gatewayBinary returns $PHXGATE_BIN, or builds ./cmd/phxgate once for all
// phases (with -race when the test runs with -race), so every phase tests the
// same binary.
func gatewayBinary(t *testing.T, root string) string {
	t.Helper()
	if bin := os.Getenv("PHXGATE_BIN"); bin != "" {
		t.Logf("PHXGATE_BIN is set: testing %s instead of building ./cmd/phxgate", bin)
		return bin
	}
	bin := filepath.Join(t.TempDir(), "phxgate")
	buildArgs := []string{"build", "-o", bin}
	if raceEnabled {
		buildArgs = append(buildArgs, "-race")
	}
	buildArgs = append(buildArgs, "./cmd/phxgate")
	bctx, bcancel := context.WithTimeout(context.Background(), buildTimeout)
	defer bcancel()
	build := exec.CommandContext(bctx, "go", buildArgs...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(buildArgs, " "), err, out)
	}
	return bin
}

// startGateway starts bin on free loopback ports with
// the configuration config returns for them, and returns the socket URL once
// /readyz answers 200.
func startGateway(t *testing.T, bin string, config func(listen, admin string) string) (url string, pid int) {
	t.Helper()
	dir := t.TempDir()
	listen, admin := freePort(t), freePort(t)
	cfg := filepath.Join(dir, "phxgate.yaml")
	if err := os.WriteFile(cfg, []byte(config(listen, admin)), 0o600); err != nil {
		t.Fatal(err)
	}

	logPath := filepath.Join(dir, "phxgate.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		stopGateway(t, cmd, exited)
		logFile.Close()
		// A race or panic in the server fails the run even when every
		// frame was right.
		if b, err := os.ReadFile(logPath); err == nil {
			for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
				if strings.Contains(string(b), bad) {
					t.Errorf("gateway log contains %q", bad)
				}
			}
		}
		if t.Failed() {
			t.Logf("gateway log (%s):\n%s", logPath, tail(logPath, 200))
		}
	})

	readyURL := "http://" + admin + "/readyz"
	deadline := time.Now().Add(readyTimeout)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case err := <-exited:
			exited <- err // for stopGateway
			t.Fatalf("phxgate exited before it was ready: %v\n%s", err, tail(logPath, 100))
		default:
		}
		if resp, err := client.Get(readyURL); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("phxgate not ready: %s did not answer 200 within %v\n%s", readyURL, readyTimeout, tail(logPath, 100))
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for an outcome
	}
	return "ws://" + listen + "/socket", cmd.Process.Pid
}

// stopGateway asks the gateway to drain (SIGTERM), then kills it if it has
// not exited within stopGrace. Only the process this test started is touched.
func stopGateway(t *testing.T, cmd *exec.Cmd, exited chan error) {
	t.Helper()
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopGrace):
		t.Logf("phxgate did not exit %v after SIGTERM; killing it", stopGrace)
		_ = cmd.Process.Kill()
		<-exited
	}
}

// freePort returns a loopback host:port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	addr, err := testport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// logWriter streams lines to t.Log as they arrive (visible live with -v).
func logWriter(t *testing.T, prefix string) io.WriteCloser {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			t.Log(prefix + sc.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	return closerFunc(func() error {
		err := pw.Close()
		<-done
		return err
	}, pw)
}

type closerWriter struct {
	io.Writer
	close func() error
}

func (c closerWriter) Close() error { return c.close() }

func closerFunc(close func() error, w io.Writer) io.WriteCloser {
	return closerWriter{Writer: w, close: close}
}

// tail returns the last n lines of a file, for failure messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "(no log)"
		}
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// roundRobinProxy is a load balancer without session affinity in front of
// hosts: the GETs go to one node, then after every `every` GETs to the
// next; a POST goes where the last GET went. It returns its address and
// the GETs each node got.
func roundRobinProxy(t *testing.T, hosts []string, every int) (string, func() []int) {
	t.Helper()
	var mu sync.Mutex
	gets, cur := 0, 0
	hits := make([]int, len(hosts))
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		mu.Lock()
		if r.In.Method == http.MethodGet {
			if gets > 0 && gets%every == 0 {
				cur = (cur + 1) % len(hosts)
			}
			gets++
			hits[cur]++
		}
		host := hosts[cur]
		mu.Unlock()
		r.SetURL(&url.URL{Scheme: "http", Host: host})
		r.Out.Host = host
	}}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), func() []int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(hits)
	}
}
