//go:build linux

package gateway

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/gateway/internal/wsframe"
	"golang.org/x/sys/unix"
)

const (
	// readBufferSize is the poller's shared read buffer. Complete frames
	// are handled straight out of it; only an incomplete frame is copied
	// into the connection.
	readBufferSize = 64 << 10
	// maxEvents is the epoll_wait batch size.
	maxEvents = 256
	// iovecBatch is the most frames written per writev call: IOV_MAX.
	iovecBatch = 1024
	// sweepInterval is the idle/close timer granularity: one pass over the
	// poller's connections instead of a timer per connection.
	sweepInterval = time.Second
)

// wakeSlot is the epoll user data of the eventfd.
const wakeSlot = -1

type pendingConn struct {
	c        *conn
	leftover []byte // bytes read past the handshake head (first frames)
}

// poller owns a set of connections: one goroutine, one epoll instance, one
// eventfd to wake it, one read buffer and one iovec scratch array.
type poller struct {
	srv  *Server
	idx  int // this poller's fan-out lane (channels.Fanout)
	epfd int
	evfd int
	// epfile holds epfd in the Go runtime's network poller, and epraw
	// waits on it there (see wait): a poller with nothing to do parks like
	// any goroutine blocked on a socket instead of sitting in a blocking
	// epoll_wait, which would hold its OS thread in a system call, make
	// the runtime hand its P to another thread every time, and keep the
	// runtime's monitor thread waking every 20 µs to do so.
	epfile *os.File
	epraw  syscall.RawConn
	// deadline is epfile's read deadline (run goroutine only).
	deadline time.Time

	// Poller goroutine only.
	//
	// conns is indexed by a per-poller slot stored as the epoll user data,
	// not by fd: fd numbers are process-wide, so with N pollers an
	// fd-indexed slice would cost every poller 8 bytes per fd of the whole
	// process (64 pollers × 8 B = 512 B per connection). Slots stay dense.
	conns      []*conn
	free       []int32 // free slots, reused LIFO
	buf        []byte
	iov        []unix.Iovec
	now        int64
	lastSweep  int64
	framesIn   int
	framesOut  int
	writes     int // writev calls
	bytesIn    int
	bytesOut   int
	drainPos   int           // next index of conns to close while draining
	drainBatch int           // sockets closed per drain step; 0 = not fixed yet
	nextDrain  int64         // unix nanos of the next drain step
	drainEvery time.Duration // pause between drain steps (drainPace)
	sawDrain   bool          // the draining flag as this pass read it
	sawStop    bool          // the stopping flag as this pass read it
	// sweepEvery is the idle/close timer granularity (sweepInterval; tests
	// lengthen it to prove that nothing waits for the sweep).
	sweepEvery time.Duration
	// hookTaken, when set (tests only), runs on the poller goroutine right
	// after a pass has taken its pending work, before doing it.
	hookTaken func()
	// more: bulk output is left for the next pass, which then polls
	// without sleeping.
	more bool
	// bulkPerPass is the most bulk sockets written per pass (the constant;
	// tests lower it). hookFlush (tests only) runs at each flush.
	bulkPerPass int
	hookFlush   func(c *conn)
	batch       []*conn // scratch for a slice of the bulk list

	running     atomic.Bool  // run was started (it then owns epfd/evfd)
	queuedBytes atomic.Int64 // bytes queued on this poller's sockets
	open        atomic.Int64 // registered sockets

	mu    sync.Mutex
	woken bool // the poller is awake or an eventfd write is pending
	// urgent holds sockets with a reply or control frame to write; they
	// are flushed first. bulk holds sockets with only broadcast output,
	// oldest first from bulkHead; they are flushed in slices of at most
	// bulkPerPass per pass, between reads and urgent flushes.
	urgent      []*conn
	spareUrgent []*conn
	bulk        []*conn
	bulkHead    int
	pending     []pendingConn
	jobs        []channels.FanoutJob // fan-out work for this lane, oldest first
	spareJob    []channels.FanoutJob
	draining    bool
	plan        drainPlan
	stopping    bool
	exited      bool // run returned and the fds are closed
}

var wakeValue = [8]byte{1, 0, 0, 0, 0, 0, 0, 0} // eventfd counter increment (little endian)

