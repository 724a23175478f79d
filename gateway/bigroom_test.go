//go:build linux

package gateway

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// fillRoom tracks n presences of about metaBytes each on topic through
// the node's tracker, as players on other sockets would be.
func fillRoom(t *testing.T, s *Server, topic string, n, metaBytes int) {
	t.Helper()
	meta := []byte(`{"pad":"` + strings.Repeat("x", metaBytes) + `"}`)
	for i := range n {
		if err := s.presence.Track(context.Background(), topic, "fill:"+strconv.Itoa(i), "p"+strconv.Itoa(i), meta); err != nil {
			t.Fatal(err)
		}
	}
}

// slowSocket is rawSocket with a small receive buffer: a client that
// stops reading soon stalls what is sent to it.
func slowSocket(t *testing.T, s *Server, player, topic string) *client {
	t.Helper()
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	c := attempt(t, d, s.Addr(), tokenTarget(hsToken(t, claims(player))))
	if c.status() != http.StatusSwitchingProtocols {
		t.Fatalf("status = %d, want 101", c.status())
	}
	c.sendText(`["1","1","` + topic + `","phx_join",{}]`)
	c.expectMessage(ws.OpText, `["1","1","`+topic+`","phx_reply",{"response":{},"status":"ok"}]`)
	return c
}

// readState reads a joined socket's presence_state and the presence_diffs
// after it until want keys are listed, applying them as phoenix.js does
// (joins add metas by phx_ref), and returns the keys with their metas'
// refs.
func readState(t *testing.T, c *client, want int) map[string][]string {
	t.Helper()
	type metas struct {
		Metas []struct {
			Ref string `json:"phx_ref"`
		} `json:"metas"`
	}
	list := map[string][]string{}
	add := func(raw json.RawMessage) {
		var m map[string]metas
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("bad presences %.200s: %v", raw, err)
		}
		for k, v := range m {
			for _, meta := range v.Metas {
				list[k] = append(list[k], meta.Ref)
			}
		}
	}
	add(c.readEvent("presence_state"))
	for len(list) < want {
		var d struct {
			Joins  json.RawMessage `json:"joins"`
			Leaves json.RawMessage `json:"leaves"`
		}
		if err := json.Unmarshal(c.readEvent("presence_diff"), &d); err != nil {
			t.Fatal(err)
		}
		add(d.Joins)
	}
	return list
}

func streamBytes(t *testing.T, s *Server) float64 {
	return counterValue(t, s.opts.Registry, "phxgate_presence_stream_bytes", "")
}

// A room whose presence_state is many times write_queue_max_bytes is
// joined: the state comes in pieces, each within the write queue, with
// every player and the joiner. A joiner that stops reading holds its
// snapshot (the node's budget) until its socket closes; a join that
// finds the budget spent waits presence_stream_wait, then ends with
// phx_error, its presence refused (stream_budget) and never tracked; once
// the budget is back to zero a join streams again.
func TestBigRoomJoinsInPieces(t *testing.T) {
	const players, metaBytes = 6000, 1000 // about 6.6 MB of state
	s := prodServer(t, func(c *Config) {
		c.WriteQueueMaxBytes = 64 << 10
		c.Channels.PresenceStreamBytes = 8 << 20
		c.Channels.PresenceStreamWait = 200 * time.Millisecond
		c.Routes = []RouteConfig{{Topic: "room:*", Backend: InprocPrefix + "seats", Presence: true}}
	}, WithBackend("seats", seatBackend{}))
	fillRoom(t, s, "room:big", players, metaBytes)
	// Every join published: a diff still on its way would wait behind a
	// joiner's stream and count against its write queue. The diffs weigh
	// more than the metas (keys, refs, framing), so the byte count passes
	// players × metaBytes with some still to go: wait for it to stop
	// moving, with nothing held, for several diff windows.
	var last float64
	moved := time.Now()
	waitFor(t, 30*time.Second, func() bool {
		b := counterValue(t, s.opts.Registry, "phxgate_presence_diff_bytes_total", "")
		held := counterValue(t, s.opts.Registry, "phxgate_presence_held_bytes", "")
		if b != last || held != 0 || b < players*metaBytes {
			last, moved = b, time.Now()
			return false
		}
		return time.Since(moved) >= 500*time.Millisecond
	}, "the fill's diffs published")

	alice := rawSocket(t, s, hsToken(t, claims("alice")), "room:big")
	start := time.Now()
	list := readState(t, alice, players+1)
	t.Logf("a %d-player room joined in %d pieces in %v (write queue %d bytes)", players,
		int(counterValue(t, s.opts.Registry, "phxgate_presence_state_pieces_total", ""))+1, time.Since(start), 64<<10)
	if len(list) != players+1 || len(list["alice"]) != 1 || len(list["p0"]) != 1 || len(list["p5999"]) != 1 {
		t.Fatalf("alice's list: %d keys, alice %v", len(list), list["alice"])
	}
	waitFor(t, 5*time.Second, func() bool { return streamBytes(t, s) == 0 }, "alice's snapshot released")

	// Bob joins and reads nothing past the reply: his stream stalls,
	// holding its snapshot.
	bob := slowSocket(t, s, "bob", "room:big")
	waitFor(t, 5*time.Second, func() bool { return streamBytes(t, s) > 0 }, "bob's snapshot held")
	carol := rawSocket(t, s, hsToken(t, claims("carol")), "room:big")
	if e := string(carol.readEvent("phx_error")); e != `{"reason":"channel_crash"}` {
		t.Fatalf("carol's join past the budget: %s", e)
	}
	if n := sumCounter(t, s.opts.Registry, "phxgate_presence_refused_total", "reason", "stream_budget"); n != 1 {
		t.Fatalf("refused{stream_budget} = %v, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ps, err := s.presence.List(ctx, "room:big")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Key == "carol" {
			t.Fatal("carol, refused for the budget, was tracked")
		}
	}
	bob.conn.Close()
	waitFor(t, 10*time.Second, func() bool { return streamBytes(t, s) == 0 }, "bob's snapshot released with his socket")

	dave := rawSocket(t, s, hsToken(t, claims("dave")), "room:big")
	if list := readState(t, dave, players+2); list["dave"] == nil || list["alice"] == nil {
		t.Fatalf("dave's list: %d keys", len(list))
	}
	dave.sendText(`[null,"hb","phoenix","heartbeat",{}]`)
	for {
		if msg := dave.readV2(); string(msg[1]) == `"hb"` {
			break
		}
	}
	waitFor(t, 5*time.Second, func() bool { return streamBytes(t, s) == 0 }, "dave's snapshot released")
}
