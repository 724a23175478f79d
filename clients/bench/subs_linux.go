//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// Subscribers are read without a goroutine per connection: each of
// spec.Loops goroutines owns an epoll instance and a share of the sockets,
// reads whatever is ready into one buffer and parses the frames in place.
// After the join, a socket's descriptor is duplicated and the net.Conn
// closed, so the runtime's own poller no longer watches it (it would wake
// for every delivery and find no one waiting).

const (
	// subReadBuf is one loop's read buffer: many frames per read.
	subReadBuf = 256 << 10
	// subWaitMs bounds one epoll wait, so a loop notices stop and its
	// heartbeat time without any event.
	subWaitMs = 50
	// subEvents is the number of events taken per wait.
	subEvents = 512
	// closeNone labels a socket that ended without a close frame.
	closeNone = "none"
)

// subConn is one subscriber. Once registered, only its loop touches it
// (until finish, after the loops have returned).
type subConn struct {
	fd      int
	node    int32  // index of the URL it dialled
	topic   int32  // index of the topic it joined
	pending []byte // an incomplete frame left by the last read
	frag    []byte // a fragmented message being reassembled
	seq     seqTracker
}

// subLoop reads its share of the sockets.
type subLoop struct {
	g        *subGroup
	ep       int
	epf      *os.File                  // holds ep in the runtime's poller
	epraw    syscall.RawConn           // waits on ep there
	deadline time.Time                 // epf's read deadline
	conns    []atomic.Pointer[subConn] // by slot; the slot is epoll's data
	match    []bcastMatcher            // by topic index
	rec      *histRecorder
	buf      []byte
	codes    map[string]int64 // loop-owned

	distinct, dups, other, bad, closed atomic.Int64
}

// subGroup holds spec.Subs subscribers in this process.
type subGroup struct {
	spec       groupSpec
	loops      []*subLoop
	urls       []string
	topics     []string
	registered atomic.Int64
	opened     atomic.Int64
	failed     atomic.Int64
	// By node and topic index, when there are several (else nil).
	joinedByNode  []atomic.Int64
	failedByNode  []atomic.Int64
	joinedByTopic []atomic.Int64
	ready         atomic.Bool
	stop          atomic.Bool
	rampErr       atomic.Pointer[string]
	rampCancel    context.CancelFunc
	rampDone      chan struct{}
	loopsWG       sync.WaitGroup
	closeOnce     sync.Once
}

var _ group = (*subGroup)(nil)

// startSubGroup starts the loops and the ramp, and returns at once; the
// group reports Ready when every subscriber has been dialled.
func startSubGroup(ctx context.Context, spec groupSpec) (*subGroup, error) {
	if spec.Subs < 1 || spec.Loops < 1 || spec.Concurrency < 1 || spec.RampRate <= 0 || spec.DialTimeout <= 0 {
		return nil, fmt.Errorf("%w: group spec %+v", ErrConfig, spec)
	}
	var ips []net.IP
	for _, s := range spec.LocalIPs {
		ip := net.ParseIP(s)
		if ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("%w: local IP %q is not loopback", ErrConfig, s)
		}
		ips = append(ips, ip)
	}
	g := &subGroup{spec: spec, urls: spec.urls(), topics: spec.topics(), rampDone: make(chan struct{})}
	if len(g.urls) > 1 {
		g.joinedByNode = make([]atomic.Int64, len(g.urls))
		g.failedByNode = make([]atomic.Int64, len(g.urls))
	}
	if len(g.topics) > 1 {
		g.joinedByTopic = make([]atomic.Int64, len(g.topics))
	}
	match := make([]bcastMatcher, len(g.topics))
	for i, t := range g.topics {
		match[i] = newBcastMatcher(t, spec.Event)
	}
	perLoop := (spec.Subs + spec.Loops - 1) / spec.Loops
	for range spec.Loops {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			g.closeLoops()
			return nil, fmt.Errorf("bench: epoll: %w", err)
		}
		// The loop waits for its epoll descriptor in the runtime's
		// poller (it is readable while it has events): a thread blocked
		// in epoll_wait would make the runtime hand its P over at every
		// wait and wake its monitor every 20 µs, time the measured
		// servers then lack on a shared machine.
		if err := unix.SetNonblock(ep, true); err != nil {
			unix.Close(ep)
			g.closeLoops()
			return nil, fmt.Errorf("bench: epoll: %w", err)
		}
		epf := os.NewFile(uintptr(ep), "epoll")
		epraw, err := epf.SyscallConn()
		if err != nil {
			epf.Close()
			g.closeLoops()
			return nil, fmt.Errorf("bench: epoll: %w", err)
		}
		g.loops = append(g.loops, &subLoop{
			g: g, ep: ep, epf: epf, epraw: epraw,
			conns: make([]atomic.Pointer[subConn], perLoop),
			match: match,
			rec:   newHistRecorder(),
			buf:   make([]byte, subReadBuf),
			codes: map[string]int64{},
		})
	}
	for _, l := range g.loops {
		g.loopsWG.Go(l.run)
	}
	rctx, cancel := context.WithCancel(ctx)
	g.rampCancel = cancel
	go func() {
		defer close(g.rampDone)
		g.ramp(rctx, ips)
	}()
	return g, nil
}