func newPoller(srv *Server, idx int) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("gateway: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("gateway: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeSlot}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("gateway: epoll_ctl eventfd: %w", err)
	}
	// An epoll descriptor is readable while it has events, so the
	// runtime's poller can watch it like a socket; os.NewFile registers
	// it there because it is non-blocking.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("gateway: epoll non-blocking: %w", err)
	}
	epfile := os.NewFile(uintptr(epfd), "epoll")
	epraw, err := epfile.SyscallConn()
	if err == nil {
		// Fails unless the runtime's poller took the descriptor: wait
		// would then spin instead of parking.
		err = epfile.SetReadDeadline(time.Time{})
	}
	if err != nil {
		epfile.Close()
		unix.Close(evfd)
		return nil, fmt.Errorf("gateway: epoll descriptor not pollable by the runtime: %w", err)
	}
	return &poller{
		srv:         srv,
		idx:         idx,
		epfd:        epfd,
		evfd:        evfd,
		epfile:      epfile,
		epraw:       epraw,
		buf:         make([]byte, readBufferSize),
		iov:         make([]unix.Iovec, iovecBatch),
		sweepEvery:  sweepInterval,
		bulkPerPass: bulkPerPass,
	}, nil
}

// wake writes the eventfd. Callers hold p.mu, which orders the write
// before closeFDs: the fd number can never be reused under our feet.
func (p *poller) wakeLocked() {
	if !p.exited {
		_, _ = unix.Write(p.evfd, wakeValue[:])
	}
}

// signalLocked marks the poller as having work and wakes it at most once
// per batch: while it is awake (or a wake is pending) no eventfd write
// happens.
func (p *poller) signalLocked() {
	if !p.woken {
		p.woken = true
		p.wakeLocked()
	}
}

// enqueueDirty puts c on list (nothing for listNone) and wakes the poller.
func (p *poller) enqueueDirty(c *conn, list dirtyList) {
	if list == listNone {
		return
	}
	p.mu.Lock()
	if !p.exited {
		if list == listUrgent {
			p.urgent = append(p.urgent, c)
		} else {
			p.bulk = append(p.bulk, c)
		}
		p.signalLocked()
	}
	p.mu.Unlock()
}

// dispatch queues a fan-out job for this poller's goroutine, after every
// job dispatched before it. Once the poller has exited the job runs at once
// on the caller (its sockets are closed, so it only releases waiters).
func (p *poller) dispatch(job channels.FanoutJob) {
	p.mu.Lock()
	if p.exited {
		p.mu.Unlock()
		job.RunFanout()
		return
	}
	p.jobs = append(p.jobs, job)
	p.signalLocked()
	p.mu.Unlock()
}

// register hands an upgraded socket to the poller goroutine. It reports
// false if the poller has exited (shutdown raced the handshake); the caller
// then owns the fd still.
func (p *poller) register(c *conn, leftover []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return false
	}
	p.pending = append(p.pending, pendingConn{c, leftover})
	p.signalLocked()
	return true
}

// drainPlan is how one poller paces its drain closes.
type drainPlan struct {
	// batch is this poller's share of drain_batch (pollerDrainShare); 0
	// derives it from spread alone.
	batch int
	// spread is the time to close them all in, from the start of the
	// drain (0: no deadline; then batch, or all at once). A batch too
	// small to close every socket within spread is raised to fit.
	spread time.Duration
	// every is the pause between two of this poller's steps.
	every time.Duration
	// interval is the node's drain_interval: a batch raised to fit spread
	// goes back to one step per interval (every may be a multiple).
	interval time.Duration
	// slot of slots is this poller's place among the node's: its first
	// step waits slot/slots of a pause, so that the pollers take turns
	// instead of all closing at the same instants.
	slot, slots int
	// end is the start of the drain plus spread (zero without a
	// deadline): a poller that has fallen behind closes what is left at
	// once from then on, with 1012, rather than leave it to be cut.
	end time.Time
}

