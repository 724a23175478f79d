//go:build linux

package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/gateway/internal/params"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sys/unix"
)

// Subprotocol handling, as Phoenix's WebSocket transport does it.
const (
	phoenixSubprotocol = "phoenix"
	// authTokenPrefix marks the phoenix.js authToken subprotocol entry;
	// the rest is the token in standard base64 without padding.
	authTokenPrefix = "base64url.bearer.phx."
	// maxAuthTokenBytes bounds a token before it is decoded or verified.
	maxAuthTokenBytes = 8 << 10
)

var headBufPool = sync.Pool{New: func() any { b := make([]byte, MaxHandshakeBytes); return &b }}

// hsState collects what the upgrade callbacks learn about one request.
type hsState struct {
	req          Request
	refuse       int // HTTP status decided in a callback (0 = none)
	sawProtocols bool
	phoenix      bool
}

// handshake runs on a worker: read the request head, route it, upgrade.
func (s *Server) handshake(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	bp := headBufPool.Get().(*[]byte)
	buf := *bp
	defer headBufPool.Put(bp)

	n, lineEnd, headEnd := 0, -1, -1
	for headEnd < 0 {
		if n == len(buf) {
			s.metrics.handshakes.WithLabelValues(hsTooLarge).Inc()
			s.refuse(nc, http.StatusRequestHeaderFieldsTooLarge)
			return
		}
		m, err := nc.Read(buf[n:])
		n += m
		if err != nil && m == 0 {
			res := hsError
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				res = hsTimeout
			}
			s.metrics.handshakes.WithLabelValues(res).Inc()
			s.log.Debug("handshake read failed", "remote", nc.RemoteAddr().String(), "result", res, "err", err)
			_ = nc.Close()
			return
		}
		if lineEnd < 0 {
			if lineEnd = bytes.Index(buf[:n], []byte("\r\n")); lineEnd < 0 {
				continue
			}
			method, target, ok := parseRequestLine(buf[:lineEnd])
			path, _, _ := strings.Cut(target, "?")
			if !ok || path != s.cfg.SocketPath+"/websocket" {
				s.metrics.handshakes.WithLabelValues(hsHTTP).Inc()
				s.serveHTTP(nc, buf[:n])
				return
			}
			if method != http.MethodGet {
				// Phoenix: a non-GET on the socket path is an empty 400.
				s.metrics.handshakes.WithLabelValues(hsBadRequest).Inc()
				s.refuse(nc, http.StatusBadRequest)
				return
			}
		}
		headEnd = bytes.Index(buf[max(lineEnd, 0):n], []byte("\r\n\r\n"))
		if headEnd >= 0 {
			headEnd += max(lineEnd, 0) + 4
		}
	}
	s.upgrade(nc, buf[:headEnd], buf[headEnd:n])
}

func parseRequestLine(line []byte) (method, target string, ok bool) {
	m, rest, ok1 := bytes.Cut(line, []byte(" "))
	t, _, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || len(t) == 0 {
		return "", "", false
	}
	return string(m), string(t), true
}

// responseCapture is the ReadWriter given to ws.Upgrader: it reads exactly
// the request head (so bytes the client sent after it stay ours) and keeps
// the response, so that a refusal can be replaced by one with an empty
// body (gobwas/ws writes a text body; Phoenix sends none).
type responseCapture struct {
	r   io.Reader
	out []byte
}

func (rc *responseCapture) Read(p []byte) (int, error) { return rc.r.Read(p) }
func (rc *responseCapture) Write(p []byte) (int, error) {
	rc.out = append(rc.out, p...)
	return len(p), nil
}

