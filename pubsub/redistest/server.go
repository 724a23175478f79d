package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/phxgate/phxgate/clients/testport"
)

const (
	// startTimeout bounds how long a redis-server may take to answer PING
	// after it was launched, including loading its append-only file.
	startTimeout = 10 * time.Second
	// stopTimeout bounds how long Stop waits for a graceful shutdown, and
	// Kill for the process to be reaped, before the test is failed.
	stopTimeout = 10 * time.Second
	// startAttempts is how many free ports Start tries when redis-server
	// cannot bind the one it was given: a port picked by listening on :0 and
	// closing can be taken by another process before redis binds it.
	startAttempts = 5
	// pollInterval is how often readiness conditions are re-checked.
	pollInterval = 10 * time.Millisecond
	// logTailLines is how much of a failed server's log a failure shows.
	logTailLines = 30
)

// installHint is what a test says when redis-server or redis-cli is missing.
const installHint = "`make test` installs it (apt-get install redis-server)"

// errAddrInUse marks a launch that failed because a port was taken.
var errAddrInUse = errors.New("address already in use")

// Options configures a server started by Start. The zero value is an
// in-memory server that keeps nothing across Kill or Stop.
type Options struct {
	// AOF turns on the append-only file with appendfsync always, so every
	// write acknowledged before a Kill is there after Restart. False means
	// appendonly no; RDB snapshots are off either way (save "").
	AOF bool
	// Args are extra redis-server arguments, e.g. "--maxmemory", "10mb".
	// They come last, so they override the defaults above.
	Args []string
}

// Server is one redis-server process owned by a test.
type Server struct {
	t    testing.TB
	bin  string
	opts Options
	dir  string
	port int
	// busPort is the cluster bus port, or 0 outside cluster mode. It is kept
	// across Restart so the node's peers find it again.
	busPort int

	mu   sync.Mutex
	cmd  *exec.Cmd     // the latest launch; nil before the first one
	done chan struct{} // closed when cmd has exited and been reaped
}

// Start runs a redis-server on a free port of 127.0.0.1 with its own
// t.TempDir as working directory, waits until it answers PING, and kills it
// when the test ends. It fails the test if redis-server is not installed or
// does not come up within 10 s, showing the tail of its log.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	return start(t, opts, false)
}

// start is Start, with a cluster bus port picked as well when cluster is set.
func start(t testing.TB, opts Options, cluster bool) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistest: redis-server is not on PATH; %s: %v", installHint, err)
	}
	opts.Args = append([]string(nil), opts.Args...)
	s := &Server{t: t, bin: bin, opts: opts, dir: t.TempDir()}
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(s.Kill)

	nports := 1
	if cluster {
		nports = 2
	}
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(nports)
		if err != nil {
			t.Fatalf("redistest: picking a free port: %v", err)
		}
		s.port = ports[0]
		if cluster {
			s.busPort = ports[1]
		}
		err = s.launch()
		if err == nil {
			return s
		}
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			t.Fatalf("redistest: starting redis-server on %s (attempt %d): %v", s.Addr(), attempt, err)
		}
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// URL is the server's address as a redis:// URL of database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Dir is the server's working directory, where its log (redis.log), its
// append-only files and, in a cluster, nodes.conf are kept.
func (s *Server) Dir() string { return s.dir }

// Running reports whether the process is alive: started, and neither killed,
// stopped nor crashed since.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runningLocked()
}

func (s *Server) runningLocked() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL and waits until the process is gone: nothing is flushed,
// as on a machine crash. Killing a server that is not running does nothing.
func (s *Server) Kill() {
	s.t.Helper()
	if err := s.signal(syscall.SIGKILL); err != nil {
		s.t.Errorf("redistest: kill %s: %v", s.Addr(), err)
	}
}

// Stop sends SIGTERM, so redis-server shuts down gracefully (syncing its
// append-only file if it has one), and waits until it has exited. A server
// that does not exit within 10 s is killed and the test failed.
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.signal(syscall.SIGTERM); err != nil {
		s.t.Errorf("redistest: stop %s: %v", s.Addr(), err)
	}
}

