//go:build linux

package gateway

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/phxgate/phxgate/channels"
	"github.com/phxgate/phxgate/gateway/internal/params"
	"github.com/prometheus/client_golang/prometheus"
)

// The long-poll transport (PROTOCOL.md §1.2), answered as Phoenix 1.8
// answers it: HTTP 200 with the logical status in the JSON body, a signed
// session token, messages batched as JSON strings.
//
// A session is a channels.Conn like an upgraded socket: the protocol layer
// queues complete WebSocket frames, the session keeps the payloads of the
// text ones (shared, never copied) until the next poll. Binary frames
// cannot be delivered (a long-poll client only reads JSON strings; Phoenix
// never sends binary there): they are dropped and counted
// (phxgate_longpoll_messages_dropped_total{reason="binary"}); the session
// stays up, so a client that pushed a binary payload sees its push time out.
//
// Lock order: longPoll.mu, then lpSession.mu are never held together;
// lpSession.inMu (handler calls) may be held while taking lpSession.mu (a
// handler's Send), never the other way round. A POST's dispatch turn
// (lpSession.posts) is taken before inMu; the queue's own mutex is a leaf.

// Long-poll headers and paths.
const (
	lpSuffix         = "/longpoll"
	lpTokenHeader    = "X-Phoenix-Longpoll-Token"
	lpAuthHeader     = "X-Phoenix-Authtoken"
	lpTokenParam     = "token"
	lpNDJSON         = "application/x-ndjson"
	lpJSONType       = "application/json; charset=utf-8"
	lpJSONCache      = "no-store"
	lpDefaultCache   = "max-age=0, private, must-revalidate"
	lpTokenRawBytes  = 8 + 16 // session id, truncated HMAC
	lpTokenEncLength = (lpTokenRawBytes*8 + 5) / 6
)

// Session states.
const (
	lpOpen    uint8 = iota
	lpClosing       // ended; what is buffered still goes to the next poll
)

// Label values of the long-poll metrics.
const (
	lpReasonExpired channels.DisconnectReason = "expired" // no poll for 1.5 windows

	lpPollMessages   = "messages"    // 200
	lpPollEmpty      = "empty"       // 204 at the window's end
	lpPollSuperseded = "superseded"  // 204 at once: a newer poll took over past the held cap
	lpPollNew        = "new_session" // 410 with a fresh token
	lpPollRefused    = "refused"     // {"status":403}
	lpPollDraining   = "draining"    // HTTP 503: the node is draining

	lpPostOK          = "ok"           // 200 (also when the session was stopped, not crashed, by a line)
	lpPostGone        = "gone"         // {"status":410}
	lpPostCrashed     = "crashed"      // 408: a line crashed the session
	lpPostBadLine     = "bad_base64"   // HTTP 500, session survives
	lpPostTooLarge    = "too_large"    // HTTP 413, session survives
	lpPostBadBody     = "bad_body"     // HTTP 400: the body could not be read (in time)
	lpPostRefused     = "refused"      // {"status":403}: origin
	lpPostBusy        = "busy"         // HTTP 503: no free slot of longpoll.max_reading_posts within a window
	lpPostAddressBusy = "address_busy" // HTTP 503: the address holds longpoll.ip_max_reading_posts
	lpPostConflict    = "conflict"     // HTTP 409: the session has longPollMaxSessionPosts POSTs in flight
	lpPostWaitTimeout = "wait_timeout" // {"status":408}: no dispatch turn within a window (or the client left)

	lpDropBinary   = "binary"          // a binary frame: not deliverable over long-poll
	lpDropOverflow = "buffer_overflow" // buffered messages dropped when the session passed max_buffer_bytes
	lpDropLines    = "lines_over_cap"  // ndjson lines past the 100th
	lpDropExpired  = "expired"         // buffered messages of an ended session never polled

	lpRefuseMax       = "max_sessions"
	lpRefuseVsn       = "vsn"
	lpRefuseParams    = "params"
	lpRefuseAdmission = "admission"
	lpRefuseConnect   = "connect"
	lpRefuseOrigin    = "origin"
)

type lpMetrics struct {
	sessions *prometheus.GaugeVec // no labels; a vec keeps registration uniform
	created  prometheus.Counter
	closed   *prometheus.CounterVec
	refused  *prometheus.CounterVec
	polls    *prometheus.CounterVec
	posts    *prometheus.CounterVec
	dropped  *prometheus.CounterVec
	other    *prometheus.CounterVec
	reading  prometheus.Gauge
	waiting  prometheus.Gauge
}

func newLPMetrics(reg prometheus.Registerer) (*lpMetrics, error) {
	m := &lpMetrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "phxgate_longpoll_sessions", Help: "Open long-poll sessions.",
		}, nil),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phxgate_longpoll_sessions_created_total", Help: "Long-poll sessions started.",
		}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_longpoll_sessions_closed_total", Help: "Long-poll sessions ended, by reason (expired: no poll for 1.5 windows; the others as phxgate_gateway_disconnects_total).",
		}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_longpoll_sessions_refused_total", Help: "Long-poll sessions refused at start, by reason (admission refusals are also counted in phxgate_gateway_connect_refused_total).",
		}, []string{"reason"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_longpoll_polls_total", Help: "Long-poll GETs answered, by result.",
		}, []string{"result"}),
		posts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_longpoll_posts_total", Help: "Long-poll POSTs answered, by result.",
		}, []string{"result"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_longpoll_messages_dropped_total", Help: "Messages a long-poll session dropped, by reason.",
		}, []string{"reason"}),
		reading: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "phxgate_longpoll_posts_reading", Help: "Large long-poll POST bodies being read and dispatched now (at most longpoll.max_reading_posts).",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "phxgate_longpoll_posts_waiting", Help: "Long-poll POSTs whose body is read, waiting for their session's dispatch turn (at most 8 per session).",
		}),
		other: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phxgate_longpoll_other_requests_total", Help: "Long-poll requests that are neither GET nor POST: options (CORS preflight) or bad_method (400).",
		}, []string{"kind"}),
	}
	m.sessions.WithLabelValues()
	for _, r := range allDisconnectReasons {
		m.closed.WithLabelValues(string(r))
	}
	m.closed.WithLabelValues(string(lpReasonExpired))
	for _, r := range []string{lpRefuseMax, lpRefuseVsn, lpRefuseParams, lpRefuseAdmission, lpRefuseConnect, lpRefuseOrigin, lpPollDraining} {
		m.refused.WithLabelValues(r)
	}
	for _, r := range []string{lpPollMessages, lpPollEmpty, lpPollSuperseded, lpPollNew, lpPollRefused, lpPollDraining} {
		m.polls.WithLabelValues(r)
	}
	for _, r := range []string{lpPostOK, lpPostGone, lpPostCrashed, lpPostBadLine, lpPostTooLarge, lpPostBadBody, lpPostRefused, lpPostBusy, lpPostAddressBusy, lpPostConflict, lpPostWaitTimeout} {
		m.posts.WithLabelValues(r)
	}
	for _, r := range []string{lpDropBinary, lpDropOverflow, lpDropLines, lpDropExpired} {
		m.dropped.WithLabelValues(r)
	}
	for _, r := range []string{"options", "bad_method"} {
		m.other.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.sessions, m.created, m.closed, m.refused, m.polls, m.posts, m.dropped, m.other, m.reading, m.waiting} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// longPoll serves <socket_path>/longpoll and owns the sessions.