// pollerDrainShare splits the node's drain_batch b over n pollers: poller
// i closes batch sockets every interval, and the node as a whole never
// more than b per interval. With fewer sockets per interval than pollers,
// each poller closes one socket per ceil(n/b) intervals.
func pollerDrainShare(b, n, i int, interval time.Duration) (batch int, every time.Duration) {
	switch {
	case b <= 0:
		return 0, interval
	case b >= n:
		batch = b / n
		if i < b%n {
			batch++
		}
		return batch, interval
	default:
		return 1, interval * time.Duration((n+b-1)/b)
	}
}

// drain closes every socket with 1012, in batches, so that reconnecting
// clients do not all hit the other nodes in one instant.
func (p *poller) drain(plan drainPlan) {
	p.mu.Lock()
	p.draining = true
	p.plan = plan
	p.signalLocked()
	p.mu.Unlock()
}

func (p *poller) stop() {
	p.mu.Lock()
	p.stopping = true
	p.wakeLocked() // unconditionally: the flag must be seen even if woken is stale
	p.mu.Unlock()
}

func (p *poller) started() bool { return p.running.Load() }

func (p *poller) closeFDs() {
	p.mu.Lock()
	p.exited = true
	_ = p.epfile.Close()
	_ = unix.Close(p.evfd)
	jobs := p.jobs
	p.jobs = nil
	p.mu.Unlock()
	for _, j := range jobs { // dispatched after the last pass: release their waiters
		j.RunFanout()
	}
}

func (p *poller) run() {
	defer p.closeFDs()
	events := make([]unix.EpollEvent, maxEvents)
	p.now = time.Now().UnixNano()
	p.lastSweep = p.now
	for {
		timeout := p.sweepEvery
		if p.drainBatch > 0 && p.drainPos < len(p.conns) {
			timeout = min(timeout, max(time.Duration(p.nextDrain-time.Now().UnixNano()), time.Millisecond))
		}
		if p.more {
			timeout = 0 // bulk output left: look for input, then go on
			// Its writes are raw system calls, which never give up the P:
			// between slices, let the channel workers (a reply, a push)
			// run on it rather than wait for the runtime to preempt a
			// poller that writes for tens of milliseconds.
			runtime.Gosched()
		}
		n, err := p.wait(events, timeout)
		if err != nil {
			p.srv.log.Error("epoll_wait failed", "err", err)
			n = 0
			time.Sleep(10 * time.Millisecond) // not a spin if it keeps failing
		}
		p.now = time.Now().UnixNano()

		p.mu.Lock()
		p.woken = true // enqueues while we work need no eventfd write
		pending := p.pending
		p.pending = nil
		jobs := p.jobs
		p.jobs = p.spareJob[:0]
		draining, plan, stopping := p.draining, p.plan, p.stopping
		p.sawDrain, p.sawStop = draining, stopping
		p.mu.Unlock()
		if p.hookTaken != nil {
			p.hookTaken()
		}

		for _, pc := range pending {
			p.add(pc.c, pc.leftover)
		}
		// Fan-out first: every broadcast that arrived since the last pass
		// is queued to its sockets before any is flushed, so broadcasts
		// that arrive together leave in one writev per socket.
		for i, j := range jobs {
			p.runJob(j)
			jobs[i] = nil
		}
		p.spareJob = jobs[:0]
		for i := range n {
			ev := &events[i]
			slot := int(ev.Fd) // the epoll user data holds the slot, not the fd
			if slot == wakeSlot {
				var b [8]byte
				_, _ = unix.Read(p.evfd, b[:])
				continue
			}
			if slot < 0 || slot >= len(p.conns) || p.conns[slot] == nil {
				continue
			}
			c := p.conns[slot]
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				p.read(c)
			}
			if ev.Events&unix.EPOLLOUT != 0 && p.conns[slot] == c {
				p.flush(c)
			}
		}
		if draining {
			p.drainStep(plan)
		}
		if p.now-p.lastSweep >= int64(p.sweepEvery) {
			p.lastSweep = p.now
			p.sweep()
		}
		p.flushDirty()
		p.publishMetrics()
		if stopping {
			for _, c := range p.conns {
				if c != nil {
					p.finalClose(c, channels.ReasonDrain)
				}
			}
			p.flushDirty() // releases conns queued by the final closes
			p.mu.Lock()
			clear(p.bulk)
			p.bulk, p.bulkHead = nil, 0
			p.mu.Unlock()
			return
		}
	}
}

