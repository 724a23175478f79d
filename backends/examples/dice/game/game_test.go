package game

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	backendv1 "github.com/phxgate/phxgate/backends/proto/phxgate/backend/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestJoin(t *testing.T) {
	t.Run("reply", func(t *testing.T) {
		f := newFixture(t, nil)
		start := f.clk.Now()
		r := f.join(t, "table:1", "alice")
		want := fmt.Sprintf(`{"balance":1000,"round":{"id":1,"state":"betting","closes_at_ms":%d}}`, start.Add(DefaultWindow).UnixMilli())
		if r.GetStatus() != StatusOK || string(r.GetResponse().GetData()) != want {
			t.Fatalf("join reply %s %s, want ok %s", r.GetStatus(), r.GetResponse().GetData(), want)
		}
		// The player is shown by name on tables with presence on.
		res, err := f.g.Join(context.Background(), &backendv1.JoinRequest{Call: call("table:1", `al"ice`, "phx_join", newKey(), []byte("{}"))})
		if err != nil || string(res.GetPresenceMeta()) != `{"name":"al\"ice"}` {
			t.Fatalf("presence meta %s, %v", res.GetPresenceMeta(), err)
		}
		// A second player joins the round already open.
		f.clk.Move(time.Second)
		if j := f.mustJoin(t, "table:1", "bob"); j.Round.ID != 1 || j.Round.ClosesAtMs != start.Add(DefaultWindow).UnixMilli() {
			t.Fatalf("second join round %+v, want round 1 closing at the first join + window", j.Round)
		}
		// Another table has its own rounds.
		if j := f.mustJoin(t, "table:2", "alice"); j.Round.ID != 1 || j.Balance != 1000 {
			t.Fatalf("other table join %+v, want round 1 and balance 1000", j)
		}
	})
	refusals := []struct {
		name, topic, player, reason string
	}{
		{"other topic", "room:1", "alice", ReasonBadTopic},
		{"empty id", "table:", "alice", ReasonBadTopic},
		{"empty topic", "", "alice", ReasonBadTopic},
		{"prefix case", "Table:1", "alice", ReasonBadTopic},
		{"anonymous", "table:1", "", ReasonLoginRequired},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			wantError(t, f.join(t, tc.topic, tc.player), tc.reason)
			if st := f.g.Stats(); st.Tables != 0 || st.Accounts != 0 {
				t.Fatalf("a refused join left state: %+v", st)
			}
		})
	}
	t.Run("no call", func(t *testing.T) {
		f := newFixture(t, nil)
		_, err := f.g.Join(context.Background(), &backendv1.JoinRequest{})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Join without a call: %v, want InvalidArgument", err)
		}
	})
}