type longPoll struct {
	s      *Server
	cfg    LongPollConfig
	path   string
	key    [32]byte // per-boot HMAC key: tokens of another node or boot are unknown
	bootID [8]byte
	m      *lpMetrics

	mu       sync.Mutex
	sessions map[uint64]*lpSession
	draining bool

	open    atomic.Int64  // sessions opened and not ended (phxgate_longpoll_sessions; /stats)
	reading chan struct{} // node-wide POST slots: longpoll.max_reading_posts

	addrMu    sync.Mutex
	addrPosts map[string]int // large POSTs being read, by client address key

	finMu   sync.Mutex
	fin     []*lpSession // ended sessions waiting for Terminate on run
	stopped bool         // run has returned: Terminate runs on the closer
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newLongPoll(s *Server) (*longPoll, error) {
	m, err := newLPMetrics(s.reg)
	if err != nil {
		return nil, err
	}
	lp := &longPoll{s: s, cfg: s.cfg.LongPoll, path: s.cfg.SocketPath + lpSuffix, m: m,
		sessions: map[uint64]*lpSession{}, wake: make(chan struct{}, 1), addrPosts: map[string]int{},
		reading: make(chan struct{}, s.cfg.LongPoll.MaxReadingPosts),
		stop:    make(chan struct{}), done: make(chan struct{})}
	if _, err := rand.Read(lp.key[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(lp.bootID[:]); err != nil {
		return nil, err
	}
	return lp, nil
}

// withLongPoll routes <socket_path>/longpoll to lp before next.
func (s *Server) withLongPoll(next http.Handler) http.Handler {
	if s.lp == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != s.lp.path {
			next.ServeHTTP(w, r)
			return
		}
		s.lp.ServeHTTP(w, r)
	})
}

// sign returns the token of session id.
func (lp *longPoll) sign(id uint64) string {
	var raw [lpTokenRawBytes]byte
	binary.BigEndian.PutUint64(raw[:8], id)
	copy(raw[8:], lp.mac(id))
	return base64.RawURLEncoding.EncodeToString(raw[:])
}

func (lp *longPoll) mac(id uint64) []byte {
	h := hmac.New(sha256.New, lp.key[:])
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], id)
	copy(b[8:], lp.bootID[:])
	h.Write(b[:])
	return h.Sum(nil)[:16]
}

// verify returns the session id of a token this node signed in this boot.
func (lp *longPoll) verify(tok string) (uint64, bool) {
	if len(tok) != lpTokenEncLength {
		return 0, false
	}
	var raw [lpTokenRawBytes]byte
	if n, err := base64.RawURLEncoding.Decode(raw[:], []byte(tok)); err != nil || n != lpTokenRawBytes {
		return 0, false
	}
	id := binary.BigEndian.Uint64(raw[:8])
	if !hmac.Equal(raw[8:], lp.mac(id)) {
		return 0, false
	}
	return id, true
}

