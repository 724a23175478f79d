package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// The floor server is the least a server can do for the broadcast
// scenario, to measure the gateway against. It speaks just enough of the
// protocol for the bench's clients: ok replies to phx_join, heartbeat and
// any push, and for a push of the broadcast event one frame
//
//	[null,null,topic,event,payload]
//
// encoded once and appended to a shared log. It keeps no per-topic state:
// every socket that has joined anything receives every broadcast.
//
// Writing: one writer goroutine per CPU sweeps its share of the sockets
// and sends each one everything appended since its last sweep in one
// non-blocking write. A socket's state is its offset into the log, plus
// the unwritten rest of a short write (with any replies queued behind it),
// which is nearly always empty. Reading: one goroutine per socket, blocked
// in read; the bench's subscribers send only a join and heartbeats.
//
// Lock order: floorConn.mu → bcastLog.mu → floorWriter.mu. Compaction
// reads the sockets' offsets atomically, without their locks.

const (
	// FloorDefaultTimeout bounds a floor server that nobody stops.
	FloorDefaultTimeout = time.Hour
	// FloorDefaultLogBytes: past this the log drops what every socket has
	// been sent; a socket this far behind is closed as a slow consumer.
	FloorDefaultLogBytes = 64 << 20
	// floorMaxMessage bounds one client message.
	floorMaxMessage = 64 << 10
	// floorRetry is how soon a writer retries sockets left with unwritten
	// bytes (their kernel buffer was full).
	floorRetry = time.Millisecond
	// floorReadBuf is each reading goroutine's buffer.
	floorReadBuf = 1 << 10
	// floorHandshakeTimeout bounds one upgrade.
	floorHandshakeTimeout = 10 * time.Second
)

// FloorConfig configures the floor server.
type FloorConfig struct {
	// Listen is a loopback host:port (port 0 picks one).
	Listen string
	// Path is the WebSocket path; the query is ignored.
	Path string
	// Event is the push that is broadcast; DefaultBroadcastEvent if empty.
	Event string
	// Writers is the number of writer goroutines; 0 means GOMAXPROCS.
	Writers int
	// LogBytes bounds the broadcast log; 0 means FloorDefaultLogBytes.
	LogBytes int
	// Timeout stops the server; 0 means FloorDefaultTimeout.
	Timeout time.Duration
	// Rooms makes topics count: a broadcast reaches the sockets that
	// joined its topic only (the rooms scenario), written at once by the
	// goroutine that read the push, one write per subscriber.
	Rooms bool
}

// NewFloorConfig returns the defaults.
func NewFloorConfig() FloorConfig {
	return FloorConfig{
		Listen:   "127.0.0.1:0",
		Path:     "/socket/websocket",
		Event:    DefaultBroadcastEvent,
		LogBytes: FloorDefaultLogBytes,
		Timeout:  FloorDefaultTimeout,
	}
}

// Validate refuses anything but a loopback listener.
func (c FloorConfig) Validate() error {
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("%w: -listen: %v", ErrConfig, err)
	}
	if !isLoopbackHost(host) {
		return fmt.Errorf("%w: -listen host %q is not a loopback address", ErrConfig, host)
	}
	if len(c.Path) == 0 || c.Path[0] != '/' {
		return fmt.Errorf("%w: -path must start with /", ErrConfig)
	}
	if c.Writers < 0 || c.Writers > 1024 || c.LogBytes < 0 || c.Timeout < 0 {
		return fmt.Errorf("%w: -writers out of 0..1024, or negative -log-bytes or -timeout", ErrConfig)
	}
	return nil
}

// floorStats are the server's counters.
type floorStats struct {
	Conns      int64 `json:"conns"`
	Broadcasts int64 `json:"broadcasts"`
	Sweeps     int64 `json:"sweeps"`
	Writes     int64 `json:"writes"` // write system calls
	Bytes      int64 `json:"bytes"`
	Short      int64 `json:"short_writes"`
	Slow       int64 `json:"slow_closed"`
}

// bcastLog is the append-only log of encoded broadcast frames. Bytes once
// appended are never written again, so a slice taken from it stays valid
// and unchanging without a lock after it is taken.
type bcastLog struct {
	mu   sync.Mutex
	buf  []byte
	base int64 // log offset of buf[0]
}

