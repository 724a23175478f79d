//go:build linux

package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/gateway/internal/wsframe"
)

// Connection states (conn.state). Transitions only go forward:
// open → closing → closed, or open → closed when the peer vanishes.
const (
	stateOpen    uint32 = iota
	stateClosing        // close frame queued; no more Sends, input discarded
	stateClosed         // fd closed, Terminate called
)

// Close phases tracked by the poller for the close timeout.
const (
	phaseNone      uint8 = iota
	phaseClosing         // close frame queued; waiting for it to be written
	phaseLingering       // close frame written, write side shut down; waiting for EOF
)

// conn is one upgraded socket. It is kept small on purpose (the memory
// target is per idle connection): no buffers while idle, no goroutine.
type conn struct {
	id   uint64
	p    *poller
	fd   int32
	slot int32 // index in p.conns (poller goroutine only)

	// Poller-goroutine only.
	registered bool
	peerClosed bool // the client's close frame was received
	discard    bool // input is no longer parsed (after a violation or the client's close)
	phase      uint8
	// expires is the Unix second from which the socket is closed with 1008
	// (Request.Expires, rounded down; 0: never). Seconds in a uint32 fill
	// padding after phase instead of growing the struct (valid to 2106).
	expires    uint32
	lastActive int64 // poller clock (UnixNano) of the last inbound byte, or of the close phase start
	parser     wsframe.Parser
	handler    SocketHandler
	release    Releaser // from Options.Admit; released once at the final close

	state atomic.Uint32 // written under mu, read anywhere

	mu      sync.Mutex
	dirty   bool // on the poller's bulk list (broadcast output)
	urgent  bool // on the poller's urgent list (replies, control frames)
	pollOut bool // EPOLLOUT armed: the poller flushes on writability
	reason  channels.DisconnectReason
	// out is what the socket holds for the client; nil while idle (it is
	// released by the sweep once empty), so an idle socket pays one word.
	out *outQueue
}

var (
	_ channels.Conn       = (*conn)(nil)
	_ channels.BulkConn   = (*conn)(nil)
	_ channels.StreamConn = (*conn)(nil)
)

// ID implements channels.Conn.
func (c *conn) ID() uint64 { return c.id }

// Lane implements channels.Laned: broadcasts to this socket are queued by
// the poller of its lane (Server.Dispatch): its own poller, or with more
// pollers than a topic has lanes (16), the poller of index lane modulo.
func (c *conn) Lane() int { return c.p.idx }

// Send implements channels.Conn: it queues a reference to frame (no copy)
// and never blocks. Past Config.WriteQueueMaxBytes (frame bytes plus
// entryOverhead per frame) the socket is a slow consumer: its queue is
// dropped and it is closed with 1013. The socket is flushed ahead of
// sockets that only have broadcast output (SendBulk), so a reply does not
// wait behind a large fan-out.
func (c *conn) Send(frame []byte) { c.send(frame, true) }

// SendBulk implements channels.BulkConn: as Send, for broadcast frames.
// Frames keep their order on the socket whichever method queued them; the
// socket is only flushed in its turn among the sockets with broadcast
// output, which the poller writes in slices between its other work.
func (c *conn) SendBulk(frame []byte) { c.send(frame, false) }

func (c *conn) send(frame []byte, urgent bool) {
	if len(frame) == 0 {
		return
	}
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		return
	}
	q := c.queueLocked()
	if q.charged+cost(len(frame)) > int64(c.p.srv.cfg.WriteQueueMaxBytes) {
		c.slowConsumerLocked("write queue over limit")
		return
	}
	q.push(frame)
	c.p.queuedBytes.Add(cost(len(frame)))
	list := c.markDirtyLocked(urgent)
	c.mu.Unlock()
	c.p.enqueueDirty(c, list)
}

// SendStream implements channels.StreamConn: st takes one place in the
// queue (charged entryOverhead, like a frame) and frames queued after it
// wait behind it. The poller asks st for its next frame only when
// everything before it has been written, so a stream holds at most one
// of its frames in the queue at a time; that frame is charged as any
// other, and frames queued behind the stream are refused past
// Config.WriteQueueMaxBytes as any others (1013). The socket is flushed
// as for Send.
func (c *conn) SendStream(st channels.FrameStream) {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		st.Close()
		return
	}
	q := c.queueLocked()
	if q.charged+entryOverhead > int64(c.p.srv.cfg.WriteQueueMaxBytes) {
		c.slowConsumerLocked("write queue over limit")
		st.Close()
		return
	}
	q.pushStream(st)
	c.p.queuedBytes.Add(entryOverhead)
	list := c.markDirtyLocked(true)
	c.mu.Unlock()
	c.p.enqueueDirty(c, list)
}