func (s *Server) upgrade(nc net.Conn, head, leftover []byte) {
	st := &hsState{}
	st.req.RemoteAddr = hostOf(nc.RemoteAddr())
	c := &conn{id: s.nextID.Add(1), fd: -1}
	st.req.ConnID = c.id
	var handler SocketHandler
	// registered: the socket went to a poller, which owns c from then on.
	registered := false
	// ctx carries the connect span, if traced, to this handshake's logs.
	ctx := context.Background()
	if s.opts.TracerProvider != nil {
		var span trace.Span
		ctx, span = s.startConnectSpan(c.id)
		defer func() { endConnectSpan(span, st.refuse, registered) }()
	}

	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			path, rawQuery, _ := strings.Cut(string(uri), "?")
			st.req.Path, st.req.RawQuery = path, rawQuery
			res, err := params.Decode(rawQuery, params.Limits{})
			if err != nil {
				st.refuse = http.StatusBadRequest
				return nil
			}
			ser, ok := negotiateVsn(res)
			if !ok {
				st.refuse = http.StatusForbidden
				return nil
			}
			st.req.Info.Serializer = ser
			st.req.Info.Params = res.JSON
			return nil
		},
		OnHeader: func(k, v []byte) error {
			switch {
			case bytes.EqualFold(k, []byte("Origin")):
				st.req.Origin = string(v)
			case bytes.EqualFold(k, []byte("X-Forwarded-For")):
				if st.req.XForwardedFor == "" {
					st.req.XForwardedFor = string(v)
				} else {
					st.req.XForwardedFor += ", " + string(v)
				}
			case bytes.EqualFold(k, []byte("User-Agent")):
				st.req.UserAgent = string(v)
			}
			return nil
		},
		ProtocolCustom: func(v []byte) (string, bool) {
			st.sawProtocols = true
			for item := range strings.SplitSeq(string(v), ",") {
				item = strings.TrimSpace(item)
				switch {
				case item == phoenixSubprotocol:
					st.phoenix = true
				case strings.HasPrefix(item, authTokenPrefix):
					tok, ok := decodeAuthToken(item[len(authTokenPrefix):])
					if !ok {
						st.refuse = http.StatusForbidden
					}
					st.req.Info.AuthToken = tok
				}
			}
			// Keep looking at further Sec-WebSocket-Protocol lines until
			// "phoenix" is found; the answer is decided in OnBeforeUpgrade.
			return "", true
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if st.refuse == 0 && st.sawProtocols && !st.phoenix {
				st.refuse = http.StatusForbidden // offered subprotocols, none ours
			}
			if st.refuse != 0 {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(st.refuse))
			}
			st.req.Info.RemoteAddr = st.req.RemoteAddr
			if admit := s.opts.Admit; admit != nil {
				status, release := admit(&st.req)
				if status != 0 {
					st.refuse = status
					return nil, ws.RejectConnectionError(ws.RejectionStatus(status))
				}
				c.release = release
				c.expires = expirySecond(st.req.Expires)
			}
			c.p = s.pickPoller()
			h, err := s.connect(c, st.req.Info)
			if err != nil {
				c.releaseAdmission()
				s.log.DebugContext(ctx, "connect refused", "conn", c.id, "err", err)
				st.refuse = http.StatusForbidden
				return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusForbidden))
			}
			handler = h
			if st.phoenix {
				return ws.HandshakeHeaderString("Sec-WebSocket-Protocol: phoenix\r\n"), nil
			}
			return ws.HandshakeHeaderString(""), nil
		},
	}
	rc := &responseCapture{r: bytes.NewReader(head)}
	if _, err := u.Upgrade(rc); err != nil {
		status := http.StatusBadRequest
		var rej *ws.ConnectionRejectedError
		if errors.As(err, &rej) && rej.StatusCode() != 0 {
			status = rej.StatusCode()
		}
		res := hsBadRequest
		if st.refuse != 0 {
			res = hsRejected
		}
		s.metrics.handshakes.WithLabelValues(res).Inc()
		s.log.DebugContext(ctx, "upgrade refused", "conn", c.id, "remote", st.req.RemoteAddr, "status", status, "err", err)
		s.refuseRetry(nc, status, st.req.RetryAfter)
		return
	}
	c.handler = handler
	if _, err := nc.Write(rc.out); err != nil {
		s.metrics.handshakes.WithLabelValues(hsError).Inc()
		_ = nc.Close()
		c.abandon()
		c.handler.Terminate(leaveReason(channels.ReasonConnReset))
		c.releaseAdmission()
		return
	}
	fd, err := detach(nc)
	if err != nil {
		s.metrics.handshakes.WithLabelValues(hsError).Inc()
		s.log.Error("detaching upgraded socket failed", "conn", c.id, "err", err)
		c.abandon()
		c.handler.Terminate(leaveReason(channels.ReasonInternal))
		c.releaseAdmission()
		return
	}
	s.metrics.handshakes.WithLabelValues(hsOK).Inc()
	c.fd = int32(fd)
	var lo []byte
	if len(leftover) > 0 {
		lo = append([]byte(nil), leftover...)
	}
	s.log.DebugContext(ctx, "socket upgraded", "conn", c.id, "remote", st.req.RemoteAddr, "vsn", st.req.Info.Serializer)
	if !c.p.register(c, lo) {
		_ = unix.Close(fd)
		c.abandon()
		c.handler.Terminate(leaveReason(channels.ReasonDrain))
		c.releaseAdmission()
		return
	}
	registered = true
}

