package redistest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// quiet is how long a read waits to show that nothing arrives.
const quiet = 200 * time.Millisecond

func TestStartPing(t *testing.T) {
	s := Start(t, Options{})
	if !s.Running() {
		t.Fatal("Running() = false right after Start")
	}
	if got, err := command(s.Addr(), time.Second, "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v; want PONG", got, err)
	}
	if got := cli(t, s, "PING"); got != "PONG" {
		t.Fatalf("redis-cli PING = %q; want PONG", got)
	}
	if want := "redis://" + s.Addr() + "/0"; s.URL() != want {
		t.Fatalf("URL() = %q; want %q", s.URL(), want)
	}
	if got := cli(t, s, "CONFIG", "GET", "dir"); !strings.Contains(got, s.Dir()) {
		t.Fatalf("CONFIG GET dir = %q; want it to contain %q", got, s.Dir())
	}
}

func TestStartExtraArgs(t *testing.T) {
	s := Start(t, Options{Args: []string{"--maxmemory", "12345678"}})
	if got := cli(t, s, "CONFIG", "GET", "maxmemory"); !strings.Contains(got, "12345678") {
		t.Fatalf("CONFIG GET maxmemory = %q; want 12345678", got)
	}
}

// TestRestartPersistence writes a key, loses the server one way or another,
// restarts it on the same port, and checks whether the key survived.
func TestRestartPersistence(t *testing.T) {
	cases := []struct {
		name  string
		aof   bool
		down  func(*Server)
		keeps bool
	}{
		{"aof kill", true, (*Server).Kill, true},
		{"aof stop", true, (*Server).Stop, true},
		{"no aof kill", false, (*Server).Kill, false},
		{"no aof stop", false, (*Server).Stop, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := Start(t, Options{AOF: tc.aof})
			addr := s.Addr()
			if got := cli(t, s, "SET", "k", "v"); got != "OK" {
				t.Fatalf("SET = %q; want OK", got)
			}
			tc.down(s)
			if s.Running() {
				t.Fatal("Running() = true after the server went down")
			}
			if _, err := command(addr, time.Second, "PING"); err == nil {
				t.Fatal("PING answered after the server went down")
			}
			s.Restart()
			if !s.Running() || s.Addr() != addr {
				t.Fatalf("after Restart: Running() = %v, Addr() = %s; want true, %s", s.Running(), s.Addr(), addr)
			}
			want := ""
			if tc.keeps {
				want = "v"
			}
			if got := cli(t, s, "GET", "k"); got != want {
				t.Fatalf("GET k after restart = %q; want %q", got, want)
			}
		})
	}
}

func TestRestartRunningFails(t *testing.T) {
	s := Start(t, Options{})
	ft := &fatalTB{TB: t}
	s.t = ft
	func() {
		defer func() { _ = recover() }()
		s.Restart()
	}()
	if !ft.failed {
		t.Fatal("Restart of a running server did not fail the test")
	}
	s.t = t
	if !s.Running() {
		t.Fatal("the running server died")
	}
}

// fatalTB records Fatalf instead of ending the test, so a test can check
// that a helper refuses misuse.
type fatalTB struct {
	testing.TB
	failed bool
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.failed = true
	panic("fatal")
}

func TestKillCleansUpProcess(t *testing.T) {
	var pid int
	t.Run("start", func(t *testing.T) {
		s := Start(t, Options{})
		s.mu.Lock()
		pid = s.cmd.Process.Pid
		s.mu.Unlock()
	})
	// Reaped by the subtest's cleanup: the pid no longer exists.
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); runtime.GOOS == "linux" && err == nil {
		t.Fatalf("redis-server pid %d still exists after its test ended", pid)
	}
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	if len(c.Nodes()) != 3 || len(c.Addrs()) != 3 {
		t.Fatalf("%d nodes, %d addrs; want 3", len(c.Nodes()), len(c.Addrs()))
	}
	first := c.Nodes()[0]
	if got := cli(t, first, "CLUSTER", "INFO"); !strings.Contains(got, "cluster_state:ok") {
		t.Fatalf("CLUSTER INFO:\n%s", got)
	}
	keys := []string{"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"}
	slots := make(map[string]bool)
	for _, k := range keys {
		slots[cli(t, first, "CLUSTER", "KEYSLOT", k)] = true
		if got := cli(t, first, "-c", "SET", k, "v-"+k); got != "OK" {
			t.Fatalf("SET %s = %q; want OK", k, got)
		}
	}
	if len(slots) < 2 {
		t.Fatalf("keys fell in %d slot(s); the test needs several", len(slots))
	}
	// Each key is read through another node, following redirects.
	last := c.Nodes()[2]
	for _, k := range keys {
		if got := cli(t, last, "-c", "GET", k); got != "v-"+k {
			t.Fatalf("GET %s = %q; want %q", k, got, "v-"+k)
		}
	}
	// The keys are spread over the masters, not all on one.
	total, holders := 0, 0
	for _, n := range c.Nodes() {
		size, err := strconv.Atoi(cli(t, n, "DBSIZE"))
		if err != nil {
			t.Fatal(err)
		}
		total += size
		if size > 0 {
			holders++
		}
	}
	if total != len(keys) || holders < 2 {
		t.Fatalf("%d keys on %d nodes; want %d keys on at least 2", total, holders, len(keys))
	}
}

func TestClusterNodeRestart(t *testing.T) {
	c := StartCluster(t, 3)
	n := c.Nodes()[1]
	n.Kill()
	n.Restart()
	c.WaitOK()
	if got := cli(t, c.Nodes()[0], "-c", "SET", "after-restart", "v"); got != "OK" {
		t.Fatalf("SET after a node restart = %q; want OK", got)
	}
}