// drainStep closes the next batch of sockets with 1012 when its time has
// come. The batch size is fixed on the first step from the sockets open
// then: the configured share, raised so that the whole set is closed
// within plan.spread. Past plan.end every socket left is closed at once.
func (p *poller) drainStep(plan drainPlan) {
	if p.drainPos >= len(p.conns) || p.now < p.nextDrain {
		return
	}
	pastEnd := !plan.end.IsZero() && p.now >= plan.end.UnixNano()
	if p.drainBatch == 0 {
		var first time.Duration
		p.drainBatch, p.drainEvery, first = drainPace(plan, int(p.open.Load()), len(p.conns))
		if first > 0 && !pastEnd {
			p.nextDrain = p.now + int64(first)
			return
		}
	}
	batch := p.drainBatch
	if pastEnd {
		batch = len(p.conns)
	}
	p.nextDrain = p.now + int64(p.drainEvery)
	closed := 0
	for ; p.drainPos < len(p.conns) && closed < batch; p.drainPos++ {
		if c := p.conns[p.drainPos]; c != nil && c.state.Load() == stateOpen {
			c.closeWith(uint16(channels.CloseServiceRestart), channels.ReasonDrain)
			closed++
		}
	}
	if closed > 0 {
		p.srv.metrics.addDrained(closed)
	}
}

// drainPace is how a poller with open sockets (all slots) drains: batch
// sockets every pause, the first batch first after the start. batch is
// its share of drain_batch (or, with none, at least minDrainBatch) at
// plan.every; when that cannot close open sockets within plan.spread, the
// pause goes back to plan.interval and batch is what fits (a stretched
// pause would make fewer, larger bursts); all of them when the spread
// holds fewer than one step. first is slot/slots of the pause: the
// node's pollers take turns.
func drainPace(plan drainPlan, open, all int) (batch int, every, first time.Duration) {
	batch, every = drainBatchFor(plan, open, all)
	if plan.slots > 0 {
		first = every * time.Duration(plan.slot) / time.Duration(plan.slots)
	}
	return batch, every, first
}

// drainBatchFor is drainPace's batch and pause.
func drainBatchFor(plan drainPlan, open, all int) (int, time.Duration) {
	every := plan.every
	if plan.spread <= 0 {
		if plan.batch > 0 {
			return plan.batch, every
		}
		return max(1, all), every
	}
	// fit is the batch that closes open sockets within spread at one step
	// per pause; false when spread holds less than one step.
	fit := func(pause time.Duration) (int, bool) {
		steps := int(plan.spread / pause)
		if steps < 1 {
			return 0, false
		}
		return (open + steps - 1) / steps, true
	}
	if plan.batch > 0 {
		if n, ok := fit(every); ok && n <= plan.batch {
			return plan.batch, every
		}
		if plan.interval > 0 {
			every = plan.interval
		}
		n, ok := fit(every)
		if !ok {
			return max(1, all), every
		}
		return max(plan.batch, n, 1), every
	}
	n, ok := fit(every)
	if !ok {
		return max(1, all), every
	}
	return max(minDrainBatch, n), every
}

// minDrainBatch keeps small nodes from dribbling their drain out.
const minDrainBatch = 64

// runJob runs one fan-out job; a panic in it (a bug) is counted and costs
// that broadcast on this lane, never the poller.
func (p *poller) runJob(j channels.FanoutJob) {
	defer func() {
		if r := recover(); r != nil {
			p.srv.metrics.panics.Inc()
			p.srv.log.Error("fan-out job panicked", "panic", fmt.Sprint(r))
		}
	}()
	j.RunFanout()
}

// Bulk flushing bounds. A pass writes at most bulkPerPass sockets that
// only have broadcast output, then polls for input again (without
// sleeping), so that reading, replies and new fan-out jobs never wait for a
// whole large fan-out to be written: at a few µs per write, a slice is a
// few milliseconds. Between chunks of bulkChunk sockets it flushes the
// urgent list.
const (
	bulkPerPass     = 512
	bulkChunk       = 64
	maxUrgentRounds = 16 // urgent lists taken per pass
)