// looksLikeToken reports whether v has the shape of a session token (a
// JWT never has: it holds dots).
func looksLikeToken(v string) bool {
	if len(v) != lpTokenEncLength {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(v)
	return err == nil
}

// sessionToken is the header token, else the last "token" query value
// (Plug: the last of repeated keys wins).
func sessionToken(r *http.Request) string {
	if v := r.Header.Get(lpTokenHeader); v != "" {
		return v
	}
	vs := r.URL.Query()[lpTokenParam]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

func (lp *longPoll) lookup(tok string) *lpSession {
	id, ok := lp.verify(tok)
	if !ok {
		return nil
	}
	lp.mu.Lock()
	ss := lp.sessions[id]
	lp.mu.Unlock()
	return ss
}

func (lp *longPoll) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	// As Phoenix (check_origin before dispatch): the origin is checked on
	// every request before anything else, OPTIONS and bad methods too.
	if lp.s.guard != nil {
		if err := lp.s.guard.ctl.CheckOrigin(r.Header.Get("Origin")); err != nil {
			lp.m.refused.WithLabelValues(lpRefuseOrigin).Inc()
			switch r.Method {
			case http.MethodGet:
				lp.m.polls.WithLabelValues(lpPollRefused).Inc()
			case http.MethodPost:
				lp.m.posts.WithLabelValues(lpPostRefused).Inc()
			}
			writeLPStatus(w, http.StatusForbidden)
			return
		}
	}
	switch r.Method {
	case http.MethodOptions:
		lp.m.other.WithLabelValues("options").Inc()
		h.Set("Cache-Control", lpDefaultCache)
		h.Set("Access-Control-Allow-Headers", strings.Join(r.Header.Values("Access-Control-Request-Headers"), ", "))
		h.Set("Access-Control-Allow-Methods", "get, post, options")
		h.Set("Access-Control-Max-Age", "3600")
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	case http.MethodGet, http.MethodPost:
	default:
		lp.m.other.WithLabelValues("bad_method").Inc()
		h.Set("Cache-Control", lpDefaultCache)
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	tok := sessionToken(r)
	if r.Method == http.MethodPost {
		lp.post(w, r, tok)
		return
	}
	if ss := lp.lookup(tok); ss != nil && lp.listen(w, r, ss, tok) {
		return
	}
	lp.newSession(w, r)
}

// newSession runs the connect of a GET without a usable token: admission
// (limits, token, identity) and the protocol layer's Connect, as for an
// upgrade. It answers 410 with the new token, or {"status":403}.
func (lp *longPoll) newSession(w http.ResponseWriter, r *http.Request) {
	refuse := func(reason string, retry time.Duration) {
		lp.m.refused.WithLabelValues(reason).Inc()
		lp.m.polls.WithLabelValues(lpPollRefused).Inc()
		if retry > 0 {
			w.Header().Set("Retry-After", strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10))
		}
		writeLPStatus(w, http.StatusForbidden)
	}
	lp.mu.Lock()
	draining, n := lp.draining, len(lp.sessions)
	lp.mu.Unlock()
	if draining {
		lp.answerDraining(w)
		return
	}
	if n >= lp.cfg.MaxSessions {
		refuse(lpRefuseMax, 0)
		return
	}
	var req Request
	req.Path = r.URL.Path
	req.RawQuery = stripSessionToken(r.URL.RawQuery)
	req.Origin = r.Header.Get("Origin")
	req.XForwardedFor = strings.Join(r.Header.Values("X-Forwarded-For"), ", ")
	req.UserAgent = r.UserAgent()
	req.RemoteAddr = hostOfString(r.RemoteAddr)
	req.ConnID = lp.s.nextID.Add(1)
	res, err := params.Decode(req.RawQuery, params.Limits{})
	if err != nil {
		refuse(lpRefuseParams, 0)
		return
	}
	ser, ok := negotiateVsn(res)
	if !ok {
		refuse(lpRefuseVsn, 0)
		return
	}
	req.Info.Serializer = ser
	req.Info.Params = res.JSON
	if at := r.Header.Get(lpAuthHeader); at != "" {
		if len(at) > maxAuthTokenBytes {
			refuse(lpRefuseParams, 0)
			return
		}
		req.Info.AuthToken = at
	}
	req.Info.RemoteAddr = req.RemoteAddr
	ss := &lpSession{lp: lp, id: req.ConnID, lastPoll: time.Now().UnixNano()}
	if admit := lp.s.opts.Admit; admit != nil {
		status, release := admit(&req)
		if status != 0 {
			lp.s.log.Debug("long-poll session refused", "conn", ss.id, "remote", req.RemoteAddr, "status", status)
			refuse(lpRefuseAdmission, req.RetryAfter)
			return
		}
		ss.release = release
		if !req.Expires.IsZero() {
			ss.expires = req.Expires.UnixNano()
		}
	}
	// Sessions are registered before Connect so that the cap holds under
	// concurrent starts; a refused connect takes its entry back.
	lp.mu.Lock()
	if len(lp.sessions) >= lp.cfg.MaxSessions || lp.draining {
		lp.mu.Unlock()
		ss.releaseAdmission()
		refuse(lpRefuseMax, 0)
		return
	}
	lp.sessions[ss.id] = ss
	lp.mu.Unlock()
	ss.inMu.Lock()
	handler, err := lp.s.connect(ss, req.Info)
	if err == nil {
		ss.handler = handler
	}
	ss.inMu.Unlock()
	if err != nil {
		// Drain may have ended the session while Connect ran: whoever
		// ends it, the slot goes back once, through terminate.
		ss.mu.Lock()
		ss.state = lpClosing
		ss.mu.Unlock()
		lp.remove(ss)
		ss.terminate()
		lp.s.log.Debug("long-poll connect refused", "conn", ss.id, "err", err)
		refuse(lpRefuseConnect, 0)
		return
	}
	ss.token = lp.sign(ss.id)
	ss.mu.Lock()
	if ss.state != lpOpen {
		// Drain ended it while Connect ran; terminate (queued by drain)
		// tells the handler once Connect has returned.
		ss.mu.Unlock()
		lp.answerDraining(w)
		return
	}
	ss.opened = true
	ss.mu.Unlock()
	lp.m.created.Inc()
	lp.m.sessions.WithLabelValues().Inc()
	lp.open.Add(1)
	lp.m.polls.WithLabelValues(lpPollNew).Inc()
	lp.s.log.Debug("long-poll session started", "conn", ss.id, "remote", req.RemoteAddr, "vsn", ser)
	writeLPBody(w, http.StatusGone, ss.token, nil, true)
}

// answerDraining answers a GET that would start a session on a draining
// node: a connection error for the client (phoenix.js: status 0, close 1011
// and retry), as from a stopped Phoenix; /readyz already sends new clients
// elsewhere.
func (lp *longPoll) answerDraining(w http.ResponseWriter) {
	lp.m.refused.WithLabelValues(lpPollDraining).Inc()
	lp.m.polls.WithLabelValues(lpPollDraining).Inc()
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusServiceUnavailable)
}

// stripSessionToken drops the token=… pairs of q that carry a session
// token (anything of its shape; a JWT never has it), so that a client
// whose connect params also hold a "token" (its auth token) connects with
// that one, not with the dead session's.
func stripSessionToken(q string) string {
	if !strings.Contains(q, lpTokenParam+"=") {
		return q
	}
	var out []string
	for pair := range strings.SplitSeq(q, "&") {
		k, v, _ := strings.Cut(pair, "=")
		if k == lpTokenParam {
			if uv, err := url.QueryUnescape(v); err == nil && looksLikeToken(uv) {
				continue
			}
			if v == "" {
				continue
			}
		}
		if pair != "" {
			out = append(out, pair)
		}
	}
	return strings.Join(out, "&")
}

func hostOfString(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}

// lpPoll is one held GET.
type lpPoll struct {
	wake   chan struct{} // cap 1
	kicked bool          // superseded past the held cap: answer 204 now (under session mu)
}