// expirySecond packs Request.Expires into conn.expires.
func expirySecond(t time.Time) uint32 {
	switch sec := t.Unix(); {
	case t.IsZero():
		return 0
	case sec < 1:
		return 1 // already expired: closed at the first sweep
	case sec > math.MaxUint32:
		return math.MaxUint32
	default:
		return uint32(sec)
	}
}

// releaseAdmission gives back what Options.Admit took, once. It runs on
// the goroutine that owns c at that moment (worker, then poller).
func (c *conn) releaseAdmission() {
	if r := c.release; r != nil {
		c.release = nil
		r.Release()
	}
}

// connect runs Options.Connect, turning a panic into a refusal.
func (s *Server) connect(c channels.Conn, info channels.ConnectInfo) (h SocketHandler, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.metrics.panics.Inc()
			err = errors.New("gateway: connect panicked")
		}
	}()
	h, err = s.opts.Connect(c, info)
	if err == nil && h == nil {
		err = ErrRefused
	}
	return h, err
}

// negotiateVsn applies Phoenix's rule: missing → V1, "~> 1.0.0" → V1,
// "~> 2.0.0" → V2, anything else refused.
func negotiateVsn(res params.Result) (channels.Serializer, bool) {
	if !res.HasVsn {
		return channels.V1, true
	}
	if res.VsnNotString {
		return 0, false
	}
	major, minor, ok := parseSemver(res.Vsn)
	switch {
	case !ok || minor != 0:
		return 0, false
	case major == 1:
		return channels.V1, true
	case major == 2:
		return channels.V2, true
	}
	return 0, false
}