// flushDirty writes the sockets with new output: every urgent one, and
// bulk ones up to bulkPerPass; then it ends the pass (idleLocked).
func (p *poller) flushDirty() {
	budget := p.bulkPerPass
	rounds := 0
	for {
		p.mu.Lock()
		if len(p.urgent) > 0 && rounds == maxUrgentRounds {
			// Replies keep coming faster than they are written: end the
			// pass anyway, so that input, jobs and bulk output get their
			// turn; the next pass polls without sleeping.
			p.more = true
			p.idleLocked()
			p.mu.Unlock()
			return
		}
		if len(p.urgent) > 0 {
			rounds++
			list := p.urgent
			p.urgent = p.spareUrgent[:0]
			p.mu.Unlock()
			for i, c := range list {
				c.mu.Lock()
				c.urgent = false
				c.mu.Unlock()
				p.flush(c)
				list[i] = nil
			}
			p.spareUrgent = list[:0]
			continue
		}
		rest := len(p.bulk) - p.bulkHead
		if rest == 0 || budget == 0 {
			p.more = rest > 0
			if rest == 0 {
				if cap(p.bulk) > maxRetainedBulk {
					p.bulk = nil
				} else {
					p.bulk = p.bulk[:0]
				}
				p.bulkHead = 0
			}
			p.idleLocked()
			p.mu.Unlock()
			return
		}
		k := min(rest, bulkChunk, budget)
		batch := append(p.batch[:0], p.bulk[p.bulkHead:p.bulkHead+k]...)
		clear(p.bulk[p.bulkHead : p.bulkHead+k])
		p.bulkHead += k
		if p.bulkHead >= compactBulkAt && 2*p.bulkHead >= len(p.bulk) {
			n := copy(p.bulk, p.bulk[p.bulkHead:])
			clear(p.bulk[n:])
			p.bulk, p.bulkHead = p.bulk[:n], 0
		}
		p.mu.Unlock()
		budget -= k
		for i, c := range batch {
			c.mu.Lock()
			c.dirty = false
			c.mu.Unlock()
			p.flush(c)
			batch[i] = nil
		}
		p.batch = batch[:0]
	}
}

// maxRetainedBulk is the largest bulk list array kept once empty;
// compactBulkAt is how far the head may advance before the list is moved
// down (when it is at least half done).
const (
	maxRetainedBulk = 4096
	compactBulkAt   = 1024
)

// idleLocked ends a pass. It clears woken, so that the next producer writes
// the eventfd, unless work arrived during the pass that the pass did not
// take (producers saw woken set and wrote nothing): a socket registered, a
// fan-out job dispatched, or a drain or stop started after the top of the
// loop (stop writes the eventfd itself, but the pass may have read that
// write away).
// Then it writes the eventfd itself, so the next epoll_wait returns at once
// instead of after the sweep interval. Called with p.mu held.
func (p *poller) idleLocked() {
	if len(p.pending) > 0 || len(p.jobs) > 0 || p.draining != p.sawDrain || p.stopping != p.sawStop {
		p.wakeLocked() // woken stays set: this write is the pending wake
		return
	}
	p.woken = false
}

func (p *poller) publishMetrics() {
	m := p.srv.metrics
	if p.framesIn > 0 {
		m.framesIn.Add(float64(p.framesIn))
		p.framesIn = 0
	}
	if p.framesOut > 0 {
		m.framesOut.Add(float64(p.framesOut))
		p.framesOut = 0
	}
	if p.writes > 0 {
		m.writes.Add(float64(p.writes))
		p.writes = 0
	}
	if p.bytesIn > 0 {
		m.bytesIn.Add(float64(p.bytesIn))
		p.bytesIn = 0
	}
	if p.bytesOut > 0 {
		m.bytesOut.Add(float64(p.bytesOut))
		p.bytesOut = 0
	}
}