func (p *lpPoll) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// listen holds a poll on ss for up to the window. It returns false, having
// written nothing, when ss turns out to be gone (the caller starts a new
// session).
func (lp *longPoll) listen(w http.ResponseWriter, r *http.Request, ss *lpSession, tok string) bool {
	ss.mu.Lock()
	ss.lastPoll = time.Now().UnixNano()
	ss.polled = true
	if len(ss.msgs) > 0 {
		msgs, closing := ss.takeLocked(), ss.state != lpOpen
		ss.mu.Unlock()
		if closing {
			lp.remove(ss)
		}
		lp.m.polls.WithLabelValues(lpPollMessages).Inc()
		writeLPBody(w, http.StatusOK, tok, msgs, true)
		return true
	}
	if ss.state != lpOpen {
		ss.mu.Unlock()
		return false
	}
	p := &lpPoll{wake: make(chan struct{}, 1)}
	if len(ss.polls) >= longPollMaxHeldPolls {
		old := ss.polls[0]
		ss.polls = ss.polls[1:]
		old.kicked = true
		old.signal()
	}
	ss.polls = append(ss.polls, p)
	ss.mu.Unlock()

	t := time.NewTimer(lp.cfg.Window)
	defer t.Stop()
	over := false
	for {
		select {
		case <-p.wake:
		case <-t.C:
			over = true
		case <-r.Context().Done():
			over = true
		}
		ss.mu.Lock()
		if p.kicked {
			ss.mu.Unlock()
			lp.m.polls.WithLabelValues(lpPollSuperseded).Inc()
			writeLPBody(w, http.StatusNoContent, tok, nil, true)
			return true
		}
		current := ss.polls[len(ss.polls)-1] == p
		if current && len(ss.msgs) > 0 {
			ss.dropPollLocked(p)
			ss.lastPoll = time.Now().UnixNano()
			msgs, closing := ss.takeLocked(), ss.state != lpOpen
			ss.mu.Unlock()
			if closing {
				lp.remove(ss)
			}
			lp.m.polls.WithLabelValues(lpPollMessages).Inc()
			writeLPBody(w, http.StatusOK, tok, msgs, true)
			return true
		}
		if over || ss.state != lpOpen {
			ss.dropPollLocked(p)
			ss.lastPoll = time.Now().UnixNano()
			ss.mu.Unlock()
			lp.m.polls.WithLabelValues(lpPollEmpty).Inc()
			writeLPBody(w, http.StatusNoContent, tok, nil, true)
			return true
		}
		ss.mu.Unlock()
	}
}

// post dispatches a POST's lines to the session's handler, one at a time,
// as Phoenix does: ndjson lines (at most LongPollMaxBatch), "[" … a text
// frame, anything else base64 of a binary frame; another content type
// (phoenix.js before 1.7 sends application/json, one message per POST) is
// one text frame. Concurrent POSTs of a session (phoenix.js before 1.7.0
// sends one per push without waiting) each read their body, then are
// dispatched one at a time in the order their bodies were read
// (lpPostQueue).
//
// Memory: a body of known length ends in one buffer of that length (at
// most LongPollMaxBodyBytes; a longer one is refused unread), grown as it
// arrives (lpReadBody); a body of unknown length (chunked) grows to at
// most LongPollMaxBodyBytes, with the copies growing leaves behind. A
// base64 line whose decoded size is over max_message_size is refused
// before it is decoded, so the line being dispatched adds at most
// max_message_size.
func (lp *longPoll) post(w http.ResponseWriter, r *http.Request, tok string) {
	ss := lp.lookup(tok)
	if ss == nil || !ss.open() {
		lp.m.posts.WithLabelValues(lpPostGone).Inc()
		writeLPStatus(w, http.StatusGone)
		return
	}
	if !ss.posts.enter() {
		// Refused before its body is read: the connection is closed, so
		// the unread body is never drained.
		lp.m.posts.WithLabelValues(lpPostConflict).Inc()
		lpHTTPError(w, http.StatusConflict, "")
		return
	}
	defer ss.posts.leave()
	if r.ContentLength > LongPollMaxBodyBytes {
		lp.m.posts.WithLabelValues(lpPostTooLarge).Inc()
		lpHTTPError(w, http.StatusRequestEntityTooLarge, "")
		return
	}
	var release func()
	if r.ContentLength < 0 || r.ContentLength > LongPollSmallPostBytes {
		// Large bodies in memory are bounded per address and node-wide:
		// a POST over its address's share is refused at once; one that
		// finds no node slot waits up to a window, then is refused (503,
		// Retry-After), before a byte of its body is read.
		var res string
		if release, res = lp.acquireLarge(r); release == nil {
			lp.m.posts.WithLabelValues(res).Inc()
			lpHTTPError(w, http.StatusServiceUnavailable, "1")
			return
		}
		defer release()
	}
	// A body that trickles in is cut like a slow handshake.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(lp.s.cfg.HandshakeTimeout))
	body, err := lpReadBody(w, r)
	if err != nil {
		var mbe *http.MaxBytesError
		status, res := http.StatusBadRequest, lpPostBadBody
		if errors.As(err, &mbe) {
			status, res = http.StatusRequestEntityTooLarge, lpPostTooLarge
		}
		lp.m.posts.WithLabelValues(res).Inc()
		lpHTTPError(w, status, "")
		return
	}
	// The body is in: lift the deadline, or net/http's background read
	// would take it for a departed client while this POST waits its turn
	// (or its 408).
	_ = rc.SetReadDeadline(time.Time{})
	lp.m.waiting.Inc()
	turn := lp.dispatchTurn(r, ss)
	lp.m.waiting.Dec()
	if !turn {
		// As Phoenix when the session does not ack within the window:
		// 408, and phoenix.js reconnects. The session lives.
		lp.m.posts.WithLabelValues(lpPostWaitTimeout).Inc()
		writeLPStatus(w, http.StatusRequestTimeout)
		return
	}
	badLine, crashed, gone := lp.dispatch(r, ss, body)
	ss.posts.unlock()
	// The body is done with: a crashed session's 408 waits a window
	// without holding a slot.
	if release != nil {
		release() // idempotent: deferred too
	}
	switch {
	case badLine:
		// Phoenix: the decode raises, Plug answers 500; the session lives.
		lp.m.posts.WithLabelValues(lpPostBadLine).Inc()
		lpHTTPError(w, http.StatusInternalServerError, "")
	case gone:
		lp.m.posts.WithLabelValues(lpPostGone).Inc()
		writeLPStatus(w, http.StatusGone)
	case crashed:
		// Phoenix: the socket process crashed, the ack never comes and
		// the POST answers 408 at the window's end.
		t := time.NewTimer(lp.cfg.Window)
		select {
		case <-t.C:
		case <-lp.stop:
		case <-r.Context().Done():
		}
		t.Stop()
		lp.m.posts.WithLabelValues(lpPostCrashed).Inc()
		writeLPStatus(w, http.StatusRequestTimeout)
	default:
		lp.m.posts.WithLabelValues(lpPostOK).Inc()
		writeLPStatus(w, http.StatusOK)
	}
}