func TestBet(t *testing.T) {
	accepted := []struct {
		name    string
		payload string
		balance int64
	}{
		{"high", `{"amount":100,"pick":"high"}`, 900},
		{"low", `{"amount":1,"pick":"low"}`, 999},
		{"whole balance", `{"amount":1000,"pick":"low"}`, 0},
		{"extra members", `{"pick":"high","idempotency_key":"bet-7","amount":250,"note":[1,2]}`, 750},
		{"whitespace", " \n{ \"amount\" : 5 , \"pick\" : \"high\" } ", 995},
		{"escaped pick", `{"amount":5,"pick":"\u0068igh"}`, 995},
	}
	for _, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.mustJoin(t, "table:1", "alice")
			r := f.send(t, "table:1", "alice", EventBet, newKey(), []byte(tc.payload))
			if r.GetStatus() != StatusOK {
				t.Fatalf("bet %s: %s %s", tc.payload, r.GetStatus(), r.GetResponse().GetData())
			}
			var b betReply
			decode(t, r.GetResponse().GetData(), &b)
			if b.Balance != tc.balance || b.BetID == "" {
				t.Fatalf("bet reply %+v, want balance %d and a bet id", b, tc.balance)
			}
			wantBalance(t, f.g, "alice", tc.balance)
		})
	}

	refused := []struct {
		name    string
		event   string
		player  string
		payload string
		binary  bool
		reason  string
	}{
		{"over balance", EventBet, "alice", `{"amount":1001,"pick":"high"}`, false, ReasonInsufficientFunds},
		{"zero", EventBet, "alice", `{"amount":0,"pick":"high"}`, false, ReasonBadBet},
		{"negative", EventBet, "alice", `{"amount":-5,"pick":"high"}`, false, ReasonBadBet},
		{"fraction", EventBet, "alice", `{"amount":1.5,"pick":"high"}`, false, ReasonBadBet},
		{"integral fraction", EventBet, "alice", `{"amount":10.0,"pick":"high"}`, false, ReasonBadBet},
		{"exponent", EventBet, "alice", `{"amount":1e2,"pick":"high"}`, false, ReasonBadBet},
		{"string amount", EventBet, "alice", `{"amount":"100","pick":"high"}`, false, ReasonBadBet},
		{"null amount", EventBet, "alice", `{"amount":null,"pick":"high"}`, false, ReasonBadBet},
		{"over max", EventBet, "alice", `{"amount":1000001,"pick":"high"}`, false, ReasonBadBet},
		{"huge", EventBet, "alice", `{"amount":99999999999999999999999,"pick":"high"}`, false, ReasonBadBet},
		{"no amount", EventBet, "alice", `{"pick":"high"}`, false, ReasonBadBet},
		{"Amount", EventBet, "alice", `{"Amount":5,"pick":"high"}`, false, ReasonBadBet},
		{"bad pick", EventBet, "alice", `{"amount":5,"pick":"middle"}`, false, ReasonBadBet},
		{"pick case", EventBet, "alice", `{"amount":5,"pick":"HIGH"}`, false, ReasonBadBet},
		{"pick number", EventBet, "alice", `{"amount":5,"pick":4}`, false, ReasonBadBet},
		{"no pick", EventBet, "alice", `{"amount":5}`, false, ReasonBadBet},
		{"array", EventBet, "alice", `[5,"high"]`, false, ReasonBadBet},
		{"null", EventBet, "alice", `null`, false, ReasonBadBet},
		{"empty", EventBet, "alice", ``, false, ReasonBadBet},
		{"not json", EventBet, "alice", `{"amount":5,"pick":"high"`, false, ReasonBadBet},
		{"trailing garbage", EventBet, "alice", `{"amount":5,"pick":"high"} x`, false, ReasonBadBet},
		{"binary", EventBet, "alice", `{"amount":5,"pick":"high"}`, true, ReasonBadBet},
		{"anonymous", EventBet, "", `{"amount":5,"pick":"high"}`, false, ReasonLoginRequired},
		{"unknown event", "fold", "alice", `{}`, false, ReasonUnknownEvent},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.mustJoin(t, "table:1", "alice")
			c := call("table:1", tc.player, tc.event, newKey(), []byte(tc.payload))
			c.Payload.Binary = tc.binary
			res, err := f.g.HandleIn(context.Background(), &backendv1.HandleInRequest{Call: c})
			if err != nil {
				t.Fatalf("HandleIn: %v", err)
			}
			wantError(t, res.GetReply(), tc.reason)
			wantBalance(t, f.g, "alice", 1000)
		})
	}

	t.Run("max bet", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.StartBalance = 5_000_000 })
		f.mustJoin(t, "table:1", "whale")
		if b := f.mustBet(t, "table:1", "whale", DefaultMaxBet, PickHigh); b.Balance != 4_000_000 {
			t.Fatalf("balance after a max bet %d, want 4000000", b.Balance)
		}
	})
}

func TestBalanceMath(t *testing.T) {
	f := newFixture(t, nil)
	f.mustJoin(t, "table:1", "alice")
	f.mustJoin(t, "table:1", "bob")
	ids := map[string]bool{}
	for _, step := range []struct {
		amount  int64
		balance int64
	}{{100, 900}, {250, 650}, {650, 0}} {
		b := f.mustBet(t, "table:1", "alice", step.amount, PickHigh)
		if b.Balance != step.balance {
			t.Fatalf("bet %d: balance %d, want %d", step.amount, b.Balance, step.balance)
		}
		if ids[b.BetID] {
			t.Fatalf("bet id %q given twice", b.BetID)
		}
		ids[b.BetID] = true
	}
	wantError(t, f.bet(t, "table:1", "alice", 1, PickLow, ""), ReasonInsufficientFunds)
	// Balances are per player.
	wantBalance(t, f.g, "bob", 1000)
	// And across tables: alice's balance is the same on another table.
	if j := f.mustJoin(t, "table:2", "alice"); j.Balance != 0 {
		t.Fatalf("alice joins table:2 with balance %d, want 0", j.Balance)
	}
}