// tail returns the bytes from offset pos to the end and the end offset.
// pos below base (dropped) returns nil and ok false.
func (l *bcastLog) tail(pos int64) (b []byte, end int64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	end = l.base + int64(len(l.buf))
	if pos < l.base {
		return nil, end, false
	}
	if pos >= end {
		return nil, end, true
	}
	return l.buf[pos-l.base : len(l.buf) : len(l.buf)], end, true
}

// snapshot returns the live bytes and their offsets base..end.
func (l *bcastLog) snapshot() (b []byte, base, end int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf[:len(l.buf):len(l.buf)], l.base, l.base + int64(len(l.buf))
}

// floorConn is one socket.
type floorConn struct {
	nc net.Conn
	rc syscall.RawConn
	w  *floorWriter

	mu sync.Mutex
	// pos is the log offset up to which this socket has taken the log;
	// -1 until it joins. Written under mu, read atomically by compaction.
	pos  atomic.Int64
	out  []byte // taken but unwritten: a short write's rest, replies after it
	dead bool
	// topics this socket joined (rooms mode; its reader goroutine only).
	topics []*floorTopic
}

// floorTopic is one room's subscribers (rooms mode).
type floorTopic struct {
	mu   sync.Mutex
	subs []*floorConn
}

// floorWriter owns a share of the sockets. Its counters are its own, so
// that writers do not share a cache line on every write.
type floorWriter struct {
	mu    sync.Mutex
	conns []*floorConn
	wake  chan struct{}

	sweeps, writes, bytes, short atomic.Int64
}

// floorServer is a running floor server.
type floorServer struct {
	cfg     FloorConfig
	ln      net.Listener
	log     bcastLog
	writers []*floorWriter
	next    atomic.Uint64
	stats   struct{ conns, bcasts, slow atomic.Int64 }
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc

	connsMu sync.Mutex
	all     map[*floorConn]struct{}

	topicsMu sync.Mutex
	topics   map[string]*floorTopic // rooms mode
}

// startFloor listens and serves until ctx ends, cfg.Timeout passes or
// Close is called.
func startFloor(ctx context.Context, cfg FloorConfig) (*floorServer, error) {
	if cfg.Event == "" {
		cfg.Event = DefaultBroadcastEvent
	}
	if cfg.Writers == 0 {
		cfg.Writers = runtime.GOMAXPROCS(0)
	}
	if cfg.LogBytes == 0 {
		cfg.LogBytes = FloorDefaultLogBytes
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = FloorDefaultTimeout
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	s := &floorServer{cfg: cfg, ln: ln, all: map[*floorConn]struct{}{}, topics: map[string]*floorTopic{}}
	s.ctx, s.cancel = context.WithTimeout(ctx, cfg.Timeout)
	for range cfg.Writers {
		w := &floorWriter{wake: make(chan struct{}, 1)}
		s.writers = append(s.writers, w)
		s.wg.Go(func() { s.writeLoop(w) })
	}
	s.wg.Go(s.acceptLoop)
	s.wg.Go(func() {
		<-s.ctx.Done()
		ln.Close()
		s.connsMu.Lock()
		for c := range s.all {
			c.nc.Close()
		}
		s.connsMu.Unlock()
	})
	return s, nil
}

// Addr is the listening address.
func (s *floorServer) Addr() net.Addr { return s.ln.Addr() }

// Done is closed when the server stops (Close, its context, or Timeout).
func (s *floorServer) Done() <-chan struct{} { return s.ctx.Done() }

// Close stops the server and waits for its goroutines.
func (s *floorServer) Close() {
	s.cancel()
	s.wg.Wait()
}

// Stats returns the counters.
func (s *floorServer) Stats() floorStats {
	st := floorStats{Conns: s.stats.conns.Load(), Broadcasts: s.stats.bcasts.Load(), Slow: s.stats.slow.Load()}
	for _, w := range s.writers {
		st.Sweeps += w.sweeps.Load()
		st.Writes += w.writes.Load()
		st.Bytes += w.bytes.Load()
		st.Short += w.short.Load()
	}
	return st
}

func (s *floorServer) acceptLoop() {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			// EMFILE and the like: back off instead of spinning.
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		s.connsMu.Lock()
		if s.ctx.Err() != nil {
			s.connsMu.Unlock()
			nc.Close()
			return
		}
		c := &floorConn{nc: nc}
		c.pos.Store(-1)
		s.all[c] = struct{}{}
		s.connsMu.Unlock()
		s.wg.Go(func() { s.serve(c) })
	}
}