// dispatch hands a POST body's lines to the session's handler (the
// caller holds the session's dispatch turn).
func (lp *longPoll) dispatch(r *http.Request, ss *lpSession, body []byte) (badLine, crashed, gone bool) {
	// As Phoenix: ndjson only for exactly this one Content-Type value.
	ct := r.Header.Values("Content-Type")
	ndjson := len(ct) == 1 && ct[0] == lpNDJSON
	lines, over := lpBatch(body, ndjson)
	if over > 0 {
		lp.m.dropped.WithLabelValues(lpDropLines).Add(float64(over))
	}
	ss.inMu.Lock()
	for i, line := range lines {
		if !ss.open() {
			// Ended before this POST dispatched anything: as a POST to a
			// dead session. Ended by an earlier line without a crash (a
			// kick, a slow consumer, token expiry): acked, as Phoenix acks
			// a line whose handler stops the socket.
			gone = i == 0
			break
		}
		var err error
		switch {
		case !ndjson || (len(line) > 0 && line[0] == '['):
			err = ss.handleText(line)
		case lpDecodedLen(line) > lp.s.cfg.MaxMessageSize:
			err = &CloseError{Code: 1009, Reason: channels.ReasonTooBig}
		default:
			bin, derr := lpDecodeLine(line)
			if derr != nil {
				lp.s.log.Debug("long-poll line is not base64", "conn", ss.id, "line", i)
				badLine = true
				break
			}
			err = ss.handleBinary(bin)
		}
		if badLine {
			break
		}
		if err != nil {
			code, reason := closeFor(err)
			lp.s.log.Debug("handler closed long-poll session", "conn", ss.id, "code", code, "reason", reason, "err", err)
			ss.closeWith(reason)
			crashed = true
			break
		}
	}
	ss.inMu.Unlock()
	return badLine, crashed, gone
}

// lpHTTPError answers an HTTP error with an empty body and closes the
// connection, so that an unread body is never drained.
func lpHTTPError(w http.ResponseWriter, status int, retryAfter string) {
	h := w.Header()
	h.Set("Cache-Control", lpDefaultCache)
	if retryAfter != "" {
		h.Set("Retry-After", retryAfter)
	}
	h.Set("Connection", "close")
	h.Set("Content-Length", "0")
	w.WriteHeader(status)
}

// addressKey is the unit of longpoll.ip_max_reading_posts: the client
// address as the per-IP admission limits count it.
func (lp *longPoll) addressKey(r *http.Request) string {
	if g := lp.s.guard; g != nil {
		xff := strings.Join(r.Header.Values("X-Forwarded-For"), ", ")
		return g.ctl.Key(g.ctl.ClientIP(r.RemoteAddr, xff)).String()
	}
	return hostOfString(r.RemoteAddr)
}

// acquireLarge takes a slot of the client's address and a node-wide one
// for a large POST. It returns their release, or nil and the result label
// of the refusal.
func (lp *longPoll) acquireLarge(r *http.Request) (func(), string) {
	key := lp.addressKey(r)
	lp.addrMu.Lock()
	if lp.addrPosts[key] >= lp.cfg.IPMaxReadingPosts {
		lp.addrMu.Unlock()
		return nil, lpPostAddressBusy
	}
	lp.addrPosts[key]++
	lp.addrMu.Unlock()
	releaseAddr := func() {
		lp.addrMu.Lock()
		if lp.addrPosts[key]--; lp.addrPosts[key] <= 0 {
			delete(lp.addrPosts, key)
		}
		lp.addrMu.Unlock()
	}
	if !lp.acquireReading(r) {
		releaseAddr()
		return nil, lpPostBusy
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			lp.releaseReading()
			releaseAddr()
		})
	}, ""
}

// acquireReading takes a node-wide POST slot, waiting up to a window.
func (lp *longPoll) acquireReading(r *http.Request) bool {
	select {
	case lp.reading <- struct{}{}:
	default:
		t := time.NewTimer(lp.cfg.Window)
		defer t.Stop()
		select {
		case lp.reading <- struct{}{}:
		case <-t.C:
			return false
		case <-lp.stop:
			return false
		case <-r.Context().Done():
			return false
		}
	}
	lp.m.reading.Inc()
	return true
}

func (lp *longPoll) releaseReading() {
	lp.m.reading.Dec()
	<-lp.reading
}

// lpBatch returns the lines of a POST body to dispatch, slices of body:
// ndjson lines split on \n and \r\n as Phoenix splits them
// (String.split(body, ["\n", "\r\n"]): an empty body is one empty line),
// the first LongPollMaxBatch of them (over: how many more there were);
// otherwise the whole body as one. Lines past the cap are counted, never
// sliced: a body of 8 MB of newlines costs 100 slice headers, not 8
// million.
func lpBatch(body []byte, ndjson bool) (lines [][]byte, over int) {
	if !ndjson {
		return [][]byte{body}, 0
	}
	total := bytes.Count(body, []byte{'\n'}) + 1
	n := min(total, LongPollMaxBatch)
	lines = make([][]byte, 0, n)
	for range n - 1 {
		i := bytes.IndexByte(body, '\n')
		lines = append(lines, trimCR(body[:i]))
		body = body[i+1:]
	}
	if i := bytes.IndexByte(body, '\n'); i >= 0 {
		body = trimCR(body[:i])
	}
	return append(lines, body), total - n
}

func trimCR(line []byte) []byte {
	if len(line) > 0 && line[len(line)-1] == '\r' {
		return line[:len(line)-1]
	}
	return line
}

// lpDecodedLen is the size of the frame an ndjson base64 line decodes to,
// if it decodes (padded standard base64, as Phoenix's Base64.decode64!).
func lpDecodedLen(line []byte) int {
	n := base64.StdEncoding.DecodedLen(len(line))
	for i := len(line) - 1; i >= 0 && i >= len(line)-2 && line[i] == '='; i-- {
		n--
	}
	return n
}

