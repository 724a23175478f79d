package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// The churn, actions and resume clients hold a socket with one reader
// goroutine each (their counts are in thousands, not the broadcast
// scenario's tens of thousands), reading with gobwas/ws and writing
// masked frames under a per-socket lock.

// phxMsg is a V2 message as a client reads it; refs are "" when null.
type phxMsg struct {
	JoinRef, Ref, Topic, Event string
	Payload                    json.RawMessage
}

// replyBody is a phx_reply payload.
type replyBody struct {
	Status   string          `json:"status"`
	Response json.RawMessage `json:"response"`
}

// errBadMessage is a frame that is not a V2 message.
var errBadMessage = errors.New("bench: not a V2 message")

// refusedError is an error reply to a join, leave or push.
type refusedError struct {
	op, reason string
}

func (e *refusedError) Error() string { return "bench: " + e.op + " refused: " + e.reason }

func parsePhx(data []byte) (phxMsg, error) {
	var raw [5]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return phxMsg{}, fmt.Errorf("%w: %v", errBadMessage, err)
	}
	var m phxMsg
	for i, dst := range []*string{&m.JoinRef, &m.Ref, &m.Topic, &m.Event} {
		if string(raw[i]) == "null" {
			continue
		}
		if err := json.Unmarshal(raw[i], dst); err != nil {
			return phxMsg{}, fmt.Errorf("%w: element %d", errBadMessage, i)
		}
	}
	m.Payload = raw[4]
	return m, nil
}

// phxConn is one client socket: any goroutine may send; one reads.
type phxConn struct {
	c   net.Conn
	wmu sync.Mutex
}

// send writes one message as a masked text frame within timeout.
func (p *phxConn) send(msg []byte, timeout time.Duration) error {
	f := appendClientFrame(nil, opText, msg, newMask())
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_ = p.c.SetWriteDeadline(time.Now().Add(timeout))
	_, err := p.c.Write(f)
	return err
}

// read returns the next message.
func (p *phxConn) read() (phxMsg, error) {
	data, _, err := wsutil.ReadServerData(p.c)
	if err != nil {
		return phxMsg{}, err
	}
	return parsePhx(data)
}

// await reads until the reply to ref and returns its body; other
// messages are handed to other (nil: dropped).
func (p *phxConn) await(ref string, other func(phxMsg)) (replyBody, error) {
	for {
		m, err := p.read()
		if err != nil {
			return replyBody{}, err
		}
		if m.Event == "phx_reply" && m.Ref == ref {
			var b replyBody
			if err := json.Unmarshal(m.Payload, &b); err != nil {
				return replyBody{}, fmt.Errorf("%w: reply payload", errBadMessage)
			}
			return b, nil
		}
		if other != nil {
			other(m)
		}
	}
}

// bye sends a close frame and closes the socket.
func (p *phxConn) bye() {
	body := ws.NewCloseFrameBody(ws.StatusNormalClosure, "")
	p.wmu.Lock()
	_ = p.c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = p.c.Write(appendClientFrame(nil, opClose, body, newMask()))
	p.wmu.Unlock()
	p.c.Close()
}

// closeAndWait sends a close frame and reads until the server's close
// (or timeout) before closing the socket, as a browser does; only for a
// socket nobody else reads.
func (p *phxConn) closeAndWait(timeout time.Duration) {
	body := ws.NewCloseFrameBody(ws.StatusNormalClosure, "")
	_ = p.c.SetDeadline(time.Now().Add(timeout))
	if _, err := p.c.Write(appendClientFrame(nil, opClose, body, newMask())); err == nil {
		for {
			if _, _, err := wsutil.ReadServerData(p.c); err != nil {
				break
			}
		}
	}
	p.c.Close()
}

// phxFrame encodes a V2 message; payload is JSON.
func phxFrame(joinRef, ref, topic, event string, payload []byte) []byte {
	b := make([]byte, 0, 48+len(topic)+len(event)+len(payload))
	b = append(b, '[')
	b = strconv.AppendQuote(b, joinRef)
	b = append(b, ',')
	b = strconv.AppendQuote(b, ref)
	b = append(b, ',')
	t, _ := json.Marshal(topic)
	b = append(b, t...)
	b = append(b, ',')
	e, _ := json.Marshal(event)
	b = append(b, e...)
	b = append(b, ',')
	b = append(b, payload...)
	return append(b, ']')
}

// joinPayload is the join payload: base ({} when empty) with "offset"
// set to offset when positions is on (null for "from now").
func joinPayload(base string, positions bool, offset string) []byte {
	base = strings.TrimSpace(base)
	if base == "" {
		base = "{}"
	}
	if !positions {
		return []byte(base)
	}
	off := "null"
	if offset != "" {
		off = strconv.Quote(offset)
	}
	inner := strings.TrimSpace(base[1 : len(base)-1])
	if inner == "" {
		return []byte(`{"offset":` + off + `}`)
	}
	return []byte(`{"offset":` + off + `,` + inner + `}`)
}

// errKind names a failure for the errors-by-kind table.
func errKind(err error) string {
	var se ws.StatusError
	var ce wsutil.ClosedError
	var re *refusedError
	var ne net.Error
	var oe *net.OpError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &re):
		return re.op + "_" + re.reason
	case errors.As(err, &se):
		return "http_" + strconv.Itoa(int(se))
	case errors.As(err, &ce):
		return "closed_" + strconv.Itoa(int(ce.Code))
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, &oe) && oe.Op == "dial":
		return "dial"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, errBadMessage):
		return "bad_message"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	return "other"
}

// reasonOf is a refusal's reason: the response's "reason", else the
// status.
func reasonOf(b replyBody) string { return replyReason(b.Status, b.Response) }