// ramp dials every subscriber at spec.RampRate with spec.Concurrency
// dials in flight.
func (g *subGroup) ramp(ctx context.Context, ips []net.IP) {
	defer g.ready.Store(true)
	joins := make([][]byte, len(g.topics))
	for i, t := range g.topics {
		joins[i] = joinFrame(t)
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(g.spec.Concurrency, g.spec.Subs) {
		wg.Go(func() {
			for i := range jobs {
				idx := g.spec.FirstIndex + i
				var local net.IP
				if len(ips) > 0 {
					local = ips[idx%len(ips)]
				}
				node, topic := placeAt(idx, len(g.urls), len(g.topics))
				if err := g.open(ctx, local, node, topic, joins[topic]); err != nil {
					g.failed.Add(1)
					if g.failedByNode != nil {
						g.failedByNode[node].Add(1)
					}
					msg := err.Error()
					g.rampErr.CompareAndSwap(nil, &msg)
					continue
				}
				g.opened.Add(1)
				if g.joinedByNode != nil {
					g.joinedByNode[node].Add(1)
				}
				if g.joinedByTopic != nil {
					g.joinedByTopic[topic].Add(1)
				}
			}
		})
	}
	interval := time.Duration(float64(time.Second) / g.spec.RampRate)
	start := time.Now()
loop:
	for i := range g.spec.Subs {
		if !waitUntil(ctx, start.Add(time.Duration(i)*interval)) {
			break
		}
		select {
		case jobs <- i:
		case <-ctx.Done():
			break loop
		}
	}
	close(jobs)
	wg.Wait()
}

// open dials node, joins topic and hands the socket to a loop.
func (g *subGroup) open(ctx context.Context, local net.IP, node, topic int, join []byte) error {
	c, err := dialJoined(ctx, g.urls[node], local, g.spec.DialTimeout, join)
	if err != nil {
		return err
	}
	fd, err := detachFD(c)
	if err != nil {
		return err
	}
	idx := int(g.registered.Add(1) - 1)
	l := g.loops[idx%len(g.loops)]
	slot := idx / len(g.loops)
	if slot >= len(l.conns) {
		unix.Close(fd)
		return errors.New("bench: more subscribers than the group holds")
	}
	l.conns[slot].Store(&subConn{fd: fd, node: int32(node), topic: int32(topic)})
	// Edge-triggered: a level-triggered socket is polled again by every
	// later epoll_wait to see whether it is still readable, which was a
	// fifth of this tool's CPU; read drains it instead.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(slot)}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		// Not registered, so the loop never reads this slot's socket.
		l.conns[slot].Store(nil)
		unix.Close(fd)
		return fmt.Errorf("bench: epoll add: %w", err)
	}
	return nil
}

// detachFD duplicates c's descriptor (non-blocking, close-on-exec) and
// closes c, so the socket stays open under the new descriptor only.
func detachFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		c.Close()
		return -1, errors.New("bench: not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		c.Close()
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		derr = err
	}
	c.Close()
	if derr != nil {
		return -1, derr
	}
	return fd, nil
}

// run is the loop goroutine.
func (l *subLoop) run() {
	events := make([]unix.EpollEvent, subEvents)
	hb := l.g.spec.Heartbeat
	nextHB := time.Now().Add(hb)
	var round uint64
	for !l.g.stop.Load() {
		n, err := l.wait(events)
		if err != nil {
			msg := "epoll wait: " + err.Error()
			l.g.rampErr.CompareAndSwap(nil, &msg)
			return
		}
		for _, ev := range events[:max(n, 0)] {
			if c := l.conns[ev.Fd].Load(); c != nil && c.fd >= 0 {
				l.read(c, ev.Events)
			}
		}
		if hb > 0 && time.Now().After(nextHB) {
			round++
			l.heartbeat(round)
			nextHB = time.Now().Add(hb)
		}
	}
}