// lpDecodeLine decodes an ndjson line that is base64 of a binary frame
// into a new buffer of at most 3/4 of the line's length.
func lpDecodeLine(line []byte) ([]byte, error) {
	bin := make([]byte, base64.StdEncoding.DecodedLen(len(line)))
	n, err := base64.StdEncoding.Decode(bin, line)
	if err != nil {
		return nil, err
	}
	return bin[:n], nil
}

// writeLPStatus answers {"status":N}.
func writeLPStatus(w http.ResponseWriter, status int) {
	buf := make([]byte, 0, 16)
	buf = append(buf, `{"status":`...)
	buf = strconv.AppendInt(buf, int64(status), 10)
	buf = append(buf, '}')
	writeLPJSON(w, buf)
}

// writeLPBody answers {"messages":[...],"status":N,"token":T}: keys
// sorted and nothing HTML-escaped, as Phoenix's Jason output.
func writeLPBody(w http.ResponseWriter, status int, tok string, msgs [][]byte, withMessages bool) {
	n := 48 + len(tok)
	for _, m := range msgs {
		n += len(m) + len(m)/8 + 3
	}
	buf := make([]byte, 0, n)
	if withMessages {
		buf = append(buf, `{"messages":[`...)
		for i, m := range msgs {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = channels.AppendJSONString(buf, m)
		}
		buf = append(buf, "],"...)
	} else {
		buf = append(buf, '{')
	}
	buf = append(buf, `"status":`...)
	buf = strconv.AppendInt(buf, int64(status), 10)
	buf = append(buf, `,"token":`...)
	buf = channels.AppendJSONString(buf, tok)
	buf = append(buf, '}')
	writeLPJSON(w, buf)
}