// serve upgrades the socket and reads its messages until it ends.
func (s *floorServer) serve(c *floorConn) {
	defer s.drop(c)
	_ = c.nc.SetDeadline(time.Now().Add(floorHandshakeTimeout))
	u := ws.Upgrader{OnRequest: func(uri []byte) error {
		path := uri
		for i, b := range uri {
			if b == '?' {
				path = uri[:i]
				break
			}
		}
		if string(path) != s.cfg.Path {
			return ws.RejectConnectionError(ws.RejectionStatus(404))
		}
		return nil
	}}
	if _, err := u.Upgrade(c.nc); err != nil {
		return
	}
	_ = c.nc.SetDeadline(time.Time{})
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	c.rc = rc
	c.w = s.writers[s.next.Add(1)%uint64(len(s.writers))]
	s.stats.conns.Add(1)

	br := bufio.NewReaderSize(c.nc, floorReadBuf)
	var msg []byte
	for {
		h, err := ws.ReadHeader(br)
		if err != nil {
			return
		}
		if h.Length > floorMaxMessage || !h.Masked || (!h.Fin && h.OpCode.IsControl()) {
			return // RFC 6455 violations; the bench never sends them
		}
		if int64(cap(msg)) < h.Length {
			msg = make([]byte, h.Length)
		}
		msg = msg[:h.Length]
		if _, err := io.ReadFull(br, msg); err != nil {
			return
		}
		ws.Cipher(msg, h.Mask, 0)
		switch h.OpCode {
		case ws.OpClose:
			s.reply(c, appendServerFrame(nil, opClose, msg[:min(len(msg), 2)]), false)
			return
		case ws.OpPing:
			s.reply(c, appendServerFrame(nil, opPong, msg), false)
		case ws.OpText:
			if !h.Fin {
				return // the bench's clients never fragment
			}
			if !s.handle(c, msg) {
				return
			}
		}
	}
}

// handle answers one client message; false closes the socket.
func (s *floorServer) handle(c *floorConn, m []byte) bool {
	var arr []json.RawMessage
	if json.Unmarshal(m, &arr) != nil || len(arr) < 5 {
		return false // as Phoenix, a malformed message ends the socket
	}
	var event string
	if json.Unmarshal(arr[3], &event) != nil {
		return false
	}
	joinRef, ref, topic, payload := arr[0], arr[1], arr[2], arr[4]
	if string(topic) == `"phoenix"` && event == "heartbeat" {
		joinRef = json.RawMessage("null")
	}
	join := event == "phx_join"
	if s.cfg.Rooms {
		if event == s.cfg.Event {
			s.broadcastRoom(topic, payload)
		}
		if join {
			s.joinRoom(c, topic)
			join = false
		}
	} else if event == s.cfg.Event {
		s.broadcast(topic, payload)
	}
	r := make([]byte, 0, len(joinRef)+len(ref)+len(topic)+64)
	r = append(r, '[')
	r = append(r, joinRef...)
	r = append(r, ',')
	r = append(r, ref...)
	r = append(r, ',')
	r = append(r, topic...)
	r = append(r, `,"phx_reply",{"status":"ok","response":{}}]`...)
	s.reply(c, appendServerFrame(nil, opText, r), join)
	return true
}

// broadcastFrame encodes a broadcast of the event: [null,null,topic,event,payload].
func (s *floorServer) broadcastFrame(topic, payload json.RawMessage) []byte {
	var b []byte
	b = append(b, `[null,null,`...)
	b = append(b, topic...)
	b = append(b, ',')
	ev, _ := json.Marshal(s.cfg.Event)
	b = append(b, ev...)
	b = append(b, ',')
	b = append(b, payload...)
	b = append(b, ']')
	return appendServerFrame(nil, opText, b)
}