func (p *poller) add(c *conn, leftover []byte) {
	fd := int(c.fd)
	if n := len(p.free); n > 0 {
		c.slot = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		c.slot = int32(len(p.conns))
		p.conns = append(p.conns, nil)
	}
	p.conns[c.slot] = c
	c.registered = true
	c.lastActive = p.now
	p.open.Add(1)
	p.srv.metrics.connections.Inc()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: c.slot}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.srv.log.Error("epoll_ctl add failed", "conn", c.id, "err", err)
		p.finalClose(c, channels.ReasonInternal)
		return
	}
	p.mu.Lock()
	draining := p.draining
	p.mu.Unlock()
	if draining {
		c.closeWith(uint16(channels.CloseServiceRestart), channels.ReasonDrain)
		p.srv.metrics.addDrained(1)
	}
	if len(leftover) > 0 && c.state.Load() == stateOpen {
		n := copy(p.buf, leftover)
		p.consume(c, p.buf[:n])
	}
	p.flush(c) // frames queued by Connect before the upgrade finished
}

// read handles readability: one read per event (level-triggered epoll
// calls again if more is pending, which keeps pollers fair).
func (p *poller) read(c *conn) {
	n, err := rawRead(int(c.fd), p.buf)
	if n > 0 {
		p.bytesIn += n
		if c.discard {
			return // input is dropped until EOF or the close timeout
		}
		if c.state.Load() == stateOpen {
			c.lastActive = p.now
		}
		p.consume(c, p.buf[:n])
		return
	}
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	// EOF or a socket error: the peer is gone.
	reason := channels.ReasonConnReset
	if c.state.Load() != stateOpen {
		reason = "" // keep the reason recorded when closing started
	}
	p.finalClose(c, reason)
}

// consume feeds received bytes to the parser and closes the socket on the
// first protocol violation or handler error.
func (p *poller) consume(c *conn, data []byte) {
	err := p.feed(c, data)
	if err == nil {
		return
	}
	c.discard = true
	c.parser.Reset()
	if errors.Is(err, errPeerClosed) {
		c.peerClosed = true
		if c.phase == phaseLingering {
			p.finalClose(c, "") // both close frames exchanged
		}
		return
	}
	if c.state.Load() != stateOpen {
		return // already closing; the stream is just garbage now
	}
	code, reason := closeFor(err)
	p.srv.log.Debug("closing socket", "conn", c.id, "code", code, "reason", reason, "err", err)
	c.closeWith(code, reason)
}

// feed runs the parser; a panic in it (a bug, reached by some input) costs
// that socket, never the process.
func (p *poller) feed(c *conn, data []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			p.srv.metrics.panics.Inc()
			p.srv.log.Error("frame parser panicked", "conn", c.id, "panic", fmt.Sprint(r))
			err = &CloseError{Code: channels.CloseInternalError, Reason: channels.ReasonInternal, Err: fmt.Errorf("panic: %v", r)}
		}
	}()
	return c.parser.Feed(data, p.srv.cfg.MaxMessageSize, c)
}

// closeFor maps an error from the parser or a handler to a close code.
func closeFor(err error) (uint16, channels.DisconnectReason) {
	var fe *wsframe.Error
	if errors.As(err, &fe) {
		switch fe.Code {
		case wsframe.CodeInvalidPayload:
			return fe.Code, channels.ReasonInvalidUTF8
		case wsframe.CodeMessageTooBig:
			return fe.Code, channels.ReasonTooBig
		default:
			return fe.Code, channels.ReasonProtocolError
		}
	}
	var cce *channels.CloseError
	if errors.As(err, &cce) {
		return uint16(cce.Code), cmp.Or(cce.Reason, channels.ReasonMalformed)
	}
	var ce *CloseError
	if errors.As(err, &ce) {
		r := ce.Reason
		if r == "" {
			r = channels.ReasonMalformed
		}
		return uint16(ce.Code), r
	}
	return uint16(channels.CloseInternalError), channels.ReasonInternal
}