func writeLPJSON(w http.ResponseWriter, body []byte) {
	h := w.Header()
	h.Set("Content-Type", lpJSONType)
	h.Set("Cache-Control", lpJSONCache)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// remove takes ss out of the session table (idempotent).
func (lp *longPoll) remove(ss *lpSession) {
	lp.mu.Lock()
	if lp.sessions[ss.id] == ss {
		delete(lp.sessions, ss.id)
	}
	lp.mu.Unlock()
}

// finish queues ss for Terminate on run: Close may be called with the
// protocol layer's locks held, so the handler is never called from it.
func (lp *longPoll) finish(ss *lpSession) {
	lp.finMu.Lock()
	if lp.stopped {
		lp.finMu.Unlock()
		go ss.terminate() // after run returned (shutdown): still exactly once
		return
	}
	lp.fin = append(lp.fin, ss)
	lp.finMu.Unlock()
	select {
	case lp.wake <- struct{}{}:
	default:
	}
}

// sweepEvery is the expiry granularity: a quarter window, at most a second.
func (lp *longPoll) sweepEvery() time.Duration {
	return min(max(lp.cfg.Window/4, 5*time.Millisecond), time.Second)
}

// run terminates ended sessions and expires idle ones until stop.
func (lp *longPoll) run() {
	defer close(lp.done)
	t := time.NewTicker(lp.sweepEvery())
	defer t.Stop()
	for {
		select {
		case <-lp.stop:
			lp.finMu.Lock()
			lp.stopped = true
			fin := lp.fin
			lp.fin = nil
			lp.finMu.Unlock()
			for _, ss := range fin {
				ss.terminate()
			}
			return
		case <-lp.wake:
		case <-t.C:
			lp.sweep(time.Now().UnixNano())
		}
		lp.finMu.Lock()
		fin := lp.fin
		lp.fin = nil
		lp.finMu.Unlock()
		for _, ss := range fin {
			ss.terminate()
		}
	}
}

// sweep ends sessions whose token expired or with no poll for 1.5
// windows (one window if never polled), and forgets ended ones whose
// buffer nobody came for; now is UnixNano (tests pass a later one). Each
// session is judged and ended under its lock, so a poll arriving
// meanwhile is never answered by a session ended under it.
func (lp *longPoll) sweep(now int64) {
	window := int64(lp.cfg.Window)
	lp.mu.Lock()
	all := make([]*lpSession, 0, len(lp.sessions))
	for _, ss := range lp.sessions {
		all = append(all, ss)
	}
	lp.mu.Unlock()
	for _, ss := range all {
		ss.mu.Lock()
		idle := window * 3 / 2
		if !ss.polled {
			// phoenix.js polls the moment it gets its 410; a session never
			// polled is one whose client dropped the token (it reconnects
			// with a fresh session): give its admission slot back sooner.
			idle = window
		}
		stale := len(ss.polls) == 0 && now-ss.lastPoll >= idle
		switch {
		case ss.state == lpOpen && ss.expires != 0 && now >= ss.expires:
			end, ok := ss.endLocked(channels.ReasonTokenExpired)
			ss.mu.Unlock()
			if ok {
				ss.ended(end)
			}
		case ss.state == lpOpen && stale:
			// As Phoenix: the session is gone with what it held; the next
			// poll starts a new one.
			n := len(ss.msgs)
			ss.dropLocked()
			end, ok := ss.endLocked(lpReasonExpired)
			ss.mu.Unlock()
			lp.m.dropped.WithLabelValues(lpDropExpired).Add(float64(n))
			if ok {
				lp.s.log.Debug("long-poll session expired", "conn", ss.id)
				ss.ended(end)
			}
		case ss.state != lpOpen && stale:
			n := len(ss.msgs)
			ss.dropLocked()
			ss.mu.Unlock()
			lp.m.dropped.WithLabelValues(lpDropExpired).Add(float64(n))
			lp.remove(ss)
		default:
			ss.mu.Unlock()
		}
	}
}

// drain ends every session (a drain hook: before the sockets are closed):
// held polls get what is buffered at once, the protocol layer is told
// (Leave with reason drained), and new sessions are refused.
func (lp *longPoll) drain() {
	lp.mu.Lock()
	lp.draining = true
	all := make([]*lpSession, 0, len(lp.sessions))
	for _, ss := range lp.sessions {
		all = append(all, ss)
	}
	lp.mu.Unlock()
	for _, ss := range all {
		ss.closeWith(channels.ReasonDrain)
	}
}

// close stops run after a last pass over the ended sessions.
func (lp *longPoll) close() {
	select {
	case <-lp.stop:
	default:
		close(lp.stop)
	}
	<-lp.done
}

// OpenSessions is the number of long-poll sessions not ended (/stats).
func (lp *longPoll) OpenSessions() int { return int(lp.open.Load()) }

// Sessions is the number of long-poll sessions in the table, ended ones
// whose buffer awaits a last poll included (tests).
func (lp *longPoll) Sessions() int {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return len(lp.sessions)
}

// lpSession is one long-poll session: a channels.Conn whose output waits
// in msgs for the next poll.
type lpSession struct {
	lp       *longPoll
	id       uint64
	token    string
	release  Releaser
	expires  int64 // UnixNano from which the session is ended (token exp); 0: never
	handler  SocketHandler
	posts    lpPostQueue // POSTs in flight, dispatched one at a time in arrival order
	inMu     sync.Mutex  // handler calls and Terminate, one at a time
	termOnce sync.Once

	mu      sync.Mutex
	state   uint8
	opened  bool // answered 410 with its token: counted in open and the gauge
	polled  bool // a poll came (before: expiry after one window)
	reason  channels.DisconnectReason
	msgs    [][]byte // text payloads, slices of immutable frames; nil: a stream's place
	charged int64    // bytes charged against max_buffer_bytes
	// streams are the frame streams queued (channels.StreamConn), oldest
	// first, one per nil entry of msgs; a nil stream was given up.
	streams  []channels.FrameStream
	lastPoll int64 // UnixNano of the last poll's start or end
	polls    []*lpPoll
}

var (
	_ channels.Conn       = (*lpSession)(nil)
	_ channels.BulkConn   = (*lpSession)(nil)
	_ channels.Laned      = (*lpSession)(nil)
	_ channels.StreamConn = (*lpSession)(nil)
)

// ID implements channels.Conn.
func (ss *lpSession) ID() uint64 { return ss.id }

// Lane implements channels.Laned: sessions spread over the pollers' lanes.
func (ss *lpSession) Lane() int { return int(ss.id % uint64(max(len(ss.lp.s.pollers), 1))) }

// SendBulk implements channels.BulkConn: a poll takes everything at once,
// so broadcasts and replies are buffered alike.
func (ss *lpSession) SendBulk(frame []byte) { ss.Send(frame) }

// Send implements channels.Conn: it keeps the payload of a text frame for
// the next poll (a reference, no copy). A binary frame is dropped and
// counted. Past longpoll.max_buffer_bytes the session is ended as a slow
// consumer, its buffer dropped.
func (ss *lpSession) Send(frame []byte) {
	op, payload, ok := framePayload(frame)
	if !ok {
		return
	}
	if op != 0x1 {
		ss.lp.m.dropped.WithLabelValues(lpDropBinary).Inc()
		return
	}
	ss.mu.Lock()
	if ss.state != lpOpen {
		ss.mu.Unlock()
		return
	}
	if ss.charged+cost(len(payload)) > int64(ss.lp.cfg.MaxBufferBytes) {
		ss.overflowLocked()
		return
	}
	ss.msgs = append(ss.msgs, payload)
	ss.charged += cost(len(payload))
	if len(ss.msgs) == 1 && len(ss.polls) > 0 {
		ss.polls[len(ss.polls)-1].signal()
	}
	ss.mu.Unlock()
}

// SendStream implements channels.StreamConn: st takes one place in the
// buffer (charged entryOverhead) and what is sent after it waits behind
// it. A poll that reaches it takes its frames, up to lpStreamTake of
// the buffer bound per poll, so the client's next poll paces the rest;
// the frames behind it go in the poll that ends the stream, or later.
func (ss *lpSession) SendStream(st channels.FrameStream) {
	ss.mu.Lock()
	if ss.state != lpOpen {
		ss.mu.Unlock()
		st.Close()
		return
	}
	if ss.charged+entryOverhead > int64(ss.lp.cfg.MaxBufferBytes) {
		st.Close()
		ss.overflowLocked()
		return
	}
	ss.msgs = append(ss.msgs, nil)
	ss.streams = append(ss.streams, st)
	ss.charged += entryOverhead
	if len(ss.msgs) == 1 && len(ss.polls) > 0 {
		ss.polls[len(ss.polls)-1].signal()
	}
	ss.mu.Unlock()
}

// lpStreamTake is the share of longpoll.max_buffer_bytes one poll takes
// of a stream (at least one frame of it).
const lpStreamTake = 4

// overflowLocked ends the session as a slow consumer, its buffer
// dropped (counted with the message that did not fit). It unlocks ss.mu.
func (ss *lpSession) overflowLocked() {
	n := len(ss.msgs)
	ss.dropLocked()
	ss.mu.Unlock()
	ss.lp.m.dropped.WithLabelValues(lpDropOverflow).Add(float64(n + 1))
	ss.lp.s.metrics.slowConsumers.Inc()
	ss.lp.s.log.Warn("slow consumer: long-poll buffer over limit", "conn", ss.id, "limit_bytes", ss.lp.cfg.MaxBufferBytes)
	ss.closeWith(channels.ReasonSlowConsumer)
}

// Close implements channels.Conn. The code means nothing to a long-poll
// client: the session ends and the next poll starts a new one (410).
func (ss *lpSession) Close(_ channels.CloseCode, reason channels.DisconnectReason) {
	ss.closeWith(reason)
}

// closeWith ends the session once: held polls are woken (they take what
// is buffered), the session leaves the table once nothing is buffered,
// and Terminate runs on the long-poll goroutine.
func (ss *lpSession) closeWith(reason channels.DisconnectReason) {
	ss.mu.Lock()
	end, ok := ss.endLocked(reason)
	ss.mu.Unlock()
	if ok {
		ss.ended(end)
	}
}

// lpEnd is what ending a session left to do outside its lock.
type lpEnd struct {
	reason  channels.DisconnectReason
	keep    bool // messages buffered: stays in the table for a last poll
	counted bool // was opened: counted in open and the gauge
}

// endLocked marks ss ended (ss.mu held) and wakes its held polls; false
// if it already was.
func (ss *lpSession) endLocked(reason channels.DisconnectReason) (lpEnd, bool) {
	if ss.state != lpOpen {
		return lpEnd{}, false
	}
	ss.state = lpClosing
	ss.reason = reason
	ss.giveUpStreamsLocked()
	for _, p := range ss.polls {
		p.signal()
	}
	return lpEnd{reason: reason, keep: len(ss.msgs) > 0, counted: ss.opened}, true
}

// ended finishes what endLocked started, without ss.mu.
func (ss *lpSession) ended(e lpEnd) {
	if !e.keep {
		ss.lp.remove(ss)
	}
	if e.counted {
		ss.lp.m.sessions.WithLabelValues().Dec()
		ss.lp.open.Add(-1)
		ss.lp.m.closed.WithLabelValues(string(e.reason)).Inc()
	}
	ss.lp.s.log.Debug("long-poll session ended", "conn", ss.id, "reason", e.reason)
	ss.lp.finish(ss)
}

func (ss *lpSession) open() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.state == lpOpen
}

