package phx

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Versions of the serializer (the vsn query parameter).
const (
	VsnV1 = "1.0.0"
	VsnV2 = "2.0.0"
	// DefaultVsn is phoenix.js's DEFAULT_VSN.
	DefaultVsn = VsnV2
)

// Defaults, all from phoenix.js unless noted.
const (
	// DefaultHeartbeatInterval: a heartbeat this long after the previous
	// one; no reply within another interval closes the socket.
	DefaultHeartbeatInterval = 30 * time.Second
	// DefaultTimeout bounds joins and pushes that nobody waits on with a
	// context (rejoins, Push without Wait).
	DefaultTimeout = 10 * time.Second
	// DefaultDialTimeout bounds one TCP connect plus WebSocket handshake
	// (not in phoenix.js, where the browser decides).
	DefaultDialTimeout = 10 * time.Second
	// writeTimeout bounds one frame write, so a stalled peer cannot wedge
	// a pusher forever; the connection is dropped and reconnected.
	writeTimeout = 10 * time.Second
	// closeCodeNormal is the WebSocket normal-closure code: sent by Close,
	// and when received from the server it stops reconnection.
	closeCodeNormal = 1000
)

// Subprotocols offered when an auth token is set (phoenix.js authToken).
const (
	subprotocolPhoenix     = "phoenix"
	subprotocolTokenPrefix = "base64url.bearer.phx."
)

// ReconnectBackoff is phoenix.js reconnectAfterMs:
// [10,50,100,150,200,250,500,1000,2000] ms, then 5 s.
func ReconnectBackoff(tries int) time.Duration {
	steps := [...]time.Duration{10, 50, 100, 150, 200, 250, 500, 1000, 2000}
	if tries >= 1 && tries <= len(steps) {
		return steps[tries-1] * time.Millisecond
	}
	return 5 * time.Second
}

// RejoinBackoff is phoenix.js rejoinAfterMs: [1,2,5] s, then 10 s.
func RejoinBackoff(tries int) time.Duration {
	steps := [...]time.Duration{1, 2, 5}
	if tries >= 1 && tries <= len(steps) {
		return steps[tries-1] * time.Second
	}
	return 10 * time.Second
}

// Errors returned by the client.
var (
	// ErrSocketClosed: the socket was closed with Close.
	ErrSocketClosed = errors.New("phx: socket closed")
	// ErrNotConnected: a frame could not be sent because the socket is down.
	ErrNotConnected = errors.New("phx: not connected")
	// ErrConnectionLost: the connection dropped before the reply came.
	ErrConnectionLost = errors.New("phx: connection lost before the reply")
	// ErrTimeout: no reply within Options.Timeout.
	ErrTimeout = errors.New("phx: timeout")
	// ErrJoinRefused: the server answered the join with a non-ok status.
	ErrJoinRefused = errors.New("phx: join refused")
	// ErrChannelClosed: the channel closed (left, or phx_close/phx_error)
	// before the push got a reply.
	ErrChannelClosed = errors.New("phx: channel closed")
	// ErrNotJoined: a push on a channel that was never joined or was left.
	ErrNotJoined = errors.New("phx: push before join")
	// ErrAlreadyJoined: Join called twice on one Channel (phoenix.js throws).
	ErrAlreadyJoined = errors.New("phx: channel already joined; create a new one")
)