// wait returns the ready events, waiting up to subWaitMs for one in the
// runtime's poller.
func (l *subLoop) wait(events []unix.EpollEvent) (int, error) {
	var n int
	var err error
	if n, err = epollTake(l.ep, events); n > 0 || err != nil {
		return n, err
	}
	// The deadline only bounds a wait so the loop sees stop and its
	// heartbeats: moved when it has passed, not on every wait.
	if now := time.Now(); !l.deadline.After(now) {
		l.deadline = now.Add(subWaitMs * time.Millisecond)
		_ = l.epf.SetReadDeadline(l.deadline)
	}
	rerr := l.epraw.Read(func(fd uintptr) bool {
		n, err = epollTake(int(fd), events)
		return n > 0 || err != nil
	})
	if rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
		return 0, rerr
	}
	return n, err
}

// read takes what one socket has ready and handles every whole frame,
// until the socket is drained (it is edge-triggered).
func (l *subLoop) read(c *subConn, events uint32) {
	// A short read drains the data but not an EOF or error queued behind
	// it, whose edge came with this same event: then read on until EAGAIN,
	// the EOF or the error.
	hup := events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	for {
		more, again := l.readOnce(c)
		if c.fd < 0 || again || !(more || hup) {
			return
		}
	}
}

// readOnce reads once and handles every whole frame; it reports whether
// the read filled the buffer (more may be waiting), and EAGAIN.
func (l *subLoop) readOnce(c *subConn) (more, again bool) {
	n, err := rawRead(c.fd, l.buf)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return true, false
		}
		if errors.Is(err, unix.EAGAIN) {
			return false, true
		}
		l.drop(c, closeNone)
		return false, false
	}
	if n == 0 {
		l.drop(c, closeNone)
		return false, false
	}
	now := time.Now().UnixNano()
	data := l.buf[:n]
	fromPending := len(c.pending) > 0
	if fromPending {
		c.pending = append(c.pending, data...)
		data = c.pending
	}
	used := l.frames(c, data, now)
	if c.fd < 0 {
		return false, false
	}
	rest := data[used:]
	switch {
	case len(rest) == 0:
		c.pending = c.pending[:0]
	case fromPending:
		c.pending = c.pending[:copy(c.pending, rest)]
	default:
		c.pending = append(c.pending[:0], rest...)
	}
	return n == len(l.buf), false
}

// frames handles the whole frames at the start of data and returns the
// bytes used.
func (l *subLoop) frames(c *subConn, data []byte, now int64) int {
	off := 0
	for {
		h, ok, err := parseFrameHeader(data[off:])
		if err != nil {
			l.drop(c, closeNone)
			return len(data)
		}
		if !ok || len(data)-off-h.size < h.length {
			return off
		}
		p := data[off+h.size : off+h.size+h.length]
		off += h.size + h.length
		if h.masked {
			ws.Cipher(p, h.mask, 0) // servers must not mask; read it anyway
		}
		switch h.op {
		case opText, opBinary:
			if !h.fin {
				c.frag = append(c.frag[:0], p...)
				continue
			}
			l.message(c, p, now)
		case opContinuation:
			c.frag = append(c.frag, p...)
			if h.fin {
				l.message(c, c.frag, now)
				c.frag = c.frag[:0]
			}
		case opClose:
			code := closeNone
			if len(p) >= 2 {
				code = strconv.Itoa(int(p[0])<<8 | int(p[1]))
			}
			l.drop(c, code)
			return len(data)
		case opPing:
			l.write(c, appendClientFrame(nil, opPong, p, newMask()))
			if c.fd < 0 {
				return len(data) // the pong's write dropped the socket
			}
		}
	}
}

// message handles one whole message.
func (l *subLoop) message(c *subConn, m []byte, now int64) {
	p, ok := l.match[c.topic].payload(m)
	if !ok {
		l.other.Add(1)
		return
	}
	seq, ts, ok := decodePayload(p)
	if !ok {
		l.bad.Add(1)
		return
	}
	if c.seq.Observe(seq) {
		l.distinct.Add(1)
		l.rec.Record(now - ts)
	} else {
		l.dups.Add(1)
	}
}