// flush writes c's queue with writev until it is empty or the socket
// would block (then EPOLLOUT is armed). Everything queued leaves in as few
// writev calls as IOV_MAX allows: frames that piled up since the last
// flush (several broadcasts, a reply, a pong) cost one syscall.
func (p *poller) flush(c *conn) {
	if !c.registered {
		return
	}
	if p.hookFlush != nil {
		p.hookFlush(c)
	}
	c.mu.Lock()
	if c.state.Load() == stateClosed {
		c.mu.Unlock()
		return
	}
	var failed error
	q := c.out
	for q != nil && !q.empty() {
		before := q.charged // a newer pong may replace an unstarted one
		q.takePong()
		p.queuedBytes.Add(q.charged - before)
		if q.streamAtFront() {
			// Everything before the stream is written: its next frame,
			// or its end.
			p.queuedBytes.Add(q.pullStream())
			continue
		}
		iov := p.iov[:0]
		for i := range min(q.n, int32(len(p.iov))) {
			f := q.at(i)
			if f == nil {
				break // a stream's place: what follows waits for it
			}
			if i == 0 {
				f = f[q.off:]
			}
			var v unix.Iovec
			v.Base = &f[0]
			v.SetLen(len(f))
			iov = append(iov, v)
		}
		// Raw: a non-blocking write returns at once (see rawRead). One
		// frame, the usual case for a room's socket, goes out with write,
		// which spares the kernel copying in an iovec array.
		var n uintptr
		var errno unix.Errno
		if len(iov) == 1 {
			n, _, errno = unix.RawSyscall(unix.SYS_WRITE, uintptr(c.fd), uintptr(unsafe.Pointer(iov[0].Base)), uintptr(iov[0].Len))
		} else {
			n, _, errno = unix.RawSyscall(unix.SYS_WRITEV, uintptr(c.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		}
		p.writes++
		clear(iov) // drop references to frames
		if errno == unix.EAGAIN || (errno == 0 && n == 0) {
			if !c.pollOut {
				c.pollOut = true
				p.setPollOut(c, true)
			}
			break
		}
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			failed = errno
			break
		}
		before = q.charged
		q.moved = p.now
		p.framesOut += q.written(int(n))
		p.bytesOut += int(n)
		p.queuedBytes.Add(q.charged - before)
	}
	empty := q == nil || q.empty()
	if q != nil && empty {
		q.moved = 0
	}
	if empty {
		if c.pollOut {
			c.pollOut = false
			p.setPollOut(c, false)
		}
		if q != nil && len(q.ring) > minRing {
			q.ring, q.head = nil, 0
		}
	}
	closing := c.state.Load() == stateClosing
	c.mu.Unlock()

	switch {
	case failed != nil:
		p.finalClose(c, channels.ReasonConnReset)
	case closing && empty && c.peerClosed:
		// Both close frames exchanged: the server closes the TCP connection
		// first (RFC 6455 §7.1.1).
		p.finalClose(c, "")
	case closing && empty && c.phase != phaseLingering:
		// The close frame (always last) is out: half-close and wait for the
		// client's close frame or EOF, so that it reads ours before any RST
		// (closing with unread input makes the kernel send one).
		_ = unix.Shutdown(int(c.fd), unix.SHUT_WR)
		c.phase = phaseLingering
		c.lastActive = p.now
	case closing && c.phase == phaseNone:
		c.phase = phaseClosing
		c.lastActive = p.now
	}
}

func (p *poller) setPollOut(c *conn, on bool) {
	events := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
	if on {
		events |= unix.EPOLLOUT
	}
	ev := unix.EpollEvent{Events: events, Fd: c.slot}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev); err != nil {
		p.srv.log.Error("epoll_ctl mod failed", "conn", c.id, "err", err)
	}
}