// Options configure a Socket. The zero value is phoenix.js's defaults.
type Options struct {
	// Vsn is the serializer version: "2.0.0" (default when empty) or
	// "1.0.0".
	Vsn string
	// Params returns the connect params, re-evaluated on every connect and
	// encoded as phoenix.js does (see EncodeParams). Nil means none.
	Params func() map[string]any
	// AuthToken, when set, is sent as the subprotocol
	// "base64url.bearer.phx.<standard base64, no padding>" next to
	// "phoenix", as phoenix.js authToken does.
	AuthToken string
	// HeartbeatInterval between heartbeats; also how long a heartbeat reply
	// may take. 0 means DefaultHeartbeatInterval; negative disables.
	HeartbeatInterval time.Duration
	// Reconnect returns the wait before reconnect attempt tries (1-based).
	// Nil means ReconnectBackoff.
	Reconnect func(tries int) time.Duration
	// Rejoin returns the wait before channel rejoin attempt tries
	// (1-based). Nil means RejoinBackoff.
	Rejoin func(tries int) time.Duration
	// Timeout bounds a join or push nobody waits on with a context. 0
	// means DefaultTimeout.
	Timeout time.Duration
	// DialTimeout bounds one connect and handshake. 0 means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// NetDial, when set, opens the TCP connection (to choose a source
	// address or go through a test proxy).
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives debug logs. Nil discards them.
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	switch o.Vsn {
	case "":
		o.Vsn = DefaultVsn
	case VsnV1, VsnV2:
	default:
		return o, fmt.Errorf("phx: unsupported vsn %q (want %s or %s)", o.Vsn, VsnV1, VsnV2)
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if o.Reconnect == nil {
		o.Reconnect = ReconnectBackoff
	}
	if o.Rejoin == nil {
		o.Rejoin = RejoinBackoff
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Socket is one Phoenix socket: a WebSocket connection that is re-dialled
// when it drops, and the channels multiplexed on it.
type Socket struct {
	endpoint string
	opts     Options
	ser      serializer
	v2       bool
	refs     atomic.Uint64
	done     chan struct{} // closed by Close
	wg       sync.WaitGroup

	mu       sync.Mutex
	cur      *wsConn // nil while disconnected
	closed   bool
	channels []*Channel
	pending  map[string]*Push // by ref, awaiting a reply
	onOpen   []func()
	onClose  []func(code int)
	tries    int // reconnect attempts since the last open
}

// wsConn is one WebSocket connection of a Socket; a reconnect makes a new
// one, so goroutines of an old connection can never act on the new one.
type wsConn struct {
	nc     net.Conn
	r      io.Reader
	wmu    sync.Mutex
	hbRef  atomic.Pointer[string] // outstanding heartbeat ref
	hbLost atomic.Bool            // closed for a heartbeat timeout
	done   chan struct{}          // closed when the reader returns
}

func (c *wsConn) writeFrame(op ws.OpCode, p []byte) error {
	// Header and payload go out under one lock so frames never interleave.
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	return wsutil.WriteClientMessage(c.nc, op, p)
}

// Connect dials url (for example ws://127.0.0.1:4000/socket/websocket) and
// returns the connected socket. Only this first dial is synchronous: if it
// fails Connect returns the error; later drops are re-dialled in the
// background with Options.Reconnect backoff, except after a server close
// with code 1000, which (as in phoenix.js) leaves the socket down for good:
// Connected stays false and the caller should Close it.
func Connect(ctx context.Context, url string, opts Options) (*Socket, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Socket{
		endpoint: url,
		opts:     o,
		done:     make(chan struct{}),
		pending:  make(map[string]*Push),
	}
	if o.Vsn == VsnV1 {
		s.ser = v1Serializer{}
	} else {
		s.ser, s.v2 = v2Serializer{}, true
	}
	c, err := s.dial(ctx)
	if err != nil {
		return nil, err
	}
	s.attach(c)
	return s, nil
}

// URL returns the URL the next connect will dial (params re-evaluated).
func (s *Socket) URL() string {
	var params map[string]any
	if s.opts.Params != nil {
		params = s.opts.Params()
	}
	return EndpointURL(s.endpoint, params, s.opts.Vsn)
}

func (s *Socket) dial(ctx context.Context) (*wsConn, error) {
	d := ws.Dialer{Timeout: s.opts.DialTimeout, NetDial: s.opts.NetDial}
	if s.opts.AuthToken != "" {
		d.Protocols = []string{subprotocolPhoenix,
			subprotocolTokenPrefix + base64.RawStdEncoding.EncodeToString([]byte(s.opts.AuthToken))}
	}
	nc, br, _, err := d.Dial(ctx, s.URL())
	if err != nil {
		return nil, fmt.Errorf("phx: dial: %w", err)
	}
	c := &wsConn{nc: nc, r: nc, done: make(chan struct{})}
	if br != nil {
		// The server already sent frames after the handshake; read them from
		// the handshake buffer first. It is not returned to gobwas's pool
		// because it stays in use.
		c.r = io.MultiReader(br, nc)
	}
	return c, nil
}

// attach makes c the socket's connection and starts its goroutines.
func (s *Socket) attach(c *wsConn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.nc.Close()
		return
	}
	s.cur = c
	s.tries = 0
	hooks := append([]func(){}, s.onOpen...)
	chans := append([]*Channel{}, s.channels...)
	s.mu.Unlock()
	s.opts.Logger.Debug("phx: connected", "url", s.endpoint)

	s.wg.Add(1)
	go s.readLoop(c)
	if s.opts.HeartbeatInterval > 0 {
		s.wg.Add(1)
		go s.heartbeatLoop(c)
	}
	for _, ch := range chans {
		ch.socketOpened()
	}
	for _, h := range hooks {
		h()
	}
}

// OnOpen registers fn to run after every successful (re)connect.
func (s *Socket) OnOpen(fn func()) {
	s.mu.Lock()
	s.onOpen = append(s.onOpen, fn)
	s.mu.Unlock()
}

// OnClose registers fn to run when a connection ends, with the close code
// the server sent (0 when the connection dropped without one).
func (s *Socket) OnClose(fn func(code int)) {
	s.mu.Lock()
	s.onClose = append(s.onClose, fn)
	s.mu.Unlock()
}

// Connected reports whether the socket has a live connection.
func (s *Socket) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur != nil
}

// nextRef returns the next socket-wide ref as a decimal string.
func (s *Socket) nextRef() string {
	return strconv.FormatUint(s.refs.Add(1), 10)
}

// send writes one frame on the current connection.
func (s *Socket) send(op ws.OpCode, frame []byte) error {
	s.mu.Lock()
	c, closed := s.cur, s.closed
	s.mu.Unlock()
	if closed {
		return ErrSocketClosed
	}
	if c == nil {
		return ErrNotConnected
	}
	if err := c.writeFrame(op, frame); err != nil {
		// A failed write leaves the stream in an unknown state: drop the
		// connection; the reader notices and reconnects.
		_ = c.nc.Close()
		return fmt.Errorf("%w: %v", ErrNotConnected, err)
	}
	return nil
}

func (s *Socket) readLoop(c *wsConn) {
	defer s.wg.Done()
	code := 0
	rd := &wsutil.Reader{
		Source:       c.r,
		State:        ws.StateClientSide,
		MaxFrameSize: maxFrameSize,
		// Control frames between the fragments of a message.
		OnIntermediate: func(h ws.Header, r io.Reader) error { return c.control(h, r) },
	}
	for {
		hdr, err := rd.NextFrame()
		if err == nil && hdr.OpCode.IsControl() {
			err = c.control(hdr, rd)
			if err == nil {
				continue
			}
		}
		var data []byte
		if err == nil {
			data, err = io.ReadAll(io.LimitReader(rd, maxMessageSize+1))
			if err == nil && len(data) > maxMessageSize {
				err = fmt.Errorf("phx: message over %d bytes", maxMessageSize)
			}
		}
		if err != nil {
			var ce closedByPeer
			if errors.As(err, &ce) {
				code = int(ce)
			}
			s.opts.Logger.Debug("phx: connection ended", "err", err, "code", code)
			break
		}
		s.handleFrame(c, hdr.OpCode, data)
	}
	_ = c.nc.Close()
	close(c.done)
	s.connLost(c, code)
}

// Size limits on what the client accepts from a server.
const (
	maxFrameSize   = 16 << 20
	maxMessageSize = 16 << 20
	// maxControlPayload is RFC 6455's bound on control frame payloads.
	maxControlPayload = 125
)

// closedByPeer ends the read loop with the close code the server sent.
type closedByPeer int

func (c closedByPeer) Error() string { return "phx: closed by server with " + strconv.Itoa(int(c)) }

// control answers a ping, ignores a pong, and on a close echoes the code
// (ignoring write errors: a server that closed its end must still give its
// code to the reconnect decision) and ends the read loop.
func (c *wsConn) control(h ws.Header, r io.Reader) error {
	if h.Length > maxControlPayload {
		return ws.ErrProtocolControlPayloadOverflow
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r, p); err != nil {
		return err
	}
	switch h.OpCode {
	case ws.OpPing:
		_ = c.writeFrame(ws.OpPong, p)
		return nil
	case ws.OpClose:
		code, _ := ws.ParseCloseFrameData(p)
		_ = c.writeFrame(ws.OpClose, ws.NewCloseFrameBody(code, ""))
		if code == 0 {
			code = ws.StatusNoStatusRcvd
		}
		return closedByPeer(code)
	}
	return nil
}

func (s *Socket) heartbeatLoop(c *wsConn) {
	defer s.wg.Done()
	t := time.NewTimer(s.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if c.hbRef.Load() != nil {
			// No reply within an interval: phoenix.js closes with 1000
			// "heartbeat timeout" and still reconnects.
			s.opts.Logger.Debug("phx: heartbeat timeout")
			c.hbLost.Store(true)
			_ = c.writeFrame(ws.OpClose, ws.NewCloseFrameBody(closeCodeNormal, "heartbeat timeout"))
			_ = c.nc.Close()
			return
		}
		ref := s.nextRef()
		c.hbRef.Store(&ref)
		frame := s.ser.encode(nil, &ref, TopicPhoenix, EventHeartbeat, []byte("{}"))
		if err := c.writeFrame(ws.OpText, frame); err != nil {
			_ = c.nc.Close()
			return
		}
		t.Reset(s.opts.HeartbeatInterval)
	}
}

func (s *Socket) handleFrame(c *wsConn, op ws.OpCode, data []byte) {
	var (
		msg    Message
		status string
		err    error
	)
	if op == ws.OpBinary {
		msg, status, err = decodeBinary(data)
	} else {
		msg, err = s.ser.decode(data)
	}
	if err != nil {
		s.opts.Logger.Debug("phx: dropping undecodable frame", "err", err)
		return
	}
	if msg.Topic == TopicPhoenix && msg.Event == EventReply {
		if hb := c.hbRef.Load(); hb != nil && msg.Ref != nil && *msg.Ref == *hb {
			c.hbRef.CompareAndSwap(hb, nil)
		}
		return
	}
	if msg.Event == EventReply && msg.Ref != nil {
		s.resolveReply(msg, status)
		return
	}
	s.mu.Lock()
	var targets []*Channel
	for _, ch := range s.channels {
		if ch.topic == msg.Topic {
			targets = append(targets, ch)
		}
	}
	s.mu.Unlock()
	for _, ch := range targets {
		ch.dispatch(msg)
	}
}

// resolveReply completes the push waiting for msg's ref, if it is still
// current for its channel (phoenix.js isMember).
func (s *Socket) resolveReply(msg Message, binaryStatus string) {
	s.mu.Lock()
	p := s.pending[*msg.Ref]
	if p == nil || p.ch.topic != msg.Topic {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	if !p.ch.isMember(msg.JoinRef) {
		return
	}
	var r Reply
	if msg.Binary != nil {
		r = Reply{Status: binaryStatus, Binary: msg.Binary}
	} else {
		var err error
		if r, err = decodeReply(msg.Payload); err != nil {
			s.opts.Logger.Debug("phx: bad reply", "err", err)
			return
		}
	}
	s.unregister(p)
	p.resolve(r, nil)
}

func (s *Socket) register(p *Push) {
	s.mu.Lock()
	s.pending[p.ref] = p
	s.mu.Unlock()
}

func (s *Socket) unregister(p *Push) {
	s.mu.Lock()
	if s.pending[p.ref] == p {
		delete(s.pending, p.ref)
	}
	s.mu.Unlock()
}

// connLost handles the end of connection c: pending replies fail, channels
// become errored, and a reconnect is scheduled unless the client closed
// the socket or the server closed with 1000 (as phoenix.js).
func (s *Socket) connLost(c *wsConn, code int) {
	s.mu.Lock()
	if s.cur != c {
		s.mu.Unlock()
		return
	}
	s.cur = nil
	pending := s.pending
	s.pending = make(map[string]*Push)
	chans := append([]*Channel{}, s.channels...)
	hooks := append([]func(int){}, s.onClose...)
	reconnect := !s.closed && (code != closeCodeNormal || c.hbLost.Load())
	if reconnect {
		s.wg.Add(1)
	}
	s.mu.Unlock()

	for _, p := range pending {
		p.resolve(Reply{}, ErrConnectionLost)
	}
	for _, ch := range chans {
		ch.socketLost()
	}
	for _, h := range hooks {
		h(code)
	}
	if reconnect {
		go s.reconnectLoop()
	}
}

func (s *Socket) reconnectLoop() {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		s.mu.Lock()
		s.tries++
		wait := s.opts.Reconnect(s.tries)
		s.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-s.done:
			t.Stop()
			return
		case <-t.C:
		}
		c, err := s.dial(ctx)
		if err != nil {
			s.opts.Logger.Debug("phx: reconnect failed", "err", err)
			continue
		}
		s.attach(c)
		return
	}
}