// TestProxy drives one connection through the proxy to a listener the test
// holds, so both ends are read and written directly.
func TestProxy(t *testing.T) {
	base := runtime.NumGoroutine()
	ln := listen(t)
	p := NewProxy(t, ln.Addr().String())

	client, server := dialThrough(t, p, ln)
	exchange(t, client, server, "hello")
	exchange(t, server, client, "world")
	if p.Conns() != 1 {
		t.Fatalf("Conns() = %d; want 1", p.Conns())
	}

	p.Stall()
	write(t, client, "held up")
	write(t, server, "held down")
	expectNothing(t, server)
	expectNothing(t, client)
	// A connection made while stalled is accepted but carries nothing.
	client2, server2 := dialThrough(t, p, ln)
	write(t, client2, "late")
	expectNothing(t, server2)

	p.Heal()
	expectRead(t, server, "held up")
	expectRead(t, client, "held down")
	expectRead(t, server2, "late")
	exchange(t, client, server, "again")

	p.DropAll()
	if p.Conns() != 0 {
		t.Fatalf("Conns() = %d after DropAll; want 0", p.Conns())
	}
	for _, c := range []net.Conn{client, server, client2, server2} {
		expectClosed(t, c)
	}

	// New connections still go through after DropAll.
	client3, server3 := dialThrough(t, p, ln)
	exchange(t, client3, server3, "after drop")

	for _, c := range []net.Conn{client, server, client2, server2, client3, server3} {
		c.Close()
	}
	ln.Close()
	p.Close()
	eventually(t, 5*time.Second, func() bool { return runtime.NumGoroutine() <= base },
		"goroutines: %d now, %d before", func() []any { return []any{runtime.NumGoroutine(), base} })
}

// TestProxyStallBoundsMemory writes far more than one buffer into a stalled
// proxy: the writer must block (the proxy stops reading), and after Heal
// every byte arrives, in order.
func TestProxyStallBoundsMemory(t *testing.T) {
	const total = 64 << 20
	ln := listen(t)
	p := NewProxy(t, ln.Addr().String())
	client, server := dialThrough(t, p, ln)
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(i % 251)
	}

	p.Stall()
	if err := client.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := client.Write(data)
	if err == nil || n >= total {
		t.Fatalf("wrote %d of %d bytes into a stalled proxy (err %v); want the writer blocked", n, total, err)
	}
	expectNothing(t, server)

	p.Heal()
	if err := client.SetWriteDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := client.Write(data[n:])
		werr <- err
	}()
	if err := server.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, total)
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatalf("reading after Heal: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing after Heal: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bytes after Heal differ from those written: lost or reordered")
	}
}

// TestProxyRedis partitions a real redis-server from its client.
func TestProxyRedis(t *testing.T) {
	s := Start(t, Options{})
	p := NewProxy(t, s.Addr())
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	write(t, c, "PING\r\n")
	expectRead(t, c, "+PONG\r\n")

	p.Stall()
	write(t, c, "PING\r\n")
	expectNothing(t, c)
	p.Heal()
	expectRead(t, c, "+PONG\r\n")

	// A killed target: the proxy accepts, fails to dial, and closes.
	s.Kill()
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	expectClosed(t, c2)
}

// cli runs redis-cli against s and returns its trimmed output.
func cli(tb testing.TB, s *Server, args ...string) string {
	tb.Helper()
	host, port, _ := net.SplitHostPort(s.Addr())
	out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// eventually polls cond until it holds, or fails tb after d with msg and
// the arguments args returns at that time.
func eventually(tb testing.TB, d time.Duration, cond func() bool, msg string, args func() []any) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf(msg, args()...)
		}
		time.Sleep(time.Millisecond)
	}
}

func listen(tb testing.TB) *net.TCPListener {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// dialThrough connects to p and returns the client end and the end ln
// accepted from the proxy.
func dialThrough(tb testing.TB, p *Proxy, ln *net.TCPListener) (client, server net.Conn) {
	tb.Helper()
	client, err := net.Dial("tcp", p.Addr())
	if err != nil {
		tb.Fatal(err)
	}
	if err := ln.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		tb.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		tb.Fatalf("the proxy did not connect to its target: %v", err)
	}
	return client, server
}

func write(tb testing.TB, c net.Conn, s string) {
	tb.Helper()
	if err := c.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.WriteString(c, s); err != nil {
		tb.Fatalf("write %q: %v", s, err)
	}
}

func expectRead(tb testing.TB, c net.Conn, want string) {
	tb.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		tb.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		tb.Fatalf("read %q: got %q, %v", want, got, err)
	}
	if string(got) != want {
		tb.Fatalf("read %q; want %q", got, want)
	}
}

func exchange(tb testing.TB, from, to net.Conn, s string) {
	tb.Helper()
	write(tb, from, s)
	expectRead(tb, to, s)
}

// expectNothing fails if c receives any byte within quiet.
func expectNothing(tb testing.TB, c net.Conn) {
	tb.Helper()
	if err := c.SetReadDeadline(time.Now().Add(quiet)); err != nil {
		tb.Fatal(err)
	}
	var b [1]byte
	n, err := c.Read(b[:])
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		tb.Fatalf("read %d byte(s), %v; want nothing until the deadline", n, err)
	}
}

// expectClosed fails unless a read on c ends with EOF or a reset.
func expectClosed(tb testing.TB, c net.Conn) {
	tb.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		tb.Fatal(err)
	}
	_, err := io.ReadAll(c)
	if err == nil {
		return // EOF
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		tb.Fatal("connection still open; want it closed")
	}
}