// broadcast encodes the frame once and appends it to the log.
func (s *floorServer) broadcast(topic, payload json.RawMessage) {
	frame := s.broadcastFrame(topic, payload)

	l := &s.log
	l.mu.Lock()
	if len(l.buf)+len(frame) > s.cfg.LogBytes {
		s.compactLocked(len(frame))
	}
	l.buf = append(l.buf, frame...)
	l.mu.Unlock()
	s.stats.bcasts.Add(1)
	for _, w := range s.writers {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// floorRoomOutBytes bounds what one socket may have unwritten in rooms
// mode; past it the socket is closed as a slow consumer.
const floorRoomOutBytes = 4 << 20

// topic returns the room named by the JSON string t.
func (s *floorServer) topic(t json.RawMessage) *floorTopic {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	r := s.topics[string(t)]
	if r == nil {
		r = &floorTopic{}
		s.topics[string(t)] = r
	}
	return r
}

// joinRoom makes c a subscriber of topic (once), and gives it to its
// writer, which writes what a direct write left over.
func (s *floorServer) joinRoom(c *floorConn, topic json.RawMessage) {
	r := s.topic(topic)
	for _, x := range c.topics {
		if x == r {
			return
		}
	}
	if len(c.topics) == 0 {
		c.w.mu.Lock()
		c.w.conns = append(c.w.conns, c)
		c.w.mu.Unlock()
	}
	c.topics = append(c.topics, r)
	r.mu.Lock()
	r.subs = append(r.subs, c)
	r.mu.Unlock()
}

// broadcastRoom encodes the frame once and writes it to every subscriber
// of the topic, each in one non-blocking write (or behind what it has
// left unwritten, for its writer to finish). Lock order: floorTopic.mu →
// floorConn.mu.
func (s *floorServer) broadcastRoom(topic, payload json.RawMessage) {
	frame := s.broadcastFrame(topic, payload)
	r := s.topic(topic)
	// The room's lock is held over the whole fan-out, so that all its
	// subscribers get its events in one order (as the gateway does) even
	// when several sockets push to it.
	r.mu.Lock()
	defer r.mu.Unlock()
	s.stats.bcasts.Add(1)
	for _, c := range r.subs {
		c.mu.Lock()
		if !c.dead {
			if len(c.out)+len(frame) > floorRoomOutBytes {
				s.stats.slow.Add(1)
				c.dead, c.out = true, nil
				c.nc.Close()
			} else if s.flushLocked(c, frame) {
				s.wakeWriter(c.w)
			}
		}
		c.mu.Unlock()
	}
}

// compactLocked makes room for need more bytes: it closes, as slow
// consumers, the sockets more than half the budget behind the end, and
// drops the prefix every other socket has taken. Called with log.mu held.
func (s *floorServer) compactLocked(need int) {
	l := &s.log
	end := l.base + int64(len(l.buf))
	// Keep at most half the budget, so compaction is rare.
	cutoff := end - int64(s.cfg.LogBytes/2) + int64(need)
	newBase := end
	var slow []*floorConn
	for _, w := range s.writers {
		w.mu.Lock()
		for _, c := range w.conns {
			p := c.pos.Load()
			if p < 0 {
				continue
			}
			if p < cutoff {
				slow = append(slow, c)
				continue
			}
			newBase = min(newBase, p)
		}
		w.mu.Unlock()
	}
	for _, c := range slow {
		s.stats.slow.Add(1)
		c.nc.Close() // its reader ends and drops it
	}
	if newBase > l.base {
		// A fresh array: slices taken from the old one stay valid.
		nb := make([]byte, end-newBase, max(int(end-newBase)+need, 4096))
		copy(nb, l.buf[newBase-l.base:])
		l.buf, l.base = nb, newBase
	}
}

// reply sends one frame to c after whatever of the log it has not taken
// yet (so a push's broadcast reaches its sender before the reply, as in
// Phoenix); join makes c a subscriber of the log from then on.
func (s *floorServer) reply(c *floorConn, frame []byte, join bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return
	}
	if c.pos.Load() >= 0 {
		s.takeLocked(c)
	}
	c.out = append(c.out, frame...)
	if join && c.pos.Load() < 0 {
		s.log.mu.Lock()
		c.pos.Store(s.log.base + int64(len(s.log.buf)))
		c.w.mu.Lock()
		c.w.conns = append(c.w.conns, c)
		c.w.mu.Unlock()
		s.log.mu.Unlock()
	}
	if s.flushLocked(c, nil) {
		s.wakeWriter(c.w)
	}
}

// takeLocked appends the log's new bytes to c.out. Called with c.mu held.
func (s *floorServer) takeLocked(c *floorConn) {
	b, end, ok := s.log.tail(c.pos.Load())
	if !ok {
		c.dead = true
		c.nc.Close()
		return
	}
	c.out = append(c.out, b...)
	c.pos.Store(end)
}

// flushLocked writes c.out, or direct when c.out is empty, in one
// non-blocking write, keeping what the kernel did not take. It reports
// whether bytes are left. Called with c.mu held.
func (s *floorServer) flushLocked(c *floorConn, direct []byte) bool {
	p := direct
	if len(c.out) > 0 {
		p = append(c.out, direct...)
		c.out = p
	}
	if len(p) == 0 || c.dead {
		return false
	}
	var n int
	var werr error
	err := c.rc.Write(func(fd uintptr) bool {
		n, werr = unix.Write(int(fd), p)
		return true // never wait: the writer comes back
	})
	c.w.writes.Add(1)
	if n < 0 {
		n = 0
	}
	c.w.bytes.Add(int64(n))
	if err != nil || (werr != nil && !errors.Is(werr, unix.EAGAIN)) {
		c.dead = true
		c.out = nil
		c.nc.Close()
		return false
	}
	rest := p[n:]
	switch {
	case len(rest) == 0:
		c.out = c.out[:0]
		return false
	case len(c.out) > 0: // p is c.out
		c.out = c.out[:copy(c.out, rest)]
	default:
		c.out = append(c.out, rest...)
	}
	c.w.short.Add(1)
	return true
}

func (s *floorServer) wakeWriter(w *floorWriter) {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// writeLoop sweeps w's sockets whenever the log grows, and soon again
// while some are left with unwritten bytes.
func (s *floorServer) writeLoop(w *floorWriter) {
	var conns []*floorConn
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-w.wake:
		case <-retry.C:
		}
		w.sweeps.Add(1)
		w.mu.Lock()
		conns = append(conns[:0], w.conns...)
		w.mu.Unlock()
		// One snapshot of the log for the whole sweep.
		b, base, end := s.log.snapshot()
		left := false
		for _, c := range conns {
			if s.sweepOne(c, b, base, end) {
				left = true
			}
		}
		if left {
			retry.Reset(floorRetry)
		}
	}
}

