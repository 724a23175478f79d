package js_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// devDemoRound is the demo game's betting window in this test: short, so
// an outage of a few rounds takes a few seconds.
const devDemoRound = time.Second

// TestDevDemoBrowser plays the demo page of `phxgate --dev` in Debian's
// Chromium driven by playwright-core (browser/devdemo.mjs): two players
// see each other, bet, agree on every round, and come back from a TCP
// reset (through resetProxy) and from the page's own drop control having
// missed no round. The longpoll phase needs the long-poll transport.
// Screenshots go to $PHXGATE_SCREENSHOTS (default: a new temp directory,
// logged).
func TestDevDemoBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	jsDir := filepath.Join(root, "clients", "js")
	node := requireNode(t, jsDir)
	if _, err := os.Stat(filepath.Join(jsDir, "node_modules", "playwright-core", "package.json")); err != nil {
		t.Fatal("clients/js/node_modules/playwright-core is missing; run `make test` (or `make node-deps`)")
	}
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		if chromium, err = exec.LookPath("chromium"); err != nil {
			t.Fatal("chromium is not installed; run `make test` (it installs Debian's chromium with apt-get) or set CHROMIUM")
		}
	}
	shots := os.Getenv("PHXGATE_SCREENSHOTS")
	if shots == "" {
		if shots, err = os.MkdirTemp("", "phxgate-devdemo-"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", shots)

	bin := gatewayBinary(t, root)
	gw := startDevGateway(t, bin, jsDir)
	listen := gw.listen
	proxy := newResetProxy(t, listen)
	ctl := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/restart" {
			// A developer restarts phxgate: a new process, a new dev
			// secret; the pages must come back by themselves.
			if err := gw.restart(); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]int{"restarted": 1})
			return
		}
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if r.Method != http.MethodPost || r.URL.Path != "/reset" || err != nil || ms < 0 || ms > 60_000 {
			http.Error(w, "POST /reset?ms=0..60000", http.StatusBadRequest)
			return
		}
		n := proxy.reset(time.Duration(ms) * time.Millisecond)
		_ = json.NewEncoder(w).Encode(map[string]int{"reset": n})
	}))
	t.Cleanup(ctl.Close)

	env := []string{
		"PHXGATE_HTTP=http://" + listen,
		"PHXGATE_HTTP_PROXIED=http://" + proxy.addr(),
		"PROXY_CONTROL=" + ctl.URL,
		"CHROMIUM=" + chromium,
		"SCREENSHOTS=" + shots,
		"DEMO_ROUND_MS=" + strconv.FormatInt(devDemoRound.Milliseconds(), 10),
	}
	for _, phase := range []string{"play", "longpoll", "restart"} {
		t.Run(phase, func(t *testing.T) {
			runScript(t, node, jsDir, env, "browser/devdemo.mjs", phase)
		})
	}
}

// runScript runs `node script args...` in jsDir, streaming its output.
func runScript(t *testing.T, node, jsDir string, env []string, script string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, append([]string{script}, args...)...)
	cmd.Dir = jsDir
	cmd.Env = append(append(os.Environ(), env...), "NO_COLOR=1")
	out := logWriter(t, "node: ")
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	out.Close()
	if err != nil {
		t.Fatalf("node %s %v: %v (see its output above)", script, args, err)
	}
}

// devGateway is a `phxgate --dev` process on fixed loopback ports that
// the test can restart: a restart draws a new dev secret, so the tokens
// the pages hold become invalid, as after a developer's restart.
type devGateway struct {
	t               *testing.T
	bin, jsDir, dir string
	listen, admin   string
	mu              sync.Mutex
	cmd             *exec.Cmd
	exited          chan error
	logPath         string
	starts          int
}

// startDevGateway starts `bin --dev` on free loopback ports and returns it
// once /readyz answers 200.
func startDevGateway(t *testing.T, bin, jsDir string) *devGateway {
	t.Helper()
	g := &devGateway{t: t, bin: bin, jsDir: jsDir, dir: t.TempDir(), listen: freePort(t), admin: freePort(t)}
	t.Cleanup(g.stop)
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
	return g
}

// start launches the process and waits until it is ready. Safe from any
// goroutine: it reports failures as an error, never with t.Fatal.
func (g *devGateway) start() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.starts++
	g.logPath = filepath.Join(g.dir, fmt.Sprintf("phxgate-%d.log", g.starts))
	logFile, err := os.Create(g.logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(g.bin, "--dev", "--listen", g.listen, "--admin_listen", g.admin, "--api_listen", "",
		"--dev_assets", g.jsDir, "--demo_round", devDemoRound.String(), "--log_format", "text")
	cmd.Dir = g.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logFile.Close() }()
	g.cmd, g.exited = cmd, exited
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("phxgate --dev exited before it was ready: %v\n%s", err, tail(g.logPath, 100))
		default:
		}
		if resp, err := client.Get("http://" + g.admin + "/readyz"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("phxgate --dev not ready within %v\n%s", readyTimeout, tail(g.logPath, 100))
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for an outcome
	}
	if b, _ := os.ReadFile(g.logPath); !strings.Contains(string(b), "NOT FOR PRODUCTION") {
		return fmt.Errorf("phxgate --dev did not log that it is not for production:\n%s", b)
	}
	return nil
}

// stop ends the running process (SIGTERM) and checks its log.
func (g *devGateway) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		return
	}
	stopGateway(g.t, g.cmd, g.exited)
	g.cmd = nil
	if b, err := os.ReadFile(g.logPath); err == nil {
		for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
			if strings.Contains(string(b), bad) {
				g.t.Errorf("gateway log contains %q", bad)
			}
		}
	}
	if g.t.Failed() {
		g.t.Logf("gateway log (%s):\n%s", g.logPath, tail(g.logPath, 200))
	}
}

// restart stops the process and starts a new one on the same ports.
func (g *devGateway) restart() error {
	g.stop()
	return g.start()
}

// resetProxy forwards TCP to target. reset ends every connection with a
// TCP RST (linger 0) and refuses new ones for a while, as a network that
// drops: the browser sees a reset, not a clean close.
type resetProxy struct {
	ln     net.Listener
	target string

	mu          sync.Mutex
	conns       map[net.Conn]net.Conn // client → its upstream
	refuseUntil time.Time
	closed      bool
	wg          sync.WaitGroup
}

func newResetProxy(t *testing.T, target string) *resetProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{ln: ln, target: target, conns: map[net.Conn]net.Conn{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *resetProxy) addr() string { return p.ln.Addr().String() }

func (p *resetProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.closed || time.Now().Before(p.refuseUntil)
		p.mu.Unlock()
		if refuse {
			abort(c)
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			abort(c)
			continue
		}
		if !p.track(c, up) {
			abort(c)
			abort(up)
			continue
		}
		p.wg.Add(2)
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

func (p *resetProxy) track(client, up net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[client] = up
	return true
}

// pipe copies src to dst; when src ends, both are reset.
func (p *resetProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
	abort(dst)
	abort(src)
}

// reset aborts every connection and refuses new ones for d; it returns
// how many client connections were reset.
func (p *resetProxy) reset(d time.Duration) int {
	p.mu.Lock()
	p.refuseUntil = time.Now().Add(d)
	conns := p.conns
	p.conns = map[net.Conn]net.Conn{}
	p.mu.Unlock()
	for c, up := range conns {
		abort(c)
		abort(up)
	}
	return len(conns)
}

func (p *resetProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	p.reset(0)
	p.wg.Wait()
}

// abort closes c with a TCP RST.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
