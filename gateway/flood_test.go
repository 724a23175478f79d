//go:build linux

package gateway

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/phxgate/phxgate/channels/ratelimit"
)

// Floods from a client that never reads. Each test asserts the socket's
// fate (kept open with bounded memory, or closed with the right code) and
// that the gateway's memory stayed bounded, while another socket keeps
// working. Everything a client can make the server say without reading
// counts: pongs, heartbeat replies, echo replies, refusals.

// floodHeapBound is the most the process's live heap may grow while one
// socket floods (the bound for one socket's RSS growth).
const floodHeapBound = 2 << 20

// liveHeap is the live heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// nonReadingClient opens a socket whose receive buffer is tiny, so the
// server's output stops fitting in the kernel after a few kilobytes and
// has to be held (or refused) by the gateway. join, when set, is joined
// first (its reply is the only thing the client ever reads).
func nonReadingClient(t *testing.T, s *Server, join string) *client {
	t.Helper()
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c := attempt(t, d, s.Addr(), "/socket/websocket?vsn=2.0.0")
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", c.status())
	}
	if join != "" {
		c.sendText(`["1","1","` + join + `","phx_join",{}]`)
		c.expectMessage(ws.OpText, `["1","1","`+join+`","phx_reply",{"response":{},"status":"ok"}]`)
	}
	return c
}

type floodResult struct {
	sent     int    // frames written before the end or a write error
	maxQueue int64  // most bytes the gateway held queued, sampled
	closed   string // the disconnect reason counted, "" if still open
}

// flood writes n frames made by frame, in batches, never reading, and
// samples what the gateway holds. It stops early when the server has
// closed the socket (a disconnect counted) or the write fails.
func flood(t *testing.T, s *Server, c *client, n int, frame func(i int) []byte) floodResult {
	t.Helper()
	reasons := []string{"slow_consumer", "overloaded", "rate_abuse", "protocol_error", "malformed_message", "conn_reset"}
	closedReason := func() string {
		for _, r := range reasons {
			if counterValue(t, s.Registry(), "phxgate_gateway_disconnects_total", r) > 0 {
				return r
			}
		}
		return ""
	}
	var res floodResult
	const batch = 500
	buf := make([]byte, 0, 64<<10)
	for res.sent < n {
		buf = buf[:0]
		for i := 0; i < batch && res.sent+i < n; i++ {
			buf = append(buf, clientFrame(0x81, true, frame(res.sent+i), -1)...)
		}
		_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.conn.Write(buf); err != nil {
			break // the server closed the socket
		}
		res.sent += batch
		if q := int64(s.queuedBytes()); q > res.maxQueue {
			res.maxQueue = q
		}
		if res.sent%(20*batch) == 0 && closedReason() != "" {
			break
		}
	}
	res.closed = closedReason()
	return res
}

