package redistest

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

const (
	// proxyBufSize is the one buffer each direction of a proxied connection
	// holds; a stalled direction holds at most this much, the rest stays in
	// the kernel's socket buffers and then with the sender.
	proxyBufSize = 32 << 10
	// proxyDialTimeout bounds the proxy's connect to its target.
	proxyDialTimeout = 5 * time.Second
)

// Proxy is an in-process TCP proxy in front of one target address that
// injects network faults: a partition (Stall, then Heal) and a cut (DropAll).
type Proxy struct {
	target string
	ln     net.Listener
	ctx    context.Context // canceled by Close, to abandon dials in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every copier
	once   sync.Once

	mu     sync.Mutex
	gate   chan struct{} // closed while forwarding, open while stalled
	conns  map[*proxyConn]struct{}
	closed bool
}

// proxyConn is one accepted connection and its connection to the target.
type proxyConn struct {
	client, server net.Conn
	once           sync.Once
	done           chan struct{} // closed by close
}

// NewProxy listens on a free port of 127.0.0.1 and forwards every accepted
// connection to target over a connection of its own, bytes both ways. A
// connection whose dial fails is closed at once, as if refused. The proxy is
// closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: proxy listen: %v", err)
	}
	gate := make(chan struct{})
	close(gate)
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: target,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		gate:   gate,
		conns:  make(map[*proxyConn]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port, to give to the client instead of target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stall stops forwarding in both directions while keeping every connection
// open, like a network partition: the proxy stops reading, so what the peers
// send waits in one buffer per direction and in the kernel, and is delivered
// in order by Heal. Connections accepted while stalled are connected to the
// target but carry nothing either. Bytes the proxy read before Stall returned
// may still be delivered.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default: // already stalled
	}
}

// Heal resumes forwarding after Stall, delivering what was held, in order.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate: // not stalled
	default:
		close(p.gate)
	}
}

// DropAll closes every current connection abruptly (with a reset, on both
// sides), discarding what was held; the proxy keeps accepting new ones.
func (p *Proxy) DropAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = make(map[*proxyConn]struct{})
	p.mu.Unlock()
	for pc := range conns {
		pc.close(true)
	}
}

// Conns is the number of connections being proxied.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops accepting, drops every connection and waits until all of the
// proxy's goroutines have returned. It is idempotent.
func (p *Proxy) Close() {
	p.once.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.ln.Close()
		p.cancel()
		p.DropAll()
		p.wg.Wait()
	})
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			// Closed by Close; any other Accept error would repeat forever.
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve connects c to the target and copies both ways until either side
// fails or both have finished.
func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: proxyDialTimeout}
	s, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	pc := &proxyConn{client: c, server: s, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pc.close(true)
		return
	}
	p.conns[pc] = struct{}{}
	p.mu.Unlock()

	p.wg.Add(1)
	upDone := make(chan struct{})
	go func() {
		defer p.wg.Done()
		defer close(upDone)
		p.copy(pc, s, c)
	}()
	p.copy(pc, c, s)
	<-upDone
	pc.close(false)
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// copy forwards src to dst through the gate, one buffer at a time, until src
// ends (then dst's write side is closed, so a half-close passes through) or
// either side fails (then both connections are closed).
func (p *Proxy) copy(pc *proxyConn, dst, src net.Conn) {
	buf := make([]byte, proxyBufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait(pc) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				pc.close(false)
				return
			}
		}
		if errors.Is(err, io.EOF) {
			// The end of the stream is held by a stall like its bytes.
			if p.wait(pc) {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
			}
			return
		}
		if err != nil {
			pc.close(false)
			return
		}
	}
}

// wait blocks while the proxy is stalled; it reports false if pc was closed
// meanwhile.
func (p *Proxy) wait(pc *proxyConn) bool {
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	select {
	case <-gate:
		return true
	case <-pc.done:
		return false
	}
}

// close closes both connections, once; abrupt ones are reset (SO_LINGER 0)
// rather than shut down with a FIN.
func (pc *proxyConn) close(abrupt bool) {
	pc.once.Do(func() {
		close(pc.done)
		for _, c := range []net.Conn{pc.client, pc.server} {
			if tc, ok := c.(*net.TCPConn); ok && abrupt {
				_ = tc.SetLinger(0)
			}
			c.Close()
		}
	})
}