// signal sends sig to a running server and waits for it to exit; a server
// that outlives stopTimeout is SIGKILLed and an error returned.
func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runningLocked() {
		return nil
	}
	if err := s.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-s.done:
		return nil
	case <-time.After(stopTimeout):
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	return fmt.Errorf("still running %v after %v; killed", sig, stopTimeout)
}

// Restart starts the server again on the same port, in the same directory and
// with the same options, after Kill or Stop (or a crash), and waits until it
// answers PING. Restarting a running server fails the test.
func (s *Server) Restart() {
	s.t.Helper()
	if s.Running() {
		s.t.Fatalf("redistest: Restart of %s, which is still running; Kill or Stop it first", s.Addr())
	}
	if err := s.launch(); err != nil {
		s.t.Fatalf("redistest: restarting redis-server on %s: %v", s.Addr(), err)
	}
}

// args is the command line of a launch.
func (s *Server) args() []string {
	a := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--protected-mode", "no",
		"--daemonize", "no",
		"--dir", s.dir,
		"--logfile", s.logPath(),
		"--save", "",
		// DEBUG SLEEP and friends let tests make the server slow on purpose;
		// "local" accepts them from loopback connections only.
		"--enable-debug-command", "local",
	}
	if s.opts.AOF {
		a = append(a, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		a = append(a, "--appendonly", "no")
	}
	if s.busPort != 0 {
		a = append(a,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
			"--cluster-port", strconv.Itoa(s.busPort),
		)
	}
	return append(a, s.opts.Args...)
}

func (s *Server) logPath() string    { return filepath.Join(s.dir, "redis.log") }
func (s *Server) stderrPath() string { return filepath.Join(s.dir, "stderr.log") }

// launch starts redis-server with the current port and waits until it
// answers PING. On failure the process is gone and the error carries the
// log lines of this launch; it wraps errAddrInUse if a port was taken.
func (s *Server) launch() error {
	logOff, errOff := fileSize(s.logPath()), fileSize(s.stderrPath())
	// Errors before the log file is opened (a bad argument) go to stderr.
	stderr, err := os.OpenFile(s.stderrPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	// An *os.File is handed to the child as is: no copying goroutines.
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	stderr.Close()
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	err = waitReady(s.Addr(), cmd.Process.Pid, done)
	if err == nil {
		return nil
	}
	_ = cmd.Process.Kill()
	<-done
	tail := tailLines(s.logPath(), logOff) + tailLines(s.stderrPath(), errOff)
	if strings.Contains(tail, "Address already in use") {
		err = fmt.Errorf("%w: %v", errAddrInUse, err)
	}
	return fmt.Errorf("%w; its log:\n%s", err, tail)
}

// waitReady polls addr until the process pid answers PING with PONG, the
// process exits (done is closed) or startTimeout passes. The pid is checked
// because another server may hold the port, and answer, while this one
// fails to bind it.
func waitReady(addr string, pid int, done <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := answers(addr, pid)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v: %v", startTimeout, err)
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server exited before it was ready (last check: %v)", err)
		case <-tick.C:
		}
	}
}

// answers reports whether the server at addr is process pid and has loaded
// its data (PING fails with LOADING until then).
func answers(addr string, pid int) error {
	reply, err := command(addr, time.Second, "PING")
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return fmt.Errorf("PING replied %q", reply)
	}
	info, err := command(addr, time.Second, "INFO", "server")
	if err != nil {
		return err
	}
	want := "process_id:" + strconv.Itoa(pid)
	for line := range strings.Lines(info) {
		if strings.TrimSpace(line) == want {
			return nil
		}
	}
	return fmt.Errorf("%s is answered by another process than pid %d", addr, pid)
}

// freePorts picks n distinct free ports of 127.0.0.1 outside the
// kernel's ephemeral range (see clients/testport).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		p, err := testport.Free()
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// tailLines returns the last logTailLines lines of path written after
// offset, or "" if there are none.
func tailLines(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) <= offset {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b[offset:]), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return filepath.Base(path) + ":\n" + strings.Join(lines, "\n") + "\n"
}