// TestPingFloodNeverReading: a client sending pings and never reading
// holds at most one pending pong (RFC 6455 §5.5.3 allows answering only
// the latest ping), so the gateway's memory stays flat and the socket may
// stay open. The pings carry the largest control payload (125 bytes) so
// that their pongs outgrow the kernel's socket buffers (a few MB) soon.
func TestPingFloodNeverReading(t *testing.T) {
	s := prodServer(t, nil)
	bystander := rawSocket(t, s, "", "room:b")
	c := nonReadingClient(t, s, "")
	base := liveHeap()
	var maxQueue int64
	ping := clientFrame(0x89, true, bytes.Repeat([]byte("p"), 125), -1)
	batch := make([]byte, 0, len(ping)*1000)
	for range 1000 {
		batch = append(batch, ping...)
	}
	const pings = 100_000 // 12.7 MB of pongs
	for sent := 0; sent < pings; sent += 1000 {
		// A deadline only against a gateway that stopped reading for good:
		// under a loaded -race run its poller can fall seconds behind.
		_ = c.conn.SetWriteDeadline(time.Now().Add(time.Minute))
		if _, err := c.conn.Write(batch); err != nil {
			t.Fatalf("write after %d pings: %v (the ping flood should not be closed)", sent, err)
		}
		maxQueue = max(maxQueue, int64(s.queuedBytes()))
	}
	// Wait until the gateway has read every ping.
	waitFor(t, 10*time.Second, func() bool {
		return counterValue(t, s.Registry(), "phxgate_frames_in_total", "") >= pings
	}, "the gateway to read every ping")
	growth := int64(liveHeap()) - int64(base)
	t.Logf("%d pings: heap growth %d bytes, most queued %d bytes", pings, growth, maxQueue)
	if growth > floodHeapBound {
		t.Errorf("heap grew by %d bytes under a ping flood, want ≤ %d", growth, floodHeapBound)
	}
	if maxQueue > 4096 {
		t.Errorf("gateway held %d bytes queued for a ping flood, want at most one pending pong", maxQueue)
	}
	if n := s.Connections(); n != 2 {
		t.Errorf("connections = %d, want 2 (a ping flood is answered, not closed)", n)
	}
	bystander.sendText(`[null,"9","phoenix","heartbeat",{}]`)
	bystander.expectMessage(ws.OpText, `[null,"9","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
	// The flood ends; what the client finally reads is pongs, then the
	// gateway still answers this socket's next ping.
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	c.write(clientFrame(0x89, true, []byte("last"), -1))
	for {
		h, p, err := c.readFrame()
		if err != nil {
			t.Fatalf("reading the pongs: %v", err)
		}
		if h.OpCode != ws.OpPong {
			t.Fatalf("got op %v %q, want only pongs", h.OpCode, p)
		}
		if string(p) == "last" {
			break
		}
	}
}

// TestReplyFloodsNeverReading: heartbeats, echo pushes and rate-limited
// pushes from a client that never reads. Whatever the replies are, the
// gateway holds at most write_queue_max_bytes for the socket (frame bytes
// and per-frame overhead counted) and then closes it (1013), or a limiter
// closes it first (1008); the live heap comes back, and a bystander is
// served throughout.
func TestReplyFloodsNeverReading(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mod   func(*Config)
		join  string
		frame func(i int) []byte
		want  []string // acceptable disconnect reasons
	}{
		{
			name: "heartbeat flood",
			mod: func(c *Config) {
				c.Limits.HeartbeatsPerSecond = 1e6
				c.Limits.HeartbeatBurst = 1e6
			},
			frame: func(i int) []byte { return fmt.Appendf(nil, `[null,"%d","phoenix","heartbeat",{}]`, i) },
			want:  []string{"slow_consumer"},
		},
		{
			name: "heartbeat flood over the heartbeat limit",
			mod: func(c *Config) {
				c.Limits.AbuseWindow = 500 * time.Millisecond
				c.Limits.AbuseQuiet = 250 * time.Millisecond
			},
			frame: func(i int) []byte { return fmt.Appendf(nil, `[null,"%d","phoenix","heartbeat",{}]`, i) },
			want:  []string{"rate_abuse"},
		},
		{
			name: "echo push flood",
			mod: func(c *Config) {
				c.Limits.Classes = map[string]ratelimit.ClassLimit{"default": {PerSecond: 1e6, Burst: 1e6}}
			},
			join: "room:a",
			frame: func(i int) []byte {
				return fmt.Appendf(nil, `["1","%d","room:a","echo",{"pad":"0123456789012345678901234567890123456789"}]`, i+2)
			},
			want: []string{"slow_consumer", "overloaded"},
		},
		{
			name: "rate-limited push flood",
			mod: func(c *Config) {
				c.Limits.Classes = map[string]ratelimit.ClassLimit{"default": {PerSecond: 0.1, Burst: 1}}
			},
			join:  "room:a",
			frame: func(i int) []byte { return fmt.Appendf(nil, `["1","%d","room:a","echo",{}]`, i+2) },
			want:  []string{"slow_consumer", "overloaded", "rate_abuse"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := prodServer(t, tc.mod)
			bystander := rawSocket(t, s, "", "room:b")
			c := nonReadingClient(t, s, tc.join)
			base := liveHeap()
			deadline := time.Now().Add(20 * time.Second)
			var res floodResult
			for res.closed == "" && time.Now().Before(deadline) {
				r := flood(t, s, c, 50_000, tc.frame)
				res.sent += r.sent
				res.maxQueue = max(res.maxQueue, r.maxQueue)
				res.closed = r.closed
				if r.sent < 50_000 {
					break
				}
			}
			waitFor(t, 10*time.Second, func() bool {
				for _, r := range tc.want {
					if counterValue(t, s.Registry(), "phxgate_gateway_disconnects_total", r) == 1 {
						return true
					}
				}
				return false
			}, fmt.Sprintf("the flooding socket closed for one of %v", tc.want))
			t.Logf("%d frames sent; most queued %d bytes; closed: %s", res.sent, res.maxQueue, res.closed)
			limit := int64(NewConfig().WriteQueueMaxBytes)
			if res.maxQueue > limit+int64(cost(2)) {
				t.Errorf("gateway held %d bytes queued, over write_queue_max_bytes %d", res.maxQueue, limit)
			}
			waitFor(t, 10*time.Second, func() bool { return s.Connections() == 1 }, "the flooding socket released")
			if growth := int64(liveHeap()) - int64(base); growth > floodHeapBound {
				t.Errorf("heap grew by %d bytes after the flood, want ≤ %d", growth, floodHeapBound)
			}
			if q := s.queuedBytes(); q != 0 {
				t.Errorf("write queue bytes = %v with only an idle socket left, want 0", q)
			}
			bystander.sendText(`[null,"9","phoenix","heartbeat",{}]`)
			bystander.expectMessage(ws.OpText, `[null,"9","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
		})
	}
}