// takeLocked hands the buffered payloads over. A stream's place takes
// the stream's frames, up to a share of the buffer bound (lpStreamTake)
// per poll: the rest stays, with what is behind it, for the next poll.
func (ss *lpSession) takeLocked() [][]byte {
	if len(ss.streams) == 0 {
		msgs := ss.msgs
		ss.msgs, ss.charged = nil, 0
		return msgs
	}
	limit := max(ss.lp.cfg.MaxBufferBytes/lpStreamTake, 1)
	out := make([][]byte, 0, len(ss.msgs))
	size, i := 0, 0
	for i < len(ss.msgs) {
		if m := ss.msgs[i]; m != nil {
			out = append(out, m)
			ss.charged -= cost(len(m))
			size += len(m)
			i++
			continue
		}
		if size >= limit {
			break // the stream goes on in the next poll
		}
		st := ss.streams[0]
		var f []byte
		if st != nil {
			f = st.Next()
		}
		if len(f) > 0 {
			if op, payload, ok := framePayload(f); ok && op == 0x1 {
				out = append(out, payload)
				size += len(payload)
			}
			continue
		}
		if st != nil {
			st.Close()
		}
		ss.streams[0] = nil
		ss.streams = ss.streams[1:]
		ss.charged -= entryOverhead
		i++
	}
	clear(ss.msgs[:i]) // the array stays with the rest: drop what it held
	ss.msgs = ss.msgs[i:]
	if len(ss.msgs) == 0 {
		ss.msgs, ss.streams, ss.charged = nil, nil, 0
	}
	return out
}

// giveUpStreamsLocked closes every queued stream (the session ends or
// drops its buffer); their places stay until taken or dropped.
func (ss *lpSession) giveUpStreamsLocked() {
	for i, st := range ss.streams {
		if st != nil {
			st.Close()
			ss.streams[i] = nil
		}
	}
}

func (ss *lpSession) dropLocked() {
	ss.giveUpStreamsLocked()
	ss.msgs, ss.streams, ss.charged = nil, nil, 0
}

func (ss *lpSession) dropPollLocked(p *lpPoll) {
	for i, q := range ss.polls {
		if q == p {
			ss.polls = append(ss.polls[:i], ss.polls[i+1:]...)
			return
		}
	}
}

// handleText and handleBinary call the handler (inMu held), turning a
// panic into an internal error as the poller does.
func (ss *lpSession) handleText(data []byte) (err error) {
	if !utf8.Valid(data) {
		// A WebSocket text frame must be valid UTF-8 (1007); the same
		// bytes over long-poll end the session the same way.
		return &CloseError{Code: 1007, Reason: channels.ReasonInvalidUTF8}
	}
	if len(data) > ss.lp.s.cfg.MaxMessageSize {
		return &CloseError{Code: 1009, Reason: channels.ReasonTooBig}
	}
	defer ss.recoverHandler(&err)
	return ss.handler.HandleText(data)
}

func (ss *lpSession) handleBinary(data []byte) (err error) {
	if len(data) > ss.lp.s.cfg.MaxMessageSize {
		return &CloseError{Code: 1009, Reason: channels.ReasonTooBig}
	}
	defer ss.recoverHandler(&err)
	return ss.handler.HandleBinary(data)
}

func (ss *lpSession) recoverHandler(err *error) {
	if r := recover(); r != nil {
		ss.lp.s.metrics.panics.Inc()
		ss.lp.s.log.Error("socket handler panicked", "conn", ss.id, "panic", fmt.Sprint(r))
		*err = &CloseError{Code: channels.CloseInternalError, Reason: channels.ReasonInternal, Err: fmt.Errorf("panic: %v", r)}
	}
}

// terminate tells the handler once and gives the admission slot back.
func (ss *lpSession) terminate() {
	ss.termOnce.Do(func() {
		ss.inMu.Lock()
		defer ss.inMu.Unlock()
		ss.mu.Lock()
		reason := ss.reason
		ss.mu.Unlock()
		if ss.handler != nil {
			func() {
				defer func() {
					if r := recover(); r != nil {
						ss.lp.s.metrics.panics.Inc()
						ss.lp.s.log.Error("socket handler panicked in Terminate", "conn", ss.id, "panic", fmt.Sprint(r))
					}
				}()
				lr := leaveReason(reason)
				if reason == lpReasonExpired {
					lr = leaveReason(channels.ReasonIdleTimeout)
				}
				ss.handler.Terminate(lr)
			}()
		}
		ss.releaseAdmission()
	})
}

func (ss *lpSession) releaseAdmission() {
	if r := ss.release; r != nil {
		ss.release = nil
		r.Release()
	}
}

// framePayload parses a server frame built by the protocol layer (FIN set,
// unmasked): its opcode and payload.
func framePayload(f []byte) (op byte, payload []byte, ok bool) {
	if len(f) < 2 {
		return 0, nil, false
	}
	op = f[0] & 0x0f
	n, off := uint64(f[1]&0x7f), 2
	switch n {
	case 126:
		if len(f) < 4 {
			return 0, nil, false
		}
		n, off = uint64(binary.BigEndian.Uint16(f[2:])), 4
	case 127:
		if len(f) < 10 {
			return 0, nil, false
		}
		n, off = binary.BigEndian.Uint64(f[2:]), 10
	}
	if uint64(len(f)-off) != n {
		return 0, nil, false
	}
	return op, f[off:], true
}