func TestRoundPaysTwiceTheWinningBets(t *testing.T) {
	f := newFixture(t, nil)
	f.mustJoin(t, "table:1", "alice")
	f.mustJoin(t, "table:1", "bob")
	f.mustBet(t, "table:1", "alice", 100, PickHigh)
	f.mustBet(t, "table:1", "alice", 50, PickLow)
	f.mustBet(t, "table:1", "bob", 200, PickLow)
	f.mustBet(t, "table:1", "bob", 30, PickHigh)
	f.mustBet(t, "table:1", "bob", 20, PickHigh)

	res := f.rollRound(t, 5)
	want := roundResult{Round: 1, Roll: 5, Payouts: map[string]int64{"alice": 200, "bob": 100}}
	if fmt.Sprint(res) != fmt.Sprint(want) {
		t.Fatalf("round result %+v, want %+v", res, want)
	}
	// Credited before the broadcast was sent.
	wantBalance(t, f.g, "alice", 1000-150+200)
	wantBalance(t, f.g, "bob", 1000-250+100)

	// The next round opened at once and takes bets.
	b := f.mustBet(t, "table:1", "bob", 100, PickLow)
	if b.Balance != 750 {
		t.Fatalf("bob's balance in round 2 %d, want 750", b.Balance)
	}
	res = f.rollRound(t, 2)
	want = roundResult{Round: 2, Roll: 2, Payouts: map[string]int64{"bob": 200}}
	if fmt.Sprint(res) != fmt.Sprint(want) {
		t.Fatalf("round result %+v, want %+v", res, want)
	}
	wantBalance(t, f.g, "bob", 950)
	if st := f.g.Stats(); st.Rounds != 2 || st.BroadcastFailures != 0 {
		t.Fatalf("stats %+v, want 2 rounds and no failure", st)
	}
}

func TestRoundPayoutsEveryFace(t *testing.T) {
	for roll := 1; roll <= 6; roll++ {
		t.Run(fmt.Sprint(roll), func(t *testing.T) {
			f := newFixture(t, nil)
			f.mustJoin(t, "table:1", "hi")
			f.mustJoin(t, "table:1", "lo")
			f.mustBet(t, "table:1", "hi", 10, PickHigh)
			f.mustBet(t, "table:1", "lo", 10, PickLow)
			res := f.rollRound(t, roll)
			winner, loser := "hi", "lo"
			if roll <= 3 {
				winner, loser = "lo", "hi"
			}
			if res.Roll != roll || len(res.Payouts) != 1 || res.Payouts[winner] != 20 {
				t.Fatalf("result %+v, want roll %d paying %s 20", res, roll, winner)
			}
			wantBalance(t, f.g, winner, 1010)
			wantBalance(t, f.g, loser, 990)
		})
	}
}

func TestRoundWithoutWinners(t *testing.T) {
	f := newFixture(t, nil)
	f.mustJoin(t, "table:1", "alice")
	s := f.rollRoundRaw(t, 3)
	if string(s.payload) != `{"round":1,"roll":3,"payouts":{}}` || s.topic != "table:1" {
		t.Fatalf("broadcast %s %s, want table:1 with empty payouts", s.topic, s.payload)
	}
}

// rollRoundRaw is rollRound returning the broadcast as sent.
func (f *fixture) rollRoundRaw(tb testing.TB, n int) sent {
	tb.Helper()
	f.roll.Store(int64(n))
	f.clk.WaitTimers(tb, 1)
	f.clk.Advance(f.cfg.Window)
	return f.bc.next(tb)
}

func TestBettingClosedAfterTheWindow(t *testing.T) {
	f := newFixture(t, nil)
	f.mustJoin(t, "table:1", "alice")
	f.clk.WaitTimers(t, 1)

	f.clk.Move(DefaultWindow - time.Millisecond)
	f.mustBet(t, "table:1", "alice", 100, PickHigh)

	// The window is over but the loop has not rolled yet (its timer is
	// late): bets are refused, and a join sees the round rolling.
	f.clk.Move(time.Millisecond)
	wantError(t, f.bet(t, "table:1", "alice", 100, PickHigh, ""), ReasonBettingClosed)
	wantBalance(t, f.g, "alice", 900)
	if j := f.mustJoin(t, "table:1", "bob"); j.Round.State != StateRolling || j.Round.ID != 1 {
		t.Fatalf("join during the roll: round %+v, want round 1 rolling", j.Round)
	}

	f.roll.Store(6)
	f.clk.Fire()
	if res := f.bc.next(t); !strings.Contains(string(res.payload), `"payouts":{"alice":200}`) {
		t.Fatalf("round result %s, want alice paid 200", res.payload)
	}
	wantBalance(t, f.g, "alice", 1100)
	if b := f.mustBet(t, "table:1", "alice", 100, PickHigh); b.Balance != 1000 {
		t.Fatalf("bet in the next round: balance %d, want 1000", b.Balance)
	}
}