// sweep runs once per sweepInterval: idle timeouts, token expiry and close
// timeouts. Expiry is checked here rather than with a timer per socket:
// a close up to one sweep late is within the promised bound (exp + leeway
// + 1 s), and sockets stay timer-free.
func (p *poller) sweep() {
	idle := int64(p.srv.cfg.IdleTimeout)
	closeTimeout := int64(p.srv.cfg.closeTimeout())
	stall := int64(p.srv.cfg.writeStallTimeout())
	for _, c := range p.conns {
		if c == nil {
			continue
		}
		c.mu.Lock()
		switch q := c.out; {
		case q == nil:
		case q.empty():
			c.out = nil // idle since at least the last flush: give it back
		case q.moved == 0:
			q.moved = p.now // the clock starts at the first sweep that sees it hold something
		case p.now-q.moved >= stall && c.state.Load() == stateOpen:
			// Nothing written for the whole timeout: the client is not
			// reading. (A closing socket has its close timeout.)
			c.slowConsumerLocked("nothing written for write_stall_timeout")
			continue
		}
		c.mu.Unlock()
		switch c.state.Load() {
		case stateOpen:
			if idle > 0 && p.now-c.lastActive >= idle {
				p.srv.log.Debug("idle timeout", "conn", c.id)
				// As Bandit: an idle socket is closed with 1002.
				c.closeWith(uint16(channels.CloseProtocolError), channels.ReasonIdleTimeout)
			} else if c.expires != 0 && p.now >= int64(c.expires)*int64(time.Second) {
				// Closing stops every Send at once: nothing more reaches
				// a socket whose token is no longer valid.
				p.srv.log.Debug("token expired", "conn", c.id)
				c.closeWith(uint16(channels.ClosePolicyViolation), channels.ReasonTokenExpired)
			}
		case stateClosing:
			if c.phase == phaseNone {
				// Close was queued while EPOLLOUT was armed (a client that
				// does not read): start the clock now.
				c.phase = phaseClosing
				c.lastActive = p.now
			} else if p.now-c.lastActive >= closeTimeout {
				p.finalClose(c, "")
			}
		}
	}
}

// finalClose releases the fd exactly once and tells the handler. reason ""
// keeps the reason recorded when closing started.
func (p *poller) finalClose(c *conn, reason channels.DisconnectReason) {
	if !c.registered {
		return
	}
	c.registered = false
	fd := int(c.fd)
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	_ = unix.Close(fd)
	// The slot is reused only by add, at the start of a later loop pass:
	// events already fetched in this pass can never reach a new socket.
	p.conns[c.slot] = nil
	p.free = append(p.free, c.slot)

	c.mu.Lock()
	c.state.Store(stateClosed)
	if c.reason == "" { // closed without a close handshake
		c.reason = cmp.Or(reason, channels.ReasonConnReset)
	}
	reason = c.reason
	if c.out != nil {
		c.out.giveUpStreams()
		p.queuedBytes.Add(-c.out.charged)
		c.out = nil
	}
	c.mu.Unlock()
	c.parser.Reset()

	p.open.Add(-1)
	p.srv.metrics.connections.Dec()
	p.srv.metrics.disconnects.WithLabelValues(string(reason)).Inc()
	p.srv.log.Debug("socket closed", "conn", c.id, "reason", reason)
	p.terminate(c, reason)
	c.releaseAdmission()
}

func (p *poller) terminate(c *conn, reason channels.DisconnectReason) {
	defer func() {
		if r := recover(); r != nil {
			p.srv.metrics.panics.Inc()
			p.srv.log.Error("socket handler panicked in Terminate", "conn", c.id, "panic", fmt.Sprint(r))
		}
	}()
	c.handler.Terminate(leaveReason(reason))
}

// wait returns the ready events, waiting up to timeout for one (0: not at
// all). It waits in the runtime's network poller (epraw), never in a
// blocking epoll_wait.
func (p *poller) wait(events []unix.EpollEvent, timeout time.Duration) (int, error) {
	n, err := epollPoll(p.epfd, events)
	if n > 0 || err != nil || timeout <= 0 {
		return n, err
	}
	// Waking before the deadline asked for is harmless (the loop comes
	// back here), so the deadline is only moved when it must come sooner
	// or has passed: about once per sweep, not once per wait.
	now := time.Now()
	if want := now.Add(timeout); p.deadline.IsZero() || p.deadline.After(want) || !p.deadline.After(now) {
		if err := p.epfile.SetReadDeadline(want); err != nil {
			return 0, err
		}
		p.deadline = want
	}
	rerr := p.epraw.Read(func(fd uintptr) bool {
		n, err = epollPoll(int(fd), events)
		return n > 0 || err != nil
	})
	if rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
		return 0, rerr
	}
	return n, err
}

// epollPoll takes the events ready on epfd without blocking, so it needs
// none of the runtime's bookkeeping for a system call that may block.
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	switch errno {
	case 0:
		return int(r), nil
	case unix.EINTR:
		return 0, nil
	default:
		return 0, errno
	}
}
