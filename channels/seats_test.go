package channels

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phxgate/phxgate/backends"
	"github.com/phxgate/phxgate/channels/auth"
)

// graceEnv is a test env whose room:* route holds seats for grace.
func graceEnv(t *testing.T, grace time.Duration) *testEnv {
	t.Helper()
	env := newTestEnv(t, nil)
	router, err := NewRouter([]Route{{Pattern: "room:*", Backend: env.backend, LeaveGrace: grace}})
	if err != nil {
		t.Fatal(err)
	}
	env.srv.router = router
	return env
}

func (e *testEnv) connectPlayer(t *testing.T, player string) (*Socket, *fakeConn) {
	t.Helper()
	c := newFakeConn(t)
	id := &auth.Identity{PlayerID: player}
	return e.srv.Connect(c, ConnectInfo{Serializer: V2, Params: []byte(`{}`), PlayerID: player, Identity: id}), c
}

func leavesOf(env *testEnv) []string {
	var out []string
	for _, l := range env.backend.logged() {
		if strings.HasPrefix(l, "leave ") {
			out = append(out, l)
		}
	}
	return out
}

// A socket that drops without phx_leave keeps the player's seat for the
// route's leave_grace: the same player joining the same topic within it
// sends no Leave and a Join with Rejoin; past it, one Leave with reason
// disconnected; an anonymous socket and a phx_leave leave at once.
func TestLeaveGrace(t *testing.T) {
	t.Run("rejoin within the grace", func(t *testing.T) {
		env := graceEnv(t, time.Hour)
		s1, c1 := env.connectPlayer(t, "alice")
		mustHandle(t, s1, `["1","1","room:a","phx_join",{}]`)
		c1.waitTexts(t, 1)
		s1.Terminate(backends.LeaveDisconnected)
		waitFor(t, 5*time.Second, "the seat held", func() bool { return env.srv.seats.count() == 1 })
		if n := counterValue(t, env.reg, "phxgate_leave_grace_seats", ""); n != 1 {
			t.Fatalf("phxgate_leave_grace_seats = %v, want 1", n)
		}
		s2, c2 := env.connectPlayer(t, "alice")
		mustHandle(t, s2, `["7","7","room:a","phx_join",{}]`)
		c2.waitTexts(t, 1)
		if env.srv.seats.count() != 0 {
			t.Fatal("the seat is still held after the rejoin")
		}
		log := env.backend.logged()
		if !slices.Contains(log, "join room:a 7 rejoin") {
			t.Fatalf("backend log %v: want the second join with rejoin", log)
		}
		if l := leavesOf(env); len(l) != 0 {
			t.Fatalf("Leaves %v, want none (the player came back)", l)
		}
		// The new channel's own Leave still comes, once.
		s2.Terminate(backends.LeaveKicked)
		waitFor(t, 5*time.Second, "the new channel's Leave", func() bool { return len(leavesOf(env)) == 1 })
		if l := leavesOf(env); l[0] != "leave room:a 7 kicked" {
			t.Fatalf("Leaves %v", l)
		}
	})
	t.Run("past the grace", func(t *testing.T) {
		env := graceEnv(t, 50*time.Millisecond)
		s1, c1 := env.connectPlayer(t, "bob")
		mustHandle(t, s1, `["1","1","room:a","phx_join",{}]`)
		c1.waitTexts(t, 1)
		s1.Terminate(backends.LeaveDisconnected)
		waitFor(t, 5*time.Second, "the Leave after the grace", func() bool { return len(leavesOf(env)) == 1 })
		if l := leavesOf(env); l[0] != "leave room:a 1 disconnected" {
			t.Fatalf("Leaves %v", l)
		}
		waitFor(t, 5*time.Second, "the expired seat forgotten", func() bool { return env.srv.seats.count() == 0 })
		s2, c2 := env.connectPlayer(t, "bob")
		mustHandle(t, s2, `["2","2","room:a","phx_join",{}]`)
		c2.waitTexts(t, 1)
		if slices.Contains(env.backend.logged(), "join room:a 2 rejoin") {
			t.Fatal("a join after the grace said rejoin")
		}
	})
	t.Run("anonymous and phx_leave leave at once", func(t *testing.T) {
		env := graceEnv(t, time.Hour)
		anon, ca := env.connect(t, V2)
		mustHandle(t, anon, `["1","1","room:a","phx_join",{}]`)
		ca.waitTexts(t, 1)
		anon.Terminate(backends.LeaveDisconnected)
		s, c := env.connectPlayer(t, "carol")
		mustHandle(t, s, `["1","1","room:b","phx_join",{}]`)
		c.waitTexts(t, 1)
		mustHandle(t, s, `["1","2","room:b","phx_leave",{}]`)
		waitFor(t, 5*time.Second, "two Leaves at once", func() bool { return len(leavesOf(env)) == 2 })
		if env.srv.seats.count() != 0 {
			t.Fatal("a seat was held")
		}
	})
	t.Run("shutdown sends the held seats' Leaves, drained", func(t *testing.T) {
		env := graceEnv(t, time.Hour)
		s1, c1 := env.connectPlayer(t, "dave")
		mustHandle(t, s1, `["1","1","room:a","phx_join",{}]`)
		c1.waitTexts(t, 1)
		s1.Terminate(backends.LeaveDisconnected)
		waitFor(t, 5*time.Second, "the seat held", func() bool { return env.srv.seats.count() == 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := env.srv.Close(ctx); err != nil {
			t.Fatal(err)
		}
		// The seat ends because the node drains, not because its grace
		// ran out: its Leave says drained.
		if l := leavesOf(env); len(l) != 1 || l[0] != "leave room:a 1 drained" {
			t.Fatalf("Leaves after Close %v, want one with reason drained", l)
		}
		if n := counterValue(t, env.reg, "phxgate_leaves_total", "drained"); n != 1 {
			t.Errorf(`phxgate_leaves_total{reason="drained"} = %v, want 1`, n)
		}
	})
	t.Run("a refused rejoin sends the seat's Leave", func(t *testing.T) {
		env := graceEnv(t, time.Hour)
		s1, c1 := env.connectPlayer(t, "erin")
		mustHandle(t, s1, `["1","1","room:a","phx_join",{}]`)
		c1.waitTexts(t, 1)
		s1.Terminate(backends.LeaveDisconnected)
		waitFor(t, 5*time.Second, "the seat held", func() bool { return env.srv.seats.count() == 1 })
		env.backend.denyAll.Store(true)
		s2, c2 := env.connectPlayer(t, "erin")
		mustHandle(t, s2, `["2","2","room:a","phx_join",{}]`)
		c2.waitTexts(t, 1)
		waitFor(t, 5*time.Second, "the old seat's Leave", func() bool { return len(leavesOf(env)) == 1 })
		if l := leavesOf(env); l[0] != "leave room:a 1 disconnected" {
			t.Fatalf("Leaves %v", l)
		}
	})
	t.Run("many seats at shutdown, and one after it", func(t *testing.T) {
		env := graceEnv(t, time.Hour)
		const n = 300
		for i := range n {
			s, c := env.connectPlayer(t, fmt.Sprintf("p%d", i))
			mustHandle(t, s, `["1","1","room:a","phx_join",{}]`)
			c.waitTexts(t, 1)
			s.Terminate(backends.LeaveDisconnected)
		}
		waitFor(t, 5*time.Second, "the seats held", func() bool { return env.srv.seats.count() == n })
		late, lc := env.connectPlayer(t, "late")
		mustHandle(t, late, `["1","1","room:a","phx_join",{}]`)
		lc.waitTexts(t, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.srv.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if l := leavesOf(env); len(l) != n {
			t.Fatalf("%d Leaves when Close returned, want %d", len(l), n)
		}
		// A socket that drops after Close holds no seat: its Leave goes
		// out at once.
		late.Terminate(backends.LeaveDisconnected)
		waitFor(t, 5*time.Second, "the late Leave", func() bool { return len(leavesOf(env)) == n+1 })
		if env.srv.seats.count() != 0 {
			t.Fatal("a seat is held after Close")
		}
	})
}