// sweepOne sends c what it has not taken from the snapshot b (which holds
// log offsets base..end) in one write. It reports bytes left unwritten.
func (s *floorServer) sweepOne(c *floorConn, b []byte, base, end int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return false
	}
	if s.cfg.Rooms {
		return s.flushLocked(c, nil)
	}
	pos := c.pos.Load()
	var direct []byte
	switch {
	case pos >= end:
		// Nothing new in this snapshot (a reply took it already).
	case pos >= base:
		direct = b[pos-base:]
		c.pos.Store(end)
	default:
		// The snapshot no longer has it (compacted since): take from the
		// live log, which closes c if it is gone there too.
		s.takeLocked(c)
	}
	return s.flushLocked(c, direct)
}

// drop forgets a socket whose reader ended.
func (s *floorServer) drop(c *floorConn) {
	c.mu.Lock()
	c.dead = true
	c.out = nil
	c.mu.Unlock()
	c.nc.Close()
	for _, r := range c.topics {
		r.mu.Lock()
		for i, x := range r.subs {
			if x == c {
				last := len(r.subs) - 1
				r.subs[i], r.subs[last] = r.subs[last], nil
				r.subs = r.subs[:last]
				break
			}
		}
		r.mu.Unlock()
	}
	if w := c.w; w != nil {
		w.mu.Lock()
		for i, x := range w.conns {
			if x == c {
				last := len(w.conns) - 1
				w.conns[i] = w.conns[last]
				w.conns[last] = nil
				w.conns = w.conns[:last]
				break
			}
		}
		w.mu.Unlock()
	}
	s.connsMu.Lock()
	delete(s.all, c)
	s.connsMu.Unlock()
}