func TestIdempotency(t *testing.T) {
	t.Run("same key twice debits once", func(t *testing.T) {
		f := newFixture(t, nil)
		f.mustJoin(t, "table:1", "alice")
		r1 := f.bet(t, "table:1", "alice", 100, PickHigh, "k1")
		r2 := f.bet(t, "table:1", "alice", 100, PickHigh, "k1")
		if r1.GetStatus() != StatusOK || r2.GetStatus() != r1.GetStatus() || string(r2.GetResponse().GetData()) != string(r1.GetResponse().GetData()) {
			t.Fatalf("replies %s %s and %s %s, want the same ok twice", r1.GetStatus(), r1.GetResponse().GetData(), r2.GetStatus(), r2.GetResponse().GetData())
		}
		wantBalance(t, f.g, "alice", 900)
	})
	t.Run("different keys debit twice", func(t *testing.T) {
		f := newFixture(t, nil)
		f.mustJoin(t, "table:1", "alice")
		r1 := f.bet(t, "table:1", "alice", 100, PickHigh, "k1")
		r2 := f.bet(t, "table:1", "alice", 100, PickHigh, "k2")
		var b1, b2 betReply
		decode(t, r1.GetResponse().GetData(), &b1)
		decode(t, r2.GetResponse().GetData(), &b2)
		if b1.Balance != 900 || b2.Balance != 800 || b1.BetID == b2.BetID {
			t.Fatalf("replies %+v and %+v, want balances 900 then 800 and two bet ids", b1, b2)
		}
		wantBalance(t, f.g, "alice", 800)
	})
	t.Run("replay keeps the original balance figure", func(t *testing.T) {
		f := newFixture(t, nil)
		f.mustJoin(t, "table:1", "alice")
		first := f.bet(t, "table:1", "alice", 100, PickHigh, "player:alice:bet-7")
		f.rollRound(t, 6) // pays 200: balance 1100
		f.mustBet(t, "table:1", "alice", 10, PickLow)
		again := f.bet(t, "table:1", "alice", 100, PickHigh, "player:alice:bet-7")
		if string(again.GetResponse().GetData()) != string(first.GetResponse().GetData()) || again.GetStatus() != StatusOK {
			t.Fatalf("replay %s %s, want %s", again.GetStatus(), again.GetResponse().GetData(), first.GetResponse().GetData())
		}
		wantBalance(t, f.g, "alice", 1090)
	})
	t.Run("insufficient funds stays the answer", func(t *testing.T) {
		f := newFixture(t, nil)
		f.mustJoin(t, "table:1", "alice")
		wantError(t, f.bet(t, "table:1", "alice", 1500, PickHigh, "big"), ReasonInsufficientFunds)
		f.mustBet(t, "table:1", "alice", 1000, PickHigh)
		f.rollRound(t, 4) // pays 2000
		wantBalance(t, f.g, "alice", 2000)
		wantError(t, f.bet(t, "table:1", "alice", 1500, PickHigh, "big"), ReasonInsufficientFunds)
		wantBalance(t, f.g, "alice", 2000)
		// A new key is a new bet.
		if b := f.mustBet(t, "table:1", "alice", 1500, PickHigh); b.Balance != 500 {
			t.Fatalf("new key: balance %d, want 500", b.Balance)
		}
	})
	t.Run("bad bet stays the answer", func(t *testing.T) {
		f := newFixture(t, nil)
		f.mustJoin(t, "table:1", "alice")
		wantError(t, f.send(t, "table:1", "alice", EventBet, "k", []byte(`{"amount":5,"pick":"up"}`)), ReasonBadBet)
		wantError(t, f.send(t, "table:1", "alice", EventBet, "k", []byte(`{"amount":5,"pick":"high"}`)), ReasonBadBet)
		wantBalance(t, f.g, "alice", 1000)
	})
	t.Run("betting closed stays the answer", func(t *testing.T) {
		f := newFixture(t, nil)
		f.mustJoin(t, "table:1", "alice")
		f.clk.WaitTimers(t, 1)
		f.clk.Move(DefaultWindow)
		wantError(t, f.bet(t, "table:1", "alice", 5, PickHigh, "late"), ReasonBettingClosed)
		f.clk.Fire()
		f.bc.next(t)
		wantError(t, f.bet(t, "table:1", "alice", 5, PickHigh, "late"), ReasonBettingClosed)
		wantBalance(t, f.g, "alice", 1000)
	})
	t.Run("keys are scoped by player", func(t *testing.T) {
		f := newFixture(t, nil)
		f.mustJoin(t, "table:1", "alice")
		f.mustJoin(t, "table:1", "bob")
		a := f.bet(t, "table:1", "alice", 100, PickHigh, "shared")
		b := f.bet(t, "table:1", "bob", 300, PickHigh, "shared")
		if string(a.GetResponse().GetData()) == string(b.GetResponse().GetData()) {
			t.Fatalf("bob got alice's answer %s", b.GetResponse().GetData())
		}
		wantBalance(t, f.g, "alice", 900)
		wantBalance(t, f.g, "bob", 700)
	})
	t.Run("concurrent retries debit once", func(t *testing.T) {
		f := newFixture(t, nil)
		f.mustJoin(t, "table:1", "alice")
		const n = 32
		replies := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				r := f.bet(t, "table:1", "alice", 100, PickHigh, "race")
				replies[i] = r.GetStatus() + " " + string(r.GetResponse().GetData())
			})
		}
		wg.Wait()
		for i := range replies {
			if replies[i] != replies[0] {
				t.Fatalf("reply %d %q differs from %q", i, replies[i], replies[0])
			}
		}
		wantBalance(t, f.g, "alice", 900)
	})
}

