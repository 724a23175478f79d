//go:build linux

package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// TestSubLoopSeesEOFAfterData: the server answers the join, then
// sends one frame and closes the TCP connection without a close frame.
// Both are in the socket when it is registered (edge-triggered): the first
// read takes the frame and is short, so readOnce stops; no later edge
// comes for the FIN, so the loop must still see the EOF and count the
// socket closed.
func TestSubLoopSeesEOFAfterData(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		if _, err := ws.Upgrade(nc); err != nil {
			nc.Close()
			return
		}
		if _, _, err := wsutil.ReadClientData(nc); err != nil { // the join
			nc.Close()
			return
		}
		reply := appendServerFrame(nil, opText, []byte(`["1","1","room:x","phx_reply",{"status":"ok","response":{}}]`))
		other := appendServerFrame(nil, opText, []byte(`[null,null,"room:x","other",{}]`))
		_, _ = nc.Write(append(reply, other...))
		nc.Close() // FIN right behind the frame, no close frame
	}()
	spec := groupSpec{
		URL: "ws://" + ln.Addr().String() + "/socket/websocket", Topic: "room:x", Event: "bench",
		Subs: 1, Loops: 1, RampRate: 1000, Concurrency: 1, DialTimeout: 5 * time.Second,
	}
	g, err := startSubGroup(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()
	deadline := time.Now().Add(5 * time.Second)
	for g.progress().Opened < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("not opened: %+v", g.progress())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for g.progress().Closed < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p := g.progress(); p.Closed != 1 {
		t.Fatalf("the server's EOF was not seen: closed=%d other=%d", p.Closed, p.Other)
	}
}