// Close closes the socket for good: a 1000 close frame is sent, channels
// are closed locally, and no reconnect happens. It waits for the socket's
// goroutines, so it must not be called from a handler.
func (s *Socket) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	c := s.cur
	chans := append([]*Channel{}, s.channels...)
	s.channels = nil
	s.mu.Unlock()
	close(s.done)
	if c != nil {
		_ = c.writeFrame(ws.OpClose, ws.NewCloseFrameBody(closeCodeNormal, ""))
		_ = c.nc.Close()
	}
	for _, ch := range chans {
		ch.closeLocal(ErrSocketClosed)
	}
	s.wg.Wait()
	return nil
}

// Channel returns a new channel for topic. params returns the join payload
// and is called on every join and rejoin (nil means {}), so a channel can
// send its latest position. Call Join to join it.
func (s *Socket) Channel(topic string, params func() any) *Channel {
	ch := &Channel{s: s, topic: topic, params: params, state: StateClosed, handlers: make(map[string][]func(Message))}
	return ch
}

func (s *Socket) addChannel(ch *Channel) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.channels {
		if c == ch {
			return
		}
	}
	s.channels = append(s.channels, ch)
}

func (s *Socket) removeChannel(ch *Channel) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range s.channels {
		if c == ch {
			s.channels = append(s.channels[:i], s.channels[i+1:]...)
			return
		}
	}
}

// otherChannels returns the channels of topic other than ch.
func (s *Socket) otherChannels(ch *Channel) []*Channel {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Channel
	for _, c := range s.channels {
		if c != ch && c.topic == ch.topic {
			out = append(out, c)
		}
	}
	return out
}