func TestIdempotencyMemoryIsBounded(t *testing.T) {
	t.Run("ttl", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.KeyTTL = time.Minute; c.Window = time.Hour })
		f.mustJoin(t, "table:1", "alice")
		f.bet(t, "table:1", "alice", 100, PickHigh, "k")
		f.clk.Move(time.Minute - time.Millisecond)
		f.bet(t, "table:1", "alice", 100, PickHigh, "k")
		wantBalance(t, f.g, "alice", 900)
		if st := f.g.Stats(); st.Keys != 1 {
			t.Fatalf("keys %d, want 1", st.Keys)
		}
		// Once the key is older than KeyTTL it is forgotten: the same key
		// is a new bet (which is why KeyTTL must outlast every retry).
		f.clk.Move(time.Millisecond)
		if st := f.g.Stats(); st.Keys != 0 {
			t.Fatalf("keys %d after the ttl, want 0", st.Keys)
		}
		f.bet(t, "table:1", "alice", 100, PickHigh, "k")
		wantBalance(t, f.g, "alice", 800)
	})
	t.Run("cap evicts the oldest", func(t *testing.T) {
		f := newFixture(t, func(c *Config) { c.MaxKeys = 3 })
		f.mustJoin(t, "table:1", "alice")
		for _, k := range []string{"k1", "k2", "k3", "k4"} {
			f.bet(t, "table:1", "alice", 1, PickHigh, k)
		}
		wantBalance(t, f.g, "alice", 996)
		if st := f.g.Stats(); st.Keys != 3 || st.KeysEvictedEarly != 1 {
			t.Fatalf("stats %+v, want 3 keys and 1 evicted early", st)
		}
		f.bet(t, "table:1", "alice", 1, PickHigh, "k4") // still known
		wantBalance(t, f.g, "alice", 996)
		f.bet(t, "table:1", "alice", 1, PickHigh, "k1") // the oldest, forgotten
		wantBalance(t, f.g, "alice", 995)
	})
}

func TestLastLeaveStopsTheTable(t *testing.T) {
	base := runtime.NumGoroutine()
	f := newFixture(t, nil)
	f.mustJoin(t, "table:1", "alice")
	f.joinSeat(t, "table:1", "alice", "alice-tab-2") // a second socket of hers
	f.mustJoin(t, "table:1", "bob")
	f.mustBet(t, "table:1", "alice", 300, PickHigh)
	f.mustBet(t, "table:1", "bob", 100, PickLow)
	tb := f.table(t, "table:1")
	f.clk.WaitTimers(t, 1)

	f.leave(t, "table:1", "bob")
	f.leave(t, "table:1", "alice")
	f.leave(t, "table:1", "alice") // a Leave for a seat gone already: nothing
	select {
	case <-tb.done:
		t.Fatal("the loop stopped while alice still has a channel")
	default:
	}
	f.leaveSeat(t, "table:1", "alice", "alice-tab-2")
	waitClosed(t, tb.done, "the table's loop returns")
	if n := f.clk.Pending(); n != 0 {
		t.Fatalf("%d timers pending after the last leave, want 0", n)
	}
	// The open round's stakes went back.
	wantBalance(t, f.g, "alice", 1000)
	wantBalance(t, f.g, "bob", 1000)
	if st := f.g.Stats(); st.Tables != 0 || st.Rounds != 0 {
		t.Fatalf("stats %+v, want no table and no round", st)
	}
	f.clk.Advance(10 * DefaultWindow)
	f.bc.none(t)
	goroutinesBackTo(t, base)

	// A new first join starts the table again, with a fresh round that
	// takes the refunded round's id: results on a table count 1, 2, 3 …
	if j := f.mustJoin(t, "table:1", "bob"); j.Round.ID != 1 || j.Round.State != StateBetting {
		t.Fatalf("rejoin round %+v, want round 1 betting", j.Round)
	}
	if res := f.rollRound(t, 1); res.Round != 1 {
		t.Fatalf("round %d rolled, want 1", res.Round)
	}
	f.leave(t, "table:1", "bob")
	f.g.Close()
	goroutinesBackTo(t, base)
}