// parseSemver accepts MAJOR.MINOR.PATCH with an optional -pre/+build
// suffix (Elixir's Version requires all three parts: "1.0" is invalid).
func parseSemver(v string) (major, minor int, ok bool) {
	core := v
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		core = v[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return 0, 0, false
	}
	var nums [3]int
	for i, p := range parts {
		if p == "" || len(p) > 9 || (len(p) > 1 && p[0] == '0') {
			return 0, 0, false
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || p[0] == '+' {
			return 0, 0, false
		}
		nums[i] = n
	}
	return nums[0], nums[1], true
}

// decodeAuthToken decodes the authToken entry: standard base64 without
// padding (btoa minus '='), also tolerating padding and the URL alphabet.
func decodeAuthToken(enc string) (string, bool) {
	if len(enc) > base64.StdEncoding.EncodedLen(maxAuthTokenBytes) {
		return "", false
	}
	enc = strings.TrimRight(enc, "=")
	if b, err := base64.RawStdEncoding.DecodeString(enc); err == nil {
		return string(b), true
	}
	if b, err := base64.RawURLEncoding.DecodeString(enc); err == nil {
		return string(b), true
	}
	return "", false
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// refuse writes an HTTP error with an empty body and closes.
func (s *Server) refuse(nc net.Conn, status int) { s.refuseRetry(nc, status, 0) }

// refuseRetry is refuse with a Retry-After header (whole seconds, rounded
// up) when retry > 0 and the status is 429 or 503.
func (s *Server) refuseRetry(nc net.Conn, status int, retry time.Duration) {
	resp := "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n"
	if retry > 0 && (status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable) {
		resp += "Retry-After: " + strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10) + "\r\n"
	}
	resp += "Content-Length: 0\r\nConnection: close\r\n\r\n"
	_, _ = io.WriteString(nc, resp)
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = nc.Close()
}

// detach takes the socket out of Go's netpoller: dup the fd (close-on-exec),
// close the net.Conn, and make the dup non-blocking with TCP_NODELAY.
func detach(nc net.Conn) (int, error) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		_ = nc.Close()
		return -1, errors.New("gateway: not a TCP connection")
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		_ = nc.Close()
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(orig uintptr) {
		fd, dupErr = unix.FcntlInt(orig, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		_ = nc.Close()
		return -1, err
	}
	_ = nc.Close()
	if dupErr != nil {
		return -1, os.NewSyscallError("fcntl", dupErr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return -1, os.NewSyscallError("setnonblock", err)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	return fd, nil
}

// serveHTTP hands a non-WebSocket request to the net/http server on the
// same port, replaying the bytes already read.
func (s *Server) serveHTTP(nc net.Conn, read []byte) {
	_ = nc.SetDeadline(time.Time{})
	rc := &replayConn{Conn: nc, r: &replayReader{b: bytes.Clone(read), conn: nc}}
	if !s.httpLn.deliver(rc) {
		_ = nc.Close()
	}
}

type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// socketOnHTTP catches WebSocket upgrades that arrive on a kept-alive HTTP
// connection (the first request on a connection is routed by the handshake
// worker; later ones reach net/http directly). It hijacks the connection
// and runs the same upgrade as the worker, so both paths behave alike.
func (s *Server) socketOnHTTP(next http.Handler) http.Handler {
	wsPath := s.cfg.SocketPath + "/websocket"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != wsPath {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodGet {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		hj, ok := w.(http.Hijacker)
		if !ok {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		nc, brw, err := hj.Hijack()
		if err != nil {
			return
		}
		var head bytes.Buffer
		head.WriteString("GET " + r.URL.RequestURI() + " HTTP/1.1\r\nHost: " + r.Host + "\r\n")
		_ = r.Header.Write(&head)
		head.WriteString("\r\n")
		leftover := make([]byte, brw.Reader.Buffered())
		_, _ = io.ReadFull(brw.Reader, leftover)
		if rc, ok := nc.(*replayConn); ok {
			// Bytes of the first request that net/http has not read yet
			// (it reads through rc) come before the socket's own.
			if br, ok := rc.r.(interface{ Len() int }); ok && br.Len() > 0 {
				more := make([]byte, br.Len())
				_, _ = io.ReadFull(rc.r, more)
				leftover = append(leftover, more...)
			}
			nc = rc.Conn
		}
		if head.Len() > MaxHandshakeBytes {
			s.refuse(nc, http.StatusRequestHeaderFieldsTooLarge)
			return
		}
		s.busy.Add(1)
		defer s.busy.Add(-1)
		_ = nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
		s.upgrade(nc, head.Bytes(), leftover)
	})
}

// replayReader yields the bytes already read, then the connection's.
type replayReader struct {
	b    []byte
	conn net.Conn
}

func (r *replayReader) Read(p []byte) (int, error) {
	if len(r.b) > 0 {
		n := copy(p, r.b)
		r.b = r.b[n:]
		return n, nil
	}
	return r.conn.Read(p)
}

// Len is how many replayed bytes are still unread.
func (r *replayReader) Len() int { return len(r.b) }

// chanListener is a net.Listener fed by the handshake workers.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