// sendPong answers a ping (poller goroutine). At most one pong waits per
// socket: a newer ping replaces the pending pong's payload, reusing its
// buffer, so a ping flood that never reads allocates and holds nothing
// per ping.
func (c *conn) sendPong(payload []byte) {
	c.mu.Lock()
	if c.state.Load() != stateOpen {
		c.mu.Unlock()
		return
	}
	q := c.queueLocked()
	before := q.charged
	if q.pong != nil && cap(q.pong) >= 2+len(payload) {
		q.charged -= int64(len(q.pong))
		q.pong = appendControlFrame(q.pong[:0], wsframe.OpPong, payload)
		q.charged += int64(len(q.pong))
	} else {
		q.setPong(appendControlFrame(make([]byte, 0, 2+len(payload)), wsframe.OpPong, payload))
	}
	c.p.queuedBytes.Add(q.charged - before)
	if q.charged > int64(c.p.srv.cfg.WriteQueueMaxBytes) {
		c.slowConsumerLocked("write queue over limit")
		return
	}
	list := c.markDirtyLocked(true)
	c.mu.Unlock()
	c.p.enqueueDirty(c, list)
}

// abandon marks a socket that never reached its poller closed and gives
// back what Connect may have queued, so that the node's output count
// (output_budget_bytes) does not keep it.
func (c *conn) abandon() {
	c.mu.Lock()
	c.state.Store(stateClosed)
	if c.out != nil {
		c.out.giveUpStreams()
		c.p.queuedBytes.Add(-c.out.charged)
		c.out = nil
	}
	c.mu.Unlock()
}

// queueLocked returns c.out, creating it on first use.
func (c *conn) queueLocked() *outQueue {
	if c.out == nil {
		c.out = &outQueue{}
	}
	return c.out
}

// slowConsumerLocked drops what is queued and closes with 1013. It
// unlocks c.mu.
func (c *conn) slowConsumerLocked(why string) {
	c.dropQueueLocked()
	list := c.startCloseLocked(uint16(channels.CloseTryAgainLater), channels.ReasonSlowConsumer)
	// The dropped frames are released now, but the close frame must still
	// be written: when EPOLLOUT is armed the poller would only come back
	// on writability, so put the socket on the urgent list regardless.
	if list == listNone && !c.urgent {
		c.urgent, list = true, listUrgent
	}
	c.mu.Unlock()
	c.p.srv.metrics.slowConsumers.Inc()
	c.p.srv.log.Warn("slow consumer: "+why, "conn", c.id, "limit_bytes", c.p.srv.cfg.WriteQueueMaxBytes)
	c.p.enqueueDirty(c, list)
}

// Close implements channels.Conn: a close frame with code goes out after
// the frames already queued, then the connection is closed. Later calls are
// no-ops.
func (c *conn) Close(code channels.CloseCode, reason channels.DisconnectReason) {
	c.closeWith(uint16(code), reason)
}

func (c *conn) closeWith(code uint16, reason channels.DisconnectReason) {
	c.mu.Lock()
	list := c.startCloseLocked(code, reason)
	c.mu.Unlock()
	c.p.enqueueDirty(c, list)
}

// startCloseLocked queues the close frame; it returns the poller list the
// caller must put c on.
func (c *conn) startCloseLocked(code uint16, reason channels.DisconnectReason) dirtyList {
	if c.state.Load() != stateOpen {
		return listNone
	}
	c.state.Store(stateClosing)
	c.reason = reason
	if c.out != nil {
		// Nothing a stream still has to send matters to a client being
		// closed: the close frame goes out after the frames already
		// queued, without waiting for the rest of a stream.
		c.out.giveUpStreams()
	}
	f := closeFrame(code)
	c.queueLocked().push(f)
	c.p.queuedBytes.Add(cost(len(f)))
	return c.markDirtyLocked(true)
}

// dirtyList names the poller list a socket with new output goes on.
type dirtyList uint8

const (
	listNone   dirtyList = iota // already on it, or EPOLLOUT will flush it
	listBulk                    // broadcast output only: flushed in slices
	listUrgent                  // a reply or control frame: flushed first
)

// markDirtyLocked records that c has new output and returns the list the
// caller must put it on (after releasing c.mu). An urgent frame moves a
// socket that is on the bulk list to the urgent list too; flushing it
// twice is harmless.
func (c *conn) markDirtyLocked(urgent bool) dirtyList {
	switch {
	case c.pollOut:
		return listNone // the poller flushes it on writability
	case urgent && !c.urgent:
		c.urgent = true
		return listUrgent
	case !urgent && !c.dirty && !c.urgent:
		c.dirty = true
		return listBulk
	}
	return listNone
}