// heartbeat sends one heartbeat to each of the loop's sockets.
func (l *subLoop) heartbeat(round uint64) {
	f := heartbeatFrame(round)
	for i := range l.conns {
		if c := l.conns[i].Load(); c != nil && c.fd >= 0 {
			l.write(c, f)
		}
	}
}

// write sends a small frame without blocking. A short write would leave a
// broken frame on the wire, so the socket is dropped (it cannot happen
// while the client has nothing else to send).
func (l *subLoop) write(c *subConn, f []byte) {
	n, err := unix.Write(c.fd, f)
	if errors.Is(err, unix.EAGAIN) && n <= 0 {
		return // nothing sent; try at the next round
	}
	if err != nil || n != len(f) {
		l.drop(c, closeNone)
	}
}

// drop closes a socket the server ended (or that failed).
func (l *subLoop) drop(c *subConn, code string) {
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	unix.Close(c.fd)
	c.fd = -1
	c.pending, c.frag = nil, nil
	l.codes[code]++
	l.closed.Add(1)
}

func (g *subGroup) progress() groupProgress {
	p := groupProgress{
		Ready:  g.ready.Load(),
		Opened: int(g.opened.Load()),
		Failed: int(g.failed.Load()),
	}
	if e := g.rampErr.Load(); e != nil {
		p.Err = *e
	}
	for _, l := range g.loops {
		p.Distinct += l.distinct.Load()
		p.Dups += l.dups.Load()
		p.Other += l.other.Load()
		p.Bad += l.bad.Load()
		p.Closed += l.closed.Load()
		p.Hist.Merge(l.rec.Snapshot())
	}
	p.JoinedByNode = loadInts(g.joinedByNode)
	p.FailedByNode = loadInts(g.failedByNode)
	p.JoinedByTopic = loadInts(g.joinedByTopic)
	return p
}

// loadInts reads counters; nil for nil.
func loadInts(a []atomic.Int64) []int {
	if a == nil {
		return nil
	}
	out := make([]int, len(a))
	for i := range a {
		out[i] = int(a[i].Load())
	}
	return out
}

func (g *subGroup) finish(f finishSpec) (groupResult, error) {
	g.stopAll()
	r := groupResult{Groups: 1, tally: tally{Failed: int(g.failed.Load())}}
	if g.failedByNode != nil {
		r.Nodes = make([]tally, len(g.urls))
		for i := range r.Nodes {
			r.Nodes[i].Failed = int(g.failedByNode[i].Load())
		}
	}
	for _, l := range g.loops {
		for i := range l.conns {
			if c := l.conns[i].Load(); c != nil {
				r.settle(&c.seq, f.topic(int(c.topic)), int(c.node), int(c.topic))
			}
		}
		for k, v := range l.codes {
			if r.CloseCodes == nil {
				r.CloseCodes = map[string]int64{}
			}
			r.CloseCodes[k] += v
		}
		r.Closed += l.closed.Load()
		r.Other += l.other.Load()
		r.Bad += l.bad.Load()
		r.Latency.Merge(l.rec.Snapshot())
	}
	g.close()
	return r, nil
}

// stopAll ends the ramp and the loops and waits for them.
func (g *subGroup) stopAll() {
	g.rampCancel()
	<-g.rampDone
	g.stop.Store(true)
	g.loopsWG.Wait()
}

func (g *subGroup) close() {
	g.closeOnce.Do(func() {
		g.stopAll()
		// A close frame first (best effort, never blocking), so the server
		// sees clients leaving rather than connections reset.
		bye := appendClientFrame(nil, opClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""), newMask())
		for _, l := range g.loops {
			for i := range l.conns {
				if c := l.conns[i].Load(); c != nil && c.fd >= 0 {
					_, _ = unix.Write(c.fd, bye)
					unix.Close(c.fd)
					c.fd = -1
				}
			}
		}
		g.closeLoops()
	})
}

func (g *subGroup) closeLoops() {
	for _, l := range g.loops {
		if l.ep >= 0 {
			l.epf.Close()
			l.ep = -1
		}
	}
}

// rawRead reads a non-blocking socket without the runtime's bookkeeping
// for a system call that may block (it never does).
func rawRead(fd int, p []byte) (int, error) {
	r, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// epollTake returns the events ready on ep without waiting (a zero
// timeout: it never blocks, so a raw system call does).
func epollTake(ep int, events []unix.EpollEvent) (int, error) {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