func TestLeaveDuringBroadcast(t *testing.T) {
	// The last player leaves while the loop is sending a result: the send
	// finishes, no next round is rolled, the loop returns.
	f := newFixture(t, nil)
	release := make(chan struct{})
	f.bc.fail = func(int64) error { <-release; return nil }
	f.mustJoin(t, "table:1", "alice")
	tb := f.table(t, "table:1")
	f.rollRoundRaw(t, 6)
	f.leave(t, "table:1", "alice")
	close(release)
	waitClosed(t, tb.done, "the table's loop returns")
	if n := f.clk.Pending(); n != 0 {
		t.Fatalf("%d timers pending, want 0", n)
	}
}

func TestRetriedJoinAndLeaveCountOnce(t *testing.T) {
	f := newFixture(t, nil)
	r1 := f.joinKey(t, "table:1", "alice", "join-1")
	f.clk.Move(time.Second)
	r2 := f.joinKey(t, "table:1", "alice", "join-1")
	if string(r1.GetResponse().GetData()) != string(r2.GetResponse().GetData()) {
		t.Fatalf("retried join answered %s, first %s", r2.GetResponse().GetData(), r1.GetResponse().GetData())
	}
	f.mustJoin(t, "table:1", "bob")
	tb := f.table(t, "table:1")
	f.leaveKey(t, "table:1", "bob", "leave-1")
	f.leaveKey(t, "table:1", "bob", "leave-1") // a retry: bob is not counted twice
	f.leaveKey(t, "table:1", "alice", "leave-2")
	waitClosed(t, tb.done, "one leave per admitted join stops the table")

	// Keys are scoped by table and player: the same key from another
	// call is another join.
	f.joinKey(t, "table:3", "carol", "join-1")
	f.joinKey(t, "table:3", "dave", "join-1")
	if n := len(f.table(t, "table:3").seats); n != 2 {
		t.Fatalf("table:3 counts %d players, want 2", n)
	}

	// A leave for a table or a player the game does not know is harmless.
	f.leave(t, "table:9", "carol")
	f.mustJoin(t, "table:1", "alice")
	f.leave(t, "table:1", "mallory")
	if st := f.g.Stats(); st.Tables != 2 {
		t.Fatalf("tables %d, want 2: a stranger's leave emptied a table", st.Tables)
	}
}

func TestBroadcastRetries(t *testing.T) {
	f := newFixture(t, nil)
	unavailable := status.Error(codes.Unavailable, "gateway down")
	f.bc.fail = func(n int64) error {
		if n <= 2 {
			return unavailable
		}
		return nil
	}
	f.mustJoin(t, "table:1", "alice")
	f.mustBet(t, "table:1", "alice", 100, PickHigh)
	first := f.rollRoundRaw(t, 6)
	// Credited before the first attempt, whatever becomes of it.
	wantBalance(t, f.g, "alice", 1100)
	// The loop waits on its backoff timer: 100ms, then 200ms.
	f.clk.WaitTimers(t, 1)
	f.clk.Advance(DefaultBroadcastBackoff - time.Millisecond)
	f.bc.none(t)
	f.clk.Advance(time.Millisecond)
	second := f.bc.next(t)
	f.clk.WaitTimers(t, 1)
	f.clk.Advance(2 * DefaultBroadcastBackoff)
	third := f.bc.next(t)
	if string(first.payload) != string(second.payload) || string(second.payload) != string(third.payload) {
		t.Fatalf("attempts sent %s, %s, %s: want the same payload", first.payload, second.payload, third.payload)
	}
	if st := f.g.Stats(); st.BroadcastFailures != 0 {
		t.Fatalf("stats %+v, want no failure", st)
	}
	// And the game goes on.
	f.mustBet(t, "table:1", "alice", 100, PickHigh)
}

func TestBroadcastGivesUp(t *testing.T) {
	cases := []struct {
		name     string
		err      error
		attempts int64
	}{
		{"transient", status.Error(codes.Unavailable, "down"), DefaultBroadcastAttempts},
		{"permanent", fmt.Errorf("%w: unimplemented", ErrPermanent), 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.bc.fail = func(int64) error { return tc.err }
			f.mustJoin(t, "table:1", "alice")
			f.rollRoundRaw(t, 1)
			for i := int64(1); i < tc.attempts; i++ {
				f.clk.WaitTimers(t, 1)
				f.clk.Advance(backoffCapFactor * DefaultBroadcastBackoff)
				f.bc.next(t)
			}
			// Given up: the loop arms the next round's timer, nothing more is
			// sent, and bets go on.
			f.clk.WaitTimers(t, 1)
			f.bc.none(t)
			if n := f.bc.attempts.Load(); n != tc.attempts {
				t.Fatalf("%d attempts, want %d", n, tc.attempts)
			}
			if st := f.g.Stats(); st.BroadcastFailures != 1 || st.Rounds != 1 {
				t.Fatalf("stats %+v, want 1 round and 1 failure", st)
			}
			f.mustBet(t, "table:1", "alice", 10, PickLow)
		})
	}
}