// dropQueueLocked discards queued frames, except a frame already partly
// written: cutting it would corrupt the stream before the close frame.
func (c *conn) dropQueueLocked() {
	if c.out != nil {
		c.p.queuedBytes.Add(-c.out.dropUnsent(false))
	}
}

// Precomputed close frames for the codes the server sends itself; the
// frames are shared and immutable like any other queued frame.
var closeFrames = func() map[uint16][]byte {
	m := map[uint16][]byte{}
	for _, code := range []uint16{1000, 1001, 1002, 1007, 1008, 1009, 1011, 1012, 1013} {
		m[code] = buildCloseFrame(code)
	}
	return m
}()

func closeFrame(code uint16) []byte {
	if f, ok := closeFrames[code]; ok {
		return f
	}
	return buildCloseFrame(code)
}

// buildCloseFrame is an unmasked server close frame with code and an empty
// reason (Phoenix sends no reason text).
func buildCloseFrame(code uint16) []byte {
	return binary.BigEndian.AppendUint16([]byte{0x80 | byte(wsframe.OpClose), 2}, code)
}

// appendControlFrame appends an unmasked server control frame (pong) to
// dst. payload is at most 125 bytes (the parser refuses longer control
// frames).
func appendControlFrame(dst []byte, op wsframe.Op, payload []byte) []byte {
	dst = append(dst, 0x80|byte(op), byte(len(payload)))
	return append(dst, payload...)
}

// errPeerClosed stops the parser at the client's close frame: nothing the
// client sends after it means anything.
var errPeerClosed = errors.New("gateway: client sent close")

// OnMessage implements wsframe.Handler (poller goroutine). A handler error
// or panic closes only this socket; parsing goes on (in sync with the
// stream) so that the client's close frame is still recognized.
func (c *conn) OnMessage(op wsframe.Op, payload []byte) error {
	c.p.framesIn++
	if c.state.Load() != stateOpen {
		return nil // closing: in-flight messages are dropped
	}
	if err := c.callHandler(op, payload); err != nil {
		code, reason := closeFor(err)
		c.p.srv.log.Debug("handler closed socket", "conn", c.id, "code", code, "reason", reason, "err", err)
		c.closeWith(code, reason)
	}
	return nil
}

func (c *conn) callHandler(op wsframe.Op, payload []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.p.srv.metrics.panics.Inc()
			c.p.srv.log.Error("socket handler panicked", "conn", c.id, "panic", fmt.Sprint(r))
			err = &CloseError{Code: channels.CloseInternalError, Reason: channels.ReasonInternal, Err: fmt.Errorf("panic: %v", r)}
		}
	}()
	if op == wsframe.OpText {
		return c.handler.HandleText(payload)
	}
	return c.handler.HandleBinary(payload)
}

// OnControl implements wsframe.Handler (poller goroutine).
func (c *conn) OnControl(op wsframe.Op, payload []byte) error {
	c.p.framesIn++
	if c.state.Load() != stateOpen {
		// Closing: only the client's close frame (completing the closing
		// handshake) matters.
		if op == wsframe.OpClose {
			return errPeerClosed
		}
		return nil
	}
	switch op {
	case wsframe.OpPing:
		c.sendPong(payload)
		return nil
	case wsframe.OpPong:
		return nil // the server never pings; unsolicited pongs are allowed
	}
	// Close: echo the client's code with an empty reason (as Phoenix does).
	code, perr := parseClosePayload(payload)
	if perr != nil {
		return perr
	}
	c.closeWith(code, channels.ReasonClientClosed)
	return errPeerClosed
}

// parseClosePayload returns the code to echo for a client close frame.
func parseClosePayload(p []byte) (uint16, error) {
	switch {
	case len(p) == 0:
		// No status: RFC 6455 §7.4.1 says treat it as 1005; answering 1000
		// is the conventional echo. This is the only time we send 1000, and
		// only because the client already chose to go away.
		return 1000, nil
	case len(p) == 1:
		return 0, wsframe.ErrLengthCloseFrame
	}
	code := binary.BigEndian.Uint16(p)
	if !validCloseCode(code) {
		return 0, wsframe.ErrBadCloseCode
	}
	if !utf8.Valid(p[2:]) {
		return 0, wsframe.ErrInvalidUTF8
	}
	return code, nil
}

// validCloseCode follows RFC 6455 §7.4: codes a peer may send on the wire.
func validCloseCode(code uint16) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