func TestBroadcastAttemptHasADeadline(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.BroadcastTimeout = 20 * time.Millisecond; c.BroadcastAttempts = 1 })
	got := make(chan error, 1)
	blocking := BroadcasterFunc(func(ctx context.Context, _, _ string, _ []byte) error {
		<-ctx.Done()
		got <- ctx.Err()
		return ctx.Err()
	})
	f.g.bc = blocking
	f.mustJoin(t, "table:1", "alice")
	f.clk.WaitTimers(t, 1)
	f.clk.Advance(DefaultWindow)
	select {
	case err := <-got:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("attempt ended with %v, want its deadline", err)
		}
	case <-time.After(waitLong):
		t.Fatal("a hung broadcast was never cut off")
	}
	f.clk.WaitTimers(t, 1) // the loop went on to the next round
}

// BroadcasterFunc adapts a function to Broadcaster.
type BroadcasterFunc func(ctx context.Context, topic, event string, payload []byte) error

func (f BroadcasterFunc) Broadcast(ctx context.Context, topic, event string, payload []byte) error {
	return f(ctx, topic, event, payload)
}

func TestCloseStopsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	f := newFixture(t, nil)
	f.g.bc = BroadcasterFunc(func(ctx context.Context, _, _ string, _ []byte) error {
		<-ctx.Done() // a Gateway that never answers
		return ctx.Err()
	})
	for i := range 5 {
		f.mustJoin(t, fmt.Sprintf("table:%d", i), "alice")
	}
	f.clk.WaitTimers(t, 5)
	f.clk.Advance(DefaultWindow) // every loop is now stuck in a broadcast
	f.g.Close()
	goroutinesBackTo(t, base)
	if _, err := f.g.Join(context.Background(), &backendv1.JoinRequest{Call: call("table:1", "bob", "phx_join", newKey(), nil)}); status.Code(err) != codes.Unavailable {
		t.Fatalf("Join after Close: %v, want Unavailable", err)
	}
	if _, err := f.g.HandleIn(context.Background(), &backendv1.HandleInRequest{Call: call("table:1", "alice", EventBet, newKey(), []byte(`{"amount":1,"pick":"high"}`))}); status.Code(err) != codes.Unavailable {
		t.Fatalf("HandleIn after Close: %v, want Unavailable", err)
	}
	f.g.Close() // idempotent
}

// TestConcurrentTables runs players betting on several tables while
// rounds roll; with every bet on high and every roll a 6, money is
// conserved exactly: final balances = start + half the payouts (each
// settled stake came back twice, each open one was refunded).
func TestConcurrentTables(t *testing.T) {
	f := newFixture(t, nil)
	f.roll.Store(6)
	var paid atomic.Int64
	f.g.bc = BroadcasterFunc(func(_ context.Context, _, _ string, payload []byte) error {
		var r roundResult
		if err := json.Unmarshal(payload, &r); err != nil {
			return err
		}
		for _, v := range r.Payouts {
			paid.Add(v)
		}
		return nil
	})
	const tables, players, bets = 4, 5, 40
	for ti := range tables {
		for p := range players {
			f.mustJoin(t, fmt.Sprintf("table:%d", ti), fmt.Sprintf("p%d", p))
		}
	}
	var dones []chan struct{}
	for ti := range tables {
		dones = append(dones, f.table(t, fmt.Sprintf("table:%d", ti)).done)
	}
	f.clk.WaitTimers(t, tables)

	var wg sync.WaitGroup
	// The clock stands still until every player's first bet is in, so
	// each table's first round has stakes whatever the scheduling.
	var firstBets sync.WaitGroup
	firstBets.Add(tables * players)
	for ti := range tables {
		for p := range players {
			wg.Go(func() {
				topic, player := fmt.Sprintf("table:%d", ti), fmt.Sprintf("p%d", p)
				for i := range bets {
					key := fmt.Sprintf("%s:%d", topic, i)
					r := f.bet(t, topic, player, 1, PickHigh, key)
					if i == 0 {
						firstBets.Done()
					}
					if r.GetStatus() != StatusOK && !strings.Contains(string(r.GetResponse().GetData()), ReasonBettingClosed) {
						t.Errorf("bet: %s %s", r.GetStatus(), r.GetResponse().GetData())
					}
					f.bet(t, topic, player, 1, PickHigh, key) // a retry
				}
			})
		}
	}
	firstBets.Wait()
	stop := make(chan struct{})
	roller := make(chan struct{})
	go func() {
		defer close(roller)
		for {
			select {
			case <-stop:
				return
			default:
			}
			f.clk.Advance(DefaultWindow)
			runtime.Gosched()
		}
	}()
	wg.Wait()
	// Bets may all land in one open round per table: keep rolling until
	// one was settled, or the leaves below would only refund them.
	for deadline := time.Now().Add(10 * time.Second); paid.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no round paid anything in 10 s of rolling")
		}
		runtime.Gosched()
	}
	close(stop)
	<-roller
	for ti := range tables {
		for p := range players {
			f.leave(t, fmt.Sprintf("table:%d", ti), fmt.Sprintf("p%d", p))
		}
	}
	for _, d := range dones {
		waitClosed(t, d, "table loop returns")
	}
	var total int64
	for p := range players {
		total += f.g.Balance(fmt.Sprintf("p%d", p))
	}
	if want := players*DefaultStartBalance + paid.Load()/2; total != want {
		t.Fatalf("balances sum to %d, want %d (payouts %d)", total, want, paid.Load())
	}
	if paid.Load() == 0 {
		t.Fatal("no round paid anything: the test raced nothing")
	}
}

// A rejoin within phxgate's leave_grace takes over the dropped
// connection's seat (no Leave comes for it); a Leave for a join the game
// never applied (phxgate sends one when a join's answer was lost) unseats
// nobody.
func TestRejoinTakesTheDroppedSeat(t *testing.T) {
	f := newFixture(t, nil)
	f.joinSeat(t, "table:1", "alice", "a1")
	tb := f.table(t, "table:1")
	c := call("table:1", "alice", "phx_join", newKey(), []byte("{}"))
	c.ConnId, c.JoinRef = 8, "a2"
	if _, err := f.g.Join(context.Background(), &backendv1.JoinRequest{Call: c, Rejoin: true, RejoinConnId: 7, RejoinJoinRef: "a1"}); err != nil {
		t.Fatal(err)
	}
	f.leaveSeat(t, "table:1", "alice", "never-applied")
	tb.mu.Lock()
	n := len(tb.seats)
	tb.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d seats, want 1 (the rejoin's)", n)
	}
	lv := call("table:1", "alice", "phx_leave", newKey(), nil)
	lv.ConnId, lv.JoinRef = 8, "a2"
	if _, err := f.g.Leave(context.Background(), &backendv1.LeaveRequest{Call: lv}); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, tb.done, "the table stops with its last seat")
}

// A rejoin from a node too old to name the seat it takes over gives up one
// of the player's seats on that node, and a named seat that is another
// player's is left alone.
func TestRejoinWithoutANamedSeat(t *testing.T) {
	f := newFixture(t, nil)
	f.joinSeat(t, "table:1", "alice", "a1")
	f.joinSeat(t, "table:1", "bob", "b1")
	tb := f.table(t, "table:1")
	rejoin := func(conn uint64, ref string, prevConn uint64, prevRef string) {
		t.Helper()
		c := call("table:1", "alice", "phx_join", newKey(), []byte("{}"))
		c.ConnId, c.JoinRef = conn, ref
		if _, err := f.g.Join(context.Background(), &backendv1.JoinRequest{Call: c, Rejoin: true, RejoinConnId: prevConn, RejoinJoinRef: prevRef}); err != nil {
			t.Fatal(err)
		}
	}
	rejoin(8, "a2", 0, "")   // an old node: no seat named
	rejoin(9, "a3", 7, "b1") // names bob's seat: not alice's to take
	tb.mu.Lock()
	defer tb.mu.Unlock()
	alice, bob := 0, 0
	for _, p := range tb.seats {
		switch p {
		case "alice":
			alice++
		case "bob":
			bob++
		}
	}
	if alice != 2 || bob != 1 {
		t.Fatalf("seats: alice %d, bob %d; want 2 and 1", alice, bob)
	}
}

// Each table counts its own rounds, 1, 2, 3 …, whatever the other tables
// do, so a client can tell a missed round_result by its number.
func TestRoundsCountPerTable(t *testing.T) {
	f := newFixture(t, nil)
	f.mustJoin(t, "table:1", "alice")
	f.mustJoin(t, "table:2", "bob")
	f.clk.WaitTimers(t, 2)
	got := map[string][]uint64{}
	for range 3 {
		f.clk.Advance(f.cfg.Window)
		for range 2 {
			s := f.bc.next(t)
			var r roundResult
			decode(t, s.payload, &r)
			got[s.topic] = append(got[s.topic], r.Round)
		}
		f.clk.WaitTimers(t, 2)
	}
	for _, topic := range []string{"table:1", "table:2"} {
		if fmt.Sprint(got[topic]) != "[1 2 3]" {
			t.Fatalf("rounds of %s: %v, want [1 2 3]", topic, got[topic])
		}
	}
}
